"""An expiry storm: many leases due at once, each with a waiter (issue 20).

The actor ends them in parts of ``Limits.expire_batch``, committing and answering each
part before the next, so the rest of the server is not held up for the whole storm.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace

import anyio
import pytest

from mcp_locks.core.clock import ManualClock
from mcp_locks.core.records import EndLease, StoreChange
from mcp_locks.engine.lock_service import LockService, ServiceLimits
from mcp_locks.stores.base import Store

from .helpers import STEP, until_event

pytestmark = pytest.mark.anyio

#: Leases in the storm, and how many the actor ends per commit: several parts, each of a few.
LEASES = 60
PART = 5
LEASE = 60


def node(i: int) -> str:
    return f"storm/f{i:02}.txt"


@pytest.fixture
async def stormy(store: Store, clock: ManualClock) -> AsyncIterator[LockService]:
    """A service that ends at most PART leases per commit, with LEASES leases, each ending at its own instant."""
    limits = ServiceLimits(idle_timeout=LEASE * 100)  # no actor goes idle when the clock jumps past the leases
    limits = replace(limits, table=replace(limits.table, expire_batch=PART))
    async with LockService(store, clock=clock, limits=limits) as service:
        for i in range(LEASES):
            await service.lock(None, node(i), timeout=LEASE + i / LEASES, agent="holder")
        yield service


class CommitLog:
    """What happened, in order: ("ended", n) for each commit that ended n leases, and what the callers noted."""

    def __init__(self, store: Store) -> None:
        self.entries: list[tuple[str, int]] = []
        inner = store.commit

        async def commit(workspace_id: str, changes: Sequence[StoreChange]) -> None:
            await inner(workspace_id, changes)
            ended = sum(isinstance(c, EndLease) for c in changes)
            if ended:
                self.entries.append(("ended", ended))

        store.commit = commit  # type: ignore[method-assign]

    def note(self, what: str) -> None:
        self.entries.append((what, 0))

    def ended(self) -> list[int]:
        return [n for what, n in self.entries if what == "ended"]

    def last_commit(self) -> int:
        return max(i for i, (what, _) in enumerate(self.entries) if what == "ended")

    def first(self, what: str) -> int:
        return next(i for i, (w, _) in enumerate(self.entries) if w == what)


Hook = Callable[[], Awaitable[None]]


async def storm(service: LockService, clock: ManualClock, on_grant: dict[int, Hook] | None = None) -> dict[int, str]:
    """Queue a waiter on every node, end every lease at once; returns the node each waiter was granted.

    ``on_grant[i]`` runs in waiter ``i``'s task as soon as its grant is returned.
    """
    got: dict[int, str] = {}
    hooks = on_grant or {}

    async def waiter(i: int) -> None:
        grant = await service.lock(None, node(i), wait=LEASE * 2, timeout=LEASE * 10, agent=f"w{i}")
        got[i] = grant.node_id
        if i in hooks:
            await hooks[i]()

    async with service.subscribe() as events:
        with anyio.fail_after(STEP * 2):
            async with anyio.create_task_group() as tg:
                for i in range(LEASES):
                    tg.start_soon(waiter, i)
                await until_event(events, "queued", count=LEASES)
                clock.advance(LEASE + 1)
    return got


async def test_an_expiry_storm_grants_every_waiter_its_node(stormy: LockService, clock: ManualClock) -> None:
    got = await storm(stormy, clock)
    assert got == {i: node(i) for i in range(LEASES)}
    for i in range(LEASES):
        (holder,) = (await stormy.status(None, node(i))).holders
        assert holder.owner == f"w{i}"


@pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)
async def test_an_expiry_storm_is_committed_in_parts_and_its_first_waiters_are_answered_before_it_ends(
    store: Store, stormy: LockService, clock: ManualClock
) -> None:
    log = CommitLog(store)

    async def granted() -> None:
        log.note("granted")

    await storm(stormy, clock, dict.fromkeys(range(LEASES), granted))
    assert sum(log.ended()) == LEASES
    assert max(log.ended()) <= PART
    assert log.first("granted") < log.last_commit(), f"{log.entries}"


@pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)
async def test_another_workspace_is_answered_while_an_expiry_storm_goes_on(
    store: Store, stormy: LockService, clock: ManualClock
) -> None:
    await stormy.create_workspace("other")
    await stormy.unlock("other", (await stormy.lock("other", "warm-up.txt")).token)  # its actor is running
    log = CommitLog(store)

    async def elsewhere() -> None:
        await stormy.lock("other", "unrelated.txt", agent="bystander")
        log.note("other answered")

    await storm(stormy, clock, {0: elsewhere})
    assert log.first("other answered") < log.last_commit(), f"{log.entries}"
