"""The actor and service: waiting, timers, cancellation, durability, group commit, recovery."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import TaskGroup

from mcp_locks import (
    AlreadyExists,
    Deadlock,
    Forbidden,
    InvalidArgument,
    LockBroken,
    Locked,
    LockExpired,
    NotFound,
    Unavailable,
    WaitTimeout,
)
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.keys import NOBODY, Identity
from mcp_locks.core.models import LockGrant
from mcp_locks.core.records import Change
from mcp_locks.engine.lock_service import LockService, ServiceLimits
from mcp_locks.stores.base import MemoryStore
from mcp_locks.stores.sqlite import SqliteStore

from .helpers import STEP, Events, until_event

pytestmark = pytest.mark.anyio


@pytest.fixture
async def events(service: LockService) -> AsyncIterator[Events]:
    async with service.subscribe() as stream:
        yield stream


async def test_default_workspace_exists_on_first_start(service: LockService) -> None:
    assert [w.workspace_id for w in await service.list_workspaces()] == ["default"]


async def test_unknown_workspace_is_not_found_with_a_hint(service: LockService) -> None:
    with pytest.raises(NotFound, match="create_workspace"):
        await service.lock("nope", "a.txt")


async def test_creating_an_existing_workspace_is_already_exists(service: LockService) -> None:
    await service.create_workspace("team-a", "the A team")
    with pytest.raises(AlreadyExists):
        await service.create_workspace("team-a")
    grant = await service.lock("team-a", "a.txt")
    assert grant.workspace_id == "team-a"


@pytest.mark.parametrize("bad", ["", "UPPER", "a" * 64, "sp ace", "dot.ted", 7])
async def test_bad_workspace_ids_are_invalid_arguments(service: LockService, bad: object) -> None:
    with pytest.raises(InvalidArgument) as e:
        await service.create_workspace(bad)
    assert e.value.details["field"] == "workspace_id"


async def test_workspaces_are_separate_lock_tables(service: LockService) -> None:
    await service.create_workspace("other")
    await service.lock(None, "a.txt", agent="alice")
    grant = await service.lock("other", "a.txt", agent="bob")
    assert grant.owner == "bob"


async def test_mode_aliases_shared_and_exclusive_are_accepted(service: LockService) -> None:
    r1 = await service.lock(None, "a", mode="shared")
    r2 = await service.lock(None, "a", mode="shared")
    assert (r1.mode, r2.mode) == ("read", "read")
    with pytest.raises(Locked):
        await service.lock(None, "a", mode="exclusive")


@contextlib.asynccontextmanager
async def bob_waiting_for_doc(
    service: LockService, events: Events, wait: float
) -> AsyncIterator[tuple[list[LockGrant], TaskGroup]]:
    """Bob waits (up to ``wait`` s) for doc.md in a task of his own; the body runs once he is queued, all within
    STEP. Yields the list that holds his grant once the body and his wait are over, and the task group his wait
    runs in (the body's own tasks can join it; cancelling it takes his wait back, as a client that goes away)."""
    got: list[LockGrant] = []

    async def wait_for_it() -> None:
        got.append(await service.lock(None, "doc.md", agent="bob", wait=wait))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_it)
            await until_event(events, "queued", "doc.md")
            yield got, tg


async def test_a_waiter_is_granted_when_the_holder_unlocks(service: LockService, events: Events) -> None:
    holder = await service.lock(None, "doc.md", agent="alice")
    async with bob_waiting_for_doc(service, events, wait=60) as (got, _):
        await service.unlock(None, holder.token)
    assert got[0].owner == "bob"
    assert got[0].fence > holder.fence


async def test_an_expired_lease_frees_its_waiter_without_any_other_call(
    service: LockService, clock: ManualClock, events: Events
) -> None:
    await service.lock(None, "doc.md", agent="alice", timeout=30)
    async with bob_waiting_for_doc(service, events, wait=600) as (got, _):
        clock.advance(29.9)
        await wait_all_tasks_blocked()
        assert not got
        clock.advance(0.1)  # exactly the deadline: the actor's timer ends the lease and grants bob
    assert got[0].owner == "bob"


async def test_the_holder_of_an_expired_lease_is_told_when_it_expired(service: LockService, clock: ManualClock) -> None:
    grant = await service.lock(None, "doc.md", timeout=10)
    clock.advance(10)
    with pytest.raises(LockExpired) as e:
        await service.renew(None, grant.token)
    assert e.value.details["expired_at"] == grant.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_wait_that_runs_out_is_wait_timeout(service: LockService, clock: ManualClock, events: Events) -> None:
    await service.lock(None, "doc.md", agent="alice", timeout=300)
    errors: list[Exception] = []

    async def wait_for_it() -> None:
        try:
            await service.lock(None, "doc.md", agent="bob", wait=5)
        except WaitTimeout as e:
            errors.append(e)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_it)
            await until_event(events, "queued", "doc.md")
            clock.advance(5)
    assert "alice" in str(errors[0])
    assert (await service.status(None, "doc.md")).waiters == []


async def test_a_cancelled_waiter_leaves_the_line(service: LockService, events: Events) -> None:
    holder = await service.lock(None, "doc.md", agent="alice")
    async with bob_waiting_for_doc(service, events, wait=600) as (_, tg):
        tg.cancel_scope.cancel()
    await until_event(events, "left", "doc.md")
    status = await service.status(None, "doc.md")
    assert status.waiters == []
    await service.unlock(None, holder.token)
    assert not (await service.status(None, "doc.md")).locked


async def test_a_grant_that_crosses_the_cancellation_is_released_not_leaked(
    service: LockService, events: Events
) -> None:
    holder = await service.lock(None, "doc.md", agent="alice")
    async with bob_waiting_for_doc(service, events, wait=600) as (_, tg):

        async def unlock() -> None:
            await service.unlock(None, holder.token)

        # The release (which grants bob) is queued to the actor before bob's cancellation lands.
        tg.start_soon(unlock)
        await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    granted = await until_event(events, "granted", "doc.md", owner="bob")
    released = await until_event(events, "released", "doc.md", owner="bob")
    assert released.lock_id == granted.lock_id
    page = await service.list_locks()
    assert page.locks == []


async def test_readers_never_starve_a_queued_writer(service: LockService, events: Events) -> None:
    first = await service.lock(None, "doc.md", mode="read", agent="r0")
    order: list[str] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:

            async def take(agent: str, mode: str) -> None:
                g = await service.lock(None, "doc.md", mode=mode, agent=agent, wait=60)
                order.append(agent)
                await service.unlock(None, g.token)

            tg.start_soon(take, "writer", "write")
            await until_event(events, "queued", "doc.md")
            for i in range(3):
                tg.start_soon(take, f"r{i + 1}", "read")
            await until_event(events, "queued", "doc.md", count=3)
            await service.unlock(None, first.token)
    assert order[0] == "writer"


async def test_a_cycle_of_waits_fails_at_once_with_deadlock(service: LockService, events: Events) -> None:
    await service.lock(None, "x", agent="alice")
    await service.lock(None, "y", agent="bob")
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:

            async def alice_waits() -> None:
                with pytest.raises(WaitTimeout):
                    await service.lock(None, "y", agent="alice", wait=1000)

            tg.start_soon(alice_waits)
            await until_event(events, "queued", "y")
            with pytest.raises(Deadlock, match="alice"):
                await service.lock(None, "x", agent="bob", wait=1000)
            tg.cancel_scope.cancel()


async def test_lock_files_grants_all_or_nothing(service: LockService) -> None:
    await service.lock(None, "b", agent="bob")
    with pytest.raises(Locked):
        await service.lock_many(None, [{"node_id": "a"}, {"node_id": "b"}, {"node_id": "c"}], agent="alice")
    page = await service.list_locks()
    assert [le.node_id for le in page.locks] == ["b"]


async def test_lock_files_rejects_more_than_100_items(service: LockService) -> None:
    with pytest.raises(InvalidArgument, match="at most 100"):
        await service.lock_many(None, [{"node_id": f"f{i}"} for i in range(101)])


async def test_unlock_files_reports_each_token_and_releases_the_good_ones(service: LockService) -> None:
    a = await service.lock(None, "a")
    result = await service.unlock_many(None, [a.token, "mlt_nope"])
    assert result.released == 1
    assert result.results[1].error_code == "LOCK_NOT_FOUND"
    assert not (await service.status(None, "a")).locked


async def test_list_locks_pages_through_every_lock_once(service: LockService) -> None:
    for i in range(25):
        await service.lock(None, f"dir/f{i:02}")
    await service.lock(None, "other")
    seen: list[str] = []
    cursor = None
    while True:
        page = await service.list_locks(None, prefix="dir/", limit=10, cursor=cursor)
        seen += [le.node_id for le in page.locks]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"dir/f{i:02}" for i in range(25)]


async def test_a_forged_cursor_is_an_invalid_argument(service: LockService) -> None:
    with pytest.raises(InvalidArgument, match="cursor"):
        await service.list_locks(None, cursor="!!not-ours!!")


async def test_concurrent_commands_share_group_commits(clock: ManualClock) -> None:
    store = MemoryStore()
    async with LockService(store, clock=clock) as service:
        before = store.commits
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                for i in range(64):
                    tg.start_soon(service.lock, None, f"n{i}")
        assert len((await service.list_locks(limit=1000)).locks) == 64
        assert store.commits - before < 64


# ---------------------------------------------------------------------- durability


def sqlite(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "locks.db")


async def test_locks_survive_a_restart_with_their_absolute_expiry(tmp_path: Path, clock: ManualClock) -> None:
    async with LockService(sqlite(tmp_path), clock=clock) as s1:
        grant = await s1.lock(None, "doc.md", agent="alice", timeout=600)
    async with LockService(sqlite(tmp_path), clock=clock) as s2:
        status = await s2.status(None, "doc.md")
        assert status.holders[0].lock_id == grant.lock_id
        assert status.holders[0].expires_at == grant.expires_at
        renewed = await s2.renew(None, grant.token)
        assert renewed.lock_id == grant.lock_id


async def test_a_lock_that_expired_while_the_server_was_down_is_expired_at_start(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with LockService(sqlite(tmp_path), clock=clock) as s1:
        grant = await s1.lock(None, "doc.md", timeout=10)
    clock.advance(60)
    store = sqlite(tmp_path)
    async with LockService(store, clock=clock) as s2, s2.subscribe() as events:
        # No call touches the workspace: the start-up alarm alone must expire it.
        expired = await until_event(events, "expired", "doc.md")
        assert expired.lock_id == grant.lock_id
        assert not (await store.load("default")).leases
    async with LockService(sqlite(tmp_path), clock=clock) as s3:
        with pytest.raises(LockExpired):
            await s3.unlock(None, grant.token)


async def test_fences_never_go_backwards_across_restarts(tmp_path: Path, clock: ManualClock) -> None:
    fences = []
    for _ in range(3):
        async with LockService(sqlite(tmp_path), clock=clock) as s:
            g = await s.lock(None, "doc.md")
            fences.append(g.fence)
            await s.unlock(None, g.token)
    assert fences == sorted(set(fences))


async def test_a_request_id_retry_after_a_restart_returns_the_original_grant(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with LockService(sqlite(tmp_path), clock=clock) as s1:
        first = await s1.lock(None, "doc.md", agent="alice", request_id="req-1")
    async with LockService(sqlite(tmp_path), clock=clock) as s2:
        again = await s2.lock(None, "doc.md", agent="alice", request_id="req-1")
        assert (again.lock_id, again.token, again.replayed) == (first.lock_id, first.token, True)
        assert len((await s2.list_locks()).locks) == 1


async def test_an_idle_actor_is_evicted_and_its_alarm_still_expires_leases(clock: ManualClock) -> None:
    store = MemoryStore()
    limits = ServiceLimits(idle_timeout=60)
    async with LockService(store, clock=clock, limits=limits) as service, service.subscribe() as events:
        await service.lock(None, "doc.md", timeout=300)
        clock.advance(61)
        await wait_all_tasks_blocked()
        assert service.active_actors == 0
        assert (await store.load("default")).leases  # evicted, lease still held
        clock.advance(240)
        await until_event(events, "expired", "doc.md")  # the alarm woke the workspace on time
        assert not (await store.load("default")).leases


class FlakyStore(MemoryStore):
    """A memory store whose next commit can be made to fail."""

    fail_next = False

    async def commit(self, workspace_id: str, changes: Sequence[Change]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk on fire")
        await super().commit(workspace_id, changes)


async def test_a_failed_commit_is_unavailable_and_loses_nothing_granted_before(clock: ManualClock) -> None:
    store = FlakyStore()
    async with LockService(store, clock=clock) as service:
        kept = await service.lock(None, "kept.md")
        store.fail_next = True
        with pytest.raises(Unavailable):
            await service.lock(None, "lost.md")
        assert not (await service.status(None, "lost.md")).locked
        assert (await service.status(None, "kept.md")).holders[0].lock_id == kept.lock_id
        await service.unlock(None, kept.token)


async def test_shutting_down_answers_a_waiter_with_unavailable_instead_of_hanging(clock: ManualClock) -> None:
    errors: list[Unavailable] = []
    with anyio.fail_after(STEP):
        # Exits run inner-first: the service shuts down while bob still waits in the task group.
        async with (
            anyio.create_task_group() as tg,
            LockService(MemoryStore(), clock=clock) as service,
            service.subscribe() as events,
        ):
            await service.lock(None, "a", agent="alice")

            async def wait_for_it() -> None:
                try:
                    await service.lock(None, "a", agent="bob", wait=600)
                except Unavailable as e:
                    errors.append(e)

            tg.start_soon(wait_for_it)
            await until_event(events, "queued", "a")
    assert errors[0].code == "UNAVAILABLE"


async def test_a_retry_of_a_grant_given_back_unseen_takes_a_live_lock(service: LockService) -> None:
    with anyio.fail_after(STEP), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.lock(None, "f", agent="alice", request_id="r1"))
            await anyio.lowlevel.checkpoint()  # alice's call is in the mailbox; her client goes away
            scope.cancel()
    assert not (await service.status(None, "f")).locked  # the grant nobody saw was given back
    again = await service.lock(None, "f", agent="alice", request_id="r1")
    assert not again.replayed
    assert (await service.status(None, "f")).holders[0].lock_id == again.lock_id
    with pytest.raises(Locked):
        await service.lock(None, "f", agent="bob")


async def test_fences_keep_rising_after_a_restart_and_an_idle_eviction(tmp_path: Path, clock: ManualClock) -> None:
    before = []
    async with LockService(sqlite(tmp_path), clock=clock) as s1:
        for i in range(5):
            g = await s1.lock(None, f"n{i}")
            before.append(g.fence)
            await s1.unlock(None, g.token)  # nothing stays held to carry the fence over
    limits = ServiceLimits(idle_timeout=60)
    async with LockService(sqlite(tmp_path), clock=clock, limits=limits) as s2:
        await s2.status(None, "n0")  # first (cold) load after the restart
        clock.advance(61)
        await wait_all_tasks_blocked()
        assert s2.active_actors == 0  # evicted; the next call loads the workspace again
        after = await s2.lock(None, "fresh")
    assert after.fence > max(before)


class FailingCommit(MemoryStore):
    """A memory store whose next commit fails, running a hook at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False
        self.on_fail: Callable[[], None] = lambda: None

    async def commit(self, workspace_id: str, changes: Sequence[Change]) -> None:
        if self.fail_next:
            self.fail_next = False
            self.on_fail()
            raise OSError("disk full")
        await super().commit(workspace_id, changes)


async def test_a_stale_waiter_cancelled_after_a_failed_commit_never_removes_a_new_one(clock: ManualClock) -> None:
    store = FailingCommit()
    outcomes: list[str] = []
    async with LockService(store, clock=clock) as service, service.subscribe() as events:
        holder = await service.lock(None, "x", agent="holder")
        second = anyio.Event()
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                x_scope = anyio.CancelScope()

                async def xavier() -> None:
                    with x_scope, contextlib.suppress(Unavailable):
                        await service.lock(None, "x", agent="xavier", wait=100)

                async def yvonne() -> None:
                    await second.wait()
                    try:
                        await service.lock(None, "x", agent="yvonne", wait=2)
                    except WaitTimeout as e:
                        outcomes.append(e.code)

                tg.start_soon(xavier)
                tg.start_soon(yvonne)
                await until_event(events, "queued", "x", owner="xavier")

                def at_failure() -> None:  # the commit fails and xavier's client goes away at that moment
                    second.set()
                    x_scope.cancel()

                store.on_fail, store.fail_next = at_failure, True
                with pytest.raises(Unavailable):
                    await service.renew(None, holder.token)
                await until_event(events, "queued", "x", owner="yvonne")
                clock.advance(2)
    assert outcomes == ["WAIT_TIMEOUT"]  # yvonne got an answer: she was never dropped from the line


async def test_a_workspace_created_by_another_process_is_found(tmp_path: Path, clock: ManualClock) -> None:
    async with LockService(sqlite(tmp_path), clock=clock) as running:
        other = sqlite(tmp_path)  # e.g. `mcp-locks workspaces create` on the same data dir
        await other.open()
        await other.create_workspace("late", None, clock.now())
        await other.close()
        grant = await running.lock("late", "a.txt")
        assert grant.workspace_id == "late"
        assert "late" in [w.workspace_id for w in await running.list_workspaces()]


async def test_cancelling_a_re_lease_of_a_write_lock_keeps_it_a_write_lock(service: LockService) -> None:
    held = await service.lock(None, "f", mode="write", agent="alice")
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.lock(None, "f", mode="write", agent="alice", token=held.token, timeout=600))
            await anyio.lowlevel.checkpoint()  # the re-lease is in the mailbox; the client goes away
            tg.cancel_scope.cancel()
    assert [(h.owner, h.mode) for h in (await service.status(None, "f")).holders] == [("alice", "write")]
    with pytest.raises(Locked):
        await service.lock(None, "f", mode="read", agent="bob")


async def test_a_retry_that_received_the_grant_keeps_it_when_the_first_attempt_goes_away(
    service: LockService, events: Events
) -> None:
    bob = await service.lock(None, "f", agent="bob")
    got: list[LockGrant] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()

            async def first_attempt() -> None:
                with first:
                    await service.lock(None, "f", agent="alice", wait=30, request_id="r1")

            async def retry() -> None:
                got.append(await service.lock(None, "f", agent="alice", wait=30, request_id="r1"))

            tg.start_soon(first_attempt)
            await until_event(events, "queued", "f", owner="alice")
            # In one batch: bob lets go (alice is granted), the retry is answered by replay,
            # and the first attempt's client goes away.
            tg.start_soon(lambda: service.unlock(None, bob.token))
            tg.start_soon(retry)
            first.cancel()
    renewed = await service.renew(None, got[0].token)  # the retry's token is alive
    assert renewed.lock_id == got[0].lock_id
    assert [h.owner for h in (await service.status(None, "f")).holders] == ["alice"]


async def test_a_request_id_dropped_and_recorded_again_in_one_commit_survives_a_restart(tmp_path: Path) -> None:
    from mcp_locks.core.records import DropRequest, Lease, PutRequest, RequestRecord

    store = sqlite(tmp_path)
    await store.open()
    await store.create_workspace("default", None, 0.0)
    lease = Lease("lk_1", "mlt_1", "f", "write", "node", "alice", None, 1, 0.0, 60.0, 60.0, 0, "r1")
    record = RequestRecord("alice", "r1", "fp", (lease,), 0.0)
    await store.commit("default", [DropRequest("alice", "r1"), PutRequest(record)])
    await store.close()
    reopened = sqlite(tmp_path)
    await reopened.open()
    assert [(r.owner, r.request_id) for r in (await reopened.load("default")).requests] == [("alice", "r1")]
    await reopened.close()


async def test_a_token_that_is_not_a_string_is_an_invalid_argument_naming_it(service: LockService) -> None:
    with pytest.raises(InvalidArgument) as e:
        await service.lock(None, "a", token=123)
    assert e.value.details["field"] == "token"


async def test_a_broken_lock_still_answers_lock_broken_after_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    async with LockService(sqlite(tmp_path), clock=clock) as s1:
        grant = await s1.lock(None, "doc.md", agent="alice")
        await s1.force_unlock(None, grant.lock_id, "disk full")
    async with LockService(sqlite(tmp_path), clock=clock) as s2:
        with pytest.raises(LockBroken, match="disk full"):
            await s2.renew(None, grant.token)


async def test_sessions_and_their_labels_survive_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    alice = Identity("k1", "alice", "agent", ("default",))
    async with LockService(sqlite(tmp_path), clock=clock) as s1:
        grant = await s1.lock(None, "doc.md", agent="helper-1", caller=alice)
    async with LockService(sqlite(tmp_path), clock=clock) as s2:
        holder = (await s2.status(None, "doc.md")).holders[0]
    assert (holder.owner, holder.label, holder.lock_id) == ("alice/helper-1", "helper-1", grant.lock_id)


async def test_a_schema_1_database_is_migrated_in_place(tmp_path: Path, clock: ManualClock) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "locks.db")
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE locks (workspace_id TEXT NOT NULL, lock_id TEXT NOT NULL, token TEXT NOT NULL,
            node_id TEXT NOT NULL, mode TEXT NOT NULL, depth TEXT NOT NULL, owner TEXT NOT NULL, note TEXT,
            fence INTEGER NOT NULL, acquired_at REAL NOT NULL, expires_at REAL NOT NULL, timeout REAL NOT NULL,
            waited_ms INTEGER NOT NULL, request_id TEXT, ended_at REAL, end_reason TEXT,
            PRIMARY KEY (workspace_id, lock_id));
        """
    )
    db.execute(
        "INSERT INTO locks VALUES ('default','lk_1','mlt_old','old.md','write','node','alice',NULL,1,?,?,600,0,"
        "NULL,NULL,NULL)",
        (clock.now(), clock.now() + 600),
    )
    db.commit()
    db.close()
    async with LockService(sqlite(tmp_path), clock=clock) as svc:
        assert (await svc.status(None, "old.md")).holders[0].owner == "alice"
        await svc.force_unlock(None, "lk_1", "migrated")
        with pytest.raises(LockBroken):
            await svc.unlock(None, "mlt_old")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_re_created_workspace_continues_above_the_deleted_ones_fences(
    tmp_path: Path, clock: ManualClock, kind: str
) -> None:
    store = MemoryStore() if kind == "memory" else sqlite(tmp_path)
    async with LockService(store, clock=clock) as svc:
        await svc.create_workspace("w")
        old = await svc.lock("w", "a")
        await svc.unlock("w", old.token)
        await svc.delete_workspace("w")
        await svc.create_workspace("w")
        new = await svc.lock("w", "a")
    assert new.fence > old.fence


async def test_nothing_is_granted_in_a_workspace_while_it_is_being_deleted(clock: ManualClock) -> None:
    release = anyio.Event()
    reached = anyio.Event()

    class SlowDelete(MemoryStore):
        async def delete_workspace(self, workspace_id: str, now: float) -> None:
            reached.set()
            await release.wait()  # a store whose delete awaits (a network database would)
            await super().delete_workspace(workspace_id, now)

    async with LockService(SlowDelete(), clock=clock) as svc:
        await svc.create_workspace("w")
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                tg.start_soon(svc.delete_workspace, "w")
                await reached.wait()
                with pytest.raises(NotFound):
                    await svc.lock("w", "a")
                release.set()
        with pytest.raises(NotFound):
            await svc.status("w", "a")
        await svc.create_workspace("w")
        assert (await svc.lock("w", "a")).workspace_id == "w"  # a new actor for the new workspace


async def test_a_failed_delete_leaves_the_workspace_usable(clock: ManualClock) -> None:
    class FailingDelete(MemoryStore):
        async def delete_workspace(self, workspace_id: str, now: float) -> None:
            raise Unavailable("disk gone")

    async with LockService(FailingDelete(), clock=clock) as svc:
        await svc.create_workspace("w")
        with pytest.raises(Unavailable):
            await svc.delete_workspace("w")
        assert (await svc.lock("w", "a")).workspace_id == "w"


async def test_reserved_agent_names_are_refused_for_keys(service: LockService) -> None:
    for name in ("anonymous", "Local", "nobody"):
        with pytest.raises(InvalidArgument, match="reserved"):
            await service.create_key(name, ["default"])


async def test_without_a_verified_key_the_fallback_identity_reaches_nothing(service: LockService) -> None:
    with pytest.raises(Forbidden):
        await service.lock(None, "a", caller=NOBODY)
    assert await service.list_workspaces(caller=NOBODY) == []


async def test_the_key_that_took_a_lock_still_owns_it_after_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    alice = Identity("k-alice", "alice", "agent", ("default",))
    bob = Identity("k-bob", "bob", "agent", ("default",))
    async with LockService(sqlite(tmp_path), clock=clock) as s1:
        grant = await s1.lock(None, "doc.md", request_id="r1", caller=alice)
    async with LockService(sqlite(tmp_path), clock=clock) as s2:
        with pytest.raises(Forbidden):
            await s2.renew(None, grant.token, caller=bob)
        again = await s2.lock(None, "doc.md", request_id="r1", caller=alice)  # the stored request record
        assert (again.token, again.replayed) == (grant.token, True)
        await s2.renew(None, grant.token, caller=alice)


async def test_a_workspace_with_a_holder_and_a_waiter_is_not_deleted(service: LockService) -> None:
    await service.create_workspace("w")
    holder = await service.lock("w", "a", agent="alice")
    async with service.subscribe() as events, anyio.create_task_group() as tg:
        tg.start_soon(lambda: service.lock("w", "a", agent="bob", wait=60))
        await until_event(events, "queued", "a")
        with pytest.raises(Locked):
            await service.delete_workspace("w")
        await service.unlock("w", holder.token)  # bob gets it; still not deletable
        await until_event(events, "granted", "a", owner="bob")
        with pytest.raises(Locked):
            await service.delete_workspace("w")
        tg.cancel_scope.cancel()


async def test_status_with_a_token_says_when_the_lease_ran_out(service: LockService, clock: ManualClock) -> None:
    grant = await service.lock(None, "src", depth="tree", timeout=10)
    inside = (await service.status(None, "src/a.py", grant.token)).yours
    assert inside is not None
    assert (inside.held, inside.covers_node, inside.node_id) == (True, True, "src")
    clock.advance(11)
    after = (await service.status(None, "src/a.py", grant.token)).yours
    assert after is not None
    assert (after.held, after.code) == (False, "LOCK_EXPIRED")
    assert (await service.status(None, "src/a.py")).yours is None
