"""The history checker, on hand-made histories: the broken ones must fail, the sound ones must pass."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from bench.safety.checker import SLACK, check, linearizable
from bench.safety.history import Op
from mcp_locks.core.claims import Claim
from mcp_locks.core.errors import LockError
from mcp_locks.core.records import Granted
from mcp_locks.core.table import LockTable

LEASE = 10.0  # seconds; the hand-made histories span well under it unless a test is about expiry


class History:
    """Builds a history call by call; times are seconds from an arbitrary start."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.fence = 0

    def _add(self, kind: str, call: float, ret: float | None, args: dict[str, Any], ok: bool | None, out: Any) -> Op:
        op = Op(len(self.ops), args.pop("client", "a"), kind, call, math.inf if ret is None else ret, args, ok, out)  # type: ignore[arg-type]
        self.ops.append(op)
        return op

    def grant(self, call: float, ret: float, node: str, mode: str = "write", depth: str = "node", **kw: Any) -> str:
        self.fence += 1
        token = f"t{self.fence}"
        out = {"token": token, "lock_id": f"lk_{token}", "fence": kw.pop("fence", self.fence),
               "expires_at": kw.pop("expires", call + LEASE), "node": node, "mode": mode, "depth": depth,
               "owner": kw.get("client", "a")}  # fmt: skip
        self._add("lock", call, ret, {"node": node, "mode": mode, "depth": depth, **kw}, True, out)
        return token

    def refused(self, kind: str, call: float, ret: float, code: str, **args: Any) -> None:
        self._add(kind, call, ret, args, False, {"code": code})

    def unlock(self, call: float, ret: float | None, token: str, **kw: Any) -> None:
        self._add("unlock", call, ret, {"token": token, **kw}, None if ret is None else True, {})

    def renew(self, call: float, ret: float, token: str, expires: float) -> None:
        self._add("renew", call, ret, {"token": token, "timeout": LEASE}, True, {"expires_at": expires})

    def write(self, call: float, ret: float | None, node: str, token: str, value: Any, version: int, fence: int,
              **kw: Any) -> None:  # fmt: skip
        out = {} if ret is None else {"version": version, "fence": fence}
        self._add("write", call, ret, {"node": node, "token": token, "value": value, **kw}, ret and True, out)

    def read(self, call: float, ret: float, node: str, value: Any, version: int, final: bool = False) -> None:
        self._add("read", call, ret, {"node": node, "final": final}, True, {"value": value, "version": version})


def kinds(h: History) -> set[str]:
    return {v.kind for v in check(h.ops).violations}


def test_a_sequential_lock_write_unlock_history_passes() -> None:
    h = History()
    t = h.grant(0, 1, "d/f")
    h.write(2, 3, "d/f", t, "x", 1, 1)
    h.unlock(4, 5, t)
    h.read(6, 7, "d/f", "x", 1, final=True)
    assert check(h.ops).ok


def test_two_write_locks_held_at_once_are_a_double_grant() -> None:
    h = History()
    h.grant(0, 1, "d/f", client="a")
    h.grant(2, 3, "d/f", client="b")
    assert {"double grant", "not linearizable"} <= kinds(h)


def test_a_tree_lock_conflicts_with_a_write_lock_below_it() -> None:
    h = History()
    h.grant(0, 1, "d", mode="read", depth="tree", client="a")
    h.grant(2, 3, "d/sub/f", client="b")
    assert "double grant" in kinds(h)


def test_read_locks_share_a_node() -> None:
    h = History()
    h.grant(0, 1, "d/f", mode="read", client="a")
    h.grant(2, 3, "d/f", mode="read", client="b")
    h.grant(2, 3, "d", mode="read", depth="tree", client="c")
    assert check(h.ops).ok


def test_a_lock_granted_after_the_holders_lease_ended_passes() -> None:
    h = History()
    h.grant(0, 1, "d/f", client="a", expires=5.0)
    h.grant(4.9, 6, "d/f", client="b")  # answered after the deadline: the expiry may have come first
    assert check(h.ops).ok


def test_a_lock_granted_before_the_holders_deadline_is_a_double_grant() -> None:
    h = History()
    h.grant(0, 1, "d/f", client="a", expires=5.0)
    h.grant(2, 3, "d/f", client="b")
    assert "not linearizable" in kinds(h)


def test_a_refusal_saying_the_lease_is_over_before_its_deadline_is_an_early_expiry() -> None:
    h = History()
    t = h.grant(0, 1, "d/f", expires=5.0)
    h.refused("renew", 2, 3, "LOCK_EXPIRED", token=t, timeout=LEASE)
    assert {"lease ended early", "not linearizable"} <= kinds(h)


def test_a_renewal_after_the_deadline_fails() -> None:
    h = History()
    t = h.grant(0, 1, "d/f", expires=5.0)
    h.renew(6, 7, t, expires=16.0)
    assert "not linearizable" in kinds(h)


def test_a_renewal_extends_what_the_model_holds() -> None:
    h = History()
    t = h.grant(0, 1, "d/f", client="a", expires=5.0)
    h.renew(3, 4, t, expires=13.0)
    h.grant(7, 8, "d/f", client="b")  # the renewed lease still runs until 13
    assert {"double grant", "not linearizable"} <= kinds(h)


def test_an_acknowledged_write_missing_from_the_final_state_is_a_lost_write() -> None:
    h = History()
    t = h.grant(0, 1, "d/f")
    h.write(2, 3, "d/f", t, "x", 1, 1)
    h.write(4, 5, "d/f", t, "y", 2, 1)
    h.unlock(6, 7, t)
    h.read(8, 9, "d/f", "x", 1, final=True)
    assert {"lost write", "not linearizable"} <= kinds(h)


def test_a_read_older_than_a_finished_write_is_not_linearizable() -> None:
    h = History()
    t = h.grant(0, 1, "d/f")
    h.write(2, 3, "d/f", t, "x", 1, 1)
    h.write(4, 5, "d/f", t, "y", 2, 1)
    h.read(6, 7, "d/f", "x", 1)
    h.unlock(8, 9, t)
    assert kinds(h) == {"not linearizable"}


def test_a_read_concurrent_with_a_write_may_see_either_version() -> None:
    for value, version in (("x", 1), ("y", 2)):
        h = History()
        t = h.grant(0, 1, "d/f")
        h.write(2, 3, "d/f", t, "x", 1, 1)
        h.write(4, 6, "d/f", t, "y", 2, 1)
        h.read(5, 7, "d/f", value, version)
        assert check(h.ops).ok, version


def test_a_write_accepted_after_its_lease_ended_is_refused_by_the_model() -> None:
    h = History()
    t = h.grant(0, 1, "d/f", client="a", expires=5.0)
    h.write(6, 7, "d/f", t, "late", 1, 1, client="a")  # the paused holder woke up past its lease
    assert "not linearizable" in kinds(h)


def test_an_increment_lost_between_two_holders_fails() -> None:
    h = History()
    a = h.grant(0, 1, "d/n", client="a")
    h.write(2, 3, "d/n", a, 1, 1, 1, inc=True)
    h.unlock(4, 5, a)
    b = h.grant(6, 7, "d/n", client="b")
    h.write(8, 9, "d/n", b, 1, 2, 2, inc=True)  # wrote 0 + 1 again: read a stale value
    h.unlock(10, 11, b)
    h.read(12, 13, "d/n", 1, 2, final=True)
    assert "lost write" in kinds(h)


def test_a_fence_lower_than_an_earlier_grants_fails() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a", fence=7)
    h.unlock(2, 3, a)
    h.grant(4, 5, "e/f", client="b", fence=3)
    assert "fence went backwards" in kinds(h)


def test_a_version_repeated_by_two_acknowledged_writes_is_a_lost_write() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    h.write(2, 3, "d/f", a, "x", 1, 1)
    h.unlock(4, 5, a)
    b = h.grant(6, 7, "d/f", client="b")
    h.write(8, 9, "d/f", b, "y", 1, 2)
    assert "lost write" in kinds(h)


def test_an_unlock_that_maybe_happened_may_have_freed_the_lock() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    h.unlock(2, None, a, client="a")  # the connection broke after the request went out
    h.grant(3, 4, "d/f", client="b")
    assert check(h.ops).ok


def test_a_downgrade_that_maybe_happened_may_have_let_a_reader_in() -> None:
    h = History()
    t = h.grant(0.0, 0.1, "f")  # a write lock...
    h._add("lock", 0.2, None, {"node": "f", "mode": "read", "depth": "node", "token": t, "timeout": LEASE}, None, {})
    h.grant(0.5, 0.6, "f", mode="read", client="b")  # ...yet a reader got in: only if the downgrade happened
    assert kinds(h) == set()


def test_a_reader_let_in_over_a_write_lock_with_no_downgrade_sent_is_caught() -> None:
    h = History()
    h.grant(0.0, 0.1, "f")
    h.grant(0.5, 0.6, "f", mode="read", client="b")
    assert "not linearizable" in kinds(h) or "double grant" in kinds(h)


def test_an_upgrade_that_maybe_happened_may_have_kept_others_out() -> None:
    h = History()
    t = h.grant(0.0, 0.1, "f", mode="read")
    h._add("lock", 0.2, None, {"node": "f", "mode": "write", "depth": "node", "token": t, "timeout": LEASE}, None, {})
    h.refused("lock", 0.5, 0.6, "LOCKED", node="f", mode="read", depth="node", client="b")
    h.refused("lock", 0.7, 0.8, "LOCKED", node="f", mode="write", depth="node", client="c")
    assert kinds(h) == set()


def test_a_write_that_maybe_happened_may_be_in_the_final_state_or_not() -> None:
    for final in (("x", 1), ("y", 2)):
        h = History()
        t = h.grant(0, 1, "d/f")
        h.write(2, 3, "d/f", t, "x", 1, 1)
        h.write(4, None, "d/f", t, "y", 2, 1)
        h.read(20, 21, "d/f", *final, final=True)
        assert check(h.ops).ok, final


def test_a_maybe_happened_write_cannot_appear_before_it_was_sent() -> None:
    h = History()
    t = h.grant(0, 1, "d/f")
    h.read(2, 3, "d/f", "y", 1)
    h.write(4, None, "d/f", t, "y", 1, 1)
    assert "not linearizable" in kinds(h)


def test_an_upgrade_while_another_reader_holds_is_a_double_grant() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", mode="read", client="a")
    h.grant(0, 1, "d/f", mode="read", client="b")
    h.fence += 1
    out = {"token": a, "fence": h.fence, "expires_at": 2 + LEASE, "node": "d/f", "mode": "write", "depth": "node",
           "owner": "a"}  # fmt: skip
    h._add("lock", 2, 3, {"node": "d/f", "mode": "write", "depth": "node", "token": a}, True, out)
    assert {"double grant", "not linearizable"} <= kinds(h)


def versioned(h: History, call: float, ret: float, node: str, if_version: int, value: Any, client: str,
              ok: bool = True, code: str | None = None) -> None:  # fmt: skip
    out = {"version": if_version + 1, "fence": 0} if ok else {"code": code}
    h._add("write", call, ret, {"node": node, "if_version": if_version, "value": value, "client": client}, ok, out)


def test_a_versioned_write_on_the_version_it_read_passes() -> None:
    h = History()
    versioned(h, 0, 1, "d/f", 0, "x", "a")
    h.read(2, 3, "d/f", "x", 1)
    versioned(h, 4, 5, "d/f", 1, "y", "b")
    versioned(h, 6, 7, "d/f", 1, "z", "a", ok=False, code="VERSION_MISMATCH")
    h.read(8, 9, "d/f", "y", 2, final=True)
    assert check(h.ops).ok


def test_a_versioned_write_over_another_agents_live_lock_fails() -> None:
    h = History()
    h.grant(0, 1, "d", mode="read", depth="tree", client="a")
    versioned(h, 2, 3, "d/f", 0, "x", "b")
    assert kinds(h) == {"not linearizable"}


def test_a_version_mismatch_when_the_version_matched_fails() -> None:
    h = History()
    versioned(h, 0, 1, "d/f", 0, "x", "a")
    versioned(h, 2, 3, "d/f", 1, "y", "b", ok=False, code="VERSION_MISMATCH")
    assert kinds(h) == {"not linearizable"}


def relock(h: History, call: float, ret: float, token: str, mode: str, fence: int) -> None:
    out = {"token": token, "fence": fence, "expires_at": call + LEASE, "node": "d/f", "mode": mode, "depth": "node",
           "owner": "a"}  # fmt: skip
    h._add("lock", call, ret, {"node": "d/f", "mode": mode, "depth": "node", "token": token}, True, out)


def test_a_downgrade_keeps_its_fence_and_lets_readers_in() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    h.grant(2, 3, "e/f", client="c")  # a later fence elsewhere: the downgrade's older fence is no regression
    relock(h, 4, 5, a, "read", fence=1)
    h.grant(6, 7, "d/f", mode="read", client="b")
    assert check(h.ops).ok


def test_a_downgrade_that_changes_its_fence_fails() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    relock(h, 2, 3, a, "read", fence=9)
    assert "not linearizable" in kinds(h)


def test_the_slack_is_far_below_a_lease() -> None:
    # The checker's one tolerance must not hide a real overlap of the leases the torture uses.
    assert SLACK * 100 <= 2.0


@pytest.mark.parametrize("seed", range(6))
def test_histories_of_the_real_lock_table_with_jittered_times_pass(seed: int) -> None:
    """Run random calls against the real LockTable, then widen each into an interval around its instant.

    Whatever order the search picks among overlapping calls, the table's own order must be one it accepts.
    """
    rng = random.Random(seed)
    table = LockTable("w")
    nodes = ["d/a", "d/b", "d", "e/a"]
    held: dict[str, list[str]] = {}  # client -> tokens
    files: dict[str, tuple[int, Any]] = {}
    ops: list[Op] = []
    now = 1000.0

    def rec(kind: str, client: str, args: dict[str, Any], ok: bool, out: dict[str, Any]) -> None:
        jitter_in, jitter_out = rng.uniform(0, 0.3), rng.uniform(0, 0.3)
        ops.append(Op(len(ops), client, kind, now - jitter_in, now + jitter_out, args, ok, out))  # type: ignore[arg-type]

    for _ in range(300):
        now += rng.uniform(0.05, 0.6)
        client = rng.choice("abc")
        mine = held.setdefault(client, [])
        r = rng.random()
        if r < 0.4 or not mine:
            node, mode = rng.choice(nodes), rng.choice(["read", "write"])
            depth = "tree" if node in ("d", "e") else "node"
            args = {"node": node, "mode": mode, "depth": depth, "timeout": 3.0, "wait": 0}
            try:
                g = table.acquire(now, (Claim(node, mode, depth),), owner=client, timeout=3.0)  # type: ignore[arg-type]
            except LockError as e:
                rec("lock", client, args, False, {"code": e.code})
                continue
            assert isinstance(g, Granted)
            le = g.leases[0]
            out = {"token": le.token, "fence": le.fence, "expires_at": le.expires_at, "node": node, "mode": mode,
                   "depth": depth, "owner": client}  # fmt: skip
            rec("lock", client, args, True, out)
            mine.append(le.token)
            continue
        token = rng.choice(mine)
        try:
            if r < 0.6:
                le = table.renew(now, token, 3.0)
                rec("renew", client, {"token": token, "timeout": 3.0}, True, {"expires_at": le.expires_at})
            elif r < 0.8:
                le = table.holding(now, token)  # type: ignore[assignment]
                if isinstance(le, LockError):
                    raise le
                if le.mode != "write" or le.depth != "node":
                    continue
                version, _ = files.get(le.node_id, (0, None))
                value = rng.randrange(1000)
                files[le.node_id] = (version + 1, value)
                out = {"version": version + 1, "fence": le.fence}
                rec("write", client, {"node": le.node_id, "token": token, "value": value}, True, out)
            else:
                mine.remove(token)
                table.release(now, token)
                rec("unlock", client, {"token": token}, True, {})
        except LockError as e:
            mine.remove(token) if token in mine else None
            kind = "renew" if r < 0.6 else "write" if r < 0.8 else "unlock"
            rec(kind, client, {"token": token, "timeout": 3.0, "node": "d/a", "value": 0}, False, {"code": e.code})
    report = check(ops, budget=30)
    assert report.ok, report.summary()


def test_a_failed_search_names_the_calls_it_could_not_place() -> None:
    h = History()
    t = h.grant(0, 1, "d/f")
    for i in range(12):  # overlapping writes that maybe happened, then a read no order can explain
        h.write(2 + i * 0.01, None, "d/f", t, i, i + 1, 1)
    h.read(5, 6, "d/f", "never written", 1)
    res = linearizable(h.ops, budget=30)
    assert res.ok is False
    assert h.ops[-1].id in res.stuck


# ---------------------------------------------------------------- force-unlocks, revocations, uploads


def force_unlock(h: History, call: float, ret: float | None, token: str, node: str = "d/f", **kw: Any) -> None:
    """The admin breaks the lease ``token`` names (by its lock_id, as the admin API does)."""
    ok: bool | None = None if ret is None else kw.pop("ok", True)
    out = kw.pop("out", {"fence": int(token[1:]), "owner": "a"}) if ok else kw.pop("out", {})
    h._add("force_unlock", call, ret, {"lock_id": f"lk_{token}", "node": node, "client": "admin"}, ok, out)


def revoke(h: History, call: float, ret: float | None, key: str, agent: str = "a", **kw: Any) -> None:
    ok: bool | None = None if ret is None else kw.pop("ok", True)
    h._add("revoke", call, ret, {"key": key, "agent": agent, "client": "admin"}, ok, kw.pop("out", {}))


def upload(h: History, call: float, ret: float | None, node: str, token: str, value: Any, upload_id: str,
           version: int, fence: int) -> None:  # fmt: skip
    out = {} if ret is None else {"version": version, "fence": fence}
    h._add("upload", call, ret, {"node": node, "token": token, "value": value, "upload": upload_id},
           None if ret is None else True, out)  # fmt: skip


def test_a_lock_granted_after_an_admin_broke_the_holders_lease_passes() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    force_unlock(h, 2, 3, a)
    b = h.grant(4, 5, "d/f", client="b")  # long before a's deadline: the break ended a's lease
    h.refused("write", 6, 7, "LOCK_BROKEN", node="d/f", token=a, value="late", client="a")
    h.write(8, 9, "d/f", b, "x", 1, 2, client="b")
    h.read(10, 11, "d/f", "x", 1, final=True)
    assert check(h.ops).ok, check(h.ops).summary()


def test_a_write_under_a_broken_lease_that_is_accepted_fails() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    force_unlock(h, 2, 3, a)
    h.write(4, 5, "d/f", a, "late", 1, 1, client="a")  # fencing must refuse it: the lease ended at the break
    assert kinds(h) == {"not linearizable"}


def test_a_refusal_saying_the_lease_is_broken_before_any_break_is_an_early_end() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    h.refused("renew", 2, 3, "LOCK_BROKEN", token=a, timeout=LEASE, client="a")
    force_unlock(h, 4, 5, a, ok=False, out={"code": "LOCK_BROKEN"})
    assert {"lease ended early", "not linearizable"} <= kinds(h)


def test_a_force_unlock_acknowledged_for_a_released_lease_fails() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    h.unlock(2, 3, a)
    force_unlock(h, 4, 5, a)
    assert kinds(h) == {"not linearizable"}


def test_a_force_unlock_that_maybe_happened_may_have_let_another_holder_in() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a")
    force_unlock(h, 2, None, a)
    h.grant(4, 5, "d/f", client="b")
    assert check(h.ops).ok


def test_a_revoked_keys_lease_ends_at_the_revocation_and_its_calls_are_refused() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a", key="k1")
    revoke(h, 2, 3, "k1")
    h.refused("renew", 4, 5, "UNAUTHENTICATED", token=a, timeout=LEASE, key="k1", client="a")
    b = h.grant(6, 7, "d/f", client="b", key="kb")  # before a's deadline: the revocation ended a's lease
    h.refused("write", 8, 9, "FORBIDDEN", node="d/f", token=a, value="late", key="k2", client="a")
    h.write(10, 11, "d/f", b, "x", 1, 2, client="b", key="kb")
    h.read(12, 13, "d/f", "x", 1, final=True)
    assert check(h.ops).ok, check(h.ops).summary()


def test_a_revoked_key_whose_call_is_accepted_after_the_revocation_fails() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a", key="k1")
    revoke(h, 2, 3, "k1")
    h._add("renew", 4, 5, {"token": a, "timeout": LEASE, "key": "k1"}, True, {"expires_at": 4 + LEASE})
    assert kinds(h) == {"not linearizable"}


def test_a_live_key_refused_as_unauthenticated_fails() -> None:
    h = History()
    a = h.grant(0, 1, "d/f", client="a", key="k1")
    h.refused("renew", 2, 3, "UNAUTHENTICATED", token=a, timeout=LEASE, key="k1", client="a")
    revoke(h, 4, 5, "k1")
    assert kinds(h) == {"not linearizable"}


def test_revoking_a_key_that_was_already_revoked_is_refused() -> None:
    h = History()
    revoke(h, 0, 1, "k1")
    revoke(h, 2, 3, "k1")
    assert kinds(h) == {"not linearizable"}
    h = History()
    revoke(h, 0, None, "k1")  # the answer was lost: the retry may find the key revoked already
    revoke(h, 2, 3, "k1", ok=False, out={"code": "NOT_FOUND"})
    assert check(h.ops).ok


def test_a_lock_granted_to_a_key_after_its_revocation_is_a_violation_unless_lenient() -> None:
    h = History()
    h.grant(4.5, 5, "d/g", client="b", key="kb", fence=1)  # granted after the revocation was answered...
    h.grant(2, 6, "d/f", client="a", key="k1", fence=2)  # ...so this later fence was too: to a waiter of k1
    revoke(h, 3, 4, "k1")
    assert "not linearizable" in {v.kind for v in check(h.ops).violations}
    assert check(h.ops, strict_revocation=False).ok


def test_a_lock_granted_to_a_revoked_key_still_keeps_others_out_until_its_deadline() -> None:
    h = History()
    revoke(h, 0, 1, "k1")
    h.grant(2, 3, "d/f", client="a", key="k1")  # tolerated: a server that has not yet dropped such waiters
    h.grant(4, 5, "d/f", client="b", key="kb")  # but two holders at once is a double grant all the same
    assert {"double grant", "not linearizable"} <= kinds(h)


def test_an_upload_committed_under_its_lock_is_a_write() -> None:
    h = History()
    t = h.grant(0, 1, "d/f")
    upload(h, 2, 3, "d/f", t, "big", "u1", 1, 1)
    h.unlock(4, 5, t)
    h.read(6, 7, "d/f", "big", 1, final=True)
    assert check(h.ops).ok


def test_an_upload_committed_twice_fails() -> None:
    h = History()
    t = h.grant(0, 1, "d/f")
    upload(h, 2, 3, "d/f", t, "big", "u1", 1, 1)
    upload(h, 4, 5, "d/f", t, "big", "u1", 2, 1)  # a retried complete must not write the upload again
    assert {"upload committed twice", "not linearizable"} <= kinds(h)


def test_an_upload_retried_after_an_unknown_outcome_commits_once() -> None:
    h = History()
    t = h.grant(0, 1, "d/f")
    upload(h, 2, None, "d/f", t, "big", "u1", 1, 1)  # the connection broke: committed or not
    upload(h, 3, 4, "d/f", t, "big", "u1", 1, 1)  # the retry commits it: so the first did not
    h.read(5, 6, "d/f", "big", 1, final=True)
    assert check(h.ops).ok
    h.read(7, 8, "d/f", "big", 2, final=True)  # had both committed, it would be version 2
    assert "not linearizable" in kinds(h)


def test_an_upload_committed_under_an_expired_lease_fails() -> None:
    h = History()
    t = h.grant(0, 1, "d/f", expires=5.0)
    upload(h, 6, 7, "d/f", t, "big", "u1", 1, 1)
    assert kinds(h) == {"not linearizable"}
