"""Where workspace state is kept. Stores hold state; they make no lock decision."""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcp_locks.core.errors import AlreadyExists, Locked, NotFound
from mcp_locks.core.keys import KeyRecord
from mcp_locks.core.records import (
    AuditQuery,
    Begun,
    Delivery,
    Ended,
    Event,
    FileMeta,
    Lease,
    PutContent,
    RequestRecord,
    Settle,
    Snapshot,
    StoreChange,
    TakeOutcome,
    WaiterOutcome,
    WebhookRecord,
    WorkspaceRecord,
)
from mcp_locks.stores.folding import Folded, fold_changes

__all__ = [
    "AuditQuery",
    "Begun",
    "MemoryStore",
    "PutContent",
    "Settle",
    "SharedStore",
    "Snapshot",
    "Store",
    "StoreChange",
    "TakeOutcome",
    "WaiterOutcome",
    "WorkspaceRecord",
    "key_taken",
    "several_live_keys",
    "workspace_in_use",
    "workspace_not_found",
]


class Store(Protocol):
    """The persistence seam: an actor commits each batch of :class:`Change` as one transaction.

    ``commit`` must be atomic (all of a batch or none) and durable before it
    returns, and a batch holding :class:`ReserveFences` must survive power
    loss, not only a crash of the process.

    A store shared by several server processes (``shared``: PostgreSQL) also
    has ``begin(workspace_id) -> Begun`` and ``end(workspace_id, ok)``: an
    actor's step runs between them, holding the workspace across the cluster,
    and ``commit`` commits that step's transaction.
    """

    #: Whether other server processes change the same workspaces (see above).
    shared: bool

    async def open(self) -> None:
        """Create or migrate the schema; called once before anything else."""

    async def close(self) -> None:
        """Release connections."""

    async def create_workspace(
        self, workspace_id: str, description: str | None, now: float, root: str | None = None
    ) -> WorkspaceRecord:
        """Create a workspace (its files in ``root`` if given) or raise ALREADY_EXISTS."""
        ...

    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        """The workspace, or None."""
        ...

    async def list_workspaces(self) -> list[WorkspaceRecord]:
        """Every workspace, by id."""
        ...

    async def load(self, workspace_id: str) -> Snapshot:
        """The workspace's held leases, remembered endings and requests, and its fence counters."""
        ...

    async def commit(self, workspace_id: str, changes: Sequence[StoreChange]) -> None:
        """Apply ``changes`` as one transaction.

        A store whose commit awaits (a network database) must shield it from
        cancellation, so a shutdown never leaves a batch's outcome unknown.
        """

    async def deadlines(self) -> dict[str, float]:
        """For each workspace holding leases, its earliest expiry (so alarms fire after a restart)."""
        ...

    async def put_key(self, record: KeyRecord) -> None:
        """Store a new API key record (its digest, never the key).

        At most one live key per agent, held by the store itself (a unique index where there is a
        database), so two creations at once, on one server or several, never both succeed: ALREADY_EXISTS
        with ``details["field"]`` ``"agent"`` (or ``"key_id"`` for an id already stored) otherwise.
        """

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key record, or None."""
        ...

    async def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""
        ...

    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark a key revoked; False if there is no such unrevoked key."""
        ...

    async def set_key_workspaces(self, key_id: str, workspaces: tuple[str, ...]) -> bool:
        """Replace the workspaces a live key reaches; False if there is no such unrevoked key."""
        ...

    async def delete_workspace(self, workspace_id: str, now: float) -> None:
        """Delete a workspace holding no live lock (LOCKED / NOT_FOUND otherwise).

        Its webhooks and their outbox go too, and it is taken off every key. Its audit log stays until pruned.
        """

    async def keys_version(self) -> object:
        """A value that changes whenever a key record may have changed, in this process or another one."""
        ...

    async def audit(self, query: AuditQuery) -> list[Event]:
        """Events of one workspace's log matching ``query``, newest first (oldest first with ``after_seq``)."""
        ...

    async def prune_audit(self, before: float) -> int:
        """Drop log entries older than ``before`` (and settled deliveries as old); returns how many entries."""
        ...

    async def put_webhook(self, record: WebhookRecord) -> None:
        """Register a webhook."""

    async def list_webhooks(self) -> list[WebhookRecord]:
        """Every webhook, oldest first."""
        ...

    async def delete_webhook(self, webhook_id: str) -> WebhookRecord | None:
        """Remove a webhook and its undelivered messages; None if there was none."""
        ...

    async def due_deliveries(
        self, now: float, limit: int, skip: frozenset[str], webhook_ids: frozenset[str] | None = None
    ) -> list[Delivery]:
        """Up to ``limit`` retries due by ``now`` (not in ``skip``; of ``webhook_ids`` if given), oldest first."""
        ...

    async def settle_deliveries(self, settle: Settle) -> None:
        """Record what became of deliveries and move cursors (one transaction)."""

    async def delivery_backlog(self) -> tuple[int, float | None]:
        """Messages waiting (retries, and matching events after each webhook's cursor), and the next retry time."""
        ...

    def delivery_worker_args(self) -> list[str] | None:
        """How a webhook delivery process of its own reaches this store's data (its arguments), or None.

        None: no such process can serve it, and webhooks are delivered in the server (or, for a store
        several servers share, by whichever server holds the cluster's delivery role).
        """
        ...


class SharedStore(Store, Protocol):
    """A store several server processes share: each actor step runs between ``begin`` and ``end``."""

    #: Whether file content lives in the store (each server's folder is then its own copy, brought up to
    #: date as it catches up) rather than in one folder every server shares.
    content: bool

    def read_content(self, workspace_id: str, node_id: str) -> AsyncIterator[bytes]:
        """The committed content of a file, in chunks (inside a step: as of that step)."""
        ...

    async def begin(self, workspace_id: str) -> Begun:
        """Hold the workspace across the cluster, open the step's transaction, and report what changed."""
        ...

    async def end(self, workspace_id: str, ok: bool) -> None:
        """Let the workspace go (after the step's files are in place); roll back if the step was not committed."""

    async def lead(self, role: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run until cancelled, running ``work`` whenever this server is the cluster's one holder of ``role``."""

    async def watch(self, poke: Callable[[str | None], None]) -> None:
        """Run until cancelled, calling ``poke`` with each workspace another server commits to.

        ``poke(None)``: anything may have changed unseen (after a lost connection), or another server revoked
        or changed a key (open streams then check their keys again).
        """


@dataclass
class _MemWorkspace:
    record: WorkspaceRecord
    leases: dict[str, Lease] = field(default_factory=dict)
    ended: dict[str, Ended] = field(default_factory=dict)
    requests: dict[tuple[str, str], RequestRecord] = field(default_factory=dict)
    fence_last: int = 0
    fence_reserved: int = 0
    files: dict[str, FileMeta] = field(default_factory=dict)


class MemoryStore:
    """A store in process memory, for tests and throwaway servers: it forgets everything on exit."""

    shared = False

    def __init__(self) -> None:
        self._ws: dict[str, _MemWorkspace] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._retired: dict[str, int] = {}  # deleted workspace -> its fence reservation
        self._key_writes = 0
        self.commits = 0
        self._logs: dict[str, list[Event]] = {}  # kept after a workspace is deleted, like SQLite's audit table
        self._hooks: dict[str, WebhookRecord] = {}
        self._outbox: dict[str, Delivery] = {}
        self._dead: dict[str, Delivery] = {}
        self._rows = 0

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def create_workspace(
        self, workspace_id: str, description: str | None, now: float, root: str | None = None
    ) -> WorkspaceRecord:
        """Create a workspace or raise ALREADY_EXISTS."""
        if workspace_id in self._ws:
            raise AlreadyExists(
                f"workspace '{workspace_id}' already exists.", hint="Use it as it is, or pick another id."
            )
        rec = WorkspaceRecord(workspace_id, description, now, root)
        fence = self._retired.get(workspace_id, 0)  # a re-created workspace continues above the deleted one
        self._ws[workspace_id] = _MemWorkspace(rec, fence_last=fence, fence_reserved=fence)
        return rec

    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        """The workspace, or None."""
        ws = self._ws.get(workspace_id)
        return ws.record if ws else None

    async def list_workspaces(self) -> list[WorkspaceRecord]:
        """Every workspace, by id."""
        return [self._ws[k].record for k in sorted(self._ws)]

    async def load(self, workspace_id: str) -> Snapshot:
        """A copy of the workspace's state."""
        ws = self._ws[workspace_id]
        return Snapshot(
            list(ws.leases.values()),
            list(ws.ended.values()),
            list(ws.requests.values()),
            ws.fence_last + 1,
            ws.fence_reserved,
            list(ws.files.values()),
            log[-1].seq if (log := self._logs.get(workspace_id)) else 0,
        )

    async def commit(self, workspace_id: str, changes: Sequence[StoreChange]) -> None:
        """Apply ``changes``."""
        f = fold_changes(changes)
        for seg in f.segments:
            self._logs.setdefault(workspace_id, []).extend(seg.stamped())
        apply_to_memory(self._ws[workspace_id], f)  # waiters, outcomes and content: only shared stores keep those
        self.commits += 1

    async def deadlines(self) -> dict[str, float]:
        """Earliest expiry per workspace."""
        return {k: min(le.expires_at for le in ws.leases.values()) for k, ws in self._ws.items() if ws.leases}

    async def put_key(self, record: KeyRecord) -> None:
        """Store a new key record; ALREADY_EXISTS if its id is stored or its agent has a live key."""
        if record.key_id in self._keys:
            raise key_taken(record, "key_id")
        live = (r for r in self._keys.values() if r.agent == record.agent and r.revoked_at is None)
        if record.revoked_at is None and next(live, None) is not None:
            raise key_taken(record, "agent")
        self._keys[record.key_id] = record
        self._key_writes += 1

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key record, or None."""
        return self._keys.get(key_id)

    async def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""
        return sorted(self._keys.values(), key=lambda r: (r.created_at, r.key_id))

    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark a key revoked; False if there is no such unrevoked key."""
        r = self._keys.get(key_id)
        if r is None or r.revoked_at is not None:
            return False
        self._keys[key_id] = r._replace(revoked_at=now)
        self._key_writes += 1
        return True

    async def set_key_workspaces(self, key_id: str, workspaces: tuple[str, ...]) -> bool:
        """Replace the workspaces a live key reaches; False if there is no such unrevoked key."""
        r = self._keys.get(key_id)
        if r is None or r.revoked_at is not None:
            return False
        self._keys[key_id] = r._replace(workspaces=tuple(workspaces))
        self._key_writes += 1
        return True

    async def delete_workspace(self, workspace_id: str, now: float) -> None:
        """Delete a workspace holding no live lock, and take it off every key."""
        ws = self._ws.get(workspace_id)
        if ws is None:
            raise workspace_not_found(workspace_id)
        live = sum(le.expires_at > now for le in ws.leases.values())
        if live:
            raise workspace_in_use(workspace_id, live)
        del self._ws[workspace_id]
        self._retired[workspace_id] = ws.fence_reserved
        for h in [h for h in self._hooks.values() if h.workspace_id == workspace_id]:
            await self.delete_webhook(h.webhook_id)
        self._key_writes += 1
        for k, r in list(self._keys.items()):
            if workspace_id in r.workspaces:
                self._keys[k] = r._replace(workspaces=tuple(w for w in r.workspaces if w != workspace_id))

    async def keys_version(self) -> object:
        """Counts key changes (only this process uses a memory store)."""
        return self._key_writes

    async def audit(self, query: AuditQuery) -> list[Event]:
        """Matching events, newest first (oldest first with ``after_seq``)."""
        log = self._logs.get(query.workspace_id, [])
        if query.after_seq is not None:
            start = bisect.bisect_right(log, query.after_seq, key=lambda ev: ev.seq)  # seq grows along the log
            out_after = []
            for ev in log[start:]:
                if query.matches(ev):
                    out_after.append(ev)
                    if len(out_after) == query.limit:
                        break
            return out_after
        out: list[Event] = []
        for ev in reversed(log):
            if query.since is not None and ev.at < query.since:
                break  # the log is in time order
            if query.matches(ev):
                out.append(ev)
                if len(out) == query.limit:
                    break
        return out

    async def prune_audit(self, before: float) -> int:
        """Drop entries older than ``before``."""
        dropped = 0
        for ws, log in self._logs.items():
            keep = [ev for ev in log[:-1] if ev.at >= before] + log[-1:]  # the newest stays: seq continues from it
            dropped += len(log) - len(keep)
            self._logs[ws] = keep
        self._dead = {k: d for k, d in self._dead.items() if d.created_at >= before}
        return dropped

    async def put_webhook(self, record: WebhookRecord) -> None:
        """Register a webhook."""
        self._hooks[record.webhook_id] = record

    async def list_webhooks(self) -> list[WebhookRecord]:
        """Every webhook, oldest first."""
        return sorted(self._hooks.values(), key=lambda h: (h.created_at, h.webhook_id))

    async def delete_webhook(self, webhook_id: str) -> WebhookRecord | None:
        """Remove a webhook and its undelivered messages."""
        rec = self._hooks.pop(webhook_id, None)
        if rec is not None:
            self._outbox = {k: d for k, d in self._outbox.items() if d.webhook_id != webhook_id}
        return rec

    async def due_deliveries(
        self, now: float, limit: int, skip: frozenset[str], webhook_ids: frozenset[str] | None = None
    ) -> list[Delivery]:
        """Due retries, oldest first."""
        wanted = webhook_ids if webhook_ids is not None else {d.webhook_id for d in self._outbox.values()}
        due = sorted(
            (
                d
                for d in self._outbox.values()
                if d.next_at <= now and d.delivery_id not in skip and d.webhook_id in wanted
            ),
            key=lambda d: (d.next_at, d.created_at),
        )
        return due[:limit]

    async def settle_deliveries(self, settle: Settle) -> None:
        """Record outcomes and cursors."""
        for d in settle.done:
            self._outbox.pop(d.delivery_id, None)
        for d in settle.retry:
            if d.webhook_id in self._hooks:
                self._outbox[d.delivery_id] = d if d.row else d._replace(row=self._next_row())
        for d in settle.dead:
            self._outbox.pop(d.delivery_id, None)
            self._dead[d.delivery_id] = d
        for webhook_id, seq in settle.cursors:
            h = self._hooks.get(webhook_id)
            if h is not None and seq > h.cursor:
                self._hooks[webhook_id] = h._replace(cursor=seq)

    def _next_row(self) -> int:
        self._rows += 1
        return self._rows

    async def delivery_backlog(self) -> tuple[int, float | None]:
        """Waiting messages (retries and unread matching events) and the next retry time."""
        unread = 0
        for h in self._hooks.values():
            kinds = h.kinds
            unread += sum(1 for ev in self._logs.get(h.workspace_id, ()) if ev.seq > h.cursor and ev.kind in kinds)
        return len(self._outbox) + unread, min((d.next_at for d in self._outbox.values()), default=None)

    def delivery_worker_args(self) -> None:
        """None: another process cannot see this process's memory (webhooks are delivered in the server)."""
        return None


def key_taken(record: KeyRecord, field: str) -> AlreadyExists:
    """ALREADY_EXISTS for a key refused by the one-live-key-per-agent rule (``field`` "agent") or a stored id."""
    if field == "key_id":
        return AlreadyExists(f"key id {record.key_id} is already stored.", details={"field": "key_id"})
    return AlreadyExists(f"agent '{record.agent}' already has a live key.", details={"field": "agent"})


def several_live_keys(agent: str, key_ids: list[str]) -> str:
    """The warning for an agent holding several live keys from before the one-live-key rule."""
    return (
        f"agent '{agent}' has {len(key_ids)} live keys ({', '.join(key_ids)}), made before the rule of one live"
        " key per agent: revoke all but one (mcp-locks keys revoke KEY_ID, or the admin API); the database"
        " enforces the rule, for every agent, from the first start after that."
    )


def workspace_not_found(workspace_id: str) -> NotFound:
    """NOT_FOUND for a workspace a store does not have."""
    return NotFound(f"workspace '{workspace_id}' does not exist.", details={"workspace_id": workspace_id})


def workspace_in_use(workspace_id: str, live: int) -> Locked:
    """LOCKED for deleting a workspace that still holds live locks."""
    return Locked(
        f"workspace '{workspace_id}' still holds {live} live lock(s).",
        hint="Wait until they are released or expire (or {op:force_unlock} them), then delete it.",
        details={"workspace_id": workspace_id, "locks": live},
    )


def apply_to_memory(ws: _MemWorkspace, f: Folded) -> None:
    """Write a folded batch's leases, requests, fences and files to a :class:`MemoryStore` workspace."""
    for le in f.puts.values():
        ws.leases[le.lock_id] = le
    ws.fence_last = max(ws.fence_last, f.fence_last)
    for e in f.ends.values():
        ws.leases.pop(e.lock_id, None)
        ws.ended[e.token] = e
    for key, r in f.requests.items():
        if r is None:
            ws.requests.pop(key, None)
        else:
            ws.requests[key] = r
    ws.fence_reserved = max(ws.fence_reserved, f.reserve)
    ws.files.update(f.files)
    if f.prune is not None:
        p = f.prune
        ws.ended = {k: e for k, e in ws.ended.items() if e.at >= p.ended_before}
        ws.requests = {k: r for k, r in ws.requests.items() if r.created_at >= p.requests_before}
