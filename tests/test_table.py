"""Direct unit tests of the pure LockTable (no actor, no store, no clock) and of the path rules."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from mcp_locks.core.claims import Claim
from mcp_locks.core.errors import (
    Deadlock,
    Forbidden,
    InvalidArgument,
    LimitExceeded,
    LockBroken,
    Locked,
    LockError,
    LockExpired,
    LockNotFound,
    Unauthenticated,
    WaitTimeout,
)
from mcp_locks.core.names import MAX_NODE_ID_BYTES, check_node_id, check_workspace_id
from mcp_locks.core.records import Ended, EndLease, Granted, Lease, Prune, PutLease, PutRequest, Queued, ReserveFences
from mcp_locks.core.table import ANONYMOUS, Limits, LockTable

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


# ---------------------------------------------------------------------- helpers


def acquire(
    table: LockTable,
    node: str,
    owner: str = "alice",
    mode: str = "write",
    depth: str = "node",
    *,
    wait: float = 0.0,
    now: float = T0,
    timeout: float = 60.0,
    **kw: Any,
) -> Granted | Queued:
    return table.acquire(now, [Claim(node, mode, depth)], owner=owner, timeout=timeout, wait=wait, **kw)  # type: ignore[arg-type]


def lock(
    table: LockTable, node: str, owner: str = "alice", mode: str = "write", depth: str = "node", **kw: Any
) -> Lease:
    """Acquire one lock that must be granted at once; return its lease."""
    out = acquire(table, node, owner, mode, depth, **kw)
    assert isinstance(out, Granted), out
    (lease,) = out.leases
    return lease


def enqueue(
    table: LockTable, node: str, owner: str = "alice", mode: str = "write", depth: str = "node", **kw: Any
) -> int:
    """Acquire one lock that must wait in line; return its waiter id."""
    kw.setdefault("wait", 30.0)
    out = acquire(table, node, owner, mode, depth, **kw)
    assert isinstance(out, Queued), out
    return out.waiter_id


def acquire_many(
    table: LockTable, *claims: tuple[str, str, str], owner: str = "alice", wait: float = 0.0, now: float = T0, **kw: Any
) -> Granted | Queued:
    items = [Claim(n, m, d) for n, m, d in claims]  # type: ignore[arg-type]
    return table.acquire(now, items, owner=owner, timeout=60.0, wait=wait, **kw)


def change_mode(
    table: LockTable, lease: Lease, mode: str, *, wait: float = 0.0, now: float = T0, **kw: Any
) -> Granted | Queued:
    """Present ``lease``'s token with ``mode`` (upgrade, downgrade or restart)."""
    kw.setdefault("timeout", 60.0)
    claim = Claim(lease.node_id, mode, lease.depth)  # type: ignore[arg-type]
    return table.acquire(now, [claim], owner=lease.owner, wait=wait, token=lease.token, **kw)


def drain(table: LockTable) -> list[tuple[int, Granted | LockError]]:
    out, table.outcomes = table.outcomes, []
    return out


def granted_owners(outcomes: list[tuple[int, Granted | LockError]]) -> list[str]:
    return [le.owner for _, o in outcomes if isinstance(o, Granted) for le in o.leases]


@pytest.fixture
def table() -> LockTable:
    return LockTable("ws")


# ---------------------------------------------------------------------- modes and tree locks

CONFLICTS = [
    # (held node, mode, depth), (requested node, mode, depth)
    (("a", "read", "node"), ("a", "write", "node")),
    (("a", "write", "node"), ("a", "read", "node")),
    (("a", "write", "node"), ("a", "write", "node")),
    (("src", "write", "tree"), ("src/a/b", "write", "node")),
    (("src", "read", "tree"), ("src/a/b", "write", "node")),
    (("src", "write", "tree"), ("src/a/b", "read", "node")),
    (("src/a/b", "write", "node"), ("src", "write", "tree")),
    (("src/x", "write", "node"), ("src", "read", "tree")),
    (("src/x", "read", "node"), ("src", "write", "tree")),
    (("src", "read", "node"), ("src", "write", "tree")),
    (("src", "write", "node"), ("src", "read", "tree")),
    (("src", "read", "tree"), ("src", "write", "node")),
    (("src", "write", "tree"), ("src", "read", "node")),
    (("src", "write", "tree"), ("src", "write", "tree")),
    (("src/a", "read", "tree"), ("src", "write", "tree")),
    (("src", "write", "tree"), ("src/a", "read", "tree")),
]

COMPATIBLE = [
    (("a", "read", "node"), ("a", "read", "node")),
    (("a", "write", "node"), ("b", "write", "node")),
    (("src", "read", "tree"), ("src/a/b", "read", "node")),
    (("src/a/b", "read", "node"), ("src", "read", "tree")),
    (("src", "read", "tree"), ("src", "read", "node")),
    (("src", "read", "node"), ("src", "read", "tree")),
    (("src", "read", "tree"), ("src/a", "read", "tree")),
    (("src", "write", "tree"), ("src2", "write", "node")),
    (("src", "write", "tree"), ("src-x", "write", "node")),
    (("src", "write", "tree"), ("src.x/a", "write", "node")),
    (("src2", "write", "node"), ("src", "write", "tree")),
    (("src-x", "write", "tree"), ("src", "write", "tree")),
    (("src", "write", "node"), ("src/a", "write", "node")),
    (("src/a", "write", "node"), ("src", "write", "node")),
    (("src/a", "write", "tree"), ("src/b", "write", "tree")),
]


@pytest.mark.parametrize(("held", "wanted"), CONFLICTS)
def test_conflicting_lock_is_refused(
    table: LockTable, held: tuple[str, str, str], wanted: tuple[str, str, str]
) -> None:
    lock(table, held[0], "bob", held[1], held[2])
    with pytest.raises(Locked):
        acquire(table, wanted[0], "alice", wanted[1], wanted[2])
    assert len(table) == 1


@pytest.mark.parametrize(("held", "wanted"), COMPATIBLE)
def test_compatible_locks_are_held_together(
    table: LockTable, held: tuple[str, str, str], wanted: tuple[str, str, str]
) -> None:
    lock(table, held[0], "bob", held[1], held[2])
    lock(table, wanted[0], "alice", wanted[1], wanted[2])
    assert len(table) == 2


@pytest.mark.parametrize(("held", "wanted"), [("write", "write"), ("write", "read"), ("read", "write")])
def test_locks_are_not_reentrant_for_the_same_owner(table: LockTable, held: str, wanted: str) -> None:
    lock(table, "a", "alice", held)
    with pytest.raises(Locked):
        acquire(table, "a", "alice", wanted)


def test_the_same_owner_may_hold_two_read_locks_on_one_node(table: LockTable) -> None:
    first = lock(table, "a", "alice", "read")
    second = lock(table, "a", "alice", "read")
    assert first.lock_id != second.lock_id
    assert first.token != second.token


def test_granted_lease_describes_the_request(table: LockTable) -> None:
    lease = lock(table, "src", "alice", "read", "tree", timeout=90, note="refactor")
    assert (lease.node_id, lease.mode, lease.depth, lease.owner, lease.note) == (
        "src",
        "read",
        "tree",
        "alice",
        "refactor",
    )
    assert (lease.acquired_at, lease.expires_at, lease.timeout, lease.waited_ms) == (T0, T0 + 90, 90, 0)
    assert lease.token.startswith("mlt_")
    assert lease.lock_id.startswith("lk_")
    assert table.lookup(T0, lease.token) == lease


def test_empty_request_is_invalid(table: LockTable) -> None:
    with pytest.raises(InvalidArgument) as ei:
        table.acquire(T0, [], owner="alice", timeout=60)
    assert ei.value.details["field"] == "items"


# ---------------------------------------------------------------------- LOCKED


def test_locked_text_names_the_holder_and_the_expiry(table: LockTable) -> None:
    lock(table, "a", "bob", timeout=60)
    with pytest.raises(Locked) as ei:
        acquire(table, "a", "alice")
    err = ei.value
    assert str(err).startswith("LOCKED:")
    assert err.text().startswith("LOCKED: 'a' is write-locked by bob until 2027-01-15T08:01:00Z")
    assert err.details["node_id"] == "a"
    assert err.details["holders"] == [
        {"owner": "bob", "mode": "write", "node_id": "a", "expires_at": "2027-01-15T08:01:00Z"}
    ]


def test_locked_by_a_tree_lock_on_an_ancestor_names_the_tree_lock(table: LockTable) -> None:
    lock(table, "src", "bob", "write", "tree")
    with pytest.raises(Locked) as ei:
        acquire(table, "src/a.py", "alice")
    assert "tree lock on 'src'" in ei.value.message
    assert "bob" in ei.value.message
    assert "2027-01-15T08:01:00Z" in ei.value.message
    assert ei.value.details["holders"][0]["node_id"] == "src"


def test_locked_lists_every_conflicting_holder(table: LockTable) -> None:
    lock(table, "a", "bob", "read")
    lock(table, "a", "carol", "read")
    with pytest.raises(Locked) as ei:
        acquire(table, "a", "alice", "write")
    assert "and 1 more" in ei.value.message
    assert sorted(h["owner"] for h in ei.value.details["holders"]) == ["bob", "carol"]


def test_locked_on_a_free_node_names_the_earlier_waiter(table: LockTable) -> None:
    lock(table, "a", "bob", "read")
    enqueue(table, "a", "carol", "write")
    with pytest.raises(Locked) as ei:
        acquire(table, "a", "alice", "read")
    assert "carol is already waiting" in ei.value.message
    assert ei.value.details["holders"] == []
    assert ei.value.details["waiting"] == 1


# ---------------------------------------------------------------------- FIFO line


def test_request_with_wait_on_conflict_is_queued_without_an_outcome(table: LockTable) -> None:
    lock(table, "a", "bob")
    out = acquire(table, "a", "alice", wait=30)
    assert isinstance(out, Queued)
    assert not out.joined
    assert table.has_waiter(out.waiter_id)
    assert table.waiter_count == 1
    assert table.outcomes == []
    assert len(table) == 1


def test_release_grants_the_waiter_through_outcomes(table: LockTable) -> None:
    held = lock(table, "a", "bob")
    wid = enqueue(table, "a", "alice", timeout=45)
    table.release(T0 + 5, held.token)
    [(got_id, outcome)] = drain(table)
    assert got_id == wid
    assert isinstance(outcome, Granted)
    (lease,) = outcome.leases
    assert (lease.owner, lease.node_id, lease.acquired_at, lease.expires_at) == ("alice", "a", T0 + 5, T0 + 50)
    assert lease.waited_ms == 5000
    assert table.lease(lease.lock_id) == lease
    assert not table.has_waiter(wid)


def test_waiters_for_one_node_are_granted_first_come_first_served(table: LockTable) -> None:
    held = lock(table, "a", "zed")
    ids = {owner: enqueue(table, "a", owner) for owner in ("alice", "bob", "carol")}
    assert ids["alice"] < ids["bob"] < ids["carol"]
    now = T0
    for owner in ("alice", "bob", "carol"):
        now += 1
        table.release(now, held.token)
        [(wid, outcome)] = drain(table)
        assert wid == ids[owner]
        assert isinstance(outcome, Granted)
        held = outcome.leases[0]
        assert held.owner == owner


@pytest.mark.parametrize("wait", [0.0, 30.0])
def test_reader_arriving_after_a_queued_writer_is_not_granted(table: LockTable, wait: float) -> None:
    lock(table, "a", "alice", "read")
    enqueue(table, "a", "bob", "write")
    if wait:
        assert isinstance(acquire(table, "a", "carol", "read", wait=wait), Queued)
    else:
        with pytest.raises(Locked):
            acquire(table, "a", "carol", "read", wait=wait)
    assert [le.owner for le in table.leases()] == ["alice"]


def test_stream_of_readers_cannot_starve_a_queued_writer(table: LockTable) -> None:
    first = lock(table, "a", "r0", "read")
    writer = enqueue(table, "a", "writer", "write")
    for i in range(1, 6):
        enqueue(table, "a", f"r{i}", "read", now=T0 + i)
    table.release(T0 + 10, first.token)
    [(wid, outcome)] = drain(table)
    assert wid == writer
    assert isinstance(outcome, Granted)
    assert outcome.leases[0].owner == "writer"


def test_readers_queued_behind_a_writer_are_granted_together_when_it_releases(table: LockTable) -> None:
    held = lock(table, "a", "writer", "write")
    readers = [enqueue(table, "a", f"r{i}", "read") for i in range(3)]
    table.release(T0 + 1, held.token)
    outcomes = drain(table)
    assert [wid for wid, _ in outcomes] == readers
    assert granted_owners(outcomes) == ["r0", "r1", "r2"]
    assert table.waiter_count == 0


def test_a_waiter_does_not_block_requests_for_other_nodes(table: LockTable) -> None:
    lock(table, "a", "bob")
    enqueue(table, "a", "alice")
    lock(table, "b", "carol")


def test_a_waiter_behind_a_blocked_waiter_is_granted_when_it_does_not_conflict(table: LockTable) -> None:
    held_a = lock(table, "a", "zed")
    held_b = lock(table, "b", "zed")
    enqueue(table, "a", "alice")
    wid_b = enqueue(table, "b", "bob")
    table.release(T0 + 1, held_b.token)
    assert [w for w, _ in drain(table)] == [wid_b]
    assert table.lease(held_a.lock_id) is not None


def test_waiter_is_still_waiting_just_before_its_deadline(table: LockTable) -> None:
    lock(table, "a", "bob", timeout=600)
    wid = enqueue(table, "a", "alice", wait=10)
    table.expire(T0 + 10 - 0.001)
    assert table.has_waiter(wid)
    assert table.outcomes == []


def test_waiter_gets_wait_timeout_from_expire_at_its_deadline(table: LockTable) -> None:
    lock(table, "a", "bob", timeout=600)
    wid = enqueue(table, "a", "alice", wait=10)
    table.expire(T0 + 10)
    [(got, outcome)] = drain(table)
    assert got == wid
    assert isinstance(outcome, WaitTimeout)
    assert outcome.text().startswith("WAIT_TIMEOUT:")
    assert "bob" in outcome.message
    assert outcome.details["waited_ms"] == 10_000
    assert not table.has_waiter(wid)
    assert table.waiter_count == 0


def test_line_advances_past_a_waiter_that_timed_out(table: LockTable) -> None:
    lock(table, "a", "alice", "read", timeout=600)
    writer = enqueue(table, "a", "bob", "write", wait=10)
    reader = enqueue(table, "a", "carol", "read", wait=60)
    table.expire(T0 + 10)
    outcomes = dict(drain(table))
    assert isinstance(outcomes[writer], WaitTimeout)
    assert isinstance(outcomes[reader], Granted)
    assert outcomes[reader].leases[0].owner == "carol"


def test_cancelled_waiter_leaves_the_line_and_the_line_advances(table: LockTable) -> None:
    lock(table, "a", "alice", "read")
    writer = enqueue(table, "a", "bob", "write")
    reader = enqueue(table, "a", "carol", "read")
    assert table.cancel(T0 + 1, writer)
    assert not table.cancel(T0 + 1, writer)
    [(wid, outcome)] = drain(table)
    assert wid == reader
    assert isinstance(outcome, Granted)


def test_waiter_whose_wait_ran_out_before_the_lease_ended_times_out_even_if_expire_runs_late(
    table: LockTable,
) -> None:
    # alice's wait ends at T0+10, bob's lease only at T0+20: alice must not be granted at T0+30.
    lock(table, "a", "bob", timeout=20)
    wid = enqueue(table, "a", "alice", wait=10)
    table.expire(T0 + 30)
    [(got, outcome)] = drain(table)
    assert got == wid
    assert isinstance(outcome, WaitTimeout), outcome
    assert len(table) == 0


def test_an_upgrade_freed_before_its_own_read_lock_would_have_ended_is_granted_even_if_expire_runs_late(
    table: LockTable,
) -> None:
    # bob's read ends at T0+20, alice's own at T0+40: at T0+20 her upgrade goes through and renews it.
    lock(table, "a", "bob", mode="read", timeout=20)
    mine = lock(table, "a", "alice", mode="read", timeout=40)
    wid = enqueue(table, "a", "alice", token=mine.token, wait=1000, timeout=50)
    table.expire(T0 + 100)
    [(got, outcome)] = drain(table)
    assert got == wid
    assert isinstance(outcome, Granted), outcome
    (lease,) = outcome.leases
    assert (lease.lock_id, lease.mode, lease.expires_at) == (mine.lock_id, "write", T0 + 100 + 50)


# ---------------------------------------------------------------------- leases and time


def test_lease_is_still_held_a_millisecond_before_it_expires(table: LockTable) -> None:
    lease = lock(table, "a", timeout=60)
    assert table.expire(T0 + 60 - 0.001) == 0
    assert table.lookup(T0, lease.token) == lease


def test_lease_ends_at_exactly_expires_at(table: LockTable) -> None:
    lease = lock(table, "a", timeout=60)
    assert table.expire(T0 + 60) == 1
    assert table.lease(lease.lock_id) is None
    [change] = [c for c in table.changes if isinstance(c, EndLease)]
    assert change.lease == lease
    assert change.ended.reason == "expired"
    assert change.ended.at == T0 + 60


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda t, now, tok: lock(t, "a", "bob", now=now), id="acquire"),
        pytest.param(lambda t, now, tok: t.status(now, "a"), id="status"),
        pytest.param(lambda t, now, tok: t.page(now), id="page"),
        pytest.param(lambda t, now, tok: t.release(now, tok), id="release-other"),
        pytest.param(lambda t, now, tok: t.renew(now, tok), id="renew-other"),
    ],
)
def test_every_operation_expires_due_leases_first(table: LockTable, operation: Any) -> None:
    due = lock(table, "a", "alice", timeout=60)
    other = lock(table, "b", "carol", timeout=600)
    operation(table, T0 + 60, other.token)
    assert table.lease(due.lock_id) is None
    with pytest.raises(LockExpired):
        table.lookup(T0, due.token)


def test_lease_expiry_grants_the_waiters_it_frees(table: LockTable) -> None:
    lock(table, "a", "bob", timeout=20)
    wid = enqueue(table, "a", "alice", wait=60)
    table.expire(T0 + 20)
    [(got, outcome)] = drain(table)
    assert got == wid
    assert isinstance(outcome, Granted)
    assert outcome.leases[0].acquired_at == T0 + 20


def test_renew_restarts_the_lease_from_now(table: LockTable) -> None:
    lease = lock(table, "a", timeout=60)
    renewed = table.renew(T0 + 50, lease.token)
    assert renewed.expires_at == T0 + 110
    assert (renewed.lock_id, renewed.token, renewed.fence, renewed.acquired_at) == (
        lease.lock_id,
        lease.token,
        lease.fence,
        lease.acquired_at,
    )
    table.expire(T0 + 60)
    assert table.lease(lease.lock_id) == renewed
    table.expire(T0 + 110)
    assert table.lease(lease.lock_id) is None


def test_renew_with_a_timeout_uses_it_from_then_on(table: LockTable) -> None:
    lease = lock(table, "a", timeout=60)
    renewed = table.renew(T0 + 10, lease.token, timeout=300)
    assert (renewed.expires_at, renewed.timeout) == (T0 + 310, 300)
    again = table.renew(T0 + 20, lease.token)
    assert again.expires_at == T0 + 320


def test_next_deadline_is_none_for_an_empty_table(table: LockTable) -> None:
    assert table.next_deadline() is None


def test_next_deadline_reports_the_earliest_lease_expiry_or_wait_deadline(table: LockTable) -> None:
    lock(table, "a", "bob", timeout=60)
    lock(table, "b", "bob", timeout=30)
    assert table.next_deadline() == T0 + 30
    wid = enqueue(table, "a", "alice", wait=10)
    assert table.next_deadline() == T0 + 10
    table.cancel(T0, wid)
    assert table.next_deadline() == T0 + 30


def test_next_deadline_follows_a_renewed_lease(table: LockTable) -> None:
    lease = lock(table, "a", timeout=30)
    table.renew(T0 + 20, lease.token, timeout=100)
    assert table.next_deadline() == T0 + 120
    table.release(T0 + 21, lease.token)
    assert table.next_deadline() is None


# ---------------------------------------------------------------------- tokens


def test_releasing_twice_says_already_released(table: LockTable) -> None:
    lease = lock(table, "a")
    released, held_ms = table.release(T0 + 2, lease.token)
    assert released == lease
    assert held_ms == 2000
    with pytest.raises(LockNotFound) as ei:
        table.release(T0 + 3, lease.token)
    assert "already released" in ei.value.message
    assert ei.value.details["lock_id"] == lease.lock_id
    assert "token" not in ei.value.details


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda t, le: t.release(T0 + 100, le.token), id="release"),
        pytest.param(lambda t, le: t.renew(T0 + 100, le.token), id="renew"),
        pytest.param(lambda t, le: t.lookup(T0 + 100, le.token), id="lookup"),
        pytest.param(lambda t, le: change_mode(t, le, "write", now=T0 + 100), id="upgrade"),
    ],
)
def test_expired_token_raises_lock_expired_with_expired_at(table: LockTable, use: Any) -> None:
    lease = lock(table, "a", "alice", "read", timeout=60)
    table.expire(T0 + 60)
    with pytest.raises(LockExpired) as ei:
        use(table, lease)
    assert ei.value.details["expired_at"] == "2027-01-15T08:01:00Z"
    assert ei.value.details["lock_id"] == lease.lock_id
    assert str(ei.value).startswith("LOCK_EXPIRED:")


def test_unknown_token_raises_lock_not_found(table: LockTable) -> None:
    with pytest.raises(LockNotFound) as ei:
        table.release(T0, "mlt_never-issued")
    assert "already released" not in ei.value.message
    assert "'ws'" in ei.value.message


@pytest.mark.parametrize("token", ["", None, 42])
def test_missing_or_non_string_token_is_invalid(table: LockTable, token: Any) -> None:
    with pytest.raises(InvalidArgument) as ei:
        table.release(T0, token)
    assert ei.value.details["field"] == "token"


def test_release_with_the_wrong_node_id_is_invalid_and_keeps_the_lock(table: LockTable) -> None:
    lease = lock(table, "a")
    with pytest.raises(InvalidArgument) as ei:
        table.release(T0, lease.token, node_id="b")
    assert ei.value.details == {"field": "node_id", "node_id": "a"}
    assert table.lease(lease.lock_id) == lease


def test_release_with_the_right_node_id_releases(table: LockTable) -> None:
    lease = lock(table, "a")
    table.release(T0, lease.token, node_id="a")
    assert len(table) == 0


def test_ended_tokens_are_forgotten_after_the_retention_period() -> None:
    table = LockTable("ws", limits=Limits(retention=100))
    lease = lock(table, "a")
    table.release(T0, lease.token)
    table.expire(T0 + 100)
    with pytest.raises(LockNotFound, match="already released"):
        table.lookup(T0, lease.token)
    table.expire(T0 + 101.5)  # retention is checked at most once a second
    assert any(isinstance(c, Prune) for c in table.changes)
    with pytest.raises(LockNotFound) as ei:
        table.lookup(T0, lease.token)
    assert "already released" not in ei.value.message


# ---------------------------------------------------------------------- lock_files (several items)


def test_several_items_are_granted_together_with_one_lease_each(table: LockTable) -> None:
    out = acquire_many(table, ("a", "write", "node"), ("b", "read", "node"), ("src", "write", "tree"))
    assert isinstance(out, Granted)
    assert [(le.node_id, le.mode, le.depth) for le in out.leases] == [
        ("a", "write", "node"),
        ("b", "read", "node"),
        ("src", "write", "tree"),
    ]
    assert len({le.token for le in out.leases}) == 3


def test_several_items_are_all_or_nothing_with_wait_0(table: LockTable) -> None:
    lock(table, "b", "bob")
    table.changes.clear()
    with pytest.raises(Locked) as ei:
        acquire_many(table, ("a", "write", "node"), ("b", "write", "node"), ("c", "write", "node"))
    assert ei.value.details["node_id"] == "b"
    assert [le.owner for le in table.leases()] == ["bob"]
    assert table.changes == []
    lock(table, "a", "carol")
    lock(table, "c", "carol")


def test_waiting_multi_item_request_holds_nothing_until_every_item_is_free(table: LockTable) -> None:
    held_a = lock(table, "a", "zed")
    held_b = lock(table, "b", "zed")
    out = acquire_many(table, ("a", "write", "node"), ("b", "write", "node"), wait=30)
    assert isinstance(out, Queued)
    table.release(T0 + 1, held_a.token)
    assert table.outcomes == []
    assert [le.owner for le in table.leases()] == ["zed"]
    table.release(T0 + 2, held_b.token)
    [(wid, outcome)] = drain(table)
    assert wid == out.waiter_id
    assert isinstance(outcome, Granted)
    assert sorted(le.node_id for le in outcome.leases) == ["a", "b"]


@pytest.mark.parametrize(
    ("claims", "bad_index"),
    [
        ([("a", "write", "node"), ("a", "write", "node")], 1),
        ([("a", "read", "node"), ("a", "read", "node")], 1),
        ([("src", "read", "tree"), ("src/a", "read", "node")], 1),
        ([("src/a", "write", "node"), ("src", "write", "tree")], 1),
        ([("x", "write", "node"), ("src", "write", "tree"), ("src/a/b", "read", "tree")], 2),
        ([("src", "write", "tree"), ("src", "read", "node")], 1),
    ],
)
def test_overlapping_items_in_one_request_are_invalid(
    table: LockTable, claims: list[tuple[str, str, str]], bad_index: int
) -> None:
    with pytest.raises(InvalidArgument) as ei:
        acquire_many(table, *claims)
    assert ei.value.details["field"] == f"items[{bad_index}]"
    assert len(table) == 0


def test_items_that_only_share_a_name_prefix_do_not_overlap(table: LockTable) -> None:
    out = acquire_many(table, ("src", "write", "tree"), ("src2", "write", "node"), ("src-x", "write", "tree"))
    assert isinstance(out, Granted)


def test_two_overlapping_multi_item_waiters_never_deadlock_and_are_granted_in_order(table: LockTable) -> None:
    held_a = lock(table, "a", "zed")
    held_b = lock(table, "b", "zed")
    first = acquire_many(table, ("a", "write", "node"), ("b", "write", "node"), owner="alice", wait=30)
    second = acquire_many(table, ("b", "write", "node"), ("a", "write", "node"), owner="bob", wait=30)
    assert isinstance(first, Queued)
    assert isinstance(second, Queued)
    table.release(T0 + 1, held_a.token)
    assert table.outcomes == []
    table.release(T0 + 2, held_b.token)
    [(wid, outcome)] = drain(table)
    assert wid == first.waiter_id
    assert isinstance(outcome, Granted)
    for le in outcome.leases:
        table.release(T0 + 3, le.token)
    [(wid, outcome)] = drain(table)
    assert wid == second.waiter_id
    assert isinstance(outcome, Granted)
    assert {le.owner for le in outcome.leases} == {"bob"}


# ---------------------------------------------------------------------- upgrade and downgrade


def test_sole_reader_upgrades_at_once_with_the_same_id_and_token_and_a_new_larger_fence(table: LockTable) -> None:
    read = lock(table, "a", "alice", "read")
    lock(table, "other", "bob")
    out = change_mode(table, read, "write", now=T0 + 5)
    assert isinstance(out, Granted)
    (up,) = out.leases
    assert (up.lock_id, up.token, up.mode) == (read.lock_id, read.token, "write")
    assert up.fence > read.fence
    assert up.fence == table.fence_next - 1
    assert table.lease(read.lock_id) == up
    assert len(table) == 2
    with pytest.raises(Locked):
        acquire(table, "a", "carol", "read")


def test_upgrade_waits_while_another_reader_holds_and_keeps_the_read_lock(table: LockTable) -> None:
    read = lock(table, "a", "alice", "read")
    lock(table, "a", "bob", "read")
    out = change_mode(table, read, "write", wait=30)
    assert isinstance(out, Queued)
    assert table.lease(read.lock_id) == read
    assert table.lookup(T0, read.token).mode == "read"
    assert table.status(T0, "a").waiters[0].upgrade


def test_waiting_upgrade_is_granted_when_the_other_reader_releases(table: LockTable) -> None:
    read = lock(table, "a", "alice", "read")
    other = lock(table, "a", "bob", "read")
    out = change_mode(table, read, "write", wait=30)
    assert isinstance(out, Queued)
    table.release(T0 + 4, other.token)
    [(wid, outcome)] = drain(table)
    assert wid == out.waiter_id
    assert isinstance(outcome, Granted)
    (up,) = outcome.leases
    assert (up.lock_id, up.token, up.mode) == (read.lock_id, read.token, "write")
    assert up.fence > read.fence
    assert up.waited_ms == 4000


def test_waiting_upgrade_goes_ahead_of_a_writer_queued_earlier(table: LockTable) -> None:
    read = lock(table, "a", "alice", "read")
    other = lock(table, "a", "bob", "read")
    writer = enqueue(table, "a", "carol", "write")
    up = change_mode(table, read, "write", wait=30)
    assert isinstance(up, Queued)
    assert [w.owner for w in table.status(T0, "a").waiters] == ["alice", "carol"]
    table.release(T0 + 1, other.token)
    [(wid, outcome)] = drain(table)
    assert wid == up.waiter_id
    assert isinstance(outcome, Granted)
    assert table.has_waiter(writer)


def test_upgrade_with_wait_0_raises_locked_and_keeps_the_read_lock(table: LockTable) -> None:
    read = lock(table, "a", "alice", "read")
    lock(table, "a", "bob", "read")
    with pytest.raises(Locked) as ei:
        change_mode(table, read, "write")
    assert "Your read lock is kept" in ei.value.message
    assert [h["owner"] for h in ei.value.details["holders"]] == ["bob"]
    assert table.lease(read.lock_id) == read
    assert table.waiter_count == 0


def test_two_readers_both_upgrading_the_second_gets_deadlock(table: LockTable) -> None:
    a = lock(table, "a", "alice", "read")
    b = lock(table, "a", "bob", "read")
    assert isinstance(change_mode(table, a, "write", wait=30), Queued)
    with pytest.raises(Deadlock):
        change_mode(table, b, "write", wait=30)
    assert table.lease(b.lock_id) == b
    assert table.waiter_count == 1


def test_second_upgrade_of_a_lock_whose_upgrade_already_waits_is_invalid(table: LockTable) -> None:
    read = lock(table, "a", "alice", "read")
    lock(table, "a", "bob", "read")
    change_mode(table, read, "write", wait=30)
    with pytest.raises(InvalidArgument) as ei:
        change_mode(table, read, "write", wait=30)
    assert ei.value.details["field"] == "token"


@pytest.mark.parametrize(
    ("end", "error"),
    [
        pytest.param(lambda t, le: t.release(T0 + 1, le.token), LockNotFound, id="released"),
        pytest.param(lambda t, le: t.expire(T0 + 60), LockExpired, id="expired"),
    ],
)
def test_waiting_upgrade_fails_when_its_read_lock_ends(table: LockTable, end: Any, error: type[LockError]) -> None:
    read = lock(table, "a", "alice", "read", timeout=60)
    lock(table, "a", "bob", "read", timeout=600)
    out = change_mode(table, read, "write", wait=300)
    assert isinstance(out, Queued)
    end(table, read)
    [(wid, outcome)] = drain(table)
    assert wid == out.waiter_id
    assert isinstance(outcome, error)
    assert table.waiter_count == 0


def test_downgrade_is_immediate_and_lets_queued_readers_in(table: LockTable) -> None:
    write = lock(table, "a", "alice", "write")
    readers = [enqueue(table, "a", owner, "read") for owner in ("bob", "carol")]
    out = change_mode(table, write, "read", now=T0 + 1)
    assert isinstance(out, Granted)
    (down,) = out.leases
    assert (down.lock_id, down.token, down.mode, down.fence) == (write.lock_id, write.token, "read", write.fence)
    outcomes = drain(table)
    assert [wid for wid, _ in outcomes] == readers
    assert granted_owners(outcomes) == ["bob", "carol"]


def test_downgrade_does_not_let_a_queued_writer_in(table: LockTable) -> None:
    write = lock(table, "a", "alice", "write")
    enqueue(table, "a", "bob", "write")
    change_mode(table, write, "read")
    assert table.outcomes == []


@pytest.mark.parametrize("mode", ["read", "write"])
def test_presenting_a_token_with_its_own_mode_restarts_the_lease(table: LockTable, mode: str) -> None:
    lease = lock(table, "a", "alice", mode, timeout=60)
    out = change_mode(table, lease, mode, now=T0 + 50, timeout=120)
    assert isinstance(out, Granted)
    (again,) = out.leases
    assert (again.lock_id, again.token, again.fence, again.mode) == (lease.lock_id, lease.token, lease.fence, mode)
    assert again.expires_at == T0 + 170
    table.expire(T0 + 60)
    assert table.lease(lease.lock_id) == again


@pytest.mark.parametrize(
    "claim",
    [Claim("b", "write", "node"), Claim("a", "write", "tree"), Claim("a/x", "read", "node")],
)
def test_token_with_a_different_node_or_depth_is_invalid(table: LockTable, claim: Claim) -> None:
    lease = lock(table, "a", "alice", "read")
    with pytest.raises(InvalidArgument) as ei:
        table.acquire(T0, [claim], owner="alice", timeout=60, token=lease.token)
    assert ei.value.details["field"] == "token"
    assert table.lease(lease.lock_id) == lease


def test_token_with_several_items_is_invalid(table: LockTable) -> None:
    lease = lock(table, "a", "alice", "read")
    with pytest.raises(InvalidArgument) as ei:
        acquire_many(table, ("a", "write", "node"), ("b", "write", "node"), token=lease.token)
    assert ei.value.details["field"] == "token"


# ---------------------------------------------------------------------- deadlock


def test_two_owners_waiting_for_each_other_is_refused_at_once_with_a_hint(table: LockTable) -> None:
    lock(table, "x", "alice")
    lock(table, "y", "bob")
    enqueue(table, "y", "alice")
    with pytest.raises(Deadlock) as ei:
        acquire(table, "x", "bob", wait=30)
    err = ei.value
    assert str(err).startswith("DEADLOCK:")
    assert err.hint
    assert err.details["cycle"] == ["bob", "alice", "bob"]
    assert table.waiter_count == 1


def test_three_owner_cycle_through_a_queued_writer_is_refused(table: LockTable) -> None:
    lock(table, "a", "alice", "read")
    enqueue(table, "a", "bob", "write")  # bob waits for alice
    lock(table, "c", "carol")
    enqueue(table, "c", "alice")  # alice waits for carol
    with pytest.raises(Deadlock) as ei:  # carol's read of 'a' would wait behind bob
        acquire(table, "a", "carol", "read", wait=30)
    assert ei.value.details["cycle"] == ["carol", "bob", "alice", "carol"]
    assert "would close a cycle" in ei.value.message


def test_three_owner_cycle_through_held_locks_is_refused(table: LockTable) -> None:
    for owner, node in (("alice", "a"), ("bob", "b"), ("carol", "c")):
        lock(table, node, owner)
    enqueue(table, "b", "alice")
    enqueue(table, "c", "bob")
    with pytest.raises(Deadlock):
        acquire(table, "a", "carol", wait=30)


@pytest.mark.parametrize(("held", "wanted"), [("write", "write"), ("write", "read"), ("read", "write")])
@pytest.mark.parametrize(("depth", "node"), [("node", "src"), ("tree", "src/a")])
def test_owner_asking_with_wait_for_a_node_it_holds_gets_deadlock(
    table: LockTable, held: str, wanted: str, depth: str, node: str
) -> None:
    lock(table, "src", "alice", held, depth)
    with pytest.raises(Deadlock) as ei:
        acquire(table, node, "alice", wanted, wait=30)
    assert ei.value.details["cycle"] == ["alice", "alice"]
    assert "token" in ei.value.hint
    assert table.waiter_count == 0


def test_waiting_for_an_unrelated_owner_is_not_a_deadlock(table: LockTable) -> None:
    lock(table, "x", "alice")
    lock(table, "y", "bob")
    enqueue(table, "y", "alice")
    enqueue(table, "y", "carol")
    enqueue(table, "x", "carol")


def test_anonymous_owners_never_get_deadlock(table: LockTable) -> None:
    held_x = lock(table, "x", ANONYMOUS)
    lock(table, "y", ANONYMOUS)
    enqueue(table, "y", ANONYMOUS)
    enqueue(table, "x", ANONYMOUS)
    enqueue(table, "x", ANONYMOUS, "read")
    assert table.waiter_count == 3
    table.release(T0 + 1, held_x.token)
    assert len(drain(table)) == 1


# ---------------------------------------------------------------------- request_id


def test_retry_with_the_same_request_id_replays_the_grant_and_takes_no_second_lock(table: LockTable) -> None:
    first = acquire(table, "a", "alice", request_id="r1")
    assert isinstance(first, Granted)
    assert not first.replayed
    assert sum(isinstance(c, PutRequest) for c in table.changes) == 1
    table.changes.clear()
    again = acquire(table, "a", "alice", request_id="r1", now=T0 + 1)
    assert again == Granted(first.leases, replayed=True)
    assert len(table) == 1
    assert table.changes == []


def test_a_retry_after_the_grant_ended_says_so_instead_of_replaying_a_dead_token(table: LockTable) -> None:
    first = acquire(table, "a", "alice", request_id="r1")
    assert isinstance(first, Granted)
    table.release(T0 + 1, first.leases[0].token)
    with pytest.raises(LockNotFound, match="already released") as e:
        acquire(table, "a", "alice", request_id="r1", now=T0 + 2)
    assert "new request_id" in e.value.hint
    assert len(table) == 0


def test_a_forgotten_request_id_makes_the_retry_a_new_request(table: LockTable) -> None:
    first = acquire(table, "a", "alice", request_id="r1")
    assert isinstance(first, Granted)
    table.release(T0 + 1, first.leases[0].token)
    table.forget_request("alice", "r1")  # the grant was given back before its caller saw it
    again = acquire(table, "a", "alice", request_id="r1", now=T0 + 2)
    assert isinstance(again, Granted)
    assert not again.replayed
    assert again.leases[0].lock_id != first.leases[0].lock_id


def test_replay_shows_the_lease_as_it_is_now(table: LockTable) -> None:
    first = acquire(table, "a", "alice", request_id="r1")
    assert isinstance(first, Granted)
    renewed = table.renew(T0 + 10, first.leases[0].token)
    again = acquire(table, "a", "alice", request_id="r1", now=T0 + 11)
    assert again == Granted((renewed,), replayed=True)


def test_retry_while_the_first_still_waits_joins_it(table: LockTable) -> None:
    lock(table, "a", "bob")
    first = acquire(table, "a", "alice", wait=30, request_id="r1")
    assert isinstance(first, Queued)
    again = acquire(table, "a", "alice", wait=30, request_id="r1", now=T0 + 1)
    assert again == Queued(first.waiter_id, joined=True)
    assert table.waiter_count == 1


def test_retry_after_a_queued_request_was_granted_replays_that_grant(table: LockTable) -> None:
    held = lock(table, "a", "bob")
    first = acquire(table, "a", "alice", wait=30, request_id="r1")
    assert isinstance(first, Queued)
    table.release(T0 + 1, held.token)
    [(wid, outcome)] = drain(table)
    assert wid == first.waiter_id
    assert isinstance(outcome, Granted)
    again = acquire(table, "a", "alice", wait=30, request_id="r1", now=T0 + 2)
    assert again == Granted(outcome.leases, replayed=True)
    assert len(table) == 1


@pytest.mark.parametrize("waiting", [False, True], ids=["granted", "waiting"])
def test_same_request_id_with_different_items_is_invalid(table: LockTable, waiting: bool) -> None:
    if waiting:
        lock(table, "a", "bob")
    acquire(table, "a", "alice", wait=30, request_id="r1")
    with pytest.raises(InvalidArgument) as ei:
        acquire(table, "b", "alice", wait=30, request_id="r1")
    assert ei.value.details["field"] == "request_id"


def test_another_owner_with_the_same_request_id_is_a_separate_request(table: LockTable) -> None:
    mine = acquire(table, "a", "alice", "read", request_id="r1")
    theirs = acquire(table, "a", "bob", "read", request_id="r1")
    assert isinstance(mine, Granted)
    assert isinstance(theirs, Granted)
    assert not theirs.replayed
    assert mine.leases[0].lock_id != theirs.leases[0].lock_id
    assert len(table) == 2


def test_a_request_that_was_refused_is_evaluated_again_on_retry(table: LockTable) -> None:
    held = lock(table, "a", "bob")
    with pytest.raises(Locked):
        acquire(table, "a", "alice", request_id="r1")
    table.release(T0 + 1, held.token)
    again = acquire(table, "a", "alice", request_id="r1", now=T0 + 2)
    assert isinstance(again, Granted)
    assert not again.replayed


# ---------------------------------------------------------------------- fences


def test_fences_strictly_increase_with_every_grant_and_upgrade(table: LockTable) -> None:
    fences = [lock(table, "a", "alice", "read").fence]
    fences.append(lock(table, "b").fence)
    many = acquire_many(table, ("c", "write", "node"), ("d", "write", "node"))
    assert isinstance(many, Granted)
    fences += [le.fence for le in many.leases]
    read = lock(table, "e", "alice", "read")
    fences.append(read.fence)
    up = change_mode(table, read, "write")
    assert isinstance(up, Granted)
    fences.append(up.leases[0].fence)
    assert fences == sorted(set(fences))
    assert fences[0] == 1


def test_fences_keep_growing_after_locks_end(table: LockTable) -> None:
    first = lock(table, "a")
    table.release(T0, first.token)
    second = lock(table, "a")
    assert second.fence > first.fence


def test_reserve_fences_is_recorded_before_the_first_fence_of_each_block() -> None:
    table = LockTable("ws", limits=Limits(fence_block=3))
    for i in range(7):
        lock(table, f"n{i}")
    reserved = [(c.upto, i) for i, c in enumerate(table.changes) if isinstance(c, ReserveFences)]
    assert [upto for upto, _ in reserved] == [3, 6, 9]
    puts = [c for c in table.changes if isinstance(c, PutLease)]
    for upto, at in reserved:
        first_of_block = upto - 2
        put_at = next(
            i for i, c in enumerate(table.changes) if isinstance(c, PutLease) and c.lease.fence == first_of_block
        )
        assert at < put_at
    assert [p.lease.fence for p in puts] == list(range(1, 8))


def test_table_from_a_previous_run_continues_above_its_reserved_fences() -> None:
    table = LockTable("ws", limits=Limits(fence_block=100), fence_next=5001, fence_reserved=5000)
    lease = lock(table, "a")
    assert lease.fence == 5001
    assert ReserveFences(5100) in table.changes


def test_table_inside_a_reserved_block_needs_no_new_reservation() -> None:
    table = LockTable("ws", fence_next=42, fence_reserved=100)
    assert lock(table, "a").fence == 42
    assert not any(isinstance(c, ReserveFences) for c in table.changes)


# ---------------------------------------------------------------------- limits


def test_max_locks_is_enforced() -> None:
    table = LockTable("ws", limits=Limits(max_locks=2))
    lock(table, "a")
    lock(table, "b")
    with pytest.raises(LimitExceeded) as ei:
        lock(table, "c")
    assert ei.value.details["limit"] == 2
    assert len(table) == 2


def test_max_locks_counts_every_item_of_a_request() -> None:
    table = LockTable("ws", limits=Limits(max_locks=2))
    lock(table, "a")
    with pytest.raises(LimitExceeded):
        acquire_many(table, ("b", "write", "node"), ("c", "write", "node"))
    assert len(table) == 1


def test_waiters_granted_on_release_never_push_the_table_past_max_locks() -> None:
    table = LockTable("ws", limits=Limits(max_locks=2))
    held = lock(table, "src", "zed", "write", "tree")
    for i in range(3):
        with contextlib.suppress(LimitExceeded):  # refusing to queue beyond the limit would be a fine fix too
            enqueue(table, f"src/{i}", f"agent{i}")
    table.release(T0 + 1, held.token)
    assert len(table) <= 2


def test_max_waiters_refuses_the_waiter_beyond_the_limit() -> None:
    table = LockTable("ws", limits=Limits(max_waiters=1))
    lock(table, "a", "bob")
    enqueue(table, "a", "alice")
    with pytest.raises(LimitExceeded) as ei:
        acquire(table, "a", "carol", wait=30)
    assert ei.value.details["limit"] == 1
    assert table.waiter_count == 1


# ---------------------------------------------------------------------- changes


def test_grant_records_put_lease(table: LockTable) -> None:
    lease = lock(table, "a")
    assert table.changes[-1] == PutLease(lease)


def test_release_records_end_lease_with_reason_released(table: LockTable) -> None:
    lease = lock(table, "a")
    table.changes.clear()
    table.release(T0 + 3, lease.token)
    [change] = table.changes
    assert isinstance(change, EndLease)
    assert change.lease == lease
    assert (change.ended.lock_id, change.ended.node_id, change.ended.owner) == (lease.lock_id, "a", "alice")
    assert (change.ended.reason, change.ended.at) == ("released", T0 + 3)
    assert lease.token not in repr(change.ended)


def test_renew_records_put_lease_with_the_new_expiry(table: LockTable) -> None:
    lease = lock(table, "a", timeout=60)
    table.changes.clear()
    renewed = table.renew(T0 + 30, lease.token)
    assert table.changes == [PutLease(renewed)]
    assert renewed.expires_at == T0 + 90


def test_refused_requests_record_no_changes(table: LockTable) -> None:
    lock(table, "a", "bob")
    table.changes.clear()
    with pytest.raises(Locked):
        acquire(table, "a", "alice")
    enqueue(table, "a", "alice")
    assert table.changes == []


# ---------------------------------------------------------------------- status


def test_status_of_a_free_node(table: LockTable) -> None:
    status = table.status(T0, "a")
    assert (status.holders, status.covering, status.waiters, status.locks_below) == ((), (), (), 0)
    assert not status.locked
    assert status.mode is None


def test_status_shows_holders_covering_tree_locks_waiters_and_locks_below(table: LockTable) -> None:
    tree = lock(table, "src", "zed", "read", "tree")
    mine = lock(table, "src/a", "alice", "read")
    lock(table, "src/a/deep", "bob", "read")
    lock(table, "src/a/deeper/x", "bob", "read")
    lock(table, "elsewhere", "bob")
    enqueue(table, "elsewhere", "carol", now=T0 + 1)
    enqueue(table, "src/a", "carol", "write", now=T0 + 2)
    enqueue(table, "src", "dave", "write", "tree", now=T0 + 3)
    status = table.status(T0 + 4, "src/a")
    assert status.holders == (mine,)
    assert status.covering == (tree,)
    assert [(w.position, w.owner, w.node_id, w.mode, w.depth, w.waiting_since, w.upgrade) for w in status.waiters] == [
        (2, "carol", "src/a", "write", "node", T0 + 2, False),
        (3, "dave", "src", "write", "tree", T0 + 3, False),
    ]
    assert status.locks_below == 2
    assert status.locked
    assert status.mode == "read"


def test_status_mode_is_write_when_any_covering_lock_writes(table: LockTable) -> None:
    lock(table, "src", "zed", "write", "tree")
    status = table.status(T0, "src/a")
    assert status.holders == ()
    assert status.mode == "write"


def test_status_shows_a_multi_item_waiter_with_the_item_for_that_node(table: LockTable) -> None:
    lock(table, "docs", "zed")
    out = acquire_many(table, ("lib", "write", "tree"), ("docs", "write", "node"), owner="alice", wait=30)
    assert isinstance(out, Queued)
    [view] = table.status(T0, "docs").waiters
    assert (view.node_id, view.depth) == ("docs", "node")


# ---------------------------------------------------------------------- page


def test_page_filters_by_string_prefix(table: LockTable) -> None:
    for node in ("src", "src/a", "src2", "srcx/y", "lib/src", "sr"):
        lock(table, node, "alice", "read")
    leases, cursor = table.page(T0, prefix="src")
    assert [le.node_id for le in leases] == ["src", "src/a", "src2", "srcx/y"]
    assert cursor is None
    leases, _ = table.page(T0, prefix="src/")
    assert [le.node_id for le in leases] == ["src/a"]


def test_page_filters_by_owner(table: LockTable) -> None:
    lock(table, "a", "alice", "read")
    lock(table, "a", "bob", "read")
    lock(table, "b", "bob")
    leases, _ = table.page(T0, owner="bob")
    assert [(le.node_id, le.owner) for le in leases] == [("a", "bob"), ("b", "bob")]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("owner", [None, "bob"])
def test_paging_with_the_cursor_visits_each_lease_once_in_node_and_lock_id_order(
    table: LockTable, limit: int, owner: str | None
) -> None:
    for i, node in enumerate(["b", "a", "c/x", "a", "c", "b", "a/z", "a", "d", "c/x"]):
        lock(table, node, "bob" if i % 3 else "alice", "read")
    expected = sorted((le.node_id, le.lock_id) for le in table.leases() if owner in (None, le.owner))
    seen: list[tuple[str, str]] = []
    cursor = None
    for _ in range(100):
        leases, cursor = table.page(T0, prefix="", owner=owner, limit=limit, after=cursor)
        assert len(leases) <= limit
        seen += [(le.node_id, le.lock_id) for le in leases]
        if cursor is None:
            break
    assert cursor is None
    assert seen == expected


# ---------------------------------------------------------------------- restore


def _history() -> tuple[LockTable, dict[str, Lease], list[Ended]]:
    table = LockTable("ws")
    held = lock(table, "held", "alice", timeout=600)
    released = lock(table, "released", "bob")
    expired = lock(table, "expired", "carol", timeout=10)
    table.release(T0 + 1, released.token)
    table.expire(T0 + 10)
    ended = [c.ended for c in table.changes if isinstance(c, EndLease)]
    return table, {"held": held, "released": released, "expired": expired}, ended


def _restored(table: LockTable, ended: list[Ended]) -> LockTable:
    fresh = LockTable("ws")
    fresh.restore(table.leases(), reversed(ended))
    return fresh


def test_restore_records_no_changes() -> None:
    old, _, ended = _history()
    fresh = _restored(old, ended)
    assert fresh.changes == []
    assert fresh.leases() == old.leases()


@pytest.mark.parametrize("which", ["held", "released", "expired", "unknown"])
def test_restored_table_answers_tokens_the_same_way(which: str) -> None:
    old, leases, ended = _history()
    fresh = _restored(old, ended)
    token = leases[which].token if which != "unknown" else "mlt_unknown"

    def answer(t: LockTable) -> Any:
        try:
            return t.lookup(T0, token)
        except LockError as e:
            return type(e), e.message, e.details

    assert answer(fresh) == answer(old)
    if which == "held":
        fresh.release(T0 + 20, token)
        with pytest.raises(LockNotFound, match="already released"):
            fresh.lookup(T0, token)


def test_restored_leases_still_conflict_and_expire() -> None:
    old, leases, ended = _history()
    fresh = _restored(old, ended)
    with pytest.raises(Locked):
        acquire(fresh, "held", "bob", now=T0 + 20)
    fresh.expire(T0 + 600)
    with pytest.raises(LockExpired):
        fresh.lookup(T0, leases["held"].token)


def test_restore_continues_fences_above_every_restored_lease() -> None:
    old = LockTable("ws", fence_next=41)
    held = lock(old, "a")
    fresh = LockTable("ws")
    fresh.restore([held])
    assert lock(fresh, "b").fence == 42


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "node_id",
    [
        "a",
        "reports/q3.md",
        "src/a/b/c.py",
        ".hidden",
        "a/..b/c..",
        "a/.../b",
        "with space/and-dash_and.dot",
        "ünïcødé/日本語.txt",
        "x" * MAX_NODE_ID_BYTES,
        "é" * (MAX_NODE_ID_BYTES // 2),
    ],
)
def test_clean_relative_paths_are_accepted(node_id: str) -> None:
    assert check_node_id(node_id) == node_id


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (None, "must be a string"),
        (42, "must be a string"),
        (b"a/b", "must be a string"),
        (["a"], "must be a string"),
        ("", "must not be empty"),
        ("a\x00b", "must not contain control characters"),
        ("a\nb", "must not contain control characters"),
        ("a\tb", "must not contain control characters"),
        ("a\x1fb", "must not contain control characters"),
        ("a\x7fb", "must not contain control characters"),
        ("a\ud800b", "must be valid UTF-8"),
        ("x" * (MAX_NODE_ID_BYTES + 1), "must be at most 1024 bytes of UTF-8 (got 1025)"),
        ("é" * 513, "must be at most 1024 bytes of UTF-8 (got 1026)"),
        ("日" * 342, "must be at most 1024 bytes of UTF-8 (got 1026)"),
        ("/abs", "must be relative: no leading '/'"),
        ("/", "must be relative: no leading '/'"),
        ("a//b", "must not have empty segments ('//' or a trailing '/')"),
        ("a/", "must not have empty segments ('//' or a trailing '/')"),
        ("../x", "must not have '.' or '..' segments"),
        ("a/../b", "must not have '.' or '..' segments"),
        ("a/./b", "must not have '.' or '..' segments"),
        (".", "must not have '.' or '..' segments"),
        ("a/..", "must not have '.' or '..' segments"),
    ],
)
def test_bad_node_ids_are_rejected_naming_the_field_and_the_rule(value: object, rule: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        check_node_id(value, field="items[0].node_id")
    assert ei.value.details == {"field": "items[0].node_id", "rule": rule}
    assert ei.value.message == f"items[0].node_id {rule}."
    assert str(ei.value).startswith("INVALID_ARGUMENT:")


def test_node_id_rejection_names_node_id_by_default() -> None:
    with pytest.raises(InvalidArgument) as ei:
        check_node_id("../x")
    assert ei.value.details["field"] == "node_id"


@pytest.mark.parametrize("workspace_id", ["default", "a", "team-1", "a_b", "0", "x" * 63])
def test_good_workspace_ids_are_accepted(workspace_id: str) -> None:
    assert check_workspace_id(workspace_id) == workspace_id


def test_missing_workspace_id_means_default() -> None:
    assert check_workspace_id(None) == "default"


@pytest.mark.parametrize("value", ["", "A", "Team", "x" * 64, "a b", "a/b", "a.b", "é", "a\x00", 1, b"ws", ["ws"]])
def test_bad_workspace_ids_are_rejected_naming_the_field_and_the_rule(value: object) -> None:
    with pytest.raises(InvalidArgument) as ei:
        check_workspace_id(value)
    assert ei.value.details == {"field": "workspace_id", "rule": "[a-z0-9_-]{1,63}"}


def test_a_waiter_whose_wait_ends_at_the_instant_the_lease_ends_is_granted(table: LockTable) -> None:
    held = lock(table, "a", "bob", timeout=20)
    wid = enqueue(table, "a", "alice", wait=20)  # both deadlines fall at T0 + 20
    table.expire(T0 + 25)
    [(got_wid, outcome)] = drain(table)
    assert got_wid == wid
    assert isinstance(outcome, Granted)
    assert outcome.leases[0].owner == "alice"
    assert table.lease(held.lock_id) is None


def test_a_page_that_ends_inside_a_node_resumes_at_that_node(table: LockTable) -> None:
    readers = [lock(table, "shared", owner, mode="read") for owner in ("a", "b", "c")]
    lock(table, "zzz")
    seen: list[str] = []
    after = None
    while True:
        page, after = table.page(T0, limit=1, after=after)
        seen += [le.lock_id for le in page]
        if after is None:
            break
    assert seen[:3] == sorted(le.lock_id for le in readers)
    assert len(seen) == 4


# ---------------------------------------------------------------------- owners, labels and breaking


@pytest.mark.parametrize("op", ["release", "renew", "upgrade"])
def test_a_token_works_only_with_the_key_that_took_the_lock_when_keys_are_checked(op: str) -> None:
    table = LockTable("ws")
    lease = lock(table, "a", "alice", mode="read", key_id="k-alice")
    calls = {
        # the same agent name with another key is refused too: the key, not the name, took the lock
        "release": lambda: table.release(T0, lease.token, as_key="k-alice-2"),
        "renew": lambda: table.renew(T0, lease.token, as_key="k-bob"),
        "upgrade": lambda: acquire(table, "a", "alice", "write", token=lease.token, as_key="k-bob"),
    }
    with pytest.raises(Forbidden) as e:
        calls[op]()
    assert e.value.details["owner"] == "alice"
    assert table.lease(lease.lock_id) == lease  # untouched
    assert table.release(T0, lease.token, as_key="k-alice")[0].lock_id == lease.lock_id


def test_a_label_rides_along_with_a_grant_and_a_queued_request() -> None:
    table = LockTable("ws")
    first = lock(table, "a", "alice", label="helper-1")
    wid = enqueue(table, "a", "bob", label="reviewer")
    assert first.label == "helper-1"
    assert [w.label for w in table.status(T0, "a").waiters] == ["reviewer"]
    table.release(T0, first.token)
    (granted,) = [o for w, o in table.outcomes if w == wid]
    assert isinstance(granted, Granted)
    assert (granted.leases[0].owner, granted.leases[0].label) == ("bob", "reviewer")


def test_breaking_a_lock_frees_its_waiters_and_its_token_then_answers_lock_broken() -> None:
    table = LockTable("ws")
    lease = lock(table, "a", "alice")
    wid = enqueue(table, "a", "bob")
    broken, _ = table.force_release(T0 + 5, lease.lock_id, "root", "stuck for an hour")
    assert broken.lock_id == lease.lock_id
    assert any(w == wid and isinstance(o, Granted) for w, o in table.outcomes)
    ended = [ch.ended for ch in table.changes if isinstance(ch, EndLease)]
    assert (ended[0].reason, ended[0].by, ended[0].why) == ("broken", "root", "stuck for an hour")
    assert [ev.kind for ev in table.events if ev.lock_id == lease.lock_id][-1] == "broken"
    with pytest.raises(LockBroken) as e:
        table.renew(T0 + 6, lease.token)
    assert "stuck for an hour" in e.value.message
    assert (e.value.details["broken_by"], e.value.details["reason"]) == ("root", "stuck for an hour")


def test_breaking_a_lock_that_is_not_held_says_so() -> None:
    table = LockTable("ws")
    lease = lock(table, "a")
    table.release(T0, lease.token)
    with pytest.raises(LockNotFound, match="already released"):
        table.force_release(T0, lease.lock_id, "root", "x")
    with pytest.raises(LockNotFound, match="no lock lk_missing"):
        table.force_release(T0, "lk_missing", "root", "x")


def test_a_waiter_granted_later_gets_its_own_key_and_label() -> None:
    table = LockTable("ws")
    first = lock(table, "a", "alice", key_id="k-alice")
    wid = enqueue(table, "a", "bob", key_id="k-bob", label="helper")
    table.release(T0, first.token, as_key="k-alice")
    (granted,) = [o for w, o in table.outcomes if w == wid]
    assert isinstance(granted, Granted)
    lease = granted.leases[0]
    assert (lease.owner, lease.key_id, lease.label) == ("bob", "k-bob", "helper")
    with pytest.raises(Forbidden):
        table.renew(T0, lease.token, as_key="k-alice")


def test_a_request_id_used_by_an_older_key_of_the_agent_is_not_replayed_to_a_new_one() -> None:
    table = LockTable("ws")
    lock(table, "a", "erin", key_id="k-old", request_id="job-17")
    with pytest.raises(InvalidArgument, match="another key"):
        acquire(table, "a", "erin", key_id="k-new", as_key="k-new", request_id="job-17")


def test_revoking_a_key_refuses_its_waiters_before_breaking_its_locks_so_none_of_them_is_granted() -> None:
    table = LockTable("ws")
    held = lock(table, "a", "bob/x", key_id="k-bob")
    mine = enqueue(table, "a", "bob/y", key_id="k-bob")  # another session of the same key waits behind it
    other = enqueue(table, "a", "carol", key_id="k-carol")
    broken, left = table.revoke_key(T0 + 5, "k-bob", "root", "key revoked")
    assert ([le.lock_id for le in broken], left) == ([held.lock_id], 1)
    outcomes = dict(table.outcomes)
    assert isinstance(outcomes[mine], Unauthenticated)
    assert isinstance(outcomes[other], Granted)
    assert outcomes[other].leases[0].owner == "carol"
    with pytest.raises(LockBroken) as e:
        table.renew(T0 + 6, held.token)
    assert (e.value.details["broken_by"], e.value.details["reason"]) == ("root", "key revoked")


@pytest.mark.parametrize("batch", [0, -1])
def test_an_expiry_storm_part_must_end_at_least_one_lease(batch: int) -> None:
    # A part that ends nothing would never finish a storm.
    with pytest.raises(ValueError, match="expire_batch"):
        Limits(expire_batch=batch)
