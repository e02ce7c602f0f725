"""The records every layer shares: leases, ended locks, changes to persist, events, file metadata, store rows.

Plain immutable tuples with no behaviour beyond formatting: the lock table and the file rules produce them,
the stores persist them, the event hub and the faces read them. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, NamedTuple

from mcp_locks.core.claims import Claim, Depth, Mode
from mcp_locks.core.errors import LockError


def masked(record: tuple[object, ...]) -> str:
    """A repr that never shows a token, so a logged record cannot leak one."""
    fields = ", ".join(
        f"{k}={'<secret>' if k == 'token' else repr(v)}"
        for k, v in zip(record._fields, record, strict=True)  # type: ignore[attr-defined]
    )
    return f"{type(record).__name__}({fields})"


class Lease(NamedTuple):
    """A granted lock. Times are seconds since the epoch (UTC); ``expires_at`` is absolute."""

    lock_id: str
    token: str
    node_id: str
    mode: Mode
    depth: Depth
    owner: str
    note: str | None
    fence: int
    acquired_at: float
    expires_at: float
    timeout: float
    waited_ms: int = 0
    request_id: str | None = None
    #: What the caller called itself (the ``agent`` argument), shown beside the authenticated owner.
    label: str | None = None
    #: The id of the API key that took the lock: only that key (or an admin) may use its token.
    key_id: str | None = None

    @property
    def claim(self) -> Claim:
        """The part of the tree this lease claims."""
        return Claim(self.node_id, self.mode, self.depth)

    def covers(self, node_id: str) -> bool:
        """Whether this lease's claim includes ``node_id`` (its own node, or one below a tree lock)."""
        return self.node_id == node_id or (self.depth == "tree" and node_id.startswith(self.node_id + "/"))

    def __repr__(self) -> str:
        return masked(self)


class Ended(NamedTuple):
    """What is remembered of a lock after it ends, so its token gets a precise answer."""

    lock_id: str
    token: str
    node_id: str
    owner: str
    reason: EndReason
    at: float
    #: For a broken lock: the admin who broke it and the reason they gave.
    by: str | None = None
    why: str | None = None

    def __repr__(self) -> str:
        return masked(self)


class RequestRecord(NamedTuple):
    """The result of a request sent with a request_id, replayed to retries of it."""

    owner: str
    request_id: str
    fingerprint: str
    leases: tuple[Lease, ...]
    created_at: float


class PutLease(NamedTuple):
    """Store change: insert or replace a held lease."""

    lease: Lease


class EndLease(NamedTuple):
    """Store change: delete a lease and remember how it ended."""

    lease: Lease
    ended: Ended


class PutRequest(NamedTuple):
    """Store change: remember a request_id's result."""

    record: RequestRecord


class DropRequest(NamedTuple):
    """Store change: forget a request_id's result (its grant was given back unseen)."""

    owner: str
    request_id: str


class ReserveFences(NamedTuple):
    """Store change: fences up to ``upto`` may be handed out. Must be durable before any is acknowledged."""

    upto: int


class Prune(NamedTuple):
    """Store change: forget ended locks older than ``ended_before`` and requests older than ``requests_before``."""

    ended_before: float
    requests_before: float


class WaiterRecord(NamedTuple):
    """A request waiting in line, as a store shared by several servers keeps it (see ``track_waiters``)."""

    waiter_id: int
    owner: str
    items: tuple[Claim, ...]
    timeout: float
    note: str | None
    request_id: str | None
    fingerprint: str | None
    enqueued_at: float
    deadline: float
    upgrade_of: str | None = None
    label: str | None = None
    key_id: str | None = None


class PutWaiter(NamedTuple):
    """Store change: a request joined the line (recorded only when the table tracks waiters)."""

    record: WaiterRecord


class DropWaiter(NamedTuple):
    """Store change: a request left the line, granted or not (recorded only when the table tracks waiters)."""

    waiter_id: int


EventKind = Literal[
    "requested",
    "queued",
    "granted",
    "renewed",
    "released",
    "expired",
    "broken",
    "upgraded",
    "downgraded",
    "left",
    "denied",
    "written",
    "deleted",
]


EndReason = Literal["released", "expired", "broken"]


class Event(NamedTuple):
    """Something that happened to a lock or a waiter, for audit, metrics and live feeds (never a token)."""

    kind: EventKind
    at: float
    node_id: str
    owner: str
    lock_id: str | None = None
    mode: Mode | None = None
    depth: Depth | None = None
    fence: int | None = None
    waiter_id: int | None = None
    waited_ms: int | None = None
    held_ms: int | None = None
    code: str | None = None
    #: Who broke the lock and why (``broken`` events only).
    by: str | None = None
    reason: str | None = None
    #: What the owner called itself (the ``agent`` argument).
    label: str | None = None
    #: The file's version after a ``written`` or ``deleted`` event.
    version: int | None = None
    #: Position in the workspace's event log (1, 2, ...), stamped by the actor when the batch commits.
    seq: int = 0

    @classmethod
    def of(
        cls,
        kind: EventKind,
        at: float,
        le: Lease,
        *,
        waited_ms: int | None = None,
        held_ms: int | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> Event:
        """An event about a lease (built field by field: one per grant and per end, ~0.5 µs cheaper)."""
        return tuple.__new__(cls, (kind, at, le.node_id, le.owner, le.lock_id, le.mode, le.depth, le.fence, None,
                                   waited_ms, held_ms, None, by, reason, le.label, None, 0))  # fmt: skip


def fmt_time(t: float) -> str:
    """A time as the refusals show it: UTC, to the second."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FileMeta(NamedTuple):
    """What the store keeps of a file. ``version`` starts at 1 and grows by one per write.

    ``fence`` is the highest fence the file has been written under (a write
    without a lock keeps the previous one), so a writer holding an older
    fence is refused. A deleted file is kept as a tombstone (``deleted``)
    so that a re-created file continues the version count: an agent that
    read version 3 of the old file cannot overwrite version 1 of a new one.
    ``pending`` names the staged content (or delete marker) committed with
    this record; while that staged file exists, the change is still to be
    applied on disk (after a crash it is redone on load).
    """

    node_id: str
    version: int
    size: int
    sha256: str | None
    modified_at: float
    modified_by: str | None
    fence: int
    deleted: bool = False
    pending: str | None = None
    #: False for a file found in a bound folder that was never written through mcp-locks (or changed outside it).
    tracked: bool = True
    #: The file's mtime on disk as written, to notice a change made outside mcp-locks (0: unknown).
    mtime_ns: int = 0

    @property
    def etag(self) -> str:
        """A strong HTTP entity tag: the version, and the start of the content's sha256."""
        return f'"{self.version}-{(self.sha256 or "untracked")[:16]}"'


class PutFile(NamedTuple):
    """Store change: insert or replace a file's metadata (a tombstone for a delete)."""

    meta: FileMeta


class Staged(NamedTuple):
    """Content written and fsynced under the workspace's state folder, waiting for its commit."""

    name: str
    size: int
    sha256: str
    mtime_ns: int = 0


class FileOp(NamedTuple):
    """What to do on disk once a commit holding ``PutFile`` is durable: move staged content in, or unlink."""

    node_id: str
    staged: str
    delete: bool


class OnDisk(NamedTuple):
    """What the file system shows at a node."""

    kind: str  # "file", "dir", "link" or "other"
    size: int
    mtime: float
    mtime_ns: int = 0


Change = PutLease | EndLease | PutRequest | DropRequest | ReserveFences | Prune | PutFile | PutWaiter | DropWaiter


#: The webhook event types and the log events each one covers.
WEBHOOK_EVENTS: dict[str, tuple[EventKind, ...]] = {
    "lock.granted": ("granted", "upgraded", "downgraded"),
    "lock.released": ("released",),
    "lock.expired": ("expired",),
    "lock.broken": ("broken",),
    "file.written": ("written",),
    "file.deleted": ("deleted",),
}


#: The webhook event type of each log event kind that has one.
TYPE_OF: dict[str, str] = {kind: t for t, kinds in WEBHOOK_EVENTS.items() for kind in kinds}


class AppendEvents(NamedTuple):
    """Store change: append ``events`` to the workspace's audit log, numbered from ``first``.

    The events' own ``seq`` fields are not read: numbering them is left to whoever needs the
    numbers (a store that keeps events one by one, a live subscriber), so the lock path does not.
    """

    events: tuple[Event, ...]
    first: int

    def stamped(self) -> list[Event]:
        """The events, each with its ``seq``."""
        new, first = tuple.__new__, self.first
        return [new(Event, (*ev[:-1], first + i)) for i, ev in enumerate(self.events)]


class Delivery(NamedTuple):
    """One webhook message: ``delivery_id`` is its webhook-id header, the same on every retry.

    ``payload`` is the event as a compact JSON array; :func:`webhook_body` makes the request body from it.
    A first attempt is read from the log (``row`` 0); one that failed waits in the outbox for its retry.
    """

    delivery_id: str
    webhook_id: str
    event_type: str
    payload: str
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None
    #: The store's handle on the row (SQLite's rowid), set when it is read back.
    row: int = 0


class WebhookRecord(NamedTuple):
    """A registered webhook. ``secret`` (whsec_...) signs its deliveries; it is shown to the admin once.

    ``cursor`` is the last seq of its workspace's log it has dealt with: every matching event up to it
    was delivered, or is in the outbox waiting for a retry.
    """

    webhook_id: str
    workspace_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: float
    cursor: int = 0

    @property
    def kinds(self) -> tuple[EventKind, ...]:
        """The log event kinds its event types cover."""
        return tuple(k for t in self.events for k in WEBHOOK_EVENTS.get(t, ()))


def event_dict(workspace_id: str, ev: Event) -> dict[str, object]:
    """An event as JSON-ready data: the AuditEvent model's fields, times as ISO 8601 (built directly: hot path)."""
    at = datetime.fromtimestamp(ev.at, UTC).isoformat().replace("+00:00", "Z")
    return {
        "seq": ev.seq, "workspace_id": workspace_id, "at": at, "kind": ev.kind, "node_id": ev.node_id,
        "agent": ev.owner, "label": ev.label, "lock_id": ev.lock_id, "mode": ev.mode, "depth": ev.depth,
        "fence": ev.fence, "waited_ms": ev.waited_ms, "held_ms": ev.held_ms, "code": ev.code, "by": ev.by,
        "reason": ev.reason, "version": ev.version,
    }  # fmt: skip


def webhook_body(delivery: Delivery) -> str:
    """The JSON body of a delivery, in the Standard Webhooks shape: ``{type, timestamp, data}``.

    ``data`` is the event plus its ``event_id`` (``workspace:seq``, the same for every webhook and retry).
    """
    workspace_id, *fields = json.loads(delivery.payload)
    data = event_dict(workspace_id, Event(*fields))
    data["event_id"] = f"{workspace_id}:{data['seq']}"
    return json.dumps({"type": delivery.event_type, "timestamp": data["at"], "data": data}, separators=(",", ":"))


class Granted(NamedTuple):
    """Outcome of an acquire: the leases (one per item), and whether this was a replay of a request_id."""

    leases: tuple[Lease, ...]
    replayed: bool = False


class Queued(NamedTuple):
    """Outcome of an acquire that waits in line; ``joined`` when a retry joined an existing waiter."""

    waiter_id: int
    joined: bool = False


class WaiterOutcome(NamedTuple):
    """Store change (shared stores): this server decided the fate of another server's waiter; that one answers it."""

    waiter_id: int
    outcome: Granted | LockError


class TakeOutcome(NamedTuple):
    """Store change (shared stores): this server answered its waiter with the outcome another server decided."""

    waiter_id: int


class PutContent(NamedTuple):
    """Store change (shared stores that keep file content): the content of a file written in this batch.

    ``open`` returns a new read descriptor of its staged file; the store reads it and closes it.
    """

    node_id: str
    open: Callable[[], int]


#: What one actor batch commits: lock and file changes, and the audit rows of its events.
StoreChange = Change | AppendEvents | WaiterOutcome | TakeOutcome | PutContent


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which part of a workspace's event log to read: newest first below ``before_seq``, filtered.

    With ``after_seq`` instead: oldest first, from just after it (to resume a feed).
    """

    workspace_id: str
    node_id: str | None = None
    agent: str | None = None
    since: float | None = None
    before_seq: int | None = None
    limit: int = 100
    after_seq: int | None = None
    #: Only these kinds (None: all).
    kinds: tuple[str, ...] | None = None

    def matches(self, ev: Event) -> bool:
        """Whether ``ev`` passes the filters (a store may filter in SQL instead)."""
        return (
            (self.node_id is None or ev.node_id == self.node_id)
            and (self.agent is None or ev.owner == self.agent)
            and (self.since is None or ev.at >= self.since)
            and (self.before_seq is None or ev.seq < self.before_seq)
            and (self.after_seq is None or ev.seq > self.after_seq)
            and (self.kinds is None or ev.kind in self.kinds)
        )


@dataclass(frozen=True, slots=True)
class Settle:
    """What became of deliveries, and how far each webhook got in its workspace's log.

    ``done`` arrived; ``retry`` failed and go again at their ``next_at``; ``dead``
    failed for the last time (kept, with their last error, until pruned). A
    delivery with ``row`` 0 was a first attempt, read from the log, and has no
    outbox row yet. ``cursors`` moves webhooks' cursors forward (never back).
    """

    done: tuple[Delivery, ...] = ()
    retry: tuple[Delivery, ...] = ()
    dead: tuple[Delivery, ...] = ()
    cursors: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class WorkspaceRecord:
    """A workspace as the store keeps it."""

    workspace_id: str
    description: str | None
    created_at: float
    #: A project folder the workspace's files live in (None: under the server's data dir).
    root: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All a workspace actor needs to rebuild its table."""

    leases: list[Lease]
    ended: list[Ended]
    requests: list[RequestRecord]
    fence_next: int
    fence_reserved: int
    files: list[FileMeta] = field(default_factory=list)
    #: The last seq in the workspace's audit log (0 if empty).
    event_seq: int = 0
    #: Shared stores: every server's waiters, in line order, and the first id no waiter has had.
    waiters: list[WaiterRecord] = field(default_factory=list)
    next_waiter: int = 1
    #: Shared stores: the ids of the waiters whose callers wait on this server.
    mine: frozenset[int] = frozenset()
    #: Shared stores, when catching up: ``ended``, ``requests`` and ``files`` hold only what changed since
    #: this server last saw the workspace (``dropped``: request ids forgotten since); leases and waiters are whole.
    delta: bool = False
    dropped: list[tuple[str, str]] = field(default_factory=list)


class Begun(NamedTuple):
    """A shared store's answer to ``begin``: the workspace is this server's until ``end``."""

    #: The database's clock (None: the server's own clock rules, as in tests with a manual clock).
    now: float | None
    #: Set when another server changed the workspace since this one last saw it: the state to catch up from.
    snapshot: Snapshot | None
    #: Outcomes other servers decided for this server's waiters.
    outcomes: dict[int, Granted | LockError]
