"""Who is calling: one key verifier for MCP and REST, and the HTTP guard in front of every route.

The guard answers before any route runs, with the same error body as the rest
of the API (``{"error": {"code", "message", "hint", "details"}}``):

* Host / Origin (when bound to loopback): a page on another site that points a
  DNS name at 127.0.0.1 cannot reach the server (421 BAD_HOST, 403 FORBIDDEN);
* body size (413 PAYLOAD_TOO_LARGE), checked on the declared length and on the bytes read;
* ``Authorization: Bearer KEY`` on everything but the open paths (401 UNAUTHENTICATED; on the MCP
  endpoints every refusal's body is a JSON-RPC error carrying the same error body in ``data``, see
  :func:`jsonrpc_refusal`);
* an optional per-key rate limit (429 RATE_LIMITED with ``Retry-After``);
* the well-known OAuth discovery paths answer 404 NOT_FOUND without a key: this server takes API keys, so
  a host given a wrong key is told so instead of being sent into an OAuth flow;
* a :class:`LockError` a route lets escape (a session cap) is answered as itself; any other exception
  becomes 500 INTERNAL: no traceback reaches a client;
* every answer carries ``X-Content-Type-Options: nosniff`` (no browser guesses a JSON or file body into HTML).

It puts the verified key in ``scope["user"]`` as the SDK's ``AuthenticatedUser``
and in the SDK's auth context, so MCP tools read it with ``get_access_token()``
and MCP sessions stay bound to the key that opened them.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Protocol
from urllib.parse import urlsplit

import anyio
import limits
import limits.storage
import limits.strategies
from mcp.server.auth.middleware.auth_context import auth_context_var, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_locks.core.errors import (
    BadHost,
    Forbidden,
    Internal,
    LockError,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
    refusal_in,
)
from mcp_locks.core.keys import LOCAL, Identity, KeyRecord, key_digest, parse_key_id, verify_key
from mcp_locks.stores.base import Store

__all__ = [
    "NOSNIFF",
    "Access",
    "Guard",
    "KeyVerifier",
    "current_caller",
    "error_response_parts",
    "identity_of",
    "is_loopback",
    "jsonrpc_refusal",
    "rpc_code",
    "until_access_lost",
]

log = logging.getLogger("mcp_locks.auth")

_LOOPBACK_NAMES = ("localhost", "localhost.")

#: The MCP endpoints (streamable HTTP, and the legacy HTTP+SSE pair): their refusals are JSON-RPC errors.
MCP_PATHS = ("/mcp", "/sse", "/messages")
#: The JSON-RPC error code of a refused key, in the implementation-defined server range. Not -32001: the
#: SDKs use it for a request that timed out on the client side, and a client would retry a refusal as one.
UNAUTHENTICATED_RPC_CODE = -32010
#: The JSON-RPC error code of every other refusal the guard answers on an MCP endpoint (rate, size, Host,
#: Origin, a store that cannot check keys): the stable code is in the message and in ``data``.
REFUSED_RPC_CODE = -32011
#: Sent with every answer: browsers must take a body for the type it is labelled with, never sniff it into HTML.
NOSNIFF = (b"x-content-type-options", b"nosniff")
#: OAuth / OpenID discovery lives under here (RFC 8414, RFC 9728, OpenID Connect Discovery): none is served.
WELL_KNOWN = "/.well-known/"


@functools.lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is a loopback address."""
    h = host.strip("[]").lower()
    if h in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


class KeyVerifier:
    """The SDK's ``TokenVerifier`` over mcp-locks API keys; MCP and REST share this one instance.

    A key proven once is remembered (by its digest) until the store's key version
    changes: any key or workspace change, by this process or another one on the
    same store (``mcp-locks keys revoke``), empties the memory before the next
    check. So a revoked key stops working on the very next request, and a known
    key costs one version read instead of a record lookup and a digest compare.
    """

    #: Most remembered keys; the memory is emptied when full (only proven keys go in).
    MAX_REMEMBERED = 10_000

    def __init__(self, store: Store) -> None:
        self.store = store
        self._version: object = None
        self._proven: dict[bytes, AccessToken] = {}

    async def verify_token(self, token: str) -> AccessToken | None:
        """The key's identity in the SDK's form: role as the scope, agent as the subject, workspaces as a claim."""
        version = await self.store.keys_version()
        if version != self._version:
            self._proven.clear()
            self._version = version
        digest = key_digest(token)
        known = self._proven.get(digest)
        if known is not None:
            return known
        key_id = parse_key_id(token)
        record: KeyRecord | None = await self.store.get_key(key_id) if key_id is not None else None
        ident = verify_key(token, record)
        if ident is None:
            return None
        access = AccessToken(
            token=ident.key_id,  # the public id: the secret never travels further than this check
            client_id=ident.key_id,
            scopes=[ident.role],
            subject=ident.agent,
            claims={"workspaces": list(ident.workspaces)},
        )
        if self._version == version:  # a store that awaits may have seen a change meanwhile: then forget it
            if len(self._proven) >= self.MAX_REMEMBERED:
                self._proven.clear()
            self._proven[digest] = access
        return access


def identity_of(token: AccessToken) -> Identity:
    """The :class:`Identity` a verified access token carries."""
    claims = token.claims or {}
    workspaces = tuple(claims.get("workspaces", ()))
    if "admin" in token.scopes:
        return Identity(token.client_id, token.subject or "", "admin", workspaces)
    return Identity(token.client_id, token.subject or "", "agent", workspaces)


def current_caller(default: Identity = LOCAL) -> Identity:
    """Who the current MCP request speaks for: its verified key, else ``default`` (in-process transports)."""
    token = get_access_token()
    return identity_of(token) if token is not None else default


def error_response_parts(
    err: LockError, extra_headers: Iterable[tuple[str, str]] = ()
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, JSON body and headers of the one error body."""
    body = json.dumps({"error": err.to_dict()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), NOSNIFF]
    headers += [(k.encode(), v.encode()) for k, v in extra_headers]
    return err.http_status, body, headers


def rpc_code(err: LockError) -> int:
    """The JSON-RPC error code of a refusal on an MCP endpoint (the stable code is in the message and data)."""
    return UNAUTHENTICATED_RPC_CODE if isinstance(err, Unauthenticated) else REFUSED_RPC_CODE


def jsonrpc_refusal(err: LockError) -> bytes:
    """A refusal body MCP clients can read: a JSON-RPC error whose ``data`` holds the one error body.

    The SDKs read a non-2xx answer to a request only when its body is a JSON-RPC error (the
    Python SDK otherwise says "Server returned an error response"); the id is unknown here,
    so it is null, which the clients match to the request the answer came on.
    """
    error = {"code": rpc_code(err), "message": err.text(), "data": {"error": err.to_dict()}}
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()


def _is_mcp_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MCP_PATHS)


async def _send_error(send: Send, scope: Scope, err: LockError, extra_headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer ``err`` with the one error body; on an MCP endpoint, inside a JSON-RPC error MCP clients read."""
    status, body, headers = error_response_parts(err, extra_headers)
    if _is_mcp_path(scope["path"]) and WELL_KNOWN not in scope["path"]:  # a discovery document is no RPC
        body = jsonrpc_refusal(err)
        headers = [(k, str(len(body)).encode() if k == b"content-length" else v) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def _not_oauth(path: str) -> NotFound | None:
    """404 for the OAuth / OpenID discovery documents, asked before any key is checked.

    A host that finds no discovery document (rather than a 401) reports a refused key as a
    refused key instead of starting an OAuth flow this server cannot finish.
    """
    # OpenID Connect discovery also appends to the issuer's path (/mcp/.well-known/openid-configuration).
    if not (path.startswith(WELL_KNOWN) or (_is_mcp_path(path) and WELL_KNOWN in path)):
        return None
    return NotFound(
        f"there is no '{path[:100]}' here: this server does not use OAuth.",
        hint="This server uses API keys: pass 'Authorization: Bearer mlk_...' (ask its admin for a key).",
    )


class Guard:
    """ASGI middleware in front of the whole app (see the module docstring for what it checks, in order)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: KeyVerifier | None,
        loopback_only: bool,
        max_body: int,
        rate_limit: str | None = None,
        open_paths: tuple[str, ...] = ("/healthz",),
        allowed_origins: tuple[str, ...] = (),
        body_limit: Callable[[str, str], int | None] | None = None,
    ) -> None:
        self.app = app
        self.backend = BearerAuthBackend(verifier) if verifier is not None else None
        self.loopback_only = loopback_only
        self.max_body = max_body
        #: (method, path) -> a larger limit for routes that stream file content (they bound it themselves).
        self.body_limit = body_limit
        self.open_paths = open_paths
        self.allowed_origins = allowed_origins
        self.rate = limits.parse(rate_limit) if rate_limit else None
        self.limiter = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Host, Origin, the key and the rate before the request reaches the app."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket routes: refuse rather than pass anything unchecked
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = Headers(scope=scope)
        limit = self.max_body
        if self.body_limit is not None:
            limit = self.body_limit(scope["method"], scope["path"]) or limit
        refusal = self._check_origin(headers) or self._check_length(headers, limit) or _not_oauth(scope["path"])
        if refusal is not None:
            await _send_error(send, scope, refusal)
            return
        user: AuthenticatedUser | None = None
        if self.backend is not None and scope["path"] not in self.open_paths:
            try:
                found = await self.backend.authenticate(HTTPConnection(scope))
            except Exception as e:  # the store could not be read: say so, never guess either way
                if isinstance(e, LockError):  # the store said it is unreachable: expected while it restarts
                    log.warning("could not check a key: %s", e.text())
                else:
                    log.exception("checking a key failed")
                await _send_error(
                    send, scope, Unavailable("the server could not check the API key.", hint="Retry in a few seconds.")
                )
                return
            if found is None:
                await _send_error(
                    send,
                    scope,
                    Unauthenticated(
                        "a valid API key is required: send 'Authorization: Bearer <key>'."
                        if "authorization" in headers
                        else "this server needs an API key: send 'Authorization: Bearer <key>'.",
                        hint="Ask the server's admin for a key (mcp-locks keys create); a revoked key no longer works.",
                    ),
                    [("www-authenticate", 'Bearer realm="mcp-locks"')],
                )
                return
            creds, user = found
            scope["auth"] = creds if isinstance(creds, AuthCredentials) else AuthCredentials(user.scopes)
            scope["user"] = user
            limited = self._check_rate(user.access_token.client_id)
            if limited is not None:
                await _send_error(send, scope, limited, [("retry-after", str(limited.details["retry_after"]))])
                return
        await self._forward(scope, receive, send, user, limit)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, user: AuthenticatedUser | None, limit: int
    ) -> None:
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                given = list(message.get("headers", ()))
                if not any(k.lower() == NOSNIFF[0] for k, _ in given):
                    message["headers"] = [*given, NOSNIFF]
            await send(message)

        ctx = auth_context_var.set(user) if user is not None else None
        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, scope, self._too_large(limit))
        except LockError as e:  # a refusal raised below the routes (a per-key session cap): say it as itself
            if not started:
                await _send_error(send, scope, e)
        except Exception as e:
            refusal = refusal_in(e)  # a refusal a task group wrapped: said as itself (logged, to find the group)
            log.log(logging.WARNING if refusal else logging.ERROR, "unhandled error on %s %s",
                    scope.get("method"), scope.get("path"), exc_info=True)  # fmt: skip
            if not started:
                await _send_error(
                    send,
                    scope,
                    refusal
                    or Internal("the server failed to handle this request.", hint="Retry; if it persists, report it."),
                )
        finally:
            if ctx is not None:
                auth_context_var.reset(ctx)

    def _too_large(self, limit: int) -> TooLarge:
        if limit != self.max_body:
            return TooLarge(
                f"the file is larger than {limit} bytes, the most this server accepts.",
                hint="Split the data into several files, or ask the admin to raise max_file_size.",
                details={"limit": limit},
            )
        return TooLarge(
            f"the request body is larger than {limit} bytes.",
            hint="Send less per request (split a {op:lock_files} batch; send big files with PUT or an upload); the"
            " limit is the server's max_body setting.",
            details={"limit": limit},
        )

    def _check_length(self, headers: Headers, limit: int) -> LockError | None:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return self._too_large(limit)
        return None

    def _check_origin(self, headers: Headers) -> LockError | None:
        if not self.loopback_only:
            return None
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not is_loopback(name):
            return BadHost(
                f"this server answers only to loopback host names, not '{host[:100]}'.",
                hint="Connect to http://127.0.0.1:<port> (or localhost); bind to another --host to serve other names.",
            )
        origin = headers.get("origin")
        if origin is not None and origin not in self.allowed_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or not is_loopback(parts.hostname):
                return Forbidden(
                    f"requests from the web origin '{origin[:100]}' are refused.",
                    hint="Browser pages on other sites may not call this server; add the origin to"
                    " MCP_LOCKS_ALLOWED_ORIGINS if it is yours.",
                )
        return None

    def _check_rate(self, key_id: str) -> RateLimited | None:
        if self.rate is None or self.limiter.hit(self.rate, key_id):
            return None
        reset = self.limiter.get_window_stats(self.rate, key_id).reset_time
        retry = max(1, math.ceil(reset - time.time()))
        return RateLimited(
            f"this key sent more than {self.rate} requests.",
            hint=f"Retry after {retry} s; wait in line with wait= instead of polling.",
            details={"retry_after": retry},
        )


class Access(Protocol):
    """What a long-lived connection asks about its key (:class:`~mcp_locks.engine.lock_service.LockService`)."""

    store: Store

    @property
    def access_changed(self) -> anyio.Event:
        """Set (and replaced) when a key or workspace changes: open connections look at their key again."""
        ...

    async def still_reaches(self, caller: Identity, workspace_id: str) -> bool:
        """Whether ``caller``'s key is still live and still reaches ``workspace_id``."""
        ...


async def until_access_lost(
    access: Access, caller: Identity, workspaces: Callable[[], Iterable[str]], recheck: float
) -> str:
    """What ``caller`` lost, once it loses it: ``""`` its key, else a workspace of ``workspaces()``.

    A key is lost when it is revoked; a workspace when it is taken from the key, or deleted.
    It looks at once, then whenever access changes (a key revoked or changed, a workspace deleted on this
    server, or a key change made elsewhere that the app's key watch saw) and every ``recheck`` seconds.
    A look the store cannot answer decides nothing: the next one tries again (meanwhile nothing commits,
    so nothing is sent either).
    """
    while True:
        seen = access.access_changed  # taken before looking: a change during the look wakes the next wait
        try:
            lost = await _lost(access, caller, list(workspaces()))
        except Exception:
            log.warning("could not check whether key %s is still live", caller.key_id, exc_info=True)
            lost = None
        if lost is not None:
            return lost
        with anyio.move_on_after(recheck):
            await seen.wait()


async def _lost(access: Access, caller: Identity, workspaces: list[str]) -> str | None:
    if caller.authenticated:
        record = await access.store.get_key(caller.key_id)
        if record is None or record.revoked_at is not None:
            return ""
    for ws in workspaces:
        if not await access.still_reaches(caller, ws):
            return ws
    return None
