"""The HTTP application: streamable HTTP MCP at /mcp and a health check, around one LockService."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from ._clock import Clock
from ._mcp import build_mcp
from ._service import LockService, ServiceLimits
from ._settings import Settings
from ._sqlite import SqliteStore
from ._store import MemoryStore, Store
from ._table import Limits

__all__ = ["__version__", "build_app", "build_service", "build_store"]

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
    """The Starlette app serving /mcp (streamable HTTP, SSE mode, both protocol eras) and /healthz."""
    svc = service or build_service(settings)
    server = mcp or build_mcp(svc, version=__version__)
    # SSE mode (json_response=False) so long waits can stream and be cancelled; stateful for legacy sessions.
    mcp_app = server.streamable_http_app(streamable_http_path="/mcp", host=settings.host)

    async def healthz(request: Request) -> JSONResponse:
        workspaces = await svc.list_workspaces()
        return JSONResponse(
            {"status": "ok", "version": __version__, "workspaces": len(workspaces), "active_actors": svc.active_actors}
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with svc, server.session_manager.run():
            yield

    app = Starlette(routes=[Route("/healthz", healthz), Mount("/", app=mcp_app)], lifespan=lifespan)
    app.state.service = svc
    app.state.mcp = server
    return app
