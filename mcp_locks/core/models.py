"""The pydantic models every face returns: one schema for MCP structured content and REST bodies."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_locks.core.errors import InvalidArgument, Vocabulary, render_hint
from mcp_locks.core.keys import KeyRecord
from mcp_locks.core.names import AGENT_PATTERN, WORKSPACE_PATTERN
from mcp_locks.core.records import Event, EventKind, FileMeta, Lease
from mcp_locks.core.table import NodeStatus, WaiterView

__all__ = [
    "AuditEvent",
    "AuditPage",
    "CompleteUploadRequest",
    "CreateKeyRequest",
    "CreateWebhookRequest",
    "CreateWorkspaceRequest",
    "CreatedKey",
    "CreatedWebhook",
    "ErrorBody",
    "ErrorInfo",
    "FileContent",
    "FileInfo",
    "FileList",
    "FileStatus",
    "FileWritten",
    "ForceUnlockRequest",
    "KeyInfo",
    "KeyList",
    "LockFilesRequest",
    "LockFilesResult",
    "LockGrant",
    "LockInfo",
    "LockItem",
    "LockPage",
    "LockRequest",
    "LockStatus",
    "Me",
    "RenewRequest",
    "RenewResult",
    "UnlockFilesRequest",
    "UnlockFilesResult",
    "UnlockOutcome",
    "UnlockRequest",
    "UnlockResult",
    "UploadInfo",
    "UploadRequest",
    "WaiterInfo",
    "WebhookInfo",
    "WebhookList",
    "WorkspaceInfo",
    "WorkspaceList",
    "WorkspaceOverview",
    "YourLock",
    "invalid_from",
    "parse_body",
    "unknown_field",
    "utc",
]

ModeIn = Literal["read", "write", "shared", "exclusive"]
Mode = Literal["read", "write"]
Depth = Literal["node", "tree"]


def utc(t: float) -> datetime:
    """Seconds since the epoch as an aware UTC datetime (serialised as ISO 8601 with 'Z')."""
    return datetime.fromtimestamp(t, UTC)


def _lease_view(le: Lease) -> dict[str, Any]:
    """The fields every public view of a lease shows (never its token)."""
    return {
        "lock_id": le.lock_id,
        "node_id": le.node_id,
        "mode": le.mode,
        "depth": le.depth,
        "owner": le.owner,
        "label": le.label,
        "note": le.note,
        "fence": le.fence,
        "acquired_at": utc(le.acquired_at),
        "expires_at": utc(le.expires_at),
        "timeout": le.timeout,
    }


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class LockInfo(_Out):
    """A held lock as anyone in the workspace may see it: never its token."""

    lock_id: str = Field(description="Public id of the lock.")
    node_id: str
    mode: Mode
    depth: Depth
    owner: str = Field(
        description="Who holds it: the agent of the key that took it, or agent/session when the call named a session."
    )
    label: str | None = Field(None, description="The name the holder gave itself (the agent argument).")
    note: str | None = None
    fence: int = Field(description="Fencing number: grows with every grant in the workspace.")
    acquired_at: datetime
    expires_at: datetime
    timeout: float = Field(description="Lease length in seconds.")

    @classmethod
    def of(cls, le: Lease) -> LockInfo:
        """The public view of a lease."""
        return cls(**_lease_view(le))


class LockGrant(_Out):
    """A granted lock, shown only to its holder: keep ``token`` secret and pass it to unlock, renew or upgrade."""

    lock_id: str
    token: str = Field(description="Secret proof of holding this lock. Needed to unlock, renew or upgrade it.")
    workspace_id: str
    node_id: str
    mode: Mode
    depth: Depth
    owner: str
    label: str | None = None
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
            **_lease_view(le), token=le.token, workspace_id=workspace_id, waited_ms=le.waited_ms, replayed=replayed
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

    def said(self, words: Vocabulary) -> UnlockFilesResult:
        """The same result with each refusal's hint in a face's ``words`` (the engine leaves them neutral)."""
        results = [r.model_copy(update={"error": render_hint(r.error, words)}) if r.error else r for r in self.results]
        return self.model_copy(update={"results": results})


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
    label: str | None = None
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
            label=w.label,
            node_id=w.node_id,
            mode=w.mode,
            depth=w.depth,
            waiting_since=utc(w.waiting_since),
            upgrade=w.upgrade,
        )


class YourLock(_Out):
    """The answer to "do I still hold it?" for the token given to check_lock_status."""

    held: bool = Field(description="True while the token's lease is live.")
    covers_node: bool = Field(description="True if the held lock covers the node asked about.")
    lock_id: str | None = None
    node_id: str | None = Field(default=None, description="The node the token's lock is on.")
    mode: Mode | None = None
    fence: int | None = None
    expires_at: datetime | None = None
    seconds_left: float | None = Field(default=None, description="Seconds until the lease ends unless renewed.")
    code: str | None = Field(
        default=None, description="Why it is not held: LOCK_EXPIRED, LOCK_BROKEN or LOCK_NOT_FOUND."
    )
    message: str | None = Field(default=None, description="When and why it ended.")


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
    yours: YourLock | None = Field(default=None, description="Only when a token was given: whether you still hold it.")

    @classmethod
    def of(cls, workspace_id: str, st: NodeStatus, yours: YourLock | None = None) -> LockStatus:
        """The public view of a node's status."""
        return cls(
            yours=yours,
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


class AuditEvent(_Out):
    """One entry of a workspace's event log: what happened to a lock, a waiter or a file (never a token)."""

    seq: int = Field(description="Position in the workspace's log (grows by one per event; the SSE event id).")
    workspace_id: str
    at: datetime
    kind: EventKind
    node_id: str
    agent: str = Field(description="The owner: the agent of the key that acted.")
    label: str | None = Field(None, description="The name the agent gave itself (the agent argument).")
    lock_id: str | None = None
    mode: Mode | None = None
    depth: Depth | None = None
    fence: int | None = None
    waited_ms: int | None = Field(None, description="granted/upgraded: how long the request waited in line.")
    held_ms: int | None = Field(None, description="released/expired/broken: how long the lock was held.")
    code: str | None = Field(None, description="denied/left: the error code the request got.")
    by: str | None = Field(None, description="broken: who broke the lock.")
    reason: str | None = Field(None, description="broken: why.")
    version: int | None = Field(None, description="written/deleted: the file's version.")

    @classmethod
    def of(cls, workspace_id: str, ev: Event) -> AuditEvent:
        """The public view of an event."""
        return cls(
            seq=ev.seq,
            workspace_id=workspace_id,
            at=utc(ev.at),
            kind=ev.kind,
            node_id=ev.node_id,
            agent=ev.owner,
            label=ev.label,
            lock_id=ev.lock_id,
            mode=ev.mode,
            depth=ev.depth,
            fence=ev.fence,
            waited_ms=ev.waited_ms,
            held_ms=ev.held_ms,
            code=ev.code,
            by=ev.by,
            reason=ev.reason,
            version=ev.version,
        )


class AuditPage(_Out):
    """A page of the event log, newest first."""

    workspace_id: str
    events: list[AuditEvent]
    next_cursor: str | None = Field(description="Pass as cursor for older events; null when there are none.")


class WorkspaceOverview(_Out):
    """Everything held and waiting in a workspace right now (what the dashboard shows)."""

    workspace_id: str
    at: datetime = Field(description="Server time of this view (to count down leases on a skewed clock).")
    locks: list[LockInfo]
    waiters: list[WaiterInfo]
    truncated: bool = Field(description="True if there are more locks or waiters than shown.")


class WebhookInfo(_Out):
    """A webhook as the admin API lists it: never its secret."""

    webhook_id: str
    workspace_id: str
    url: str
    events: list[str]
    created_at: datetime


class CreatedWebhook(WebhookInfo):
    """A new webhook, with the secret its deliveries are signed with (shown once)."""

    secret: str = Field(description="whsec_...: verify each delivery's webhook-signature with it (Standard Webhooks).")


class WebhookList(_Out):
    """A workspace's webhooks."""

    webhooks: list[WebhookInfo]


class WorkspaceInfo(_Out):
    """A workspace."""

    workspace_id: str
    description: str | None
    created_at: datetime


class WorkspaceList(_Out):
    """The workspaces a key reaches."""

    workspaces: list[WorkspaceInfo]


class KeyInfo(_Out):
    """An API key as the admin API lists it: never the key itself."""

    key_id: str = Field(description="Public id of the key (the 12 hex digits after 'mlk_').")
    agent: str = Field(description="The owner of every lock taken with this key.")
    role: Literal["agent", "admin"]
    workspaces: list[str] = Field(description="Workspaces the key reaches (an admin key reaches all).")
    created_at: datetime
    revoked_at: datetime | None = None

    @classmethod
    def of(cls, r: KeyRecord) -> KeyInfo:
        """The public view of a key record."""
        return cls(
            key_id=r.key_id,
            agent=r.agent,
            role=r.role,
            workspaces=list(r.workspaces),
            created_at=utc(r.created_at),
            revoked_at=utc(r.revoked_at) if r.revoked_at is not None else None,
        )


class CreatedKey(_Out):
    """A new API key: ``key`` is shown this once and cannot be read again."""

    key: str = Field(description="The secret key; send it as 'Authorization: Bearer <key>'. Shown once.")
    key_id: str
    agent: str
    role: Literal["agent", "admin"]
    workspaces: list[str]


class KeyList(_Out):
    """Every key (never the keys themselves)."""

    keys: list[KeyInfo]


class Me(_Out):
    """Who the presented key speaks for."""

    authenticated: bool = Field(description="False when the server runs with --insecure-no-auth.")
    key_id: str | None
    agent: str | None
    role: Literal["agent", "admin"]
    workspaces: list[str] = Field(description="Workspaces the key reaches; empty for an admin (all).")


class ErrorInfo(_Out):
    """What went wrong, with a stable code and what to do next."""

    code: str = Field(description="Stable error code, e.g. LOCKED, LOCK_EXPIRED, FORBIDDEN.")
    message: str
    hint: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(_Out):
    """The one error body of every route and tool."""

    error: ErrorInfo


# ---------------------------------------------------------------------- files


class FileInfo(_Out):
    """A file's metadata. ``version`` and ``fence`` let an agent chain optimistic retries and fenced writes."""

    workspace_id: str
    node_id: str
    version: int = Field(description="Starts at 1, +1 per write. Pass it as if_version to write only over this one.")
    etag: str = Field(description="HTTP entity tag of this version (If-Match in REST).")
    size: int = Field(description="Bytes.")
    sha256: str | None = Field(description="Hex digest of the content (null for a file never written through us).")
    modified_at: datetime
    modified_by: str | None = Field(description="The agent whose write made this version.")
    fence: int = Field(description="The highest lock fence the file was written under (0: never under a lock).")
    tracked: bool = Field(True, description="False for a file in a bound folder never written through mcp-locks.")

    @classmethod
    def of(cls, workspace_id: str, m: FileMeta) -> FileInfo:
        """The public view of a file's metadata."""
        return cls(
            workspace_id=workspace_id,
            node_id=m.node_id,
            version=m.version,
            etag=m.etag,
            size=m.size,
            sha256=m.sha256,
            modified_at=utc(m.modified_at),
            modified_by=m.modified_by,
            fence=m.fence,
            tracked=m.tracked,
        )


class FileContent(_Out):
    """Part or all of a file, with the metadata of the version it was read from."""

    file: FileInfo
    content: str = Field(description="The bytes read: text if encoding is 'utf-8', else base64.")
    encoding: Literal["utf-8", "base64"]
    offset: int = Field(description="Where the bytes read start.")
    length: int = Field(description="How many bytes were read.")
    eof: bool = Field(description="True if the read reached the end of the file; else read on from next_offset.")
    next_offset: int | None = Field(description="Where to continue reading; null at the end.")


class FileWritten(_Out):
    """A committed write or delete: the file's new metadata (for a delete, what was deleted)."""

    file: FileInfo
    created: bool = Field(False, description="True if the write created the file.")
    deleted: bool = Field(False, description="True for a delete.")


class FileList(_Out):
    """One page of files."""

    workspace_id: str
    files: list[FileInfo]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null when this is the last.")


class FileStatus(_Out):
    """A file's metadata and lock status, and whether you may read or write it now: the "may I edit this?" check."""

    workspace_id: str
    node_id: str
    exists: bool
    file: FileInfo | None
    lock: LockStatus
    may_read: bool = Field(description="False while another agent holds a write lock covering it.")
    may_write: bool = Field(description="False while another agent holds any lock covering it.")
    advice: str = Field(description="What to do next, in one sentence.")


class UploadInfo(_Out):
    """A resumable upload: send chunks 0, 1, ... of at most chunk_size bytes, then complete it."""

    workspace_id: str
    upload_id: str
    chunk_size: int = Field(description="Largest chunk accepted, in bytes.")
    max_size: int = Field(description="Largest file accepted, in bytes.")
    received: list[int] = Field(description="Chunk numbers that arrived.")
    size: int = Field(description="Bytes received so far.")
    expires_at: datetime = Field(description="When the upload is dropped if not completed.")


# ---------------------------------------------------------------------- request bodies (REST)


class _In(BaseModel):
    # Strict: a REST body is checked against the schema the OpenAPI document shows. Lax parsing would take
    # {"wait": true} as a one-second wait and {"timeout": "60"} as a number, which the document calls invalid.
    model_config = ConfigDict(extra="forbid", strict=True)


class LockRequest(_In):
    """Body of POST .../nodes/{node_id}/lock."""

    mode: ModeIn = Field("write", description="'write' (exclusive) or 'read' (shared).")
    timeout: float = Field(300, description="Lease length in seconds.")
    wait: float = Field(0, description="Seconds to wait in line if the node is locked; 0 = fail at once (LOCKED).")
    depth: Depth = Field("node", description="'tree' locks the node and everything below it.")
    note: str | None = Field(None, description="Short note shown to others.")
    agent: str | None = Field(
        None, description="Names a session below the key's agent (e.g. a subagent): the holder is agent/session."
    )
    request_id: str | None = Field(None, description="Makes the call safe to retry: a retry gets the same grant.")
    token: str | None = Field(None, description="Only to upgrade/downgrade/re-lease a lock you hold: its token.")


class RenewRequest(_In):
    """Body of POST .../lock/renew."""

    token: str = Field(description="The lock's token.")
    timeout: float | None = Field(None, description="New lease length in seconds (default: the previous one).")


class UnlockRequest(_In):
    """Body of DELETE .../lock, when the token is not in the Lock-Token header."""

    token: str | None = None


class LockFilesRequest(_In):
    """Body of POST /v1/workspaces/{workspace_id}/locks/batch: all the items or none."""

    items: list[LockItem] = Field(description="1-100 nodes to lock together.", max_length=100)
    timeout: float = 300
    wait: float = 0
    note: str | None = None
    agent: str | None = None
    request_id: str | None = None


class UnlockFilesRequest(_In):
    """Body of POST /v1/workspaces/{workspace_id}/locks/unlock."""

    tokens: list[str] = Field(description="1-100 tokens; each is released on its own.", max_length=100)


class ForceUnlockRequest(_In):
    """Body of POST /v1/workspaces/{workspace_id}/locks/{lock_id}/force-unlock (admin)."""

    reason: str = Field(description="Why the lock is broken; its holder reads it in LOCK_BROKEN.")


class CreateWorkspaceRequest(_In):
    """Body of POST /v1/workspaces (admin)."""

    workspace_id: str = Field(description="1-63 of a-z 0-9 _ -.", json_schema_extra={"pattern": WORKSPACE_PATTERN})
    description: str | None = None


class UploadRequest(_In):
    """Body of POST /v1/workspaces/{workspace_id}/uploads (may be empty)."""

    node_id: str | None = Field(None, description="The file it is for (informational; complete names the target).")


class CompleteUploadRequest(_In):
    """Body of POST .../uploads/{upload_id}/complete: commit the chunks as one atomic write."""

    node_id: str = Field(description="The file to write.")
    token: str | None = Field(None, description="A write lock covering node_id.")
    if_version: int | None = Field(None, description="Without a token: the version you expect (0 = create only).")
    sha256: str = Field(description="Hex sha256 of the whole content: the write fails if the chunks do not match it.")
    agent: str | None = None


class CreateWebhookRequest(_In):
    """Body of POST /v1/workspaces/{workspace_id}/webhooks (admin)."""

    url: str = Field(description="http(s) URL that receives a POST per event.", max_length=2048)
    events: list[str] = Field(
        description="Event types: lock.granted, lock.released, lock.expired, lock.broken, file.written, file.deleted.",
        min_length=1,
        max_length=16,
    )


class CreateKeyRequest(_In):
    """Body of POST /v1/admin/keys (admin)."""

    agent: str = Field(
        description="The agent's name: the owner of every lock taken with the key.",
        json_schema_extra={"pattern": AGENT_PATTERN},
    )
    workspaces: list[str] = Field(default_factory=list, description="Workspaces the key reaches.", max_length=100)
    role: Literal["agent", "admin"] = "agent"


class UpdateKeyRequest(_In):
    """Body of PATCH /v1/admin/keys/{key_id} (admin): workspaces the key gains and loses."""

    add_workspaces: list[str] = Field(
        default_factory=list, description="Existing workspaces the key reaches from now on.", max_length=100
    )
    remove_workspaces: list[str] = Field(
        default_factory=list,
        description="Workspaces the key no longer reaches; an agent key keeps at least one.",
        max_length=100,
    )


_M = TypeVar("_M", bound=BaseModel)


def unknown_field(what: str, given: Iterable[str], known: Sequence[str]) -> InvalidArgument | None:
    """INVALID_ARGUMENT naming the first unknown field (with a did-you-mean), or None.

    A misspelt field would otherwise be dropped silently (``timout=600`` -> a 300 s lease).
    """
    unknown = [k for k in given if k not in known]
    if not unknown:
        return None
    bad = _quotable(unknown[0])
    guess = difflib.get_close_matches(bad, list(known), n=1)
    return InvalidArgument(
        f"{what} has no argument '{bad}'" + (f"; did you mean '{guess[0]}'?" if guess else "."),
        hint=f"Its arguments are: {', '.join(known)}.",
        details={"field": bad},
    )


def invalid_from(what: str, exc: ValidationError) -> InvalidArgument:
    """A pydantic validation failure as INVALID_ARGUMENT naming the fields (never echoing the input)."""
    errors = exc.errors(include_url=False, include_input=False)[:10]
    fields = [".".join(_quotable(p) for p in e["loc"]) or "arguments" for e in errors]
    parts = [f"{f}: {e['msg']}" for f, e in zip(fields, errors, strict=True)][:5]
    return InvalidArgument(
        f"bad arguments for {what}: " + "; ".join(parts) + ".",
        hint="Fix the argument and call again; the input schema lists every field and its limits.",
        details={
            "field": fields[0] if fields else "arguments",
            "errors": [{"field": f, "msg": e["msg"]} for f, e in zip(fields, errors, strict=True)],
        },
    )


def _quotable(value: object) -> str:
    """``value`` as short, valid UTF-8 text, safe to quote back in an error (field names come from clients)."""
    return str(value)[:64].encode("utf-8", "backslashreplace").decode("utf-8")


def parse_body(model: type[_M], raw: bytes, what: str) -> _M:
    """The JSON body ``raw`` as ``model``, or INVALID_ARGUMENT saying which field is wrong (and why)."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)
        for err in errors:
            loc = err["loc"]
            if err["type"] == "json_invalid":
                raise InvalidArgument(
                    "the request body is not valid JSON.",
                    hint="Send a JSON object with Content-Type: application/json.",
                    details={"field": "body"},
                ) from None
            if not loc and err["type"] in ("model_type", "model_attributes_type"):
                raise InvalidArgument(f"the body of {what} must be a JSON object.", details={"field": "body"}) from None
            if len(loc) == 1 and err["type"] == "extra_forbidden":
                bad = unknown_field(what, [str(loc[0])], list(model.model_fields))
                if bad is not None:
                    raise bad from None
        raise invalid_from(what, e) from None
