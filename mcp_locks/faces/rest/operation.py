"""REST operations: what one is (:class:`Op`), what its handler gets (:class:`Call`), and how it is served.

One table of operations produces both the routes and the OpenAPI document, so they cannot drift.
Every failure is the one error body ``{"error": {"code", "message", "hint", "details"}}`` with the
status from the error table.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Message

from mcp_locks.core.errors import (
    InvalidArgument,
    LockError,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
    refusal_in,
)
from mcp_locks.core.keys import Identity, require_admin
from mcp_locks.core.models import parse_body
from mcp_locks.faces.auth import identity_of
from mcp_locks.faces.rest.hints import REST_WORDS
from mcp_locks.observe.logging import redact

__all__ = [
    "OPENAPI_PATH",
    "TOKEN_REGEX",
    "Call",
    "Handler",
    "Op",
    "caller_of",
    "endpoint",
    "error_response",
    "header_token",
    "http_error_handler",
    "int_param",
]

#: Where the OpenAPI document is served; error hints point there.
OPENAPI_PATH = "/v1/openapi.json"
#: What a lock token looks like in a path (the ``locktoken`` convertor).
TOKEN_REGEX = "mlt_[A-Za-z0-9_-]+"


class _TokenConvertor(Convertor[str]):
    # Only strings shaped like our tokens are tokens, so DELETE .../a/lock/lock is the node 'a/lock'.
    regex = TOKEN_REGEX

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("locktoken", _TokenConvertor())


def error_response(err: LockError, headers: dict[str, str] | None = None) -> Response:
    """The one error body, with the status from the error table.

    ASCII-escaped JSON: a message may quote what the client sent, lone surrogates included.
    """
    body = json.dumps({"error": err.to_dict(REST_WORDS)})
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
    #: Takes locks, and may wait in line for them: a client that leaves before its answer cancels the call,
    #: which leaves the line or gives back what it was granted (lost to a client that has gone, waited or not).
    waits: bool = False
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


def endpoint(op: Op, local: Identity) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of ``op``: checks and parses the request, runs the handler, renders the answer.

    A request without a verified key acts as ``local``.
    """

    async def serve(request: Request) -> Response:
        try:
            call = await _call_of(op, request, local)
            if op.waits:
                result = await _or_disconnect(request, lambda: op.handler(call))
                if result is None:
                    return Response(status_code=499)  # nobody is listening any more
            else:
                result = await op.handler(call)
        except LockError as e:
            return error_response(e)
        except ClientDisconnect:
            return Response(status_code=499)  # the client left while sending its body
        except BaseExceptionGroup as group:  # what a task group of the engine wrapped
            refusal = refusal_in(group)
            if refusal is None:
                raise
            return error_response(refusal)
        if isinstance(result, Response):
            return result
        return Response(result.model_dump_json(), status_code=op.status, media_type="application/json")

    serve.__name__ = op.name
    return serve


async def _call_of(op: Op, request: Request, local: Identity) -> Call:
    """The checked request as a :class:`Call`: a valid path, a caller allowed the op, a parsed body."""
    _check_raw_path(request)
    caller = caller_of(request, local)
    if op.admin:
        require_admin(caller, op.name.replace("_", " "))
    body = None
    if op.body is not None:
        body = parse_body(op.body, await _json_body(request), op.name)
    return Call(request, caller, dict(request.path_params), body)


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
    """Run ``call``; if the client goes away first, cancel it and return None.

    The engine then takes the cancelled call out of the line, or gives back what it was granted.
    """
    scope = anyio.CancelScope()
    gone = _Gone(request, scope)
    try:
        with scope:
            return await call()
    finally:
        gone.close()
    return None


class _Gone:
    """Cancels ``scope`` once the client has gone (its next ``receive`` says ``http.disconnect``).

    A bare asyncio task on ``receive`` (uvicorn serves on asyncio): a task group around every lock call
    cost ~45 µs, this ~8 µs.
    """

    def __init__(self, request: Request, scope: anyio.CancelScope) -> None:
        self._receive = request.receive
        self._scope = scope
        self._closed = False
        self._listening = self._listen()

    def _listen(self) -> asyncio.Future[Message]:
        listening = asyncio.ensure_future(self._receive())
        listening.add_done_callback(self._heard)
        return listening

    def _heard(self, listening: asyncio.Future[Message]) -> None:
        if self._closed or listening.cancelled() or listening.exception() is not None:
            return
        if listening.result()["type"] == "http.disconnect":
            self._scope.cancel()
        else:  # not the end (a stray message after the body): listen on
            self._listening = self._listen()

    def close(self) -> None:
        """Stop listening (the call is over)."""
        self._closed = True
        self._listening.cancel()


def int_param(value: str | None, name: str, default: int) -> int:
    """``value`` (a query or path parameter) as an integer, ``default`` if absent."""
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer.", details={"field": name}) from None


def header_token(request: Request) -> str | None:
    """The ``Lock-Token`` header's token: RFC 4918 writes it as ``<token>``; bare is accepted too."""
    header = request.headers.get("lock-token")
    return header.strip().removeprefix("<").removesuffix(">") if header is not None else None
