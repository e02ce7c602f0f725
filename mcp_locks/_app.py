"""The HTTP application: MCP at /mcp, the REST API under /v1 and a health check, behind one guard."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ._auth import Guard, KeyVerifier, bootstrap_admin_key, is_loopback
from ._clock import Clock
from ._keys import LOCAL, NOBODY
from ._mcp import build_mcp
from ._rest import OPENAPI_PATH, build_rest, http_error_handler
from ._service import LockService, ServiceLimits
from ._settings import Settings
from ._sqlite import SqliteStore
from ._store import MemoryStore, Store
from ._table import Limits

__all__ = ["__version__", "build_app", "build_service", "build_store"]

log = logging.getLogger("mcp_locks")

try:
    __version__ = version("mcp-locks")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def build_store(settings: Settings) -> Store:
    """The store the settings ask for."""
    if settings.store == "memory":
        return MemoryStore()
    return SqliteStore(settings.db_path, sync=settings.sync)


def build_service(settings: Settings, store: Store | None = None, clock: Clock | None = None) -> LockService:
    """A LockService configured from settings (not yet started)."""
    limits = ServiceLimits(
        max_timeout=settings.max_timeout,
        max_wait=settings.max_wait,
        idle_timeout=settings.idle_timeout,
        table=Limits(max_locks=settings.max_locks, max_waiters=settings.max_waiters, retention=settings.retention),
    )
    return LockService(store or build_store(settings), clock=clock, limits=limits)


def build_app(
    settings: Settings, service: LockService | None = None, *, mcp: MCPServer[Any] | None = None
) -> Starlette:
    """The Starlette app: /mcp (streamable HTTP, SSE mode, both protocol eras), /v1 (REST) and /healthz.

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
    # With keys checked, a request that somehow reached a tool without one may do nothing at all.
    fallback = LOCAL if verifier is None else NOBODY
    server = mcp or build_mcp(svc, version=__version__, local=fallback)
    # SSE mode (json_response=False) so long waits can stream and be cancelled; stateful for legacy sessions.
    # The guard checks Host and Origin for every route (with our error body and allowed origins), so the
    # SDK's own check is off rather than a second, differently configured one.
    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp",
        host=settings.host,
        max_request_body_size=settings.max_body,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with svc, server.session_manager.run():
            if verifier is not None:
                env_key = settings.admin_key.get_secret_value() if settings.admin_key else None
                path = await bootstrap_admin_key(
                    svc.store, settings.data_dir, env_key, svc.clock.now(), persistent=settings.store == "sqlite"
                )
                if path is not None:
                    log.warning("created an admin key; it is in %s (mode 0600; keep it secret)", path)
            else:
                log.warning("serving WITHOUT authentication (--insecure-no-auth): any local process can use it")
            yield

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        *build_rest(svc, version=__version__, local=fallback),
        *mcp_app.routes,  # /mcp itself, so our 404/405 answers cover every other path
    ]
    guard = Middleware(
        Guard,
        verifier=verifier,
        loopback_only=is_loopback(settings.host),
        max_body=settings.max_body,
        rate_limit=settings.rate_limit,
        open_paths=("/healthz", OPENAPI_PATH),
        allowed_origins=tuple(settings.allowed_origins),
    )
    app = Starlette(
        routes=routes,
        middleware=[guard],
        lifespan=lifespan,
        exception_handlers={404: http_error_handler, 405: http_error_handler},
    )
    app.state.service = svc
    app.state.mcp = server
    return app
