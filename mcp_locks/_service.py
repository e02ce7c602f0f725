"""The service layer: workspace -> actor routing, argument rules, and the public results."""

from __future__ import annotations

import base64
import heapq
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, cast

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from ._actor import Waiting, WorkspaceActor
from ._clock import Clock
from ._disk import WorkspaceDisk
from ._errors import AlreadyExists, Forbidden, InvalidArgument, LockError, NotFound, Unavailable
from ._events import EventHub
from ._filesvc import FileLimits, FileService, remove_tree
from ._index import Claim, Depth, Mode
from ._keys import LOCAL, Identity, KeyRecord, new_key, require_admin
from ._logging import redact
from ._models import (
    LockFilesResult,
    LockGrant,
    LockInfo,
    LockItem,
    LockPage,
    LockStatus,
    RenewResult,
    UnlockFilesResult,
    UnlockOutcome,
    UnlockResult,
    WaiterInfo,
    WorkspaceInfo,
    WorkspaceOverview,
    YourLock,
    utc,
)
from ._names import DEFAULT_WORKSPACE, check_agent_name, check_node_id, check_workspace_id
from ._observe import Observability, ObserveLimits
from ._store import SharedStore, Store, WorkspaceRecord, workspace_in_use
from ._table import ANONYMOUS, Event, Granted, Lease, Limits, LockTable, NodeStatus, WaiterView

__all__ = ["LockService", "ServiceLimits"]

log = logging.getLogger("mcp_locks.service")

MAX_ITEMS = 100
#: Longest cursor accepted: ours encode a node id (<= 1024 bytes) and a lock id.
MAX_CURSOR = 4096
#: Most locks (and most waiting claims) one overview shows.
OVERVIEW_LIMIT = 1000
#: Seconds before a workspace whose store failed is woken again to catch up on expiries.
RETRY_AFTER_FAILURE = 5.0
_MODES: dict[str, Mode] = {"read": "read", "shared": "read", "write": "write", "exclusive": "write"}
_TEXT_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Server settings that bound requests."""

    max_timeout: float = 86_400.0
    max_wait: float = 3_600.0
    idle_timeout: float = 60.0
    table: Limits = field(default_factory=Limits)
    observe: ObserveLimits = field(default_factory=ObserveLimits)


def _mode(value: object, field: str = "mode") -> Mode:
    if isinstance(value, str) and value in _MODES:
        return _MODES[value]
    raise InvalidArgument(
        f"{field} must be 'read' or 'write' ('shared' and 'exclusive' are accepted as aliases).",
        hint="Use 'write' to edit a file, 'read' to read it while keeping writers out.",
        details={"field": field},
    )


def _depth(value: object, field: str = "depth") -> Depth:
    if value == "node" or value == "tree":
        return value
    raise InvalidArgument(
        f"{field} must be 'node' or 'tree'.",
        hint="'tree' locks a folder and everything below it.",
        details={"field": field},
    )


def _seconds(value: object, field: str, lo: float, hi: float, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a number of seconds.", hint=hint, details={"field": field})
    if not lo <= value <= hi:
        raise InvalidArgument(
            f"{field} must be between {lo:g} and {hi:g} seconds (got {value:g}).",
            hint=hint,
            details={"field": field, "min": lo, "max": hi},
        )
    return float(value)


def _text(value: object, field: str, max_len: int, *, allow_newlines: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string.", details={"field": field})
    if len(value) > max_len:
        raise InvalidArgument(
            f"{field} must be at most {max_len} characters (got {len(value)}).", details={"field": field}
        )
    bad = _TEXT_RE.search(value) if allow_newlines else re.search(r"[\x00-\x1f\x7f]", value)
    if bad:
        raise InvalidArgument(f"{field} must not contain control characters.", details={"field": field})
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{field} must be valid UTF-8 (no lone surrogates).", details={"field": field}) from None
    return value


def _owner(agent: object) -> str:
    name = _text(agent, "agent", 64)
    if name is None or not name.strip():
        return ANONYMOUS
    return name.strip()


class _Who(NamedTuple):
    """How a call's caller shows up in the table."""

    owner: str  # owns what the call takes (deadlock detection compares owners)
    label: str | None  # shown beside the owner
    key_id: str | None  # recorded on new leases
    as_key: str | None  # the key a token's lease must have been taken with (None: any)


def _who(caller: Identity, agent: object) -> _Who:
    """Owner, label and keys of a call: the key's agent owns, ``agent`` is a label.

    Without authentication (:data:`LOCAL`) ``agent`` names the owner and tokens work for anyone;
    an admin key skips the token's key check too (it may release anyone's lock).
    """
    if not caller.authenticated:
        return _Who(_owner(agent), None, None, None)
    label = _text(agent, "agent", 64)
    label = label.strip() or None if label is not None else None
    return _Who(caller.agent, label, caller.key_id, None if caller.role == "admin" else caller.key_id)


def encode_cursor(after: tuple[str, str]) -> str:
    """An opaque cursor for the next page."""
    return base64.urlsafe_b64encode(json.dumps(list(after)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The position a cursor names (INVALID_ARGUMENT if it is not one of ours)."""
    try:
        if len(cursor) <= MAX_CURSOR:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            node, lock_id = json.loads(raw)
            if isinstance(node, str) and isinstance(lock_id, str):
                return node, lock_id
    except (ValueError, TypeError, RecursionError):
        pass
    raise InvalidArgument(
        "cursor is not a cursor returned by list_locks.",
        hint="Pass next_cursor from the previous page unchanged, or omit it to start over.",
        details={"field": "cursor"},
    )


async def issue_key(store: Store, agent: object, workspaces: object, role: object, now: float) -> tuple[str, KeyRecord]:
    """Check a key request, store the new key's record, and return the key (to show once) with it.

    Shared by the admin API and ``mcp-locks keys create``: every workspace must exist,
    and an agent key needs at least one.
    """
    name = check_agent_name(agent)
    live = next((r for r in await store.list_keys() if r.agent == name and r.revoked_at is None), None)
    if live is not None:
        # One live key per agent: the agent name then names one key, for ownership, retries and deadlocks.
        raise AlreadyExists(
            f"agent '{name}' already has a live key ({live.key_id}).",
            hint=f"To replace it, revoke it first (mcp-locks keys revoke {live.key_id}); locks taken with it"
            " stay its own until they are released by an admin or expire.",
            details={"field": "agent", "key_id": live.key_id},
        )
    if role not in ("agent", "admin"):
        raise InvalidArgument("role must be 'agent' or 'admin'.", details={"field": "role"})
    if not isinstance(workspaces, Sequence) or isinstance(workspaces, str):
        raise InvalidArgument("workspaces must be a list of workspace ids.", details={"field": "workspaces"})
    if len(workspaces) > MAX_ITEMS:
        raise InvalidArgument(f"a key reaches at most {MAX_ITEMS} workspaces.", details={"field": "workspaces"})
    wss = tuple(dict.fromkeys(check_workspace_id(w, "workspaces") for w in workspaces if w is not None))
    if role == "agent" and not wss:
        raise InvalidArgument(
            "an agent key needs at least one workspace.",
            hint="List the workspaces the agent may use; admin keys reach every workspace.",
            details={"field": "workspaces"},
        )
    for w in wss:
        if await store.get_workspace(w) is None:
            raise NotFound(
                f"workspace '{w}' does not exist.",
                hint=f"Create it first (POST /v1/workspaces, or `mcp-locks workspaces create {w}`).",
                details={"workspace_id": w},
            )
    key, record = new_key(name, wss, "admin" if role == "admin" else "agent", now)
    await store.put_key(record)
    return key, record


def _yours(mine: Lease | LockError | None, node: str, now: float) -> YourLock:
    if isinstance(mine, Lease):
        covers = mine.node_id == node or (mine.depth == "tree" and node.startswith(mine.node_id + "/"))
        return YourLock(
            held=True,
            covers_node=covers,
            lock_id=mine.lock_id,
            node_id=mine.node_id,
            mode=mine.mode,
            fence=mine.fence,
            expires_at=utc(mine.expires_at),
            seconds_left=round(max(0.0, mine.expires_at - now), 3),
        )
    err = mine if isinstance(mine, LockError) else None
    return YourLock(held=False, covers_node=False, code=err.code if err else None, message=err.message if err else None)


class LockService:
    """Routes each workspace's commands to its actor, starting actors on use and waking evicted ones by alarm.

    Every face (MCP tools, REST routes, the CLI) calls these methods, so the
    rules and the errors are the same everywhere. Use as an async context
    manager: it opens the store, creates the workspace ``default``, and
    schedules alarms for leases that were held when the server stopped (so
    locks whose deadline passed while it was down are expired at once).
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        limits: ServiceLimits | None = None,
        files_dir: str | os.PathLike[str] | None = None,
        file_limits: FileLimits | None = None,
    ) -> None:
        self.store = store
        #: Where workspaces not bound to a folder keep their files (``<files_dir>/<workspace_id>``);
        #: without one, a temporary folder made on first use and removed on exit (like a memory store).
        self.files_dir = Path(files_dir) if files_dir is not None else None
        self._temp_files: str | None = None
        self._disks: dict[str, WorkspaceDisk] = {}
        #: The file store: reads and writes that obey the locks.
        self.files = FileService(self, file_limits or FileLimits())
        self.clock = clock or Clock()
        self.limits = limits or ServiceLimits()
        self._actors: dict[str, WorkspaceActor] = {}
        self._workspaces: dict[str, WorkspaceRecord] = {}
        self._deleting: set[str] = set()  # retired, about to leave the store: NOT_FOUND meanwhile
        self._alarms: list[tuple[float, str]] = []
        self._alarm_wake = anyio.Event()
        self._create_lock = anyio.Lock()
        #: Set (and replaced) when a key is revoked or a workspace deleted here: open streams look again.
        self.access_changed = anyio.Event()
        self.hub = EventHub(audit=self.limits.observe.audit)
        #: The audit log, webhooks and metrics.
        self.observe = Observability(self, self.limits.observe, self.hub)
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.store.open()
            stack.push_async_callback(self.store.close)
            stack.callback(self._close_disks)
            for rec in await self.store.list_workspaces():
                self._workspaces[rec.workspace_id] = rec
            if DEFAULT_WORKSPACE not in self._workspaces:
                rec = await self.store.create_workspace(DEFAULT_WORKSPACE, "Created on first start.", self.clock.now())
                self._workspaces[DEFAULT_WORKSPACE] = rec
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tg.cancel_scope.cancel)
            for ws, when in (await self.store.deadlines()).items():
                self._set_alarm(ws, when)
            self._tg.start_soon(self._alarm_loop)
            if self.store.shared:
                self._tg.start_soon(cast(SharedStore, self.store).watch, self._poked)
            await self.observe.start(self._tg)
            stack.callback(self.hub.close)  # first on the way out: live feeds end, their readers return
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    def _close_disks(self) -> None:
        for disk in self._disks.values():
            disk.close()
        self._disks.clear()
        if self._temp_files is not None:
            shutil.rmtree(self._temp_files, ignore_errors=True)
            self._temp_files = None
            self.files_dir = None

    def background(self, fn: Callable[[], Awaitable[None]], what: str) -> anyio.CancelScope:
        """Run ``fn`` in the service's task group until it ends or the returned scope is cancelled.

        A failure is logged, never raised: background work is best effort.
        """
        if self._tg is None:
            raise Unavailable("the lock service is not running.", hint="Retry once the server has started.")
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                try:
                    await fn()
                except Exception:
                    log.warning("%s failed", what, exc_info=True)

        self._tg.start_soon(run)
        return scope

    def _poked(self, workspace_id: str | None) -> None:
        """Another server committed to ``workspace_id`` (None: to any): its actor here catches up if callers wait."""
        actors = self._actors.values() if workspace_id is None else filter(None, [self._actors.get(workspace_id)])
        for actor in list(actors):
            actor.poke()

    def _set_alarm(self, workspace_id: str, when: float) -> None:
        heapq.heappush(self._alarms, (when, workspace_id))
        self._alarm_wake.set()

    async def _alarm_loop(self) -> None:
        while True:
            now = self.clock.now()
            while self._alarms and self._alarms[0][0] <= now:
                _, ws = heapq.heappop(self._alarms)
                if ws in self._workspaces and ws not in self._deleting:
                    self._actor(ws)  # starting it expires what is due
            self._alarm_wake = anyio.Event()
            await self.clock.wait(self._alarm_wake, self._alarms[0][0] if self._alarms else None)

    def _actor(self, workspace_id: str) -> WorkspaceActor:
        actor = self._actors.get(workspace_id)
        if actor is None or actor.stopped:
            if self._tg is None:
                raise Unavailable("the lock service is not running.", hint="Retry once the server has started.")
            actor = WorkspaceActor(
                workspace_id,
                self.store,
                self.clock,
                limits=self.limits.table,
                idle_timeout=self.limits.idle_timeout,
                hub=self.hub,
                disk=self.disk(workspace_id),
            )
            self._actors[workspace_id] = actor
            self._tg.start_soon(self._run_actor, actor)
        return actor

    async def _run_actor(self, actor: WorkspaceActor) -> None:
        try:
            await actor.run()
        except Exception:
            log.exception("workspace actor %s stopped", actor.workspace_id)
        finally:
            if self._actors.get(actor.workspace_id) is actor:
                del self._actors[actor.workspace_id]
                self.observe.actor_stopped(actor.workspace_id, len(actor.table) if actor.table is not None else None)
            if actor.next_deadline is not None:
                self._set_alarm(actor.workspace_id, actor.next_deadline)
            elif actor.failed:
                # The store failed under it: try again soon so expiries are not left waiting for a call.
                self._set_alarm(actor.workspace_id, self.clock.now() + RETRY_AFTER_FAILURE)

    @asynccontextmanager
    async def subscribe(self, buffer: int = 10_000) -> AsyncIterator[MemoryObjectReceiveStream[tuple[str, Event]]]:
        """Receive ``(workspace_id, Event)`` for every committed change from now on, until the block exits.

        A subscriber more than ``buffer`` events behind loses events; it never slows the lock path.
        """
        async with self.hub.subscribe(buffer) as recv:
            yield recv

    def _access_changed(self) -> None:
        done, self.access_changed = self.access_changed, anyio.Event()
        done.set()

    async def still_reaches(self, caller: Identity, workspace_id: str) -> bool:
        """Whether ``caller``'s key is still live and still reaches ``workspace_id`` (for long-lived streams)."""
        if not caller.authenticated:
            return workspace_id in self._workspaces
        rec = await self.store.get_key(caller.key_id)
        return (
            rec is not None
            and rec.revoked_at is None
            and workspace_id in self._workspaces
            and (rec.role == "admin" or workspace_id in rec.workspaces)
        )

    async def known_workspace(self, workspace_id: object, caller: Identity = LOCAL) -> str:
        """The workspace id if it exists and ``caller`` may use it (NOT_FOUND / FORBIDDEN otherwise)."""
        return await self._known(workspace_id, caller)

    async def _known(self, workspace_id: object, caller: Identity = LOCAL) -> str:
        if workspace_id is None:
            # A key bound to one workspace uses it by default.
            ws = caller.workspaces[0] if caller.role != "admin" and len(caller.workspaces) == 1 else DEFAULT_WORKSPACE
        elif isinstance(workspace_id, str) and workspace_id in self._workspaces:
            ws = workspace_id  # known ids were checked when they were created
        else:
            ws = check_workspace_id(workspace_id)
        if not caller.reaches(ws):
            # The same answer whether or not the workspace exists: never reveal existence.
            raise Forbidden(
                f"this key does not reach workspace '{ws}'.",
                hint="Pass a workspace_id your key lists: " + ", ".join(repr(w) for w in caller.workspaces) + "."
                if caller.workspaces
                else "Ask an admin for a key that reaches it.",
                details={"workspace_id": ws, "your_workspaces": list(caller.workspaces)},
            )
        if ws in self._deleting:
            raise NotFound(f"workspace '{ws}' is being deleted.", details={"workspace_id": ws})
        if ws not in self._workspaces:
            # Created by another process on the same store (`mcp-locks workspaces create`)?
            rec = await self.store.get_workspace(ws)
            if rec is not None:
                self._workspaces[ws] = rec
                return ws
            raise NotFound(
                f"workspace '{ws}' does not exist.",
                hint=f"Create it with create_workspace(workspace_id='{ws}'),"
                f" or omit workspace_id to use '{DEFAULT_WORKSPACE}'.",
                details={"workspace_id": ws},
            )
        return ws

    def _disk_or_none(self, workspace_id: str) -> WorkspaceDisk:
        disk = self._disks.get(workspace_id)
        if disk is None:
            rec = self._workspaces.get(workspace_id)
            if rec is not None and rec.root is not None:
                disk = WorkspaceDisk(Path(rec.root), bound=True)
            else:
                if self.files_dir is None:
                    self._temp_files = tempfile.mkdtemp(prefix="mcp-locks-files-")
                    self.files_dir = Path(self._temp_files)
                disk = WorkspaceDisk(self.files_dir / workspace_id, bound=False)
            self._disks[workspace_id] = disk
        return disk

    def disk(self, workspace_id: str) -> WorkspaceDisk:
        """The folder holding a (known) workspace's files."""
        return self._disk_or_none(workspace_id)

    @property
    def active_actors(self) -> int:
        """How many workspace actors are running (the rest are evicted)."""
        return len(self._actors)

    # ------------------------------------------------------------------ workspaces

    async def create_workspace(
        self, workspace_id: object, description: object = None, *, caller: Identity = LOCAL
    ) -> WorkspaceInfo:
        """Create a workspace (admin only; ALREADY_EXISTS if it exists)."""
        require_admin(caller, "creating a workspace")
        ws = check_workspace_id(workspace_id)
        desc = _text(description, "description", 1024, allow_newlines=True)
        async with self._create_lock:
            rec = await self.store.create_workspace(ws, desc, self.clock.now())
            self._workspaces[ws] = rec
        return WorkspaceInfo(workspace_id=ws, description=desc, created_at=utc(rec.created_at))

    async def list_workspaces(self, *, caller: Identity = LOCAL) -> list[WorkspaceInfo]:
        """The workspaces ``caller`` reaches (read from the store: other processes may have created some)."""
        for rec in await self.store.list_workspaces():
            self._workspaces.setdefault(rec.workspace_id, rec)
        return [
            WorkspaceInfo(workspace_id=r.workspace_id, description=r.description, created_at=utc(r.created_at))
            for r in sorted(self._workspaces.values(), key=lambda r: r.workspace_id)
            if caller.reaches(r.workspace_id)
        ]

    async def delete_workspace(self, workspace_id: object, *, caller: Identity = LOCAL) -> WorkspaceInfo:
        """Delete a workspace that holds no lock and has nobody waiting (admin only); keys lose it too."""
        require_admin(caller, "deleting a workspace")
        ws = check_workspace_id(workspace_id)
        if ws == DEFAULT_WORKSPACE:
            raise InvalidArgument(
                f"the workspace '{DEFAULT_WORKSPACE}' cannot be deleted.", details={"field": "workspace_id"}
            )
        await self._known(ws, caller)
        actor = self._actor(ws)

        def retire(table: LockTable, now: float) -> None:
            # In the actor, so no grant can slip in between this check and the delete.
            if len(table) or table.waiter_count:
                raise workspace_in_use(ws, len(table) + table.waiter_count)
            table.retired = True

        await actor.call(retire)
        self._deleting.add(ws)
        try:
            async with self._create_lock:
                with anyio.CancelScope(shield=True):  # once asked, the store's delete runs to its end
                    await self.store.delete_workspace(ws, self.clock.now())
                rec = self._workspaces.pop(ws)
                # Retired, it answered NOT_FOUND until now; a re-created workspace gets a new actor.
                self._actors.pop(ws, None)
                disk = self._disks.pop(ws, None)
            if disk is not None:
                disk.close()
                if not disk.bound:  # its own folder goes with it; a bound project folder is left as it is
                    await remove_tree(disk.root)
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await actor.call(lambda table, now: setattr(table, "retired", False))
                except LockError as e:  # the actor stopped meanwhile: a new one starts unretired anyway
                    log.warning("could not un-retire workspace %s: %s", ws, e.code)
            raise
        finally:
            self._deleting.discard(ws)
        self.observe.workspace_deleted(ws)
        self._access_changed()
        log.info("deleted workspace %s", ws)
        return WorkspaceInfo(workspace_id=ws, description=rec.description, created_at=utc(rec.created_at))

    # ------------------------------------------------------------------ keys (admin)

    async def create_key(
        self, agent: object, workspaces: object = (), role: object = "agent", *, caller: Identity = LOCAL
    ) -> tuple[str, KeyRecord]:
        """A new API key (shown once) and its stored record. Admin only; every workspace must exist."""
        require_admin(caller, "creating a key")
        key, record = await issue_key(self.store, agent, workspaces, role, self.clock.now())
        log.info("created %s key %s for agent %s", record.role, record.key_id, record.agent)
        return key, record

    async def list_keys(self, *, caller: Identity = LOCAL) -> list[KeyRecord]:
        """Every key record (never a key). Admin only."""
        require_admin(caller, "listing keys")
        return await self.store.list_keys()

    async def revoke_key(self, key_id: object, *, caller: Identity = LOCAL) -> KeyRecord:
        """Revoke a key: it stops working at once. Admin only; NOT_FOUND if no such live key."""
        require_admin(caller, "revoking a key")
        kid = key_id if isinstance(key_id, str) and len(key_id) <= 64 else ""
        if not await self.store.revoke_key(kid, self.clock.now()):
            shown = redact(kid)  # someone may paste a whole key here
            raise NotFound(
                f"no live key has the id '{shown}'.",
                hint="List the keys (GET /v1/admin/keys or `mcp-locks keys list`) for their ids.",
                details={"key_id": shown},
            )
        log.info("revoked key %s", kid)
        self._access_changed()
        record = await self.store.get_key(kid)
        assert record is not None  # revoked keys are kept
        return record

    # ------------------------------------------------------------------ locks

    def _lock_args(
        self, timeout: object, wait: object, note: object, request_id: object
    ) -> tuple[float, float, str | None, str | None]:
        t = _seconds(
            timeout, "timeout", 1, self.limits.max_timeout, "Pick a lease long enough for the work, then renew_lock."
        )
        w = _seconds(wait, "wait", 0, self.limits.max_wait, "Use wait=0 to fail at once when the file is locked.")
        rid = _text(request_id, "request_id", 128)
        if rid is not None and not rid:
            raise InvalidArgument("request_id must not be empty.", details={"field": "request_id"})
        return t, w, _text(note, "note", 1024, allow_newlines=True), rid

    async def _acquire(
        self,
        ws: str,
        items: tuple[Claim, ...],
        *,
        owner: str,
        timeout: float,
        wait: float,
        note: str | None,
        request_id: str | None,
        token: str | None,
        who: _Who,
    ) -> Granted:
        actor = self._actor(ws)
        request = (owner, request_id)
        upgrade = False  # decided in the actor: only a read lease asked for "write" is upgraded

        def step(table: LockTable, now: float) -> Granted | Waiting:
            nonlocal upgrade
            upgrade = token is not None and items[0].mode == "write" and table.mode_of(token) == "read"
            outcome = table.acquire(
                now,
                items,
                owner=owner,
                timeout=timeout,
                wait=wait,
                note=note,
                request_id=request_id,
                token=token,
                label=who.label,
                key_id=who.key_id,
                as_key=who.as_key,
            )
            return actor.queued(outcome, upgrade=upgrade, request=request)

        async def undo(result: Granted | Waiting) -> None:
            # The caller was cancelled before it saw the answer: give back what it would not know it has
            # (a new lock, or an upgrade); a renewal or downgrade stands.
            if isinstance(result, Waiting):
                await actor.abandon(result)
            elif not result.replayed and (token is None or upgrade):
                await actor.give_back(result.leases, upgrade=upgrade, request=request)

        result = await actor.call(step, undo)
        if isinstance(result, Waiting):
            return await actor.wait_for(result)
        return result

    async def lock(
        self,
        workspace_id: object = None,
        node_id: object = None,
        mode: object = "write",
        timeout: object = 300,
        wait: object = 0,
        depth: object = "node",
        note: object = None,
        agent: object = None,
        request_id: object = None,
        token: object = None,
        *,
        caller: Identity = LOCAL,
    ) -> LockGrant:
        """Take one lock (or upgrade / downgrade / re-lease the one ``token`` names)."""
        ws = await self._known(workspace_id, caller)
        claim = Claim(check_node_id(node_id), _mode(mode), _depth(depth))
        t, w, n, rid = self._lock_args(timeout, wait, note, request_id)
        who = _who(caller, agent)
        tok = self._token(token) if token is not None else None
        granted = await self._acquire(
            ws, (claim,), owner=who.owner, timeout=t, wait=w, note=n, request_id=rid, token=tok, who=who
        )
        return LockGrant.of(ws, granted.leases[0], granted.replayed)

    async def lock_many(
        self,
        workspace_id: object = None,
        items: object = None,
        timeout: object = 300,
        wait: object = 0,
        note: object = None,
        agent: object = None,
        request_id: object = None,
        *,
        caller: Identity = LOCAL,
    ) -> LockFilesResult:
        """Take every lock in ``items`` together, or none."""
        ws = await self._known(workspace_id, caller)
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise InvalidArgument(
                "items must be a list of 1 to 100 {node_id, mode, depth} objects.", details={"field": "items"}
            )
        if len(items) > MAX_ITEMS:
            raise InvalidArgument(
                f"lock_files takes at most {MAX_ITEMS} items (got {len(items)}).",
                hint="Lock a common folder with depth='tree' instead, or split the work.",
                details={"field": "items", "limit": MAX_ITEMS},
            )
        claims: list[Claim] = []
        for i, raw in enumerate(items):
            item = raw if isinstance(raw, LockItem) else None
            if item is None:
                if not isinstance(raw, dict):
                    raise InvalidArgument(
                        f"items[{i}] must be an object with node_id, mode and depth.", details={"field": f"items[{i}]"}
                    )
                d: dict[str, Any] = raw
                claims.append(
                    Claim(
                        check_node_id(d.get("node_id"), f"items[{i}].node_id"),
                        _mode(d.get("mode", "write"), f"items[{i}].mode"),
                        _depth(d.get("depth", "node"), f"items[{i}].depth"),
                    )
                )
            else:
                claims.append(
                    Claim(
                        check_node_id(item.node_id, f"items[{i}].node_id"),
                        _mode(item.mode, f"items[{i}].mode"),
                        _depth(item.depth, f"items[{i}].depth"),
                    )
                )
        t, w, n, rid = self._lock_args(timeout, wait, note, request_id)
        who = _who(caller, agent)
        granted = await self._acquire(
            ws, tuple(claims), owner=who.owner, timeout=t, wait=w, note=n, request_id=rid, token=None, who=who
        )
        leases = granted.leases
        return LockFilesResult(
            workspace_id=ws,
            locks=[LockGrant.of(ws, le, granted.replayed) for le in leases],
            waited_ms=leases[0].waited_ms if leases else 0,
        )

    async def unlock(
        self, workspace_id: object = None, token: object = None, node_id: object = None, *, caller: Identity = LOCAL
    ) -> UnlockResult:
        """Release the lock ``token`` names (with an agent key, only that agent's locks)."""
        ws = await self._known(workspace_id, caller)
        tok = self._token(token)
        node = check_node_id(node_id) if node_id is not None else None
        as_key = _who(caller, None).as_key
        lease, held_ms = await self._actor(ws).call(lambda table, now: table.release(now, tok, node, as_key))
        return UnlockResult(workspace_id=ws, released=LockInfo.of(lease), held_ms=held_ms)

    async def unlock_many(
        self, workspace_id: object = None, tokens: object = None, *, caller: Identity = LOCAL
    ) -> UnlockFilesResult:
        """Release each token's lock; a bad token is reported in its place and does not stop the others."""
        ws = await self._known(workspace_id, caller)
        as_key = _who(caller, None).as_key
        if not isinstance(tokens, Sequence) or isinstance(tokens, str) or not tokens:
            raise InvalidArgument("tokens must be a list of 1 to 100 tokens.", details={"field": "tokens"})
        if len(tokens) > MAX_ITEMS:
            raise InvalidArgument(
                f"unlock_files takes at most {MAX_ITEMS} tokens (got {len(tokens)}).",
                details={"field": "tokens", "limit": MAX_ITEMS},
            )
        toks = [self._token(t, f"tokens[{i}]") for i, t in enumerate(tokens)]

        def step(table: LockTable, now: float) -> list[UnlockOutcome]:
            out: list[UnlockOutcome] = []
            for i, tok in enumerate(toks):
                try:
                    lease, held = table.release(now, tok, as_key=as_key)
                except LockError as e:
                    out.append(UnlockOutcome(index=i, released=False, error_code=e.code, error=e.text()))
                else:
                    out.append(
                        UnlockOutcome(
                            index=i, released=True, lock_id=lease.lock_id, node_id=lease.node_id, held_ms=held
                        )
                    )
            return out

        results = await self._actor(ws).call(step)
        return UnlockFilesResult(workspace_id=ws, released=sum(r.released for r in results), results=results)

    async def force_unlock(
        self, workspace_id: object = None, lock_id: object = None, reason: object = None, *, caller: Identity = LOCAL
    ) -> UnlockResult:
        """Break someone's lock (admin only), recording who and why; its token then answers LOCK_BROKEN."""
        require_admin(caller, "force_unlock")
        ws = await self._known(workspace_id, caller)
        if not isinstance(lock_id, str) or not lock_id or len(lock_id) > 64:
            raise InvalidArgument(
                "lock_id must be the lock_id of a held lock.",
                hint="list_locks and check_lock_status show lock ids.",
                details={"field": "lock_id"},
            )
        why = _text(reason, "reason", 1024)
        if why is None or not why.strip():
            raise InvalidArgument(
                "reason must say why the lock is broken; its holder will read it.", details={"field": "reason"}
            )
        by = caller.agent or "local"
        lid = lock_id
        lease, held_ms = await self._actor(ws).call(lambda table, now: table.force_release(now, lid, by, why))
        log.warning("lock %s on %s/%s broken by %s: %s", lid, ws, lease.node_id, by, why)
        return UnlockResult(workspace_id=ws, released=LockInfo.of(lease), held_ms=held_ms)

    async def renew(
        self,
        workspace_id: object = None,
        token: object = None,
        timeout: object = None,
        *,
        caller: Identity = LOCAL,
        node_id: object = None,
    ) -> RenewResult:
        """Restart the lease ``token`` names (with an agent key, only leases taken with that key).

        With ``node_id`` (the REST path names one), the lease must be on that node.
        """
        ws = await self._known(workspace_id, caller)
        node = check_node_id(node_id) if node_id is not None else None
        as_key = _who(caller, None).as_key
        tok = self._token(token)
        t = (
            None
            if timeout is None
            else _seconds(timeout, "timeout", 1, self.limits.max_timeout, "Pick a lease long enough for the work.")
        )
        lease: Lease = await self._actor(ws).call(lambda table, now: table.renew(now, tok, t, as_key, node))
        return RenewResult(
            workspace_id=ws,
            lock_id=lease.lock_id,
            node_id=lease.node_id,
            fence=lease.fence,
            expires_at=utc(lease.expires_at),
            timeout=lease.timeout,
        )

    async def status(
        self, workspace_id: object = None, node_id: object = None, token: object = None, *, caller: Identity = LOCAL
    ) -> LockStatus:
        """Who holds ``node_id`` and who waits for it; with ``token``, also whether the caller still holds it."""
        ws = await self._known(workspace_id, caller)
        node = check_node_id(node_id)
        tok = self._token(token) if token is not None else None
        as_key = _who(caller, None).as_key

        def step(table: LockTable, now: float) -> tuple[NodeStatus, Lease | LockError | None, float]:
            return table.status(now, node), table.holding(now, tok, as_key) if tok else None, now

        st, mine, now = await self._actor(ws).call(step)
        return LockStatus.of(ws, st, _yours(mine, node, now) if tok else None)

    async def list_locks(
        self,
        workspace_id: object = None,
        prefix: object = "",
        owner: object = None,
        limit: object = 100,
        cursor: object = None,
        *,
        caller: Identity = LOCAL,
    ) -> LockPage:
        """A page of held locks whose node_id starts with ``prefix``."""
        ws = await self._known(workspace_id, caller)
        pre = _text(prefix, "prefix", 1024) or ""
        own = _text(owner, "owner", 64)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be an integer from 1 to 1000.", details={"field": "limit"})
        after = decode_cursor(cursor) if isinstance(cursor, str) and cursor else None
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidArgument("cursor must be a string.", details={"field": "cursor"})
        lim = limit
        leases, nxt = await self._actor(ws).call(lambda table, now: table.page(now, pre, own, lim, after))
        return LockPage(
            workspace_id=ws,
            locks=[LockInfo.of(le) for le in leases],
            next_cursor=encode_cursor(nxt) if nxt else None,
        )

    async def overview(self, workspace_id: object = None, *, caller: Identity = LOCAL) -> WorkspaceOverview:
        """Every held lock and waiting claim of a workspace (the first 1000 of each), as of one instant."""
        ws = await self._known(workspace_id, caller)

        def step(table: LockTable, now: float) -> tuple[list[Lease], bool, list[WaiterView], bool, float]:
            leases, nxt = table.page(now, limit=OVERVIEW_LIMIT)
            waiters, more = table.line(now, OVERVIEW_LIMIT)
            return leases, nxt is not None, waiters, more, now

        leases, more_locks, waiters, more_waiters, now = await self._actor(ws).call(step)
        return WorkspaceOverview(
            workspace_id=ws,
            at=utc(now),
            locks=[LockInfo.of(le) for le in leases],
            waiters=[WaiterInfo.of(w) for w in waiters],
            truncated=more_locks or more_waiters,
        )

    @staticmethod
    def _token(token: object, field: str = "token") -> str:
        if not isinstance(token, str) or not token or len(token) > 256:
            raise InvalidArgument(
                f"{field} must be the token string that lock_file returned.",
                hint="Pass the 'token' field of the grant exactly as it was returned.",
                details={"field": field},
            )
        return token
