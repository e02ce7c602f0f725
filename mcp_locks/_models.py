"""The pydantic models every face returns: one schema for MCP structured content and REST bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._table import Lease, NodeStatus, WaiterView

__all__ = [
    "LockFilesResult",
    "LockGrant",
    "LockInfo",
    "LockItem",
    "LockPage",
    "LockStatus",
    "RenewResult",
    "UnlockFilesResult",
    "UnlockOutcome",
    "UnlockResult",
    "WaiterInfo",
    "WorkspaceInfo",
    "utc",
]

ModeIn = Literal["read", "write", "shared", "exclusive"]
Mode = Literal["read", "write"]
Depth = Literal["node", "tree"]


def utc(t: float) -> datetime:
    """Seconds since the epoch as an aware UTC datetime (serialised as ISO 8601 with 'Z')."""
    return datetime.fromtimestamp(t, UTC)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class LockInfo(_Out):
    """A held lock as anyone in the workspace may see it: never its token."""

    lock_id: str = Field(description="Public id of the lock.")
    node_id: str
    mode: Mode
    depth: Depth
    owner: str = Field(description="Who holds it.")
    note: str | None = None
    fence: int = Field(description="Fencing number: grows with every grant in the workspace.")
    acquired_at: datetime
    expires_at: datetime
    timeout: float = Field(description="Lease length in seconds.")

    @classmethod
    def of(cls, le: Lease) -> LockInfo:
        """The public view of a lease."""
        return cls(
            lock_id=le.lock_id,
            node_id=le.node_id,
            mode=le.mode,
            depth=le.depth,
            owner=le.owner,
            note=le.note,
            fence=le.fence,
            acquired_at=utc(le.acquired_at),
            expires_at=utc(le.expires_at),
            timeout=le.timeout,
        )


class LockGrant(_Out):
    """A granted lock, shown only to its holder: keep ``token`` secret and pass it to unlock, renew or upgrade."""

    lock_id: str
    token: str = Field(description="Secret proof of holding this lock. Needed to unlock, renew or upgrade it.")
    workspace_id: str
    node_id: str
    mode: Mode
    depth: Depth
    owner: str
    note: str | None = None
    fence: int = Field(
        description="Fencing number: larger than every earlier grant's in this workspace. Send it with writes "
        "so a resource can refuse writes carrying an older fence."
    )
    acquired_at: datetime
    expires_at: datetime = Field(description="The lease ends here unless renewed (renew_lock).")
    timeout: float
    waited_ms: int = Field(description="How long the request waited in line.")
    replayed: bool = Field(False, description="True when this answers a retry with an earlier request_id.")

    @classmethod
    def of(cls, workspace_id: str, le: Lease, replayed: bool = False) -> LockGrant:
        """The holder's view of a lease."""
        return cls(
            lock_id=le.lock_id,
            token=le.token,
            workspace_id=workspace_id,
            node_id=le.node_id,
            mode=le.mode,
            depth=le.depth,
            owner=le.owner,
            note=le.note,
            fence=le.fence,
            acquired_at=utc(le.acquired_at),
            expires_at=utc(le.expires_at),
            timeout=le.timeout,
            waited_ms=le.waited_ms,
            replayed=replayed,
        )


class LockItem(BaseModel):
    """One node to lock in lock_files."""

    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(description="Workspace-relative path, e.g. 'reports/q3.md'.")
    mode: ModeIn = Field("write", description="'read' (shared) or 'write' (exclusive).")
    depth: Depth = Field("node", description="'node' for this path only, 'tree' for it and everything below.")


class LockFilesResult(_Out):
    """All the locks of a lock_files call, granted together."""

    workspace_id: str
    locks: list[LockGrant]
    waited_ms: int


class UnlockResult(_Out):
    """What unlock_file released."""

    workspace_id: str
    released: LockInfo
    held_ms: int = Field(description="How long the lock was held.")


class UnlockOutcome(_Out):
    """The outcome for one token of unlock_files, in the order given."""

    index: int
    released: bool
    lock_id: str | None = None
    node_id: str | None = None
    held_ms: int | None = None
    error_code: str | None = None
    error: str | None = None


class UnlockFilesResult(_Out):
    """Per-token outcomes of unlock_files."""

    workspace_id: str
    released: int
    results: list[UnlockOutcome]


class RenewResult(_Out):
    """A renewed lease."""

    workspace_id: str
    lock_id: str
    node_id: str
    fence: int
    expires_at: datetime
    timeout: float


class WaiterInfo(_Out):
    """A request waiting in line (never its token or request id)."""

    position: int = Field(description="1 = next in the workspace's line.")
    owner: str
    node_id: str
    mode: Mode
    depth: Depth
    waiting_since: datetime
    upgrade: bool

    @classmethod
    def of(cls, w: WaiterView) -> WaiterInfo:
        """The public view of a waiter."""
        return cls(
            position=w.position,
            owner=w.owner,
            node_id=w.node_id,
            mode=w.mode,
            depth=w.depth,
            waiting_since=utc(w.waiting_since),
            upgrade=w.upgrade,
        )


class LockStatus(_Out):
    """Whether a node is locked, by whom, and who waits."""

    workspace_id: str
    node_id: str
    locked: bool = Field(description="True if any lock covers the node (its own or a tree lock above it).")
    mode: Mode | None = Field(description="'write' if any covering lock is a write, else 'read', or null.")
    holders: list[LockInfo] = Field(description="Locks taken on this exact node.")
    covering: list[LockInfo] = Field(description="Tree locks on ancestors that cover this node.")
    waiters: list[WaiterInfo]
    locks_below: int = Field(description="How many locks are held on nodes below this one.")

    @classmethod
    def of(cls, workspace_id: str, st: NodeStatus) -> LockStatus:
        """The public view of a node's status."""
        return cls(
            workspace_id=workspace_id,
            node_id=st.node_id,
            locked=st.locked,
            mode=st.mode,
            holders=[LockInfo.of(x) for x in st.holders],
            covering=[LockInfo.of(x) for x in st.covering],
            waiters=[WaiterInfo.of(w) for w in st.waiters],
            locks_below=st.locks_below,
        )


class LockPage(_Out):
    """One page of held locks."""

    workspace_id: str
    locks: list[LockInfo]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null when this is the last.")


class WorkspaceInfo(_Out):
    """A workspace."""

    workspace_id: str
    description: str | None
    created_at: datetime
