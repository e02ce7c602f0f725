"""An expiry storm: many leases due at once, each with a waiter (issue 20).

The actor ends them in parts of ``Limits.expire_batch``, committing and answering each
part before the next, so the rest of the server is not held up for the whole storm.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace

import anyio
import pytest

from mcp_locks.core.clock import ManualClock
from mcp_locks.core.errors import LockError, WaitTimeout
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
    """What happened, in order: ("ended", n) for each commit that ended n leases, and what the callers noted.

    ``hold``: the storm's second commit waits until that is noted (so what is noted comes first, if it can).
    ``fail``: the storm's second commit fails instead (once).
    """

    def __init__(self, store: Store, *, hold: str | None = None, fail: bool = False) -> None:
        self.entries: list[tuple[str, int]] = []
        self.noted: dict[str, anyio.Event] = {}
        self.failed = False
        inner = store.commit

        async def commit(workspace_id: str, changes: Sequence[StoreChange]) -> None:
            ended = sum(isinstance(c, EndLease) for c in changes)
            if ended and len(self.ended()) == 1:
                if hold is not None:
                    await self.event(hold).wait()
                if fail and not self.failed:
                    self.failed = True
                    raise OSError("disk on fire")
            await inner(workspace_id, changes)
            if ended:
                self.entries.append(("ended", ended))

        store.commit = commit  # type: ignore[method-assign]

    def event(self, what: str) -> anyio.Event:
        return self.noted.setdefault(what, anyio.Event())

    def note(self, what: str) -> None:
        self.entries.append((what, 0))
        self.event(what).set()

    def ended(self) -> list[int]:
        return [n for what, n in self.entries if what == "ended"]

    def last_commit(self) -> int:
        return max(i for i, (what, _) in enumerate(self.entries) if what == "ended")

    def first(self, what: str) -> int:
        return next(i for i, (w, _) in enumerate(self.entries) if w == what)


Hook = Callable[[], Awaitable[None]]


async def storm(service: LockService, clock: ManualClock, on_grant: dict[int, Hook] | None = None) -> dict[int, str]:
    """Queue a waiter on every node, end every lease at once; returns what each waiter got (its node, or an error code).

    ``on_grant[i]`` runs in waiter ``i``'s task as soon as its grant is returned.
    """
    got: dict[int, str] = {}
    hooks = on_grant or {}

    async def waiter(i: int) -> None:
        try:
            grant = await service.lock(None, node(i), wait=LEASE * 2, timeout=LEASE * 10, agent=f"w{i}")
        except LockError as e:
            got[i] = e.code
            return
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
    # The storm's second part waits for the other workspace's answer: it comes if the server serves it meanwhile.
    log = CommitLog(store, hold="other answered")

    async def elsewhere() -> None:
        await stormy.lock("other", "unrelated.txt", agent="bystander")
        log.note("other answered")

    await storm(stormy, clock, {0: elsewhere})
    assert log.first("other answered") < log.last_commit(), f"{log.entries}"


@pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)
async def test_a_commit_failing_mid_storm_keeps_the_grants_of_the_parts_before_and_answers_the_rest_unavailable(
    store: Store, stormy: LockService, clock: ManualClock
) -> None:
    CommitLog(store, fail=True)
    got = await storm(stormy, clock)
    first_part = {i for i, what in got.items() if what == node(i)}
    assert first_part == set(range(PART))  # the leases end in deadline order: the first part is the first PART
    assert all(got[i] == "UNAVAILABLE" for i in range(PART, LEASES)), got
    # The table was rebuilt from the store: the first part's grants stand, the rest of the storm ended anew.
    for i in range(LEASES):
        st = await stormy.status(None, node(i))
        assert [h.owner for h in st.holders] == ([f"w{i}"] if i < PART else [])
        assert not st.waiters


@pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)
async def test_a_storm_in_which_a_wait_also_runs_out_is_one_part(
    store: Store, stormy: LockService, clock: ManualClock
) -> None:
    # The table must then take the deadlines one instant at a time: a wait that ran out before a lease
    # ended is a timeout, not a grant.
    await stormy.lock(None, "elsewhere.txt", timeout=LEASE * 10, agent="holder")
    log = CommitLog(store)
    outcome: list[str] = []

    async def impatient() -> None:
        try:
            await stormy.lock(None, "elsewhere.txt", wait=LEASE, agent="impatient")
        except WaitTimeout as e:
            outcome.append(e.code)

    async with stormy.subscribe() as events, anyio.create_task_group() as tg:
        tg.start_soon(impatient)
        await until_event(events, "queued", "elsewhere.txt")
        got = await storm(stormy, clock)
    assert outcome == ["WAIT_TIMEOUT"]
    assert got == {i: node(i) for i in range(LEASES)}
    assert log.ended() == [LEASES]


async def test_an_expiry_storm_is_logged_once_with_its_size(
    stormy: LockService, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_locks"):
        await storm(stormy, clock)
    storms = [r.getMessage() for r in caplog.records if "expiry storm" in r.getMessage()]
    if stormy.registry.actor("default").shared:  # PostgreSQL: one commit per step, no parts
        assert storms == []
    else:
        assert len(storms) == 1, storms
        assert f"{LEASES} leases were due at once" in storms[0]
        assert f"in {-(-LEASES // PART)} part(s)" in storms[0]


async def test_leases_ending_one_by_one_are_no_storm(
    stormy: LockService, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mcp_locks"):
        start = clock.now()
        for i in range(LEASES):  # each lease ends at its own instant: step the clock just past each in turn
            async with stormy.subscribe() as events:
                clock.advance(start + LEASE + i / LEASES + 0.001 - clock.now())
                await until_event(events, "expired", node(i))
    assert not [r for r in caplog.records if "expiry storm" in r.getMessage()]
