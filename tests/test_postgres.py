"""Two servers on one PostgreSQL schema, in one process: the shared store's own rules, fast.

Each ``LockService`` has its own ``PostgresStore`` (its own server id, pool and listener), as two
``mcp-locks serve`` processes would; tests/test_cluster.py runs real processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import psycopg
import pytest

from mcp_locks.core.clock import Clock, ManualClock
from mcp_locks.core.errors import LockError, Unavailable
from mcp_locks.engine.actor import WorkspaceActor
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.postgres import PostgresStore

from .pg import PG_URL, pg_schema

pytestmark = pytest.mark.anyio

STEP = 10  # upper bound on any one wait
LEASE = 60  # longer than any test: no lease ends by itself here


@pytest.fixture
async def pair() -> AsyncIterator[tuple[LockService, LockService]]:
    """Two servers on a fresh schema, on the database's clock."""
    with pg_schema() as schema:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(LockService(PostgresStore(PG_URL, schema=schema), clock=Clock()))
            b = await stack.enter_async_context(LockService(PostgresStore(PG_URL, schema=schema), clock=Clock()))
            yield a, b


async def queued(svc: LockService, node: str, n: int = 1) -> None:
    """Until ``svc`` sees ``n`` waiters on ``node`` (another server's included)."""
    with anyio.fail_after(STEP):
        for _ in range(STEP * 100):
            if len((await svc.status("default", node)).waiters) == n:
                return
            await anyio.sleep(0.01)


async def test_a_release_on_one_server_grants_the_waiter_on_the_other(pair: tuple[LockService, LockService]) -> None:
    a, b = pair
    held = await a.lock("default", "f.txt", timeout=LEASE)
    async with anyio.create_task_group() as tg:
        got: list[Any] = []

        async def wait_on_b() -> None:
            got.append(await b.lock("default", "f.txt", timeout=LEASE, wait=STEP, agent="b"))

        tg.start_soon(wait_on_b)
        await queued(a, "f.txt")
        await a.unlock("default", held.token, "f.txt")
    assert got[0].owner == "b"
    assert got[0].fence > held.fence


async def test_fences_grow_whichever_server_grants(pair: tuple[LockService, LockService]) -> None:
    fences = []
    for i in range(6):
        svc = pair[i % 2]
        g = await svc.lock("default", f"f{i}.txt", timeout=LEASE)
        fences.append(g.fence)
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)


async def test_a_lost_notification_is_made_up_for_by_the_slow_poll(
    pair: tuple[LockService, LockService], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    # No actor hears of the database's notifications: b's waiter can only learn of its grant by polling.
    monkeypatch.setattr(WorkspaceActor, "poke", lambda self: None)
    held = await a.lock("default", "f.txt", timeout=LEASE)
    async with anyio.create_task_group() as tg:
        got: list[Any] = []

        async def wait_on_b() -> None:
            got.append(await b.lock("default", "f.txt", timeout=LEASE, wait=STEP))

        tg.start_soon(wait_on_b)
        await queued(a, "f.txt")
        await a.unlock("default", held.token, "f.txt")
    assert got  # served within POLL_INTERVAL, with no notification
    assert got[0].fence > held.fence


async def test_a_deadlock_spanning_two_servers_is_refused(pair: tuple[LockService, LockService]) -> None:
    a, b = pair
    x1 = await a.lock("default", "1.txt", agent="x", timeout=LEASE)
    y2 = await b.lock("default", "2.txt", agent="y", timeout=LEASE)
    async with anyio.create_task_group() as tg:

        async def x_waits() -> None:
            await a.lock("default", "2.txt", agent="x", wait=STEP, timeout=LEASE)

        tg.start_soon(x_waits)
        await queued(b, "2.txt")
        with pytest.raises(LockError) as err:
            await b.lock("default", "1.txt", agent="y", wait=STEP, timeout=LEASE)
        assert err.value.code == "DEADLOCK"
        await b.unlock("default", y2.token, "2.txt")
    await a.unlock("default", x1.token, "1.txt")


async def test_a_waiter_whose_server_failed_a_step_leaves_the_line(
    pair: tuple[LockService, LockService], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    held = await a.lock("default", "f.txt", timeout=LEASE)
    store = b.store
    assert isinstance(store, PostgresStore)
    write: Callable[..., Awaitable[Any]] = store._write
    failures = [psycopg.OperationalError("the database went away")]

    async def flaky(*args: Any) -> Any:
        if failures:  # b's next commit fails
            raise failures.pop()
        return await write(*args)

    async with anyio.create_task_group() as tg:

        async def wait_on_b() -> None:
            with pytest.raises(LockError) as err:  # it would wait longer than the test's bound
                await b.lock("default", "f.txt", timeout=LEASE, wait=LEASE)
            assert err.value.code == "UNAVAILABLE"

        tg.start_soon(wait_on_b)
        await queued(a, "f.txt")
        monkeypatch.setattr(store, "_write", flaky)
        b.registry.poked("default")  # a catch-up step on b, which fails: its waiter is answered UNAVAILABLE
    # b's waiter row was committed before the failure; it must not keep a later waiter behind it.
    assert not failures
    async with anyio.create_task_group() as tg:
        got: list[Any] = []

        async def wait_on_a() -> None:
            got.append(await a.lock("default", "f.txt", timeout=LEASE, wait=STEP, agent="later"))

        tg.start_soon(wait_on_a)
        await b.lock("default", "other.txt", timeout=LEASE)  # b's next step: it takes its orphan out of line
        await queued(a, "f.txt", 1)
        await a.unlock("default", held.token, "f.txt")
    assert got[0].owner == "later"


async def test_a_workspace_deleted_through_one_server_is_gone_on_the_other(
    pair: tuple[LockService, LockService],
) -> None:
    a, b = pair
    await a.create_workspace("temp")
    g = await b.lock("temp", "f.txt", timeout=LEASE)
    await b.unlock("temp", g.token, "f.txt")
    await a.delete_workspace("temp")
    with pytest.raises(LockError) as err:
        await b.lock("temp", "f.txt", timeout=LEASE)
    assert err.value.code == "NOT_FOUND"


async def test_leases_are_stamped_with_the_databases_clock_not_the_servers() -> None:
    skewed = ManualClock(start=946_684_800.0)  # this server's clock says 2000-01-01
    with pg_schema() as schema:
        async with LockService(PostgresStore(PG_URL, schema=schema), clock=skewed) as svc:
            g = await svc.lock("default", "f.txt", timeout=LEASE)
            with psycopg.connect(PG_URL) as conn:
                row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            assert row is not None
            assert abs(g.acquired_at.timestamp() - row[0]) < STEP
            assert abs((g.expires_at - g.acquired_at).total_seconds() - LEASE) < 1e-3


@pytest.mark.parametrize("failure", ["unavailable", "bug"])
async def test_a_cluster_role_whose_work_fails_is_taken_up_again_and_the_server_keeps_running(
    monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    # The webhook role's work is told UNAVAILABLE while the database restarts; that used to escape the role's
    # task group as an ExceptionGroup, end the server's lifespan and close its pool (every call UNAVAILABLE).
    monkeypatch.setattr("mcp_locks.stores.postgres.LEADER_RETRY", 0.05)  # the retry pause, shortened
    runs = 0
    second = anyio.Event()

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise Unavailable("the lock database cannot be reached.") if failure == "unavailable" else KeyError("x")
        second.set()
        await anyio.sleep_forever()

    with pg_schema() as schema:
        store = PostgresStore(PG_URL, schema=schema, db_clock=False)
        await store.open()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.lead, "webhooks", work)
                with anyio.fail_after(STEP):
                    await second.wait()
                tg.cancel_scope.cancel()
        finally:
            await store.close()
    assert runs == 2
