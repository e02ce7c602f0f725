"""Where workspace state is kept. Stores hold state; they make no lock decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ._errors import AlreadyExists, Locked, NotFound
from ._files import FileMeta, PutFile
from ._keys import KeyRecord
from ._table import (
    Change,
    DropRequest,
    Ended,
    EndLease,
    Lease,
    Prune,
    PutLease,
    PutRequest,
    RequestRecord,
    ReserveFences,
)

__all__ = ["MemoryStore", "Snapshot", "Store", "WorkspaceRecord", "workspace_in_use", "workspace_not_found"]


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


class Store(Protocol):
    """The persistence seam: an actor commits each batch of :class:`Change` as one transaction.

    ``commit`` must be atomic (all of a batch or none) and durable before it
    returns, and a batch holding :class:`ReserveFences` must survive power
    loss, not only a crash of the process. A store shared by several server
    processes (PostgreSQL) serialises commits per workspace itself.
    """

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

    async def commit(self, workspace_id: str, changes: Sequence[Change]) -> None:
        """Apply ``changes`` as one transaction.

        A store whose commit awaits (a network database) must shield it from
        cancellation, so a shutdown never leaves a batch's outcome unknown.
        """

    async def deadlines(self) -> dict[str, float]:
        """For each workspace holding leases, its earliest expiry (so alarms fire after a restart)."""
        ...

    async def put_key(self, record: KeyRecord) -> None:
        """Store a new API key record (its digest, never the key)."""

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key record, or None."""
        ...

    async def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""
        ...

    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark a key revoked; False if there is no such unrevoked key."""
        ...

    async def delete_workspace(self, workspace_id: str, now: float) -> None:
        """Delete a workspace holding no live lock, and take it off every key (LOCKED / NOT_FOUND otherwise)."""

    async def keys_version(self) -> object:
        """A value that changes whenever a key record may have changed, in this process or another one."""
        ...


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

    def __init__(self) -> None:
        self._ws: dict[str, _MemWorkspace] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._retired: dict[str, int] = {}  # deleted workspace -> its fence reservation
        self._key_writes = 0
        self.commits = 0

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
        )

    async def commit(self, workspace_id: str, changes: Sequence[Change]) -> None:
        """Apply ``changes``."""
        ws = self._ws[workspace_id]
        apply_changes_to_memory(ws, changes)
        self.commits += 1

    async def deadlines(self) -> dict[str, float]:
        """Earliest expiry per workspace."""
        return {k: min(le.expires_at for le in ws.leases.values()) for k, ws in self._ws.items() if ws.leases}

    async def put_key(self, record: KeyRecord) -> None:
        """Store a new key record."""
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
        self._key_writes += 1
        for k, r in list(self._keys.items()):
            if workspace_id in r.workspaces:
                self._keys[k] = r._replace(workspaces=tuple(w for w in r.workspaces if w != workspace_id))

    async def keys_version(self) -> object:
        """Counts key changes (only this process uses a memory store)."""
        return self._key_writes


def workspace_not_found(workspace_id: str) -> NotFound:
    """NOT_FOUND for a workspace a store does not have."""
    return NotFound(f"workspace '{workspace_id}' does not exist.", details={"workspace_id": workspace_id})


def workspace_in_use(workspace_id: str, live: int) -> Locked:
    """LOCKED for deleting a workspace that still holds live locks."""
    return Locked(
        f"workspace '{workspace_id}' still holds {live} live lock(s).",
        hint="Wait until they are released or expire (or force_unlock them), then delete it.",
        details={"workspace_id": workspace_id, "locks": live},
    )


def apply_changes_to_memory(ws: _MemWorkspace, changes: Sequence[Change]) -> None:
    """Apply a batch to in-memory dicts (used by :class:`MemoryStore`)."""
    for ch in changes:
        if isinstance(ch, PutLease):
            ws.leases[ch.lease.lock_id] = ch.lease
            ws.fence_last = max(ws.fence_last, ch.lease.fence)
        elif isinstance(ch, EndLease):
            ws.leases.pop(ch.lease.lock_id, None)
            ws.ended[ch.ended.token] = ch.ended
        elif isinstance(ch, PutRequest):
            ws.requests[(ch.record.owner, ch.record.request_id)] = ch.record
        elif isinstance(ch, DropRequest):
            ws.requests.pop((ch.owner, ch.request_id), None)
        elif isinstance(ch, ReserveFences):
            ws.fence_reserved = max(ws.fence_reserved, ch.upto)
        elif isinstance(ch, PutFile):
            ws.files[ch.meta.node_id] = ch.meta
        elif isinstance(ch, Prune):
            ws.ended = {k: e for k, e in ws.ended.items() if e.at >= ch.ended_before}
            ws.requests = {k: r for k, r in ws.requests.items() if r.created_at >= ch.requests_before}
