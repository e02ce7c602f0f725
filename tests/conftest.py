"""Shared fixtures: stores, clocks and services, parametrised rather than copied."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_locks._clock import ManualClock
from mcp_locks._service import LockService
from mcp_locks._sqlite import SqliteStore
from mcp_locks._store import MemoryStore, Store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return SqliteStore(tmp_path / "locks.db")


@pytest.fixture
async def service(store: Store, clock: ManualClock) -> AsyncIterator[LockService]:
    async with LockService(store, clock=clock) as svc:
        yield svc
