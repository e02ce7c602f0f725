"""Shared fixtures: stores, clocks and services, parametrised rather than copied."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore, Store
from mcp_locks.stores.postgres import PostgresStore
from mcp_locks.stores.sqlite import SqliteStore

from .faces import FACES, Env, Face, McpFace, RestFace
from .pg import PG_URL, pg_schema
from .servers import serve_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        yield SqliteStore(tmp_path / "locks.db")
    else:
        with pg_schema() as schema:
            # The manual clock rules here, as with the other stores (servers use the database's clock).
            yield PostgresStore(PG_URL, schema=schema, db_clock=False)


@pytest.fixture
async def service(store: Store, clock: ManualClock) -> AsyncIterator[LockService]:
    async with LockService(store, clock=clock) as svc:
        yield svc


# ---------------------------------------------------------------------- a keyed server, over every face


#: The stores every face test runs on (see docs/cluster.md on why PostgreSQL is among them).
ENV_STORES = ["memory", "postgresql"]


@pytest.fixture(params=ENV_STORES)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """A keyed server (see :class:`Env`) on each of :data:`ENV_STORES`; PostgreSQL in a fresh schema."""
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            store: Store = MemoryStore()
        else:
            store = PostgresStore(PG_URL, schema=stack.enter_context(pg_schema()), db_clock=False)
        yield await stack.enter_async_context(_keyed_env(store, tmp_path))


@asynccontextmanager
async def _keyed_env(store: Store, tmp_path: Path) -> AsyncIterator[Env]:
    service = LockService(store, clock=ManualClock())
    app = build_app(Settings(store="memory", data_dir=tmp_path), service)
    async with serve_app(app, graceful=True) as url:  # the store is closed before its schema is dropped
        await service.create_workspace("team")
        admin, _ = await service.create_key("root", [], "admin")
        alice, _ = await service.create_key("alice", ["default", "team"])
        bob, _ = await service.create_key("bob", ["default"])
        carol, _ = await service.create_key("carol", ["team"])
        assert isinstance(service.clock, ManualClock)
        yield Env(url, service, service.clock, admin, alice, bob, carol)


@pytest.fixture(params=FACES)
async def face(request: pytest.FixtureRequest, env: Env) -> AsyncIterator[Face]:
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())
        if request.param == "rest":
            doc = (await http.get(f"{env.url}/v1/openapi.json")).json()
            impl: RestFace | McpFace = RestFace(env.url, http, doc)
        else:
            mode = {"mcp-legacy": "legacy", "mcp-sse": "sse"}.get(request.param, "auto")
            impl = McpFace(env.url, mode, stack)
        yield Face(request.param, env, impl, http)
