"""The HTTP application: MCP at /mcp, the REST API under /v1 and a health check, behind one guard."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.mcpserver import MCPServer
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import Forbidden, LimitExceeded
from mcp_locks.core.keys import LOCAL, NOBODY
from mcp_locks.core.table import Limits
from mcp_locks.core.version import package_version
from mcp_locks.engine.admin import bootstrap_admin_key
from mcp_locks.engine.file_service import FileLimits
from mcp_locks.engine.lock_service import LockService, ServiceLimits
from mcp_locks.faces.auth import Guard, KeyVerifier, is_loopback
from mcp_locks.faces.mcp.resources import limit_listens
from mcp_locks.faces.mcp.sdk import check_new_sessions, end_http_session, http_sessions, lowlevel
from mcp_locks.faces.mcp.tools import build_mcp
from mcp_locks.faces.rest.operation import OPENAPI_PATH, caller_of, error_response, http_error_handler
from mcp_locks.faces.rest.routes import build_rest
from mcp_locks.observe.logging import RequestId
from mcp_locks.observe.observability import ObserveLimits
from mcp_locks.observe.webhooks import WebhookLimits
from mcp_locks.settings import Settings
from mcp_locks.stores.base import MemoryStore, Store
from mcp_locks.stores.postgres import PostgresStore
from mcp_locks.stores.sqlite import SqliteStore

__all__ = ["STARTUP_ERROR", "build_app", "build_service", "build_store"]

log = logging.getLogger("mcp_locks")


def build_store(settings: Settings) -> Store:
    """The store the settings ask for."""
    if settings.store == "memory":
        return MemoryStore()
    if settings.postgres:
        return PostgresStore(settings.store, schema=settings.pg_schema, files=settings.pg_files)
    return SqliteStore(settings.db_path, sync=settings.sync)


def build_service(settings: Settings, store: Store | None = None, clock: Clock | None = None) -> LockService:
    """A LockService configured from settings (not yet started)."""
    limits = ServiceLimits(
        max_timeout=settings.max_timeout,
        max_wait=settings.max_wait,
        idle_timeout=settings.idle_timeout,
        table=Limits(max_locks=settings.max_locks, max_waiters=settings.max_waiters, retention=settings.retention),
        observe=ObserveLimits(
            audit=settings.audit,
            audit_days=settings.audit_days,
            webhooks=WebhookLimits(
                allow_private=settings.webhooks_allow_private,
                concurrency=settings.webhook_concurrency,
                worker=settings.store == "sqlite",  # deliveries in a process of their own, off the lock path
            ),
        ),
    )
    files = FileLimits(
        max_file_size=settings.max_file_size,
        chunk_size=settings.chunk_size,
        upload_ttl=settings.upload_ttl,
        quota_bytes=settings.quota_bytes,
        quota_files=settings.quota_files,
    )
    files_dir = settings.files_dir if settings.store != "memory" else None  # memory: a temporary folder
    return LockService(
        store or build_store(settings), clock=clock, limits=limits, files_dir=files_dir, file_limits=files
    )


#: Seconds between looks at the store's key version: a key revoked by another process (``mcp-locks keys
#: revoke``, another server of a cluster) ends its connections here within a second too. A look is one
#: cheap read (SQLite's data_version, one row on PostgreSQL).
KEYS_POLL = 0.5
#: Seconds a revoked key's sessions stay open after the revocation was seen: a lock call that was waiting
#: is answered UNAUTHENTICATED by the revocation, and that answer must reach the client before its session
#: (and the stream the answer travels on) ends. Well inside the one second in which revocation ends them.
ANSWER_GRACE = 0.25
#: Where the lifespan leaves why the server must not serve (``app.state``): ``mcp-locks serve`` stops at once
#: and prints it as one line (a lifespan that raises makes uvicorn print a traceback).
STARTUP_ERROR = "startup_error"
#: Who broke a lock whose key another process revoked, as its holder is told (the store keeps no revoker).
REVOKED_ELSEWHERE = "an admin (the key was revoked by another process)"


def _key_of(scope: Scope) -> str | None:
    """The id of the key a request carries (None: keys are off)."""
    user = scope.get("user")
    return user.access_token.client_id if isinstance(user, AuthenticatedUser) else None


class _Sessions:
    """Each key's MCP sessions (streamable HTTP and legacy SSE): at most ``cap`` per key, ended on revocation.

    The SDK's own session limit is global, so one key could crowd out every other agent. Admin keys
    have the same cap; without keys (``--insecure-no-auth``) there is none.
    """

    def __init__(self, service: LockService, manager: StreamableHTTPSessionManager, cap: int | None) -> None:
        self.service = service
        self.manager = manager
        self.cap = cap
        #: key id -> the legacy SSE sessions it holds (each a scope that ends it)
        self.sse: dict[str, set[anyio.CancelScope]] = {}
        check_new_sessions(manager, self.admit)

    def count(self, key_id: str) -> int:
        """The sessions ``key_id`` holds now."""
        streamable = sum(1 for _, owner in http_sessions(self.manager) if owner == key_id)
        return streamable + len(self.sse.get(key_id, ()))

    def admit(self, key_id: str | None) -> None:
        """LIMIT_EXCEEDED if ``key_id`` may open no more sessions (called right before one is registered)."""
        if key_id is None or self.cap is None or self.count(key_id) < self.cap:
            return
        raise LimitExceeded(
            f"this key already holds {self.cap} MCP sessions, the most one key may hold at once.",
            hint="Close the sessions you no longer use (an MCP client ends its session when it disconnects;"
            " a session unused for 30 minutes ends by itself), or ask the admin to raise max_sessions_per_key.",
            details={"limit": self.cap},
        )

    @contextlib.contextmanager
    def sse_session(self, key_id: str | None) -> Iterator[anyio.CancelScope]:
        """A legacy SSE session of ``key_id``, counted from here to the block's end; cancel the scope to end it."""
        self.admit(key_id)
        scope = anyio.CancelScope()
        if key_id is None:
            yield scope
            return
        held = self.sse.setdefault(key_id, set())
        held.add(scope)
        try:
            yield scope
        finally:
            held.discard(scope)
            if not held and self.sse.get(key_id) is held:
                del self.sse[key_id]

    async def end_revoked(self) -> None:
        """End every session whose key was revoked (or is gone), once the answers already decided are sent."""
        keys = {owner for _, owner in http_sessions(self.manager) if owner} | set(self.sse)
        ending: list[str] = []
        for key_id in keys:
            record = await self.service.store.get_key(key_id)
            if record is None or record.revoked_at is not None:
                ending.append(key_id)
        if ending:
            await anyio.sleep(ANSWER_GRACE)
        for key_id in ending:
            log.info("ending the MCP sessions of revoked key %s", key_id)
            for sid, owner in http_sessions(self.manager):
                if owner == key_id:
                    await end_http_session(self.manager, sid)
            for scope in list(self.sse.get(key_id, ())):
                scope.cancel()

    async def end_revoked_elsewhere(self) -> None:
        """End, in the engine, what keys revoked by another process still have here (waiters, locks).

        ``mcp-locks keys revoke`` on the data dir, or another server of a cluster, revokes in the store
        only. A key revoked longer ago than the longest lease can hold no lock any more, so it is skipped
        (a server starting after a day of revocations does not sweep every workspace for each).
        """
        oldest = self.service.clock.now() - self.service.limits.max_timeout
        for rec in await self.service.store.list_keys():
            if rec.revoked_at is not None and rec.revoked_at >= oldest:
                await self.service.end_key(rec.key_id, REVOKED_ELSEWHERE)  # does nothing for a key ended here

    async def watch(self) -> None:
        """Until cancelled: end revoked keys' sessions once access changes here or the store's key version moves.

        A moved version means a key changed in another process: every open stream is told to look too.
        """
        version = await self._version()
        failing = False
        with contextlib.suppress(Exception):  # revoked while this server was down: ended now, else at the next change
            await self.end_revoked_elsewhere()
        while True:
            seen = self.service.access_changed
            with anyio.move_on_after(KEYS_POLL):
                await seen.wait()
            try:
                if not seen.is_set():
                    now = await self.service.store.keys_version()
                    if now == version:
                        continue
                    version = now
                    try:
                        await self.end_revoked_elsewhere()
                    finally:
                        # Streams look only now: a revoked key's stream is sent the breaks of its locks, then ends.
                        self.service.registry.changed_access()
                await self.end_revoked()
                failing = False
            except Exception:  # the store failed: nothing can be decided now, the next look tries again
                if not failing:
                    log.warning("could not look for revoked keys", exc_info=True)
                failing = True

    async def _version(self) -> object:
        try:
            return await self.service.store.keys_version()
        except Exception:
            return None  # unknown: the first look that succeeds sees a change, and looks at every key


class _LegacySse:
    """``GET /sse`` of the 2024-11-05 HTTP+SSE transport; its client posts messages to ``/messages/``.

    The same guard (keys, host, size) stands in front of both; the SDK binds each
    session to the key that opened it, so another key cannot post into it. Each
    session counts against its key's cap, and ends when its key is revoked.
    """

    def __init__(self, server: MCPServer[Any], transport: SseServerTransport, sessions: _Sessions) -> None:
        self.server = server
        self.transport = transport
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The SDK's own sse_app() drives its low-level server the same way; its no-auth route
        # would answer a second time once the stream ends, so the endpoint is ours.
        low = lowlevel(self.server)
        with self.sessions.sse_session(_key_of(scope)) as session:
            async with self.transport.connect_sse(scope, receive, send) as (read, write):
                with session:
                    await low.run(read, write, low.create_initialization_options())
                # Ended here (its key revoked): closing our side ends the event stream as a stream's end,
                # not a broken connection. After a client disconnect this changes nothing.
                await write.aclose()


@functools.cache
def _dashboard_page() -> str:
    return (resources.files("mcp_locks") / "_dashboard.html").read_text(encoding="utf-8")


#: The page runs only its own inline script and talks only to this server; no framing (clickjacking).
_DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
    " connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _file_body_limit(settings: Settings) -> Callable[[str, str], int | None]:
    """Routes that stream file content take bodies up to max_file_size (they count and stop it themselves)."""

    def limit(method: str, path: str) -> int | None:
        if method == "PUT" and path.startswith("/v1/workspaces/") and ("/files/" in path or "/uploads/" in path):
            return max(settings.max_file_size, settings.max_body)
        return None

    return limit


def build_app(
    settings: Settings, service: LockService | None = None, *, mcp: MCPServer[Any] | None = None
) -> Starlette:
    """The Starlette app: MCP at /mcp (streamable HTTP) and /sse (legacy HTTP+SSE), REST under /v1, /healthz.

    /mcp runs in SSE mode for both protocol eras; /sse posts its messages to /messages/.
    Every request but /healthz and the OpenAPI document needs an API key unless
    ``settings.insecure_no_auth`` (allowed only on a loopback address).
    """
    if settings.insecure_no_auth and not is_loopback(settings.host):
        raise ValueError(
            f"--insecure-no-auth is refused on {settings.host}: anyone who can reach it could take or break"
            " every lock. Bind to 127.0.0.1, or use API keys."
        )
    svc = service or build_service(settings)
    verifier = None if settings.insecure_no_auth else KeyVerifier(svc.store)
    no_sdk_host_check = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    legacy = SseServerTransport(
        "/messages/", security_settings=no_sdk_host_check, max_request_body_size=settings.max_body
    )
    # With keys checked, a request that somehow reached a tool without one may do nothing at all.
    fallback = LOCAL if verifier is None else NOBODY
    server = mcp or build_mcp(
        svc, version=package_version(), local=fallback, compat_storage=settings.compat_storage_tool
    )
    # SSE mode (json_response=False) so long waits can stream and be cancelled; stateful for legacy sessions.
    # The guard checks Host and Origin for every route (with our error body and allowed origins), so the
    # SDK's own check is off rather than a second, differently configured one.
    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp",
        host=settings.host,
        max_request_body_size=settings.max_body,
        transport_security=no_sdk_host_check,
    )
    keyed = verifier is not None
    # Per-key caps only where there are keys: without them every caller is the one local user.
    sessions = _Sessions(svc, server.session_manager, settings.max_sessions_per_key if keyed else None)
    limit_listens(server, settings.max_listens_per_key if keyed else None)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": package_version()})

    async def metrics(request: Request) -> Response:
        if not settings.metrics_public and caller_of(request, fallback).role != "admin":
            denied = Forbidden(
                "/metrics needs an admin key.",
                hint="Scrape it with an admin key (bearer_token in Prometheus), or serve with --metrics-public.",
            )
            return error_response(denied)
        return Response(svc.observe.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(_dashboard_page(), headers=_DASHBOARD_HEADERS)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        path = None
        persistent = not isinstance(svc.store, MemoryStore)
        async with svc, server.session_manager.run():
            if verifier is not None:
                env_key = settings.admin_key.get_secret_value() if settings.admin_key else None
                try:
                    path = await bootstrap_admin_key(
                        svc.store, settings.data_dir, env_key, svc.clock.now(), persistent=persistent
                    )
                except ValueError as e:  # MCP_LOCKS_ADMIN_KEY names a stored key without its secret, or the like
                    # Said once, as a line: the server stops at once (see STARTUP_ERROR), no traceback.
                    setattr(app.state, STARTUP_ERROR, str(e))
                    yield
                    return
                if path is not None:
                    log.warning("created an admin key; it is in %s (mode 0600; keep it secret)", path)
                svc.background(sessions.watch, "the watch for revoked keys")  # ends with the service
            else:
                log.warning("serving WITHOUT authentication (--insecure-no-auth): any local process can use it")
            try:
                yield
            finally:
                if path is not None and not persistent:  # a memory store's key dies with it: leave no file behind
                    await anyio.Path(path).unlink(missing_ok=True)

    routes: list[BaseRoute] = [
        Route("/", dashboard, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *build_rest(svc, version=package_version(), local=fallback),
        *mcp_app.routes,  # /mcp itself, so our 404/405 answers cover every other path
        Route("/sse", _LegacySse(server, legacy, sessions), methods=["GET"]),
        Mount("/messages", app=legacy.handle_post_message),
    ]
    guard = Middleware(
        Guard,
        verifier=verifier,
        loopback_only=is_loopback(settings.host),
        max_body=settings.max_body,
        rate_limit=settings.rate_limit,
        # The dashboard page holds no data (it asks for a key); /metrics checks its own access.
        open_paths=("/", "/healthz", OPENAPI_PATH, *(("/metrics",) if settings.metrics_public else ())),
        allowed_origins=tuple(settings.allowed_origins),
        body_limit=_file_body_limit(settings),
    )
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestId), guard],
        lifespan=lifespan,
        exception_handlers={404: http_error_handler, 405: http_error_handler},
    )
    app.state.service = svc
    app.state.mcp = server
    app.state.sessions = sessions
    return app
