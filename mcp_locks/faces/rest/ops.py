"""The REST face: Starlette routes over the same service calls as the MCP tools, and their OpenAPI 3.1 document.

One table of operations (:data:`Op`) produces both the routes and the
document, so they cannot drift. Every failure is the one error body
``{"error": {"code", "message", "hint", "details"}}`` with the status from the
error table.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match, Route

from mcp_locks.core.errors import (
    ERROR_TABLE,
    InvalidArgument,
    LimitExceeded,
    LockError,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
)
from mcp_locks.core.keys import LOCAL, Identity, require_admin
from mcp_locks.core.models import (
    AuditEvent,
    AuditPage,
    CompleteUploadRequest,
    CreatedKey,
    CreatedWebhook,
    CreateKeyRequest,
    CreateWebhookRequest,
    CreateWorkspaceRequest,
    ErrorBody,
    FileInfo,
    FileList,
    FileStatus,
    FileWritten,
    ForceUnlockRequest,
    KeyInfo,
    KeyList,
    LockFilesRequest,
    LockFilesResult,
    LockGrant,
    LockPage,
    LockRequest,
    LockStatus,
    Me,
    RenewRequest,
    RenewResult,
    UnlockFilesRequest,
    UnlockFilesResult,
    UnlockRequest,
    UnlockResult,
    UploadInfo,
    UploadRequest,
    WebhookInfo,
    WebhookList,
    WorkspaceInfo,
    WorkspaceList,
    WorkspaceOverview,
    parse_body,
)
from mcp_locks.core.names import WORKSPACE_PATTERN
from mcp_locks.core.records import Event, FileMeta
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.auth import identity_of
from mcp_locks.observe.logging import redact

__all__ = ["OPENAPI_PATH", "build_rest", "caller_of", "error_response", "http_error_handler"]

OPENAPI_PATH = "/v1/openapi.json"


class _TokenConvertor(Convertor[str]):
    # Only strings shaped like our tokens are tokens, so DELETE .../a/lock/lock is the node 'a/lock'.
    regex = "mlt_[A-Za-z0-9_-]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("locktoken", _TokenConvertor())


def error_response(err: LockError, headers: dict[str, str] | None = None) -> Response:
    """The one error body, with the status from the error table.

    ASCII-escaped JSON: a message may quote what the client sent, lone surrogates included.
    """
    body = json.dumps({"error": err.to_dict()})
    return Response(body, status_code=err.http_status, headers=headers, media_type="application/json")


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as the one error body."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    path = redact(str(request.scope.get("path", ""))[:200])  # a token may sit in a mistyped path
    if status == 405:
        allowed = _allowed_methods(request)
        return error_response(
            MethodNotAllowed(
                f"{request.method} is not allowed on {path}.",
                hint=f"See {OPENAPI_PATH} for the methods of each route.",
                details={"allowed": allowed},
            ),
            headers={"Allow": ", ".join(allowed)},  # RFC 9110 §15.5.6: a 405 must list what is allowed
        )
    return error_response(NotFound(f"no route {path}.", hint=f"See {OPENAPI_PATH} for the routes."))


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route whose path matches the request's.

    Each operation is a route of its own, so Starlette's ``Allow`` would name only the first route
    that matched the path, not all the methods of the path.
    """
    router = request.scope.get("router")
    methods: set[str] = set()
    for route in getattr(router, "routes", ()):
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


@dataclass(frozen=True)
class Call:
    """What a handler gets: the request, who sent it, its path parameters and its parsed body."""

    request: Request
    caller: Identity
    params: dict[str, str]
    body: Any


Handler = Callable[[Call], Awaitable[BaseModel | Response]]


@dataclass(frozen=True)
class Op:
    """One REST operation: its route, what it takes and returns, and the handler."""

    method: str
    path: str
    name: str
    summary: str
    handler: Handler
    result: type[BaseModel]
    body: type[BaseModel] | None = None
    status: int = 200
    query: tuple[tuple[str, str, str], ...] = ()  # (name, JSON type, description)
    headers: tuple[tuple[str, str], ...] = ()  # (name, description)
    waits: bool = False  # may wait in line: a client that disconnects leaves the line
    admin: bool = False
    tags: tuple[str, ...] = field(default=("locks",))
    raw_body: bool = False  # the body is file content (streamed by the handler), not JSON
    raw_result: bool = False  # the answer is file content, not JSON
    stream: bool = False  # the answer is a text/event-stream of ``result`` events
    also: tuple[int, ...] = ()  # other success statuses with the same result (201 for a write that created)


def caller_of(request: Request, local: Identity) -> Identity:
    """Who a request speaks for: its verified key's identity, else ``local``."""
    user = request.scope.get("user")
    return identity_of(user.access_token) if isinstance(user, AuthenticatedUser) else local


def _check_raw_path(request: Request) -> None:
    raw = request.scope.get("raw_path")
    if raw is None:
        return
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(
            "the path is not valid UTF-8 once percent-decoded.",
            hint="Percent-encode node ids as UTF-8.",
            details={"field": "node_id"},
        ) from None


async def _json_body(request: Request) -> bytes:
    """The request body, which must be declared as JSON if there is one (it is parsed by the body's model)."""
    chunks: list[bytes] = []
    while True:  # straight from receive: Starlette's body stream costs more than the read itself
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    raw = b"".join(chunks)
    if not raw.strip():
        return b""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        # Browsers send text/plain cross-origin without asking first; JSON they must ask about (CORS).
        raise UnsupportedMediaType(
            f"a request body must be JSON (Content-Type: application/json), not '{kind[:60] or 'none'}'.",
            hint="Send the body as JSON with that header.",
            details={"field": "content-type"},
        )
    return raw


async def _or_disconnect(
    request: Request, call: Callable[[], Awaitable[BaseModel | Response]]
) -> BaseModel | Response | None:
    """Run ``call``; if the client goes away first, cancel it (so it leaves the line) and return None."""
    result: BaseModel | Response | None = None
    error: LockError | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            result = await call()
        except LockError as e:
            error = e
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


def _endpoint(op: Op, local: Identity) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            _check_raw_path(request)
            caller = caller_of(request, local)
            if op.admin:
                require_admin(caller, op.name.replace("_", " "))
            body = None
            if op.body is not None:
                body = parse_body(op.body, await _json_body(request), op.name)
            call = Call(request, caller, dict(request.path_params), body)
            if op.waits and getattr(body, "wait", 0) > 0:
                # Only a call that may wait needs to notice the client leaving (it then leaves the line).
                result = await _or_disconnect(request, lambda: op.handler(call))
                if result is None:
                    return Response(status_code=499)  # nobody is listening any more
            else:
                result = await op.handler(call)
        except LockError as e:
            return error_response(e)
        except ClientDisconnect:
            return Response(status_code=499)  # the client left while sending its body
        if isinstance(result, Response):
            return result
        return Response(result.model_dump_json(), status_code=op.status, media_type="application/json")

    endpoint.__name__ = op.name
    return endpoint


def _int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer.", details={"field": name}) from None


def _header_token(request: Request) -> str | None:
    """The ``Lock-Token`` header's token: RFC 4918 writes it as ``<token>``; bare is accepted too."""
    header = request.headers.get("lock-token")
    return header.strip().removeprefix("<").removesuffix(">") if header is not None else None


def _lock_token(call: Call) -> str | None:
    header = _header_token(call.request)
    if header is not None:
        return header
    body: UnlockRequest | None = call.body
    return body.token if body is not None else None


def _if_version(request: Request) -> int | None:
    """The version a write expects: ``If-None-Match: *`` (0), ``If-Match: "<version>-..."``, or ``?if_version=N``."""
    if request.headers.get("if-none-match", "").strip() == "*":
        return 0
    match = request.headers.get("if-match")
    if match is not None:
        tag = match.strip().removeprefix("W/").strip('"')
        head = tag.split("-", 1)[0]
        # ASCII digits only, and few: int() refuses "²" (a digit to isdigit) and numbers over 4300 digits.
        if not (head.isascii() and head.isdigit()) or len(head) > 18:
            raise InvalidArgument(
                "If-Match must be an ETag this server returned (or a version number).",
                hint="Send the ETag header of the version you read.",
                details={"field": "if-match"},
            )
        return int(head)
    raw = request.query_params.get("if_version")
    return None if raw is None else _int(raw, "if_version", 0)


async def _body_stream(request: Request) -> AsyncIterator[bytes]:
    """The request body, piece by piece as it arrives (never gathered whole)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        piece = message.get("body", b"")
        if piece:
            yield piece
        if not message.get("more_body", False):
            return


def _file_headers(m: FileInfo | FileMeta) -> dict[str, str]:
    return {
        "ETag": m.etag,
        "X-Version": str(m.version),
        "X-Fence": str(m.fence),
        **({"X-Sha256": m.sha256} if m.sha256 else {}),
    }


class _FileResponse(StreamingResponse):
    """Streams an open file of known size; the descriptor is closed however the response ends."""

    def __init__(self, fd: int, size: int, headers: dict[str, str], head: bool) -> None:
        self.fd = fd

        async def pieces() -> AsyncIterator[bytes]:
            offset = 0
            while offset < size and not head:  # exactly the size announced, even if the file grows
                piece = await anyio.to_thread.run_sync(os.pread, fd, min(1 << 18, size - offset), offset)
                if not piece:
                    return
                offset += len(piece)
                yield piece

        super().__init__(pieces(), media_type="application/octet-stream",
                         headers={**headers, "Content-Length": str(size)})  # fmt: skip

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)


def file_response(fd: int, size: int, headers: dict[str, str], head: bool = False) -> Response:
    """Stream an open file (closed at the end, or when the client goes away); HEAD sends the headers only."""
    return _FileResponse(fd, size, headers, head)


def _storage_workspace(caller: Identity) -> str | None:
    """The workspace of the /v1/storage paths: the key's only workspace (the default one for admins)."""
    if caller.authenticated and caller.role != "admin":
        if len(caller.workspaces) != 1:
            raise InvalidArgument(
                "/v1/storage/... needs a key bound to exactly one workspace;"
                f" this key reaches {len(caller.workspaces)}.",
                hint="Use /v1/workspaces/{workspace_id}/nodes/{node_id}/lock and name the workspace.",
                details={"your_workspaces": list(caller.workspaces)},
            )
        return caller.workspaces[0]
    return None


def build_ops(service: LockService) -> list[Op]:
    """Every REST operation, bound to ``service``."""

    def ws_of(call: Call) -> str | None:
        if "workspace_id" in call.params:
            return call.params["workspace_id"]
        return _storage_workspace(call.caller)

    async def lock(call: Call) -> BaseModel:
        b: LockRequest = call.body
        return await service.lock(
            ws_of(call),
            call.params["node_id"],
            b.mode,
            b.timeout,
            b.wait,
            b.depth,
            b.note,
            b.agent,
            b.request_id,
            b.token,
            caller=call.caller,
        )

    async def status(call: Call) -> BaseModel:
        token = _header_token(call.request)  # "do I still hold it?"
        return await service.status(ws_of(call), call.params["node_id"], token, caller=call.caller)

    async def renew(call: Call) -> BaseModel:
        b: RenewRequest = call.body
        node = call.params["node_id"]
        return await service.renew(ws_of(call), b.token, b.timeout, caller=call.caller, node_id=node)

    async def unlock_path(call: Call) -> BaseModel:
        return await service.unlock(ws_of(call), call.params["token"], call.params["node_id"], caller=call.caller)

    async def unlock_header(call: Call) -> BaseModel:
        token = _lock_token(call)
        if token is None:
            raise InvalidArgument(
                'send the lock\'s token in the Lock-Token header (or as {"token": ...} in the body).',
                details={"field": "token"},
            )
        return await service.unlock(ws_of(call), token, call.params["node_id"], caller=call.caller)

    async def list_locks(call: Call) -> BaseModel:
        q = call.request.query_params
        return await service.list_locks(
            call.params["workspace_id"],
            q.get("prefix", ""),
            q.get("owner"),
            _int(q.get("limit"), "limit", 100),
            q.get("cursor"),
            caller=call.caller,
        )

    async def lock_files(call: Call) -> BaseModel:
        b: LockFilesRequest = call.body
        return await service.lock_many(
            call.params["workspace_id"], b.items, b.timeout, b.wait, b.note, b.agent, b.request_id, caller=call.caller
        )

    async def unlock_files(call: Call) -> BaseModel:
        b: UnlockFilesRequest = call.body
        return await service.unlock_many(call.params["workspace_id"], b.tokens, caller=call.caller)

    async def force_unlock(call: Call) -> BaseModel:
        b: ForceUnlockRequest = call.body
        return await service.force_unlock(
            call.params["workspace_id"], call.params["lock_id"], b.reason, caller=call.caller
        )

    async def list_workspaces(call: Call) -> BaseModel:
        return WorkspaceList(workspaces=await service.list_workspaces(caller=call.caller))

    async def create_workspace(call: Call) -> BaseModel:
        b: CreateWorkspaceRequest = call.body
        return await service.create_workspace(b.workspace_id, b.description, caller=call.caller)

    async def delete_workspace(call: Call) -> BaseModel:
        return await service.delete_workspace(call.params["workspace_id"], caller=call.caller)

    async def create_key(call: Call) -> BaseModel:
        b: CreateKeyRequest = call.body
        key, r = await service.create_key(b.agent, b.workspaces, b.role, caller=call.caller)
        return CreatedKey(key=key, key_id=r.key_id, agent=r.agent, role=r.role, workspaces=list(r.workspaces))

    async def list_keys(call: Call) -> BaseModel:
        return KeyList(keys=[KeyInfo.of(r) for r in await service.list_keys(caller=call.caller)])

    async def revoke_key(call: Call) -> BaseModel:
        return KeyInfo.of(await service.revoke_key(call.params["key_id"], caller=call.caller))

    async def me(call: Call) -> BaseModel:
        c = call.caller
        return Me(
            authenticated=c.authenticated,
            key_id=c.key_id or None,
            agent=c.agent or None,
            role=c.role,
            workspaces=list(c.workspaces),
        )

    files = service.files

    async def read_file(call: Call) -> Response:
        _, meta, fd = await files.open(call.params["workspace_id"], call.params["node_id"],
                                       _header_token(call.request), caller=call.caller)  # fmt: skip
        return file_response(fd, os.fstat(fd).st_size, _file_headers(meta), head=call.request.method == "HEAD")

    async def write_file(call: Call) -> Response:
        r = call.request
        written = await files.write(
            call.params["workspace_id"], call.params["node_id"], _body_stream(r), _header_token(r),
            _if_version(r), r.query_params.get("agent"), caller=call.caller,
        )  # fmt: skip
        return Response(written.model_dump_json(), status_code=201 if written.created else 200,
                        media_type="application/json", headers=_file_headers(written.file))  # fmt: skip

    async def delete_file(call: Call) -> BaseModel:
        r = call.request
        return await files.delete(
            call.params["workspace_id"], call.params["node_id"], _header_token(r), _if_version(r),
            r.query_params.get("agent"), caller=call.caller,
        )  # fmt: skip

    async def file_info(call: Call) -> BaseModel:
        return await files.info(call.params["workspace_id"], call.params["node_id"],
                                call.request.query_params.get("agent"), caller=call.caller)  # fmt: skip

    async def list_files(call: Call) -> BaseModel:
        q = call.request.query_params
        return await files.list(call.params["workspace_id"], q.get("prefix", ""), q.get("cursor"),
                                _int(q.get("limit"), "limit", 200), caller=call.caller)  # fmt: skip

    async def create_upload(call: Call) -> BaseModel:
        b: UploadRequest = call.body
        return await files.create_upload(call.params["workspace_id"], b.node_id, caller=call.caller)

    async def upload_status(call: Call) -> BaseModel:
        return await files.upload_status(call.params["workspace_id"], call.params["upload_id"], caller=call.caller)

    async def put_chunk(call: Call) -> BaseModel:
        return await files.put_chunk(call.params["workspace_id"], call.params["upload_id"],
                                     _int(call.params["index"], "chunk", 0), _body_stream(call.request),
                                     caller=call.caller)  # fmt: skip

    async def complete_upload(call: Call) -> BaseModel:
        b: CompleteUploadRequest = call.body
        return await files.complete_upload(call.params["workspace_id"], call.params["upload_id"], b.node_id,
                                           b.sha256, b.token, b.if_version, b.agent, caller=call.caller)  # fmt: skip

    async def abort_upload(call: Call) -> BaseModel:
        ws, uid = call.params["workspace_id"], call.params["upload_id"]
        info = await files.upload_status(ws, uid, caller=call.caller)
        await files.abort_upload(ws, uid, caller=call.caller)
        return info

    observe = service.observe
    open_streams: dict[str, int] = {}  # key id -> event streams open now

    async def audit_log(call: Call) -> BaseModel:
        q = call.request.query_params
        limit = _int(q.get("limit"), "limit", 100)
        return await observe.audit_log(call.params["workspace_id"], q.get("node_id"), q.get("agent"), q.get("since"),
                                       limit, q.get("cursor"), caller=call.caller)  # fmt: skip

    async def overview(call: Call) -> BaseModel:
        return await service.overview(call.params["workspace_id"], caller=call.caller)

    async def events(call: Call) -> Response:
        ws = await service.known_workspace(call.params["workspace_id"], call.caller)
        r = call.request
        last = r.headers.get("last-event-id") or r.query_params.get("after")
        after: int | None = None
        if last is not None:
            last = last.strip()
            if not (last.isascii() and last.isdigit()) or len(last) > 18:
                raise InvalidArgument("Last-Event-ID must be the id of an event this stream sent (an integer).",
                                      details={"field": "Last-Event-ID"})  # fmt: skip
            after = int(last)
        who = call.caller.key_id or "local"
        if open_streams.get(who, 0) >= MAX_STREAMS_PER_KEY:
            raise LimitExceeded(
                f"this key already has {MAX_STREAMS_PER_KEY} event streams open.",
                hint="Close one (one stream per workspace is enough), or use another key.",
                details={"limit": MAX_STREAMS_PER_KEY},
            )
        feed = _counted(open_streams, who, _event_feed(service, ws, after, call.caller))
        return EventSourceResponse(feed, ping=KEEPALIVE, headers={"Cache-Control": "no-store"})

    async def create_webhook(call: Call) -> BaseModel:
        b: CreateWebhookRequest = call.body
        return await observe.create_webhook(call.params["workspace_id"], b.url, b.events, caller=call.caller)

    async def list_webhooks(call: Call) -> BaseModel:
        return await observe.list_webhooks(call.params["workspace_id"], caller=call.caller)

    async def delete_webhook(call: Call) -> BaseModel:
        return await observe.delete_webhook(call.params["workspace_id"], call.params["webhook_id"], caller=call.caller)

    ws_hooks = "/v1/workspaces/{workspace_id}/webhooks"
    observe_ops = [
        Op(
            "GET",
            "/v1/workspaces/{workspace_id}/audit",
            "get_audit_log",
            "The workspace's event log, newest first: every lock event and file write.",
            audit_log,
            AuditPage,
            query=(
                ("node_id", "string", "Only this node's events."),
                ("agent", "string", "Only this agent's."),
                ("since", "string", "Only events at or after this ISO 8601 time."),
                ("limit", "integer", "Page size, 1-1000."),
                ("cursor", "string", "next_cursor of the last page."),
            ),
            tags=("observe",),
        ),
        Op(
            "GET",
            "/v1/workspaces/{workspace_id}/overview",
            "overview",
            "Every held lock and every waiter, as of one instant.",
            overview,
            WorkspaceOverview,
            tags=("observe",),
        ),
        Op(
            "GET",
            "/v1/workspaces/{workspace_id}/events",
            "events",
            "Live events as server-sent events (id: seq, event: kind, data: the event); resume with Last-Event-ID."
            f" A ': ping' comment every {KEEPALIVE} s.",
            events,
            AuditEvent,
            stream=True,
            headers=(("Last-Event-ID", "The last id you received: events after it are sent first."),),
            query=(("after", "integer", "Last-Event-ID for clients that cannot set headers (EventSource)."),),
            tags=("observe",),
        ),
        Op(
            "POST",
            ws_hooks,
            "create_webhook",
            "Send events to a URL (Standard Webhooks signatures); the secret is in this answer only.",
            create_webhook,
            CreatedWebhook,
            CreateWebhookRequest,
            status=201,
            admin=True,
            tags=("observe",),
        ),
        Op(
            "GET",
            ws_hooks,
            "list_webhooks",
            "The workspace's webhooks.",
            list_webhooks,
            WebhookList,
            admin=True,
            tags=("observe",),
        ),
        Op(
            "DELETE",
            f"{ws_hooks}/{{webhook_id}}",
            "delete_webhook",
            "Stop sending to a webhook.",
            delete_webhook,
            WebhookInfo,
            admin=True,
            tags=("observe",),
        ),
    ]

    ws_files = "/v1/workspaces/{workspace_id}/files"
    ws_up = "/v1/workspaces/{workspace_id}/uploads"
    write_headers = (
        ("Lock-Token", "The token of your write lock covering the file."),
        ("If-Match", "Without a lock: the ETag (or version) you read; the write fails with 412 if it changed."),
        ("If-None-Match", "'*': create only (fails with 412 if the file exists)."),
    )
    file_ops = [
        Op("GET", ws_files, "list_files", "A page of files, by node_id.", list_files, FileList,
           query=(("prefix", "string", "Only node_ids starting with this."), ("limit", "integer", "Page size, 1-1000."),
                  ("cursor", "string", "next_cursor of the last page.")), tags=("files",)),
        Op("GET", f"{ws_files}/{{node_id:path}}", "read_file",
           "The file's content; ETag, X-Version and X-Fence headers give its version. Refused (423) while another"
           " agent writes it, unless Lock-Token shows your own lock.", read_file, FileInfo, raw_result=True,
           headers=(("Lock-Token", "Optional: your lock covering the file."),), tags=("files",)),
        Op("PUT", f"{ws_files}/{{node_id:path}}", "write_file",
           "Replace the file atomically with the body: under your write lock (Lock-Token) or a version check"
           " (If-Match / If-None-Match / ?if_version=N). 201 if created.", write_file, FileWritten, raw_body=True,
           also=(201,),
           headers=write_headers, query=(("if_version", "integer", "The version you expect (0 = create only)."),
                                         ("agent", "string", "Label shown as modified_by's label.")), tags=("files",)),
        Op("DELETE", f"{ws_files}/{{node_id:path}}", "delete_file", "Delete the file, under the same rules as PUT.",
           delete_file, FileWritten, headers=write_headers,
           query=(("if_version", "integer", "The version you expect."),
                  ("agent", "string", "Label shown as modified_by's label.")), tags=("files",)),
        Op("GET", "/v1/workspaces/{workspace_id}/file-info/{node_id:path}", "file_info",
           "Metadata, lock status, and whether you may read or write the file now.", file_info, FileStatus,
           query=(("agent", "string", "Who asks, without keys; with a key only a label."),),
           tags=("files",)),
        Op("POST", ws_up, "create_upload", "Start a resumable upload for a large file.", create_upload, UploadInfo,
           UploadRequest, status=201, tags=("files",)),
        Op("GET", f"{ws_up}/{{upload_id}}", "upload_status", "Which chunks of an upload arrived.", upload_status,
           UploadInfo, tags=("files",)),
        Op("PUT", f"{ws_up}/{{upload_id}}/chunks/{{index}}", "put_chunk",
           "Send chunk n (0, 1, ...) as the raw body; resending replaces it.", put_chunk, UploadInfo, raw_body=True,
           tags=("files",)),
        Op("POST", f"{ws_up}/{{upload_id}}/complete", "complete_upload",
           "Check the sha256 and write the chunks as one atomic write, under the same rules as PUT.",
           complete_upload, FileWritten, CompleteUploadRequest, tags=("files",)),
        Op("DELETE", f"{ws_up}/{{upload_id}}", "abort_upload", "Drop an upload and its chunks.", abort_upload,
           UploadInfo, tags=("files",)),
    ]  # fmt: skip

    node_ops: list[Op] = []
    for base, where in (
        ("/v1/workspaces/{workspace_id}/nodes/{node_id:path}", ""),
        ("/v1/storage/nodes/{node_id:path}", "_storage"),
    ):
        lock_token_header = (("Lock-Token", "The lock's token (keeps it out of URLs and access logs)."),)
        node_ops += [
            Op(
                "POST",
                f"{base}/lock",
                f"lock{where}",
                "Take a lock on a node (or upgrade/downgrade one you hold).",
                lock,
                LockGrant,
                LockRequest,
                waits=True,
            ),
            Op(
                "GET",
                f"{base}/lock",
                f"status{where}",
                "Who holds the node, until when, and who waits (with Lock-Token: whether you still hold it).",
                status,
                LockStatus,
                headers=(("Lock-Token", "Optional: your token, to ask whether you still hold its lock."),),
            ),
            Op(
                "POST",
                f"{base}/lock/renew",
                f"renew{where}",
                "Restart a lock's lease.",
                renew,
                RenewResult,
                RenewRequest,
            ),
            Op(
                "DELETE",
                f"{base}/lock/{{token:locktoken}}",
                f"unlock{where}",
                "Release a lock (token in the path).",
                unlock_path,
                UnlockResult,
            ),
            Op(
                "DELETE",
                f"{base}/lock",
                f"unlock_header{where}",
                "Release a lock, its token in the Lock-Token header.",
                unlock_header,
                UnlockResult,
                UnlockRequest,
                headers=lock_token_header,
            ),
        ]
    ws = "/v1/workspaces/{workspace_id}"
    return [
        *node_ops,
        *file_ops,
        *observe_ops,
        Op("GET", f"{ws}/locks", "list_locks", "A page of held locks, by node_id.", list_locks, LockPage,
           query=(("prefix", "string", "Only node_ids starting with this."), ("owner", "string", "Only this agent's."),
                  ("limit", "integer", "Page size, 1-1000."), ("cursor", "string", "next_cursor of the last page."))),
        Op("POST", f"{ws}/locks/batch", "lock_files", "Take several locks together: all or none.", lock_files,
           LockFilesResult, LockFilesRequest, waits=True),
        Op("POST", f"{ws}/locks/unlock", "unlock_files", "Release several locks; each token on its own.",
           unlock_files, UnlockFilesResult, UnlockFilesRequest),
        Op("POST", f"{ws}/locks/{{lock_id}}/force-unlock", "force_unlock",
           "Break someone's lock (admin); its holder's next call gets LOCK_BROKEN with the reason.",
           force_unlock, UnlockResult, ForceUnlockRequest, admin=True),
        Op("GET", "/v1/workspaces", "list_workspaces", "The workspaces this key reaches.", list_workspaces,
           WorkspaceList, tags=("workspaces",)),
        Op("POST", "/v1/workspaces", "create_workspace", "Create a workspace (admin).", create_workspace,
           WorkspaceInfo, CreateWorkspaceRequest, status=201, admin=True, tags=("workspaces",)),
        Op("DELETE", ws, "delete_workspace",
           "Delete a workspace that holds no lock (admin); keys lose access to it.", delete_workspace,
           WorkspaceInfo, admin=True, tags=("workspaces",)),
        Op("GET", "/v1/admin/keys", "list_keys", "Every API key (never the keys themselves).", list_keys, KeyList,
           admin=True, tags=("admin",)),
        Op("POST", "/v1/admin/keys", "create_key", "Create an API key; the key is in this answer only.",
           create_key, CreatedKey, CreateKeyRequest, status=201, admin=True, tags=("admin",)),
        Op("DELETE", "/v1/admin/keys/{key_id}", "revoke_key", "Revoke a key: it stops working at once.",
           revoke_key, KeyInfo, admin=True, tags=("admin",)),
        Op("GET", "/v1/me", "me", "Who this key speaks for.", me, Me, tags=("workspaces",)),
    ]  # fmt: skip


def build_rest(service: LockService, *, version: str = "", local: Identity = LOCAL) -> list[Route]:
    """The REST routes (and the OpenAPI document at :data:`OPENAPI_PATH`), bound to ``service``.

    A request without a verified key acts as ``local`` (:data:`LOCAL` without authentication).
    """
    ops = build_ops(service)
    routes = [Route(op.path, _endpoint(op, local), methods=[op.method], name=op.name) for op in ops]
    doc = openapi(ops, version)
    body = json.dumps(doc).encode()

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    routes.append(Route(OPENAPI_PATH, openapi_json, methods=["GET"], name="openapi"))
    return routes


def _doc_path(path: str) -> str:
    return path.replace(":path}", "}").replace(":locktoken}", "}")


_PARAMS = {
    "workspace_id": "Workspace id (1-63 of a-z 0-9 _ -).",
    "node_id": "Workspace-relative path; its '/' are sent as they are (e.g. reports/q3.md).",
    "token": "The lock's token (prefer the Lock-Token header: URLs end up in logs).",
    "lock_id": "The lock's public id (lk_...).",
    "key_id": "The key's public id (12 hex digits).",
    "upload_id": "The upload's id (32 hex digits).",
    "index": "Chunk number: 0, 1, 2, ...",
    "webhook_id": "The webhook's id (wh_...).",
}


_STRING: dict[str, Any] = {"type": "string", "minLength": 1}
#: What the routes and the service accept, so a client (or a fuzzer) can tell a bad id from an unknown one.
_PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "workspace_id": {"type": "string", "pattern": WORKSPACE_PATTERN},
    "token": {"type": "string", "pattern": f"^{_TokenConvertor.regex}$"},  # else the path names no route
    "index": {"type": "integer", "minimum": 0},
}


def openapi(ops: list[Op], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ops``, with schemas from the same pydantic models."""
    models: set[type[BaseModel]] = {ErrorBody}
    for op in ops:
        models.add(op.result)
        if op.body is not None:
            models.add(op.body)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema(
        [(m, "serialization" if m not in {op.body for op in ops} else "validation") for m in ordered],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    error = {"description": "An error with a stable code.", "content": _json_ref("ErrorBody")}
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        path = _doc_path(op.path)
        params: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": _PARAM_SCHEMAS.get(name, _STRING),
                "description": _PARAMS[name],
            }
            for name in _path_names(path)
        ]
        params += [
            {"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
            for n, t, d in op.query
        ]
        params += [
            {"name": n, "in": "header", "required": False, "schema": {"type": "string"}, "description": d}
            for n, d in op.headers
        ]
        entry: dict[str, Any] = {
            "operationId": op.name,
            "summary": op.summary,
            "tags": list(op.tags),
            "parameters": params,
            "responses": {
                str(op.status): {"description": "Success.", "content": _json_ref(op.result.__name__)},
                "4XX": error,
                "5XX": error,
            },
        }
        for other in op.also:
            entry["responses"][str(other)] = entry["responses"][str(op.status)]
        if op.raw_result:
            entry["responses"][str(op.status)] = {"description": "The file's content.", "content": _OCTETS}
        if op.stream:
            entry["responses"][str(op.status)] = {
                "description": "A stream of server-sent events; each one's data is this schema.",
                "content": {"text/event-stream": {"schema": {"$ref": f"#/components/schemas/{op.result.__name__}"}}},
            }
        if op.raw_body:
            entry["requestBody"] = {"required": True, "content": _OCTETS}
        if op.body is not None:
            needed = any(f.is_required() for f in op.body.model_fields.values())  # else {} or no body will do
            entry["requestBody"] = {"required": needed, "content": _json_ref(op.body.__name__)}
        if op.admin:
            entry["description"] = "Needs an admin key."
        paths.setdefault(path, {})[op.method.lower()] = entry
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": {"application/json": {}}}},
        }
    }
    codes = ", ".join(f"{code} ({cls.http_status})" for code, cls in ERROR_TABLE.items())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mcp-locks",
            "version": version or "0",
            "description": "Shared and exclusive file locks with leases and fencing numbers for teams of agents. "
            f'Every error is {{"error": {{code, message, hint, details}}}}; the codes are: {codes}.',
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An mcp-locks key."}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


#: Seconds between keep-alive comments on an event stream.
KEEPALIVE = 15
#: Most event streams one key may hold open at once.
MAX_STREAMS_PER_KEY = 16
#: Seconds between checks that an open event stream's key is still live and still reaches its workspace.
RECHECK_ACCESS = 15.0


async def _event_feed(
    service: LockService, workspace_id: str, after: int | None, caller: Identity
) -> AsyncGenerator[ServerSentEvent, None]:
    """Logged events after ``after`` (if given), then live ones, each once, in seq order.

    The stream ends when the caller's key is revoked or loses the workspace (checked every
    :data:`RECHECK_ACCESS` seconds), or when the workspace is deleted.
    """
    observe = service.observe
    async with observe.stream(workspace_id) as live:  # subscribed before reading the log: nothing falls in between
        last = after or 0
        if after is not None:
            while True:
                page = await observe.replay(workspace_id, last, 1000)
                for ev in page:
                    yield _sse(workspace_id, ev)
                    last = ev.seq
                if len(page) < 1000:
                    break
        checked, seen = anyio.current_time(), service.access_changed
        while True:
            # At once after a revocation here; every RECHECK_ACCESS s for one made elsewhere (the CLI).
            if seen.is_set() or anyio.current_time() - checked >= RECHECK_ACCESS:
                checked, seen = anyio.current_time(), service.access_changed
                if not await service.still_reaches(caller, workspace_id):
                    return
            try:
                with anyio.fail_after(RECHECK_ACCESS):
                    ws, ev = await live.receive()
            except TimeoutError:
                continue  # quiet: time to look at the key again
            except anyio.EndOfStream:
                # The reader fell far behind, or the server is stopping: the client reconnects with
                # Last-Event-ID and gets the rest from the log.
                return
            if seen.is_set() and not await service.still_reaches(caller, workspace_id):
                return
            if ws == workspace_id and ev.seq > last:
                last = ev.seq
                yield _sse(workspace_id, ev)


async def _counted(
    counts: dict[str, int], who: str, feed: AsyncGenerator[ServerSentEvent, None]
) -> AsyncIterator[ServerSentEvent]:
    """``feed``, counted in ``counts[who]`` from its first step until it ends (or the client leaves)."""
    counts[who] = counts.get(who, 0) + 1
    try:
        async with contextlib.aclosing(feed) as inner:  # closing this closes the feed (and its subscription)
            async for item in inner:
                yield item
    finally:
        counts[who] -= 1
        if not counts[who]:
            del counts[who]


def _sse(workspace_id: str, ev: Event) -> ServerSentEvent:
    return ServerSentEvent(data=AuditEvent.of(workspace_id, ev).model_dump_json(), id=str(ev.seq), event=ev.kind)


_OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _json_ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
