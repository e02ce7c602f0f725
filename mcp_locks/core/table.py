"""The pure lock table of one workspace: every lock rule, no I/O, no clock of its own."""

from __future__ import annotations

import base64
import heapq
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sortedcontainers import SortedList

from mcp_locks.core.claims import Claim, ClaimIndex, ClaimLike, Depth, Mode
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
    NotFound,
    Unauthenticated,
    WaitTimeout,
)
from mcp_locks.core.records import (
    Change,
    DropRequest,
    DropWaiter,
    Ended,
    EndLease,
    EndReason,
    Event,
    EventKind,
    Granted,
    Lease,
    Prune,
    PutLease,
    PutRequest,
    PutWaiter,
    Queued,
    RequestRecord,
    ReserveFences,
    WaiterRecord,
)
from mcp_locks.core.records import fmt_time as _fmt_time

__all__ = [
    "ANONYMOUS",
    "Change",
    "DropRequest",
    "DropWaiter",
    "EndLease",
    "Ended",
    "Granted",
    "Lease",
    "Limits",
    "LockTable",
    "NodeStatus",
    "Prune",
    "PutLease",
    "PutRequest",
    "PutWaiter",
    "Queued",
    "RequestRecord",
    "ReserveFences",
    "WaiterRecord",
    "WaiterView",
    "new_lock_id",
    "new_token",
]

ANONYMOUS = "anonymous"
TOKEN_PREFIX = "mlt_"


def new_token() -> str:
    """A lock token: 256 random bits from :mod:`secrets`, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_lock_id() -> str:
    """A public lock id: 96 random bits (unique, unguessable, but not a secret)."""
    return "lk_" + secrets.token_hex(12)


class _RandomPool:
    """Random bytes from :mod:`secrets`, drawn 4 KiB at a time (one system call per ~90 grants)."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf, self._pos = secrets.token_bytes(4096), 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out


_POOL = _RandomPool()


def new_id_and_token() -> tuple[str, str]:
    """A lock id (96 random bits) and a token (256 other random bits), both from :mod:`secrets`."""
    raw = _POOL.take(44)
    return "lk_" + raw[:12].hex(), TOKEN_PREFIX + base64.urlsafe_b64encode(raw[12:]).decode().rstrip("=")


def _overlap(a: ClaimLike, b: ClaimLike) -> bool:
    """Whether two claims conflict: what they cover overlaps and at least one is a write."""
    if a.mode == "read" and b.mode == "read":
        return False
    if a.node_id == b.node_id:
        return True
    if a.depth == "tree" and b.node_id.startswith(a.node_id + "/"):
        return True
    return b.depth == "tree" and a.node_id.startswith(b.node_id + "/")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-workspace limits and retention."""

    max_locks: int = 1_000_000
    max_waiters: int = 10_000
    retention: float = 86_400.0
    max_ended: int = 100_000
    fence_block: int = 10_000
    #: Leases ended per store commit in an expiry storm (see :meth:`LockTable.expire`'s ``limit``):
    #: the owner commits and answers each part before the next, so the server keeps answering.
    expire_batch: int = 2_000

    def __post_init__(self) -> None:
        if self.expire_batch < 1:
            raise ValueError(f"expire_batch must be at least 1, not {self.expire_batch}")


#: A waiter in the table is its record (waiter_id 0 until it joins the line).
_Waiter = WaiterRecord


@dataclass(frozen=True, slots=True)
class WaiterView:
    """A waiter as shown by status: never its request's secrets."""

    position: int
    owner: str
    node_id: str
    mode: Mode
    depth: Depth
    waiting_since: float
    upgrade: bool
    label: str | None = None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What covers a node now: its own holders, tree locks on ancestors, and the line of waiters."""

    node_id: str
    holders: tuple[Lease, ...]
    covering: tuple[Lease, ...]
    waiters: tuple[WaiterView, ...]
    locks_below: int

    @property
    def locked(self) -> bool:
        """Whether any lock covers the node."""
        return bool(self.holders or self.covering)

    @property
    def mode(self) -> Mode | None:
        """The strongest mode covering the node, or None."""
        leases = self.holders + self.covering
        if not leases:
            return None
        return "write" if any(le.mode == "write" for le in leases) else "read"


class LockTable:
    """All the lock rules of one workspace, as a data structure with no I/O and no clock.

    Every method takes ``now`` (seconds since the epoch) and first expires the
    leases whose deadline is at or before it, so a lease never outlives its
    deadline however late the caller's timer fires.

    Modes: ``read`` locks are shared, ``write`` locks are exclusive. A lock
    with depth ``tree`` covers its node and everything below it; two locks
    conflict when what they cover overlaps and either is a write. Locks are
    not re-entrant: a second request conflicts with a held lock whoever asks.

    Fairness: one FIFO line per workspace. A request is granted at once only
    if it conflicts with no holder *and* no waiting request, so a stream of
    readers cannot starve a queued writer. When anything is released the line
    is walked in order and each waiter is granted if it conflicts with no
    holder and with no waiter still ahead of it. ``lock_files`` requests wait
    as one unit and are granted all at once or not at all, so two of them
    can never each hold part of what the other needs.

    Upgrade and downgrade: presenting a read lock's token with mode ``write``
    upgrades it in place (same lock id and token, a new fence). It is granted
    at once when no other holder conflicts; otherwise it waits ahead of every
    ordinary waiter, keeping its read lock, since an upgrade queued behind a
    writer that waits for that very read lock would never be served. Two
    readers of one node that both ask to upgrade form a cycle, and the second
    gets DEADLOCK. Presenting a write lock's token with mode ``read``
    downgrades it at once. Presenting a token with the mode it already has
    restarts its lease.

    Tokens and fences: a token is a 256-bit secret that names one lease and
    authorises releasing, renewing and upgrading it. A token does not by
    itself make the holder safe: a holder paused past its lease still has the
    token after the lease is gone. That is what the fence is for: an integer
    that grows with every grant (and upgrade) in the workspace and never goes
    backwards, across restarts and crashes too. A resource that remembers the
    highest fence it has accepted and refuses older ones rejects the late
    writer. Fences are reserved from the store in blocks (``ReserveFences``)
    that are made durable before any fence in them is handed out.

    Deadlock: before a request waits, the owners it would wait for (holders
    and earlier conflicting waiters) are followed through the owners they
    wait for; if the path returns to the requester it fails with DEADLOCK.
    Owners are compared by name; anonymous requests never form a cycle.

    The table records what must be persisted in :attr:`changes` and what
    waiters learnt in :attr:`outcomes`; the owner of the table drains both.
    """

    def __init__(
        self,
        workspace_id: str,
        *,
        limits: Limits | None = None,
        fence_next: int = 1,
        fence_reserved: int = 0,
        ids: Callable[[], tuple[str, str]] = new_id_and_token,
        first_waiter_id: int = 1,
        case_insensitive: bool = False,
    ) -> None:
        self.workspace_id = workspace_id
        #: The workspace's folder ignores case: two ids differing only by case would be one file.
        self.case_insensitive = case_insensitive
        self.limits = limits or Limits()
        self._ids = ids
        self._fence_next = fence_next
        self._fence_reserved = fence_reserved
        self._leases: dict[str, Lease] = {}
        # Keyed by the token itself: leases hold their tokens in memory anyway, and
        # hashing them on every grant and release cost ~8% of an operation.
        self._by_token: dict[str, str] = {}
        # The lock ids each named owner holds (for the quick deadlock check).
        self._held_by: dict[str, set[str]] = {}
        # Held leases are stored as their own claims (a lease has node_id, mode and depth).
        fold = str.casefold if case_insensitive else None
        self._holders: ClaimIndex[str, Lease] = ClaimIndex(fold)
        self._waiting: ClaimIndex[tuple[int, int], Claim] = ClaimIndex(fold)
        self._queue: dict[int, _Waiter] = {}
        self._queue_ids = SortedList()  # the keys of _queue, for a waiter's place in line in O(log n)
        self._upgrades: dict[int, _Waiter] = {}
        self._upgrade_of: dict[str, int] = {}
        self._waiters_of: dict[str, set[int]] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._next_waiter = first_waiter_id
        # Both kept in insertion (= time) order, so the oldest is first to go. OrderedDicts: taking
        # the first entry of a plain dict that has lost its oldest entries scans past every deleted
        # slot (~20 µs per eviction at 100,000 remembered endings); here it is O(1).
        self._ended: OrderedDict[str, Ended] = OrderedDict()
        self._requests: OrderedDict[tuple[str, str], RequestRecord] = OrderedDict()
        self._handed_out: set[tuple[str, str]] = set()  # request_ids whose grant a retry received
        self._forgot = False
        self._next_prune = 0.0
        self._prune_check = 0.0
        #: Set when the workspace is being deleted: no new lock is granted or queued.
        self.retired = False
        #: Record the line in :attr:`changes` too (``PutWaiter`` / ``DropWaiter``), for a store that several
        #: servers share: there the line is global, and each server's table holds every server's waiters.
        self.track_waiters = False
        self._lease_heap: list[tuple[float, str]] = []
        # Claims that stopped holding anyone back since the last grant pass (see _promote).
        self._freed: list[ClaimLike] = []
        self._wait_heap: list[tuple[float, int]] = []
        self.changes: list[Change] = []
        self.events: list[Event] = []
        self.outcomes: list[tuple[int, Granted | LockError]] = []

    # ------------------------------------------------------------------ restore

    def restore(
        self,
        leases: Iterable[Lease],
        ended: Iterable[Ended] = (),
        requests: Iterable[RequestRecord] = (),
        waiters: Iterable[WaiterRecord] = (),
    ) -> None:
        """Load persisted state into an empty table (records nothing in :attr:`changes`)."""
        # In bulk (a million leases load in seconds): one heapify, one sorted-list build.
        by_id, by_token, heap, held_by = self._leases, self._by_token, self._lease_heap, self._held_by
        claims: list[tuple[str, Lease]] = []
        fence_next = self._fence_next
        for lease in leases:
            lock_id = lease.lock_id
            by_id[lock_id] = lease
            by_token[lease.token] = lock_id
            if lease.owner != ANONYMOUS:
                held_by.setdefault(lease.owner, set()).add(lock_id)
            claims.append((lock_id, lease))
            heap.append((lease.expires_at, lock_id))
            if lease.fence >= fence_next:
                fence_next = lease.fence + 1
        self._fence_next = fence_next
        heapq.heapify(heap)
        self._holders.add_all(claims)
        for e in sorted(ended, key=lambda e: e.at):
            self._remember_end(e)
        for r in sorted(requests, key=lambda r: r.created_at):
            self._remember_request(r)
        for w in sorted(waiters):  # by waiter_id: the order of the line
            self._next_waiter = max(self._next_waiter, w.waiter_id + 1)
            self._put_in_line(w)

    def carry_memory(
        self,
        old: LockTable,
        ended: Iterable[Ended],
        requests: Iterable[RequestRecord],
        dropped: Iterable[tuple[str, str]],
    ) -> None:
        """Take over ``old``'s remembered endings and request ids, then add what changed since.

        A server catching up on a shared store rebuilds its table from the held leases and the
        line, which are small; endings and request ids only accumulate, so only the new ones are read.
        """
        self._ended, self._requests, self._handed_out = old._ended, old._requests, old._handed_out
        old._ended, old._requests, old._handed_out = OrderedDict(), OrderedDict(), set()
        self._next_prune, self._prune_check = old._next_prune, old._prune_check
        for e in sorted(ended, key=lambda e: e.at):
            self._remember_end(e)
        for r in sorted(requests, key=lambda r: r.created_at):
            self._remember_request(r)
        for key in dropped:
            self._requests.pop(key, None)
            self._handed_out.discard(key)

    def regrant(self, now: float) -> None:
        """Grant, in line order, every waiter that can go now (after waiters were restored or dropped)."""
        self.expire(now)
        self._promote_all(now)

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._leases)

    @property
    def waiter_count(self) -> int:
        """How many requests wait in line."""
        return len(self._queue) + len(self._upgrades)

    @property
    def next_waiter_id(self) -> int:
        """The id the next waiter will get (a rebuilt table continues from here, so ids never repeat)."""
        return self._next_waiter

    @property
    def fence_next(self) -> int:
        """The fence the next grant will get."""
        return self._fence_next

    def leases(self) -> list[Lease]:
        """Every held lease (a copy)."""
        return list(self._leases.values())

    def lease(self, lock_id: str) -> Lease | None:
        """The held lease with this id, if any."""
        return self._leases.get(lock_id)

    def covering(self, now: float, node_id: str) -> list[Lease]:
        """The held leases that cover ``node_id``: on it, or tree leases on a folder above it."""
        self.expire(now)
        return [self._leases[k] for k, _ in self._holders.covering(node_id)]

    def has_waiter(self, waiter_id: int) -> bool:
        """Whether ``waiter_id`` still waits in line."""
        return waiter_id in self._queue or waiter_id in self._upgrades

    def next_deadline(self) -> float | None:
        """The earliest lease expiry or wait deadline still pending, for the owner's timer."""
        lh, wh = self._lease_heap, self._wait_heap
        while lh:
            lease = self._leases.get(lh[0][1])
            if lease is not None and lease.expires_at == lh[0][0]:
                break
            heapq.heappop(lh)  # stale: renewed or ended since it was pushed
        while wh:
            w = self._waiter(wh[0][1])
            if w is not None and w.deadline == wh[0][0]:
                break
            heapq.heappop(wh)
        times = [h[0][0] for h in (lh, wh) if h]
        return min(times) if times else None

    def _waiter(self, waiter_id: int) -> _Waiter | None:
        w = self._queue.get(waiter_id)
        return w if w is not None else self._upgrades.get(waiter_id)

    def status(self, now: float, node_id: str) -> NodeStatus:
        """Who holds ``node_id``, which tree locks cover it, and who waits for it."""
        self.expire(now)
        holders = tuple(self._leases[k] for k in self._holders.at(node_id))
        covering = tuple(self._leases[k] for k, c in self._holders.covering(node_id) if c.node_id != node_id)
        wanted = {wid: c for (wid, _), c in self._waiting.covering(node_id)}
        views: list[WaiterView] = []
        if len(wanted) * _WALK_SHARE > self.waiter_count:
            # Most of the line wants this node: walking it is the cheapest way to number them.
            line = enumerate(self._line(), start=1)
            placed = ((pos, w) for pos, w in line if w.waiter_id in wanted)
        else:
            # A few of many: each one's place in O(log n), without walking the line.
            ups = list(self._upgrades)
            placed = (
                (ups.index(wid) + 1 if w.upgrade_of else len(ups) + self._queue_ids.bisect_left(wid) + 1, w)
                for wid in sorted(wanted, key=lambda wid: (wid not in self._upgrades, wid))
                if (w := self._waiter(wid)) is not None
            )
        for pos, w in placed:
            c = wanted[w.waiter_id]
            views.append(
                WaiterView(pos, w.owner, c.node_id, c.mode, c.depth, w.enqueued_at, w.upgrade_of is not None, w.label)
            )
        below = self._holders.count_below(node_id)
        return NodeStatus(node_id, holders, covering, tuple(views), below)

    def line(self, now: float, limit: int) -> tuple[list[WaiterView], bool]:
        """The first ``limit`` claims waiting in line, in line order; and whether more wait."""
        self.expire(now)
        views: list[WaiterView] = []
        for pos, w in enumerate(self._line(), start=1):
            for c in w.items:
                if len(views) == limit:
                    return views, True
                views.append(
                    WaiterView(
                        pos, w.owner, c.node_id, c.mode, c.depth, w.enqueued_at, w.upgrade_of is not None, w.label
                    )
                )
        return views, False

    def page(
        self,
        now: float,
        prefix: str = "",
        owner: str | None = None,
        limit: int = 100,
        after: tuple[str, str] | None = None,
    ) -> tuple[list[Lease], tuple[str, str] | None]:
        """Held leases whose node starts with ``prefix``, ordered by (node_id, lock_id), after ``after``."""
        self.expire(now)
        out: list[Lease] = []
        # Resume at the cursor's node (it may hold more locks), not at the prefix: O(log n) per page.
        for path in self._holders.paths_from(prefix, start_at=after[0] if after else None):
            for lock_id in sorted(self._holders.at(path)):
                if after is not None and (path, lock_id) <= after:
                    continue
                lease = self._leases[lock_id]
                # An agent's filter shows its sessions' locks too ("alice" shows "alice/reviewer").
                if owner is not None and lease.owner != owner and not lease.owner.startswith(owner + "/"):
                    continue
                if len(out) == limit:
                    last = out[-1]
                    return out, (last.node_id, last.lock_id)
                out.append(lease)
        return out, None

    # ------------------------------------------------------------------ acquire

    def acquire(
        self,
        now: float,
        items: Sequence[Claim],
        *,
        owner: str,
        timeout: float,
        wait: float = 0.0,
        note: str | None = None,
        request_id: str | None = None,
        token: str | None = None,
        label: str | None = None,
        key_id: str | None = None,
        as_key: str | None = None,
    ) -> Granted | Queued:
        """Grant ``items`` all together, queue the request, or raise (LOCKED, DEADLOCK, ...).

        New leases record ``key_id``. With ``token`` (upgrade, downgrade, re-lease)
        and ``as_key``, the token's lease must have been taken with that key
        (FORBIDDEN otherwise); ``as_key=None`` skips the check (an admin, or a
        server without authentication).
        """
        for c in items:
            self.events.append(Event("requested", now, c.node_id, owner, mode=c.mode, depth=c.depth, label=label))
        try:
            return self._acquire(
                now, tuple(items), owner, timeout, wait, note, request_id, token, label, key_id, as_key
            )
        except LockError as e:
            node = items[0].node_id if items else ""
            self.events.append(Event("denied", now, node, owner, code=e.code, label=label))
            raise

    def _acquire(
        self,
        now: float,
        items: tuple[Claim, ...],
        owner: str,
        timeout: float,
        wait: float,
        note: str | None,
        request_id: str | None,
        token: str | None,
        label: str | None,
        key_id: str | None,
        as_key: str | None,
    ) -> Granted | Queued:
        self.expire(now)
        if self.retired:
            raise NotFound(f"workspace '{self.workspace_id}' was deleted.", details={"workspace_id": self.workspace_id})
        if not items:
            raise InvalidArgument("items must hold at least one lock request.", details={"field": "items"})
        fingerprint = None
        if request_id is not None:
            fingerprint = repr((items, token is not None))
            replay = self._replay(owner, request_id, fingerprint, key_id)
            if replay is not None:
                return replay
        if token is not None:
            if len(items) != 1:
                raise InvalidArgument(
                    "token (to upgrade or downgrade) works with one lock at a time.",
                    hint="Call {op:lock_file} with the token instead of {op:lock_files}.",
                    details={"field": "token"},
                )
            return self._change_mode(now, token, items[0], owner, timeout, wait, note, request_id, fingerprint, as_key)
        self._check_disjoint(items)
        if self.case_insensitive:
            self._check_spelling(items)
        queued = len(self._waiting) - len(self._upgrades)  # items of ordinary waiters, granted later
        if len(self._leases) + queued + len(items) > self.limits.max_locks:
            raise LimitExceeded(
                f"workspace '{self.workspace_id}' holds {len(self._leases)} locks;"
                f" the limit is {self.limits.max_locks}.",
                hint="Release locks you no longer need, or use a tree lock on a common folder.",
                details={"limit": self.limits.max_locks},
            )
        if not any(self._holders.conflicts(c) or self._waiting.conflicts(c) for c in items):
            leases = self._grant(now, items, owner, timeout, note, request_id, 0, label, key_id)
            self._record_request(now, owner, request_id, fingerprint, leases)
            return Granted(leases)
        if wait <= 0:
            raise self._locked(items)
        waiter = _Waiter(
            0, owner, items, timeout, note, request_id, fingerprint, now, now + wait, label=label, key_id=key_id
        )
        if owner != ANONYMOUS and not self._nobody_waits_for(owner, waiter):
            self._check_deadlock(owner, waiter)
        return Queued(self._enqueue(waiter))

    def _check_spelling(self, items: tuple[Claim, ...]) -> None:
        """INVALID_ARGUMENT for an item spelling a held or awaited node (or one of ``items``) with other case."""
        seen: dict[str, str] = {}
        for c in items:
            other = self._holders.other_spelling(c.node_id) or self._waiting.other_spelling(c.node_id)
            twin = seen.setdefault(c.node_id.casefold(), c.node_id)
            if other is None and twin != c.node_id:
                other = twin
            if other is not None:
                raise InvalidArgument(
                    f"'{c.node_id}' is spelled with other case than '{other}': this workspace's folder ignores"
                    " case, so both would be one file.",
                    hint=f"Use '{other}', as the locks on it spell it.",
                    details={"field": "node_id", "node_id": c.node_id, "existing": other},
                )

    def _replay(self, owner: str, request_id: str, fingerprint: str, key_id: str | None) -> Granted | Queued | None:
        key = (owner, request_id)
        record = self._requests.get(key)
        wid = self._pending.get(key)
        waiter = self._waiter(wid) if wid is not None else None
        seen = record.fingerprint if record else (waiter.fingerprint if waiter is not None else None)
        used_by = record.leases[0].key_id if record and record.leases else (waiter.key_id if waiter else None)
        if key_id is not None and (record is not None or waiter is not None) and used_by != key_id:
            # The same agent name with another key (an old, revoked one): its grant is not this key's.
            raise InvalidArgument(
                f"request_id '{request_id}' was used with another key of agent '{owner}'.",
                hint="Use a new request_id for requests made with this key.",
                details={"field": "request_id"},
            )
        if seen is not None and seen != fingerprint:
            raise InvalidArgument(
                f"request_id '{request_id}' was already used for a different request.",
                hint="Use a new request_id for a new request; reuse one only to retry the same call.",
                details={"field": "request_id"},
            )
        if record is not None:
            current = []
            for le in record.leases:
                held = self._leases.get(le.lock_id)
                if held is None:
                    # The grant this id answered has ended since: say so, never hand back a dead token.
                    ended = self._ended.get(le.token)
                    err = (
                        self._ended_error(ended)
                        if ended is not None
                        else LockNotFound(f"the lock request_id '{request_id}' was granted has ended.")
                    )
                    err.hint = "Use a new request_id to take the lock again."
                    raise err
                current.append(held)  # as it is now: renewed, upgraded
            self._handed_out.add(key)  # a retry has it now: it must never be given back
            return Granted(tuple(current), replayed=True)
        if wid is not None:
            return Queued(wid, joined=True)
        return None

    def seen_by_retry(self, owner: str, request_id: str | None) -> bool:
        """Whether a retry of this request_id was already handed its grant."""
        return request_id is not None and (owner, request_id) in self._handed_out

    def forget_request(self, owner: str, request_id: str | None) -> None:
        """Forget a request_id whose grant was given back unseen, so a retry is a new request."""
        if request_id is not None and self._requests.pop((owner, request_id), None) is not None:
            self.changes.append(DropRequest(owner, request_id))

    def mode_of(self, token: str) -> Mode | None:
        """The mode of the lease ``token`` names, or None (no expiry check: a peek for the caller)."""
        lock_id = self._by_token.get(token)
        return self._leases[lock_id].mode if lock_id is not None else None

    def _check_disjoint(self, items: tuple[Claim, ...]) -> None:
        if len(items) == 1:
            return
        if all(c.depth == "node" for c in items) and len({c.node_id for c in items}) == len(items):
            return  # distinct single nodes: nothing to overlap (the common lock_files call, checked in O(n))
        seen: ClaimIndex[int, Claim] = ClaimIndex()
        for i, c in enumerate(items):
            overlap = next(iter(seen.conflicting(Claim(c.node_id, "write", c.depth))), None)
            if overlap is not None:
                raise InvalidArgument(
                    f"items overlap: '{overlap[1].node_id}' ({overlap[1].depth}) and '{c.node_id}' ({c.depth}).",
                    hint="List each node once; a tree item already covers the nodes below it.",
                    details={"field": f"items[{i}]"},
                )
            seen.add(i, c)

    def _change_mode(
        self,
        now: float,
        token: str,
        item: Claim,
        owner: str,
        timeout: float,
        wait: float,
        note: str | None,
        request_id: str | None,
        fingerprint: str | None,
        as_key: str | None,
    ) -> Granted | Queued:
        lease = self._lease_for(token, as_key)
        if item.node_id != lease.node_id or item.depth != lease.depth:
            raise InvalidArgument(
                f"the token belongs to a {lease.depth} lock on '{lease.node_id}',"
                f" not a {item.depth} lock on '{item.node_id}'.",
                hint="Pass the node_id and depth of the lock the token came from, or omit token to take a new lock.",
                details={"field": "token", "node_id": lease.node_id, "depth": lease.depth},
            )
        note = note if note is not None else lease.note
        if item.mode == lease.mode:
            new = lease._replace(expires_at=now + timeout, timeout=timeout, note=note)
            self._update(lease, new, now)
            return self._granted(now, owner, request_id, fingerprint, (new,))
        if item.mode == "read":
            new = lease._replace(mode="read", expires_at=now + timeout, timeout=timeout, note=note)
            self._update(lease, new, now)
            self._freed.append(lease.claim)  # the write lock it was
            self._promote(now)
            return self._granted(now, owner, request_id, fingerprint, (new,))
        if lease.lock_id in self._upgrade_of:
            raise InvalidArgument(
                f"an upgrade of lock {lease.lock_id} is already waiting.",
                hint="Wait for that call to finish; its result carries the upgraded lock.",
                details={"field": "token"},
            )
        want = Claim(lease.node_id, "write", lease.depth)
        me = self._identity_of_lease(lease)
        if not self._holders.conflicts(want, exclude=lease.lock_id):
            if self._waiting.conflicts(want):  # waiters that share with the read lock would wait for the write
                self._check_deadlock(me, granted=want)
            return self._granted(now, owner, request_id, fingerprint, (self._upgrade(now, lease, timeout, note, 0),))
        if wait <= 0:
            raise self._locked((want,), exclude=lease.lock_id, upgrade=True)
        waiter = _Waiter(
            0, lease.owner, (want,), timeout, note, request_id, fingerprint, now, now + wait, lease.lock_id, lease.label
        )
        self._check_deadlock(me, waiter)
        return Queued(self._enqueue(waiter))

    def _granted(
        self, now: float, owner: str, request_id: str | None, fingerprint: str | None, leases: tuple[Lease, ...]
    ) -> Granted:
        self._record_request(now, owner, request_id, fingerprint, leases)
        return Granted(leases)

    def _upgrade(self, now: float, lease: Lease, timeout: float, note: str | None, waited_ms: int) -> Lease:
        new = lease._replace(
            mode="write",
            fence=self._take_fence(),
            acquired_at=now,
            expires_at=now + timeout,
            timeout=timeout,
            note=note,
            waited_ms=waited_ms,
        )
        self._update(lease, new, now)
        return new

    # ------------------------------------------------------------------ release, renew, cancel

    def release(
        self, now: float, token: str, node_id: str | None = None, as_key: str | None = None
    ) -> tuple[Lease, int]:
        """Release the lease named by ``token``; returns it and how long it was held (ms).

        With ``as_key``, the lease must have been taken with that key (FORBIDDEN otherwise).
        """
        self.expire(now)
        lease = self._lease_for(token, as_key)
        self._check_node(lease, node_id)
        self._end(lease, "released", now)
        self._promote(now)
        return lease, max(0, round((now - lease.acquired_at) * 1000))

    def renew(
        self,
        now: float,
        token: str,
        timeout: float | None = None,
        as_key: str | None = None,
        node_id: str | None = None,
    ) -> Lease:
        """Restart the lease named by ``token`` for ``timeout`` seconds (default: its previous timeout).

        With ``as_key``, the lease must have been taken with that key (FORBIDDEN otherwise).
        """
        self.expire(now)
        lease = self._lease_for(token, as_key)
        self._check_node(lease, node_id)
        t = lease.timeout if timeout is None else timeout
        new = lease._replace(expires_at=now + t, timeout=t)
        self._update(lease, new, now)
        return new

    @staticmethod
    def _check_node(lease: Lease, node_id: str | None) -> None:
        if node_id is not None and node_id != lease.node_id:
            raise InvalidArgument(
                f"the token belongs to a lock on '{lease.node_id}', not '{node_id}'.",
                hint="Omit node_id, or pass the node the lock was taken on.",
                details={"field": "node_id", "node_id": lease.node_id},
            )

    def force_release(self, now: float, lock_id: str, by: str, why: str) -> tuple[Lease, int]:
        """Break the lock ``lock_id`` (an admin's call): end it as ``broken``, recording who and why.

        Its token then answers LOCK_BROKEN with the reason, and waiters it held back are served.
        """
        self.expire(now)
        lease = self._leases.get(lock_id)
        if lease is None:
            ended = next((e for e in reversed(self._ended.values()) if e.lock_id == lock_id), None)
            if ended is not None:
                raise self._ended_error(ended)
            raise LockNotFound(
                f"no lock {lock_id} is held in workspace '{self.workspace_id}'.",
                hint="List the held locks with {op:list_locks} and pass a lock_id from there.",
                details={"lock_id": lock_id},
            )
        self._end(lease, "broken", now, by, why)
        self._promote(now)
        return lease, max(0, round((now - lease.acquired_at) * 1000))

    def revoke_key(self, now: float, key_id: str, by: str, why: str) -> tuple[list[Lease], int]:
        """End everything the key ``key_id`` has here: it was revoked, so nothing may stay granted to it.

        Its waiters leave the line (their callers get UNAUTHENTICATED) before any of its locks is
        released, so none of them is served by what the release frees; then each of its locks is
        broken as :meth:`force_release` breaks one (``by``, ``why``: its token answers LOCK_BROKEN
        with them). The waiters behind those locks are served as usual. An upgrade the key waits
        for goes with its lock. Returns the broken leases and how many waiters left.

        A scan of the line and of every lease: revocation is rare, the lock path pays nothing for it.
        """
        self.expire(now)
        gone = [w for w in self._line() if w.key_id == key_id]
        for w in gone:
            self._drop_waiter(w)
            self._left(w, now, Unauthenticated.code)
            self.outcomes.append((w.waiter_id, _revoked_waiter(w, by, why)))
        broken = [le for le in self._leases.values() if le.key_id == key_id]
        for le in broken:
            self._end(le, "broken", now, by, why)
        self._promote(now)
        return broken, len(gone)

    def cancel(self, now: float, waiter_id: int) -> bool:
        """Take ``waiter_id`` out of the line; False if it is no longer waiting (granted or failed first)."""
        self.expire(now)
        w = self._waiter(waiter_id)
        if w is None:
            return False
        self._drop_waiter(w)
        self._left(w, now, "CANCELLED")
        self._promote(now)
        return True

    def _left(self, w: _Waiter, now: float, code: str) -> None:
        for c in w.items:
            self.events.append(_claim_event("left", now, w, c, code=code))

    def holding(self, now: float, token: str, as_key: str | None = None) -> Lease | LockError:
        """The live lease ``token`` names, or the error saying why it is not live (FORBIDDEN is raised)."""
        self.expire(now)
        try:
            return self._lease_for(token, as_key)
        except (LockExpired, LockBroken, LockNotFound) as e:
            return e

    def lookup(self, now: float, token: str) -> Lease:
        """The live lease named by ``token`` (raises LOCK_EXPIRED / LOCK_NOT_FOUND)."""
        self.expire(now)
        return self._lease_for(token)

    # ------------------------------------------------------------------ time

    def expire(self, now: float, limit: int | None = None) -> int:
        """End every lease due at ``now``, grant the waiters that frees, time out due waiters.

        ``limit``: when only leases are due (no wait runs out by ``now``, no upgrade waits), end
        at most that many, in deadline order, and grant what they free; :meth:`next_deadline` is
        then still at or before ``now`` if more are due, and the caller calls again with the same
        ``now`` (with nothing else in between) until it is not. The parts together grant exactly
        what one call would: a waiter granted early had no conflicting waiter ahead of it and no
        conflicting holder left, so one call would grant it too. Otherwise everything due is handled.
        """
        lh, wh = self._lease_heap, self._wait_heap
        if lh and lh[0][0] <= now and not (wh and wh[0][0] <= now) and not self._upgrades:
            return self._expire_leases(now, math.inf if limit is None else limit)
        n = 0
        dirty = False  # something ended since the last grant pass
        last = -math.inf
        # Handle deadlines one instant at a time, in the order they fell, even when told
        # late: what an earlier expiry freed is granted before a later deadline is looked
        # at (a wait that ran out first is a timeout; an upgrade freed first is granted
        # before its read lock would have ended). At one instant, leases end first and
        # their waiters are granted before any wait that ends then runs out.
        while True:
            tl = lh[0][0] if lh else math.inf
            tw = wh[0][0] if wh else math.inf
            t = min(tl, tw)
            if t > now:
                break
            lease_next = tl <= tw
            if dirty and (t > last or not lease_next):
                # A waiter whose wait ends at the very instant a lease frees it is granted, not timed out.
                self._promote(now)
                dirty = False
                continue  # the grant pass may have renewed or ended what is at the heads
            last = t
            if lease_next:
                when, lock_id = heapq.heappop(lh)
                lease = self._leases.get(lock_id)
                if lease is not None and lease.expires_at == when:
                    self._end(lease, "expired", lease.expires_at)
                    n += 1
                    dirty = True
            else:
                when, wid = heapq.heappop(wh)
                w = self._waiter(wid)
                if w is not None and w.deadline == when:
                    self._drop_waiter(w)
                    self._left(w, now, "WAIT_TIMEOUT")
                    self.outcomes.append((w.waiter_id, self._wait_timeout(w, now)))
                    dirty = True
        if dirty:
            self._promote(now)
        self._prune(now)
        return n

    def _expire_leases(self, now: float, limit: float) -> int:
        """End every lease due at ``now`` (at most ``limit``), then grant in one pass: when no wait runs out by ``now``.

        The same outcome as :meth:`expire`'s instant-by-instant handling, for less work (an expiry
        storm: a grant pass per instant costs more than the grant): with no wait ending and no
        upgrade in line, a grant made at an earlier instant changes no lease that ends later (a
        new lease ends after ``now``), and the line's order alone decides who goes first.
        ``tests/test_table_model.py`` holds the table to the instant-by-instant model with timers firing late;
        ``tests/test_table.py`` has a case for each condition.
        """
        n = 0
        lh, leases = self._lease_heap, self._leases
        while n < limit and lh and lh[0][0] <= now:
            when, lock_id = heapq.heappop(lh)
            lease = leases.get(lock_id)
            if lease is not None and lease.expires_at == when:
                self._end(lease, "expired", when)
                n += 1
        self._promote(now)
        self._prune(now)
        return n

    def _prune(self, now: float) -> None:
        if now < self._prune_check:
            return
        self._prune_check = now + 1.0  # retention is coarse: look once a second, not on every call
        before = now - self.limits.retention
        ended, requests = self._ended, self._requests
        while ended:
            h, e = next(iter(ended.items()))
            if e.at >= before and len(ended) <= self.limits.max_ended:
                break
            del ended[h]
            self._forgot = True
        while requests:
            key, r = next(iter(requests.items()))
            if r.created_at >= before and len(requests) <= self.limits.max_ended:
                break
            del requests[key]
            self._handed_out.discard(key)
            self._forgot = True
        if self._forgot and now >= self._next_prune:
            # Tell the store at most once a minute: each prune is a range delete there.
            oldest_end = next(iter(ended.values())).at if ended else now
            oldest_req = next(iter(requests.values())).created_at if requests else now
            self.changes.append(Prune(oldest_end, oldest_req))
            self._forgot = False
            self._next_prune = now + 60.0

    # ------------------------------------------------------------------ internals

    def _take_fence(self) -> int:
        fence = self._fence_next
        self._fence_next += 1
        if fence > self._fence_reserved:
            self._fence_reserved = fence - 1 + self.limits.fence_block
            self.changes.append(ReserveFences(self._fence_reserved))
        return fence

    def _grant(
        self,
        now: float,
        items: tuple[Claim, ...],
        owner: str,
        timeout: float,
        note: str | None,
        request_id: str | None,
        waited_ms: int,
        label: str | None = None,
        key_id: str | None = None,
    ) -> tuple[Lease, ...]:
        leases = []
        for c in items:
            lock_id, token = self._ids()
            lease = Lease(
                lock_id,
                token,
                c.node_id,
                c.mode,
                c.depth,
                owner,
                note,
                self._take_fence(),
                now,
                now + timeout,
                timeout,
                waited_ms,
                request_id,
                label,
                key_id,
            )
            self._install(lease)
            self.events.append(Event.of("granted", now, lease, waited_ms=waited_ms))
            leases.append(lease)
        return tuple(leases)

    def _record_request(
        self, now: float, owner: str, request_id: str | None, fingerprint: str | None, leases: tuple[Lease, ...]
    ) -> None:
        if request_id is None or fingerprint is None:
            return
        record = RequestRecord(owner, request_id, fingerprint, leases, now)
        self._remember_request(record)
        self.changes.append(PutRequest(record))

    def _remember_request(self, record: RequestRecord) -> None:
        key = (record.owner, record.request_id)
        self._requests.pop(key, None)  # re-insert at the end: the dict stays in time order
        self._requests[key] = record
        if len(self._requests) > self.limits.max_ended:
            oldest, _ = self._requests.popitem(last=False)
            self._handed_out.discard(oldest)
            self._forgot = True

    def _install(self, lease: Lease) -> None:
        lock_id = lease.lock_id
        self._leases[lock_id] = lease
        self._by_token[lease.token] = lock_id
        if lease.owner != ANONYMOUS:
            held = self._held_by.get(lease.owner)
            if held is None:
                self._held_by[lease.owner] = {lock_id}
            else:
                held.add(lock_id)
        self._holders.add(lock_id, lease)
        self._push_expiry(lease)
        self.changes.append(PutLease(lease))

    def _push_expiry(self, lease: Lease) -> None:
        heap = self._lease_heap
        heapq.heappush(heap, (lease.expires_at, lease.lock_id))
        # Entries of renewed or released leases stay until popped; rebuild before they outnumber the live ones.
        if len(heap) > 2 * len(self._leases) + 1024:
            heap[:] = [(le.expires_at, le.lock_id) for le in self._leases.values()]
            heapq.heapify(heap)

    def _update(self, old: Lease, new: Lease, at: float) -> None:
        self._leases[new.lock_id] = new
        kind: EventKind = "renewed"
        if new.mode != old.mode:
            kind = "upgraded" if new.mode == "write" else "downgraded"
        self.events.append(Event.of(kind, at, new, waited_ms=new.waited_ms if kind == "upgraded" else None))
        if old.mode != new.mode or old.node_id != new.node_id or old.depth != new.depth:
            self._holders.remove(old.lock_id, old.node_id)
            self._holders.add(new.lock_id, new)
        else:
            self._holders.replace(new.lock_id, new)  # the index holds the lease itself: keep it current
        if old.expires_at != new.expires_at:
            self._push_expiry(new)
        self.changes.append(PutLease(new))

    def _end(self, lease: Lease, reason: EndReason, at: float, by: str | None = None, why: str | None = None) -> None:
        del self._leases[lease.lock_id]
        del self._by_token[lease.token]
        if lease.owner != ANONYMOUS:
            mine = self._held_by[lease.owner]
            mine.discard(lease.lock_id)
            if not mine:
                del self._held_by[lease.owner]
        self._freed.append(self._holders.remove(lease.lock_id, lease.node_id))
        ended = Ended(lease.lock_id, lease.token, lease.node_id, lease.owner, reason, at, by, why)
        held = max(0, round((at - lease.acquired_at) * 1000))
        self.events.append(Event.of(reason, at, lease, held_ms=held, by=by, reason=why))
        self._remember_end(ended)
        self.changes.append(EndLease(lease, ended))
        wid = self._upgrade_of.get(lease.lock_id)
        if wid is not None:
            w = self._upgrades[wid]
            self._drop_waiter(w)
            err = self._ended_error(ended)
            self.events.append(
                Event("left", at, lease.node_id, w.owner, lease.lock_id, waiter_id=wid, code=err.code, label=w.label)
            )
            self.outcomes.append((wid, err))

    def _remember_end(self, ended: Ended) -> None:
        self._ended[ended.token] = ended
        if len(self._ended) > self.limits.max_ended:
            self._ended.popitem(last=False)
            self._forgot = True

    def _lease_for(self, token: str, as_key: str | None = None) -> Lease:
        if not isinstance(token, str) or not token:
            raise InvalidArgument("token must be the token string a lock grant returned.", details={"field": "token"})
        lock_id = self._by_token.get(token)
        if lock_id is not None:
            lease = self._leases[lock_id]
            if as_key is not None and lease.key_id != as_key:
                # A leaked token alone is not enough: it works only with the key that took the lock.
                raise Forbidden(
                    f"lock {lease.lock_id} on '{lease.node_id}' was taken by agent '{lease.owner}' with another key;"
                    " only that key (or an admin key) can release, renew or change it.",
                    hint="Use the key that took the lock, or ask an admin to force-unlock it ({op:force_unlock}).",
                    details={"lock_id": lease.lock_id, "node_id": lease.node_id, "owner": lease.owner},
                )
            return lease
        ended = self._ended.get(token)
        if ended is not None:
            raise self._ended_error(ended)
        raise LockNotFound(
            f"no lock in workspace '{self.workspace_id}' has this token.",
            hint="Check the workspace_id; if the lock ended long ago it is forgotten."
            " Take a new lock with {op:lock_file}.",
        )

    def _ended_error(self, ended: Ended) -> LockError:
        details = {"lock_id": ended.lock_id, "node_id": ended.node_id, "ended_at": _fmt_time(ended.at)}
        if ended.reason == "broken":
            return LockBroken(
                f"lock {ended.lock_id} on '{ended.node_id}' was broken by admin '{ended.by}'"
                f" at {_fmt_time(ended.at)}: {ended.why}",
                hint="Stop writing under this lock: another agent may hold the node now. Take the lock again with"
                " {op:lock_file}, re-read the file, and redo the change.",
                details={**details, "broken_by": ended.by, "reason": ended.why},
            )
        if ended.reason == "expired":
            return LockExpired(
                f"lock {ended.lock_id} on '{ended.node_id}' expired at {_fmt_time(ended.at)};"
                " its lease was not renewed in time.",
                hint="Anything written since then was unprotected. Take the lock again with {op:lock_file}, re-read"
                " the file, and redo the change; renew ({op:renew_lock}) sooner next time.",
                details={**details, "expired_at": details["ended_at"]},
            )
        return LockNotFound(
            f"lock {ended.lock_id} on '{ended.node_id}' was already released at {_fmt_time(ended.at)}.",
            hint="Nothing to do if you released it; take a new lock with {op:lock_file} to work on the node again.",
            details=details,
        )

    # ------------------------------------------------------------------ the line

    def _line(self) -> list[_Waiter]:
        return [*self._upgrades.values(), *self._queue.values()]

    def _enqueue(self, w: _Waiter) -> int:
        if self.waiter_count >= self.limits.max_waiters:
            raise LimitExceeded(
                f"{self.waiter_count} requests already wait in workspace '{self.workspace_id}';"
                f" the limit is {self.limits.max_waiters}.",
                hint="Retry later with wait=0, or work on other files meanwhile.",
                details={"limit": self.limits.max_waiters},
            )
        w = w._replace(waiter_id=self._next_waiter)
        self._next_waiter += 1
        self._put_in_line(w)
        if self.track_waiters:
            self.changes.append(PutWaiter(w))
        for c in w.items:
            self.events.append(_claim_event("queued", w.enqueued_at, w, c))
        return w.waiter_id

    def _put_in_line(self, w: _Waiter) -> None:
        if w.upgrade_of:
            self._upgrades[w.waiter_id] = w
            self._upgrade_of[w.upgrade_of] = w.waiter_id
        else:
            self._queue[w.waiter_id] = w
            self._queue_ids.add(w.waiter_id)
        for i, c in enumerate(w.items):
            self._waiting.add((w.waiter_id, i), c)
        self._waiters_of.setdefault(self._identity_of_waiter(w), set()).add(w.waiter_id)
        if w.request_id is not None:
            self._pending[(w.owner, w.request_id)] = w.waiter_id
        heapq.heappush(self._wait_heap, (w.deadline, w.waiter_id))
        if len(self._wait_heap) > 2 * self.waiter_count + 1024:
            self._wait_heap[:] = [(x.deadline, x.waiter_id) for x in self._line()]
            heapq.heapify(self._wait_heap)

    def _drop_waiter(self, w: _Waiter, freed: bool = True) -> None:
        """Take ``w`` out of the line; ``freed``: it leaves without being granted (so it may let others through)."""
        if freed:
            self._freed.extend(w.items)
        if w.upgrade_of:
            del self._upgrades[w.waiter_id]
            del self._upgrade_of[w.upgrade_of]
        else:
            del self._queue[w.waiter_id]
            self._queue_ids.remove(w.waiter_id)
        for i, c in enumerate(w.items):
            self._waiting.remove((w.waiter_id, i), c.node_id)
        ident = self._identity_of_waiter(w)
        ids = self._waiters_of[ident]
        ids.discard(w.waiter_id)
        if not ids:
            del self._waiters_of[ident]
        if w.request_id is not None:
            self._pending.pop((w.owner, w.request_id), None)
        if self.track_waiters:
            self.changes.append(DropWaiter(w.waiter_id))

    def _promote(self, now: float) -> None:
        """Grant, in line order, every waiter that conflicts with no holder and no waiter still ahead of it.

        Between passes every waiter in line is blocked: it conflicts with a holder, or with a
        waiter ahead of it. So only a waiter that conflicts with something freed since the last
        pass (an ended lease, a downgraded write lock, a waiter that left the line: ``_freed``)
        can be granted now, and granting one frees nothing (its claims stay in force as a
        holder's). A pass therefore looks at those candidates alone, in line order, and grants
        exactly what a walk of the whole line would; a release costs O(its conflicts), not
        O(line). When the candidates (or the waiters they must be checked against) are many,
        the whole line is walked instead: the same result, for less work.
        """
        freed, self._freed = self._freed, []
        queue, upgrades = self._queue, self._upgrades
        if not freed or not (queue or upgrades):
            return
        waiting, holders = self._waiting, self._holders
        limit = max(_SMALL_PASS, self.waiter_count // 8)
        found: dict[int, _Waiter] = {}
        for claim in freed:
            for (wid, _), _ in waiting.conflicting(claim):
                if wid not in found:
                    w = queue.get(wid)
                    found[wid] = w if w is not None else upgrades[wid]
                    if len(found) > limit:
                        self._promote_all(now)
                        return
        if not found:
            return
        cands = list(found.values())
        if len(cands) > 1:
            cands.sort(key=_line_key)
        budget = max(_SMALL_PASS, self.waiter_count // 2)  # waiters looked at to see whether one is ahead
        for w in cands:
            wid, items = w.waiter_id, w.items
            if any(holders.conflicts(c, exclude=w.upgrade_of) for c in items):
                continue
            # Nobody else in line conflicts (the usual case, O(depth))? Its own items never overlap each other.
            if any(waiting.conflicts(c, exclude=(wid, i)) for i, c in enumerate(items)):
                me = _line_key(w)
                blocked = False
                for c in items:
                    for (other, _), _ in waiting.conflicting(c):
                        budget -= 1
                        if other != wid and (other not in upgrades, other) < me:
                            blocked = True
                            break
                    if blocked or budget < 0:
                        break
                if budget < 0:
                    # Those served so far are what the walk would have served before ``w``; it finishes the pass.
                    self._promote_all(now)
                    return
                if blocked:
                    continue
            self._serve(w, now)

    def _promote_all(self, now: float) -> None:
        """The grant pass as a walk of the whole line (see :meth:`_promote`)."""
        self._freed.clear()
        ahead: ClaimIndex[tuple[int, int], Claim] = ClaimIndex()
        for w in self._line():
            if all(not self._holders.conflicts(c, exclude=w.upgrade_of) and not ahead.conflicts(c) for c in w.items):
                self._serve(w, now)
            else:
                for i, c in enumerate(w.items):
                    ahead.add((w.waiter_id, i), c)

    def _serve(self, w: _Waiter, now: float) -> None:
        """Grant ``w`` (it was checked free to go)."""
        self._drop_waiter(w, freed=False)
        waited = max(0, round((now - w.enqueued_at) * 1000))
        if w.upgrade_of:
            leases: tuple[Lease, ...] = (self._upgrade(now, self._leases[w.upgrade_of], w.timeout, w.note, waited),)
        else:
            leases = self._grant(now, w.items, w.owner, w.timeout, w.note, w.request_id, waited, w.label, w.key_id)
        self._record_request(now, w.owner, w.request_id, w.fingerprint, leases)
        self.outcomes.append((w.waiter_id, Granted(leases)))

    # ------------------------------------------------------------------ deadlock

    @staticmethod
    def _identity_of_lease(lease: Lease) -> str:
        return lease.owner if lease.owner != ANONYMOUS else "~" + lease.lock_id

    def _identity_of_waiter(self, w: _Waiter) -> str:
        if w.owner != ANONYMOUS:
            return w.owner
        return "~" + w.upgrade_of if w.upgrade_of else f"~w{w.waiter_id}"

    def _blockers(self, w: _Waiter) -> set[str]:
        """Identities ``w`` waits for: conflicting holders, and conflicting waiters served before it."""
        out: set[str] = set()
        for c in w.items:
            for lock_id, _ in self._holders.conflicting(c, exclude=w.upgrade_of):
                out.add(self._identity_of_lease(self._leases[lock_id]))
            for (wid, _), _ in self._waiting.conflicting(c):
                other = self._waiter(wid)
                if other is None or other is w:
                    continue
                new = w.waiter_id == 0
                ahead = (other.upgrade_of is not None and (w.upgrade_of is None or new or wid < w.waiter_id)) or (
                    w.upgrade_of is None and other.upgrade_of is None and (new or wid < w.waiter_id)
                )
                if ahead:
                    out.add(self._identity_of_waiter(other))
        return out

    def _nobody_waits_for(self, me: str, waiter: _Waiter) -> bool:
        """Whether letting a new ordinary ``waiter`` of ``me`` wait surely closes no cycle, found cheaply.

        A new cycle must run through ``me``, so it needs an edge *into* ``me``, and the new
        waiter adds edges out of ``me`` only (nobody waits behind a request that joins the
        end of the line). So if no waiter conflicts with a lease or a waiting claim of
        ``me``, and the request does not wait for ``me`` itself, there is no cycle and the
        full search (O(wait-for edges) per request: cubic with thousands waiting for one
        node) is skipped. False means "search": it is never wrong, only cautious.
        """
        held = self._held_by.get(me, ())
        if len(held) > _QUICK_CHECK_LEASES:
            return False
        waiting, items = self._waiting, waiter.items
        for lock_id in held:
            lease = self._leases[lock_id]
            if waiting.conflicts(lease) or any(_overlap(lease, c) for c in items):
                return False
        for wid in self._waiters_of.get(me, ()):
            other = self._waiter(wid)
            if other is None:
                continue
            for i, c in enumerate(other.items):
                if waiting.conflicts(c, exclude=(wid, i)) or any(_overlap(c, x) for x in items):
                    return False
        return True

    def _check_deadlock(self, me: str | None, waiter: _Waiter | None = None, granted: Claim | None = None) -> None:
        """Raise DEADLOCK if letting ``waiter`` wait, or granting the upgrade ``granted``, would close a cycle.

        Every change that adds a wait-for edge passes through here, so before it the
        graph has no cycle, and a new one must run through ``me``: search from what
        ``me`` would wait for, in the graph as it would be after the change. Besides
        ``waiter``'s own edges, an upgrade adds edges *into* ``me``: ordinary waiters
        that conflict with it wait behind it (upgrades go first), and once granted,
        every waiter that conflicts with the new write lock waits for it.
        """
        if me is None:
            return  # an anonymous new request is nobody's blocker yet
        pivot = granted if granted is not None else (waiter.items[0] if waiter and waiter.upgrade_of else None)

        def waits_for(ident: str) -> set[str]:
            out: set[str] = set()
            for wid in self._waiters_of.get(ident, ()):
                other = self._waiter(wid)
                if other is None:
                    continue
                out |= self._blockers(other)
                if (
                    pivot is not None
                    and (granted is not None or other.upgrade_of is None)
                    and any(_overlap(pivot, c) for c in other.items)
                ):
                    out.add(me)
            if ident == me and waiter is not None:
                out |= self._blockers(waiter)
            return out

        parent: dict[str, str] = {}
        stack: list[str] = []
        for b in waits_for(me):
            parent.setdefault(b, me)
            stack.append(b)
        seen: set[str] = set()
        while stack:
            ident = stack.pop()
            if ident == me:
                chain = [me]
                cur = parent[me]
                while cur != me:
                    chain.append(cur)
                    cur = parent[cur]
                chain.append(me)
                chain.reverse()
                items = waiter.items if waiter is not None else (granted,) if granted is not None else ()
                raise self._deadlock(items, chain)
            if ident in seen:
                continue
            seen.add(ident)
            for b in waits_for(ident):
                if b not in seen:
                    parent.setdefault(b, ident)
                    stack.append(b)

    def _deadlock(self, items: tuple[Claim, ...], chain: list[str]) -> Deadlock:
        names = [c if not c.startswith("~") else "an anonymous agent" for c in chain]
        nodes = ", ".join(f"'{c.node_id}'" for c in items)
        if len(chain) == 2:
            msg = (
                f"{names[0]} already holds or waits for a lock that conflicts with this request for {nodes};"
                " waiting would never end."
            )
            hint = (
                "Use the token of the lock you hold (to upgrade or downgrade it), or release it first."
                " If another agent shares your key (or, without keys, your agent name), give each agent its own."
            )
        else:
            msg = f"waiting for {nodes} would close a cycle: " + " -> ".join(names) + "."
            hint = (
                "Release the locks you hold and retry, or take all the locks you need at once with {op:lock_files}"
                " (which never deadlocks)."
            )
        return Deadlock(msg, hint=hint, details={"cycle": names})

    # ------------------------------------------------------------------ messages

    def _locked(self, items: tuple[Claim, ...], exclude: str | None = None, upgrade: bool = False) -> Locked:
        for c in items:
            holders = [self._leases[k] for k, _ in self._holders.conflicting(c, exclude=exclude)]
            if holders:
                h = holders[0]
                more = f" (and {len(holders) - 1} more conflicting locks)" if len(holders) > 1 else ""
                waiting = self._waiting_for(c)
                if h.node_id == c.node_id:
                    where = f"'{c.node_id}' is {h.mode}-locked by {h.owner}{more}"
                elif c.node_id.startswith(h.node_id + "/"):
                    where = f"'{c.node_id}' is covered by a {h.mode} tree lock on '{h.node_id}' held by {h.owner}{more}"
                else:
                    where = f"'{c.node_id}' has a {h.mode} lock below it on '{h.node_id}' held by {h.owner}{more}"
                msg = f"{where} until {_fmt_time(h.expires_at)}" + (f" ({waiting} waiting)." if waiting else ".")
                if upgrade:
                    msg += " Your read lock is kept."
                return Locked(
                    msg,
                    hint="Retry with wait=30 to wait in line, or work on another file.",
                    details={
                        "node_id": c.node_id,
                        "holders": [
                            {
                                "owner": x.owner,
                                "mode": x.mode,
                                "node_id": x.node_id,
                                "expires_at": _fmt_time(x.expires_at),
                            }
                            for x in holders[:10]
                        ],
                        "waiting": waiting,
                    },
                )
        for c in items:
            for (wid, _), _ in self._waiting.conflicting(c):
                w = self._waiter(wid)
                if w is not None:
                    return Locked(
                        f"'{c.node_id}' is free but {w.owner} is already waiting for it (first come, first served).",
                        hint="Retry with wait=30 to join the line, or work on another file.",
                        details={"node_id": c.node_id, "holders": [], "waiting": self._waiting_for(c)},
                    )
        return Locked("the request conflicts with another request.", hint="Retry with wait=30.")

    def _waiting_for(self, c: Claim) -> int:
        """How many requests in line want something that conflicts with ``c``."""
        return len({wid for (wid, _), _ in self._waiting.conflicting(Claim(c.node_id, "write", c.depth))})

    def _wait_timeout(self, w: _Waiter, now: float) -> WaitTimeout:
        nodes = ", ".join(f"'{c.node_id}'" for c in w.items)
        try:
            base = self._locked(w.items, exclude=w.upgrade_of)
            why = " " + base.message
        except Exception:  # pragma: no cover - message building must never mask the outcome
            why = ""
        return WaitTimeout(
            f"waited {now - w.enqueued_at:.1f} s for {nodes} without being granted.{why}",
            hint="Retry with a longer wait, or work on something else and come back.",
            details={"waited_ms": round((now - w.enqueued_at) * 1000)},
        )


#: status numbers its waiters by walking the line when more than 1/_WALK_SHARE of the line wants the node.
_WALK_SHARE = 8
#: The quick deadlock check looks at the leases of an owner holding at most this many (else: the full search).
_QUICK_CHECK_LEASES = 64
#: A grant pass looks at up to this many candidates (or a share of the line) before walking the whole line.
_SMALL_PASS = 64


def _line_key(w: _Waiter) -> tuple[bool, int]:
    """A waiter's place in line: upgrades first, then by arrival (waiter ids only grow)."""
    return (w.upgrade_of is None, w.waiter_id)


def _revoked_waiter(w: _Waiter, by: str, why: str) -> Unauthenticated:
    """The answer of a request whose key was revoked while it waited in line."""
    nodes = ", ".join(f"'{c.node_id}'" for c in w.items)
    return Unauthenticated(
        f"the key this request was made with was revoked by admin '{by}' while it waited for {nodes}"
        f" ({why}); it was not granted.",
        hint="Ask whoever runs the server for a new key, then retry with it.",
        details={"key_id": w.key_id, "revoked_by": by, "reason": why},
    )


def _claim_event(kind: EventKind, at: float, w: _Waiter, c: Claim, code: str | None = None) -> Event:
    """An event about one claim of a waiter (queued, or left the line with ``code``)."""
    return Event(kind, at, c.node_id, w.owner, w.upgrade_of, c.mode, c.depth, waiter_id=w.waiter_id, code=code,
                 label=w.label)  # fmt: skip
