"""The workspaces a server knows and the actors that run them, shared by the lock, file and observe services."""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc

from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import Forbidden, LockError, NotFound, Unavailable
from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.core.names import DEFAULT_WORKSPACE, check_workspace_id
from mcp_locks.core.records import WorkspaceRecord
from mcp_locks.core.table import Limits
from mcp_locks.engine.actor import WorkspaceActor
from mcp_locks.engine.disk import WorkspaceDisk
from mcp_locks.observe.events import EventHub
from mcp_locks.observe.metrics import WorkspaceGauges
from mcp_locks.stores.base import Store

__all__ = ["RETRY_AFTER_FAILURE", "WorkspaceRegistry", "workspace_deleted"]

log = logging.getLogger("mcp_locks.service")

#: Seconds before a workspace whose store failed is woken again to catch up on expiries.
RETRY_AFTER_FAILURE = 5.0


class WorkspaceRegistry:
    """Known workspaces, their running actors, their alarms and their folders: one per server.

    An actor is the only writer of its workspace; the registry starts one on use, keeps an alarm for
    the next lease deadline of an evicted one (so expiries happen without a call), and opens each
    workspace's folder once. :class:`~mcp_locks.engine.lock_service.LockService`,
    :class:`~mcp_locks.engine.file_service.FileService` and the observability service share it.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        hub: EventHub,
        *,
        table_limits: Limits,
        idle_timeout: float,
        files_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.hub = hub
        self.table_limits = table_limits
        self.idle_timeout = idle_timeout
        #: Where workspaces not bound to a folder keep their files (``<files_dir>/<workspace_id>``);
        #: without one, a temporary folder made on first use and removed on exit (like a memory store).
        self.files_dir = Path(files_dir) if files_dir is not None else None
        self._temp_files: str | None = None
        self.disks: dict[str, WorkspaceDisk] = {}
        self.actors: dict[str, WorkspaceActor] = {}
        self.workspaces: dict[str, WorkspaceRecord] = {}
        #: Retired workspaces about to leave the store: NOT_FOUND meanwhile.
        self.deleting: set[str] = set()
        self._alarms: list[tuple[float, str]] = []
        self._alarm_wake = anyio.Event()
        #: Set (and replaced) when a key is revoked or a workspace deleted here: open streams look again.
        self.access_changed = anyio.Event()
        #: Called (synchronously) on every access change, after the event is set: the file service drops
        #: the unfinished uploads of revoked keys from here.
        self.access_listeners: list[Callable[[], None]] = []
        #: File calls in flight per workspace (their cancel scopes): deleting a workspace cancels them and
        #: waits for them to end before it closes the folder (see :meth:`file_work`).
        self._file_work: dict[str, set[anyio.CancelScope]] = {}
        self._file_work_idle: dict[str, anyio.Event] = {}
        #: Told the last lock count of an actor that stopped (None: it never loaded).
        self.on_actor_stopped: Callable[[str, int | None], None] = lambda ws, held: None
        self.tg: anyio.abc.TaskGroup | None = None

    def gauges(self) -> dict[str, WorkspaceGauges]:
        """Held locks, waiters and mailbox depth of every running actor, for the metrics."""
        out = {}
        for ws, actor in list(self.actors.items()):
            table = actor.table
            if table is not None and not actor.stopped:
                out[ws] = WorkspaceGauges(len(table), table.waiter_count, actor.mailbox_depth)
        return out

    def close_disks(self) -> None:
        """Close every open workspace folder (and remove the temporary one, if any)."""
        for disk in self.disks.values():
            disk.close()
        self.disks.clear()
        if self._temp_files is not None:
            shutil.rmtree(self._temp_files, ignore_errors=True)
            self._temp_files = None
            self.files_dir = None

    def background(self, fn: Callable[[], Awaitable[None]], what: str) -> anyio.CancelScope:
        """Run ``fn`` in the service's task group until it ends or the returned scope is cancelled.

        A failure is logged, never raised: background work is best effort.
        """
        if self.tg is None:
            raise Unavailable("the lock service is not running.", hint="Retry once the server has started.")
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                try:
                    await fn()
                except Exception:
                    log.warning("%s failed", what, exc_info=True)

        self.tg.start_soon(run)
        return scope

    def poked(self, workspace_id: str | None) -> None:
        """Another server committed to ``workspace_id`` (None: to any): its actor here catches up if callers wait.

        None also when another server revoked or changed a key (or this server may have missed it): open
        streams check their keys again at once.
        """
        actors = self.actors.values() if workspace_id is None else filter(None, [self.actors.get(workspace_id)])
        for actor in list(actors):
            actor.poke()
        if workspace_id is None:  # keys may have changed elsewhere: streams here look again
            self.changed_access()

    def set_alarm(self, workspace_id: str, when: float) -> None:
        """Start the workspace's actor at ``when`` (to expire what is due then)."""
        heapq.heappush(self._alarms, (when, workspace_id))
        self._alarm_wake.set()

    async def alarm_loop(self) -> None:
        """Start actors whose alarms are due, until cancelled."""
        while True:
            now = self.clock.now()
            while self._alarms and self._alarms[0][0] <= now:
                _, ws = heapq.heappop(self._alarms)
                if ws in self.workspaces and ws not in self.deleting:
                    self.actor(ws)  # starting it expires what is due
            self._alarm_wake = anyio.Event()
            await self.clock.wait(self._alarm_wake, self._alarms[0][0] if self._alarms else None)

    def actor(self, workspace_id: str) -> WorkspaceActor:
        """The running actor of a (known) workspace, started if it is not."""
        actor = self.actors.get(workspace_id)
        if actor is None or actor.stopped:
            if self.tg is None:
                raise Unavailable("the lock service is not running.", hint="Retry once the server has started.")
            actor = WorkspaceActor(
                workspace_id,
                self.store,
                self.clock,
                limits=self.table_limits,
                idle_timeout=self.idle_timeout,
                hub=self.hub,
                disk=self.disk(workspace_id),
            )
            self.actors[workspace_id] = actor
            self.tg.start_soon(self._run_actor, actor)
        return actor

    async def _run_actor(self, actor: WorkspaceActor) -> None:
        try:
            await actor.run()
        except LockError as e:  # its store is unreachable (a database restarting): it is started again later
            log.warning("workspace actor %s stopped: %s", actor.workspace_id, e.text())
        except Exception:
            log.exception("workspace actor %s stopped", actor.workspace_id)
        finally:
            if self.actors.get(actor.workspace_id) is actor:
                del self.actors[actor.workspace_id]
                self.on_actor_stopped(actor.workspace_id, len(actor.table) if actor.table is not None else None)
            if actor.next_deadline is not None:
                self.set_alarm(actor.workspace_id, actor.next_deadline)
            elif actor.failed:
                # The store failed under it: try again soon so expiries are not left waiting for a call.
                self.set_alarm(actor.workspace_id, self.clock.now() + RETRY_AFTER_FAILURE)

    def changed_access(self) -> None:
        """Wake open streams so they check their key and workspace again (a key was revoked, a workspace deleted)."""
        done, self.access_changed = self.access_changed, anyio.Event()
        done.set()
        for listener in list(self.access_listeners):
            listener()

    async def still_reaches(self, caller: Identity, workspace_id: str) -> bool:
        """Whether ``caller``'s key is still live and still reaches ``workspace_id`` (for long-lived streams)."""
        if not caller.authenticated:
            return workspace_id in self.workspaces
        rec = await self.store.get_key(caller.key_id)
        return (
            rec is not None
            and rec.revoked_at is None
            and workspace_id in self.workspaces
            and (rec.role == "admin" or workspace_id in rec.workspaces)
        )

    async def known(self, workspace_id: object, caller: Identity = LOCAL) -> str:
        """The workspace id if it exists and ``caller`` may use it (NOT_FOUND / FORBIDDEN otherwise)."""
        if workspace_id is None:
            # A key bound to one workspace uses it by default.
            ws = caller.workspaces[0] if caller.role != "admin" and len(caller.workspaces) == 1 else DEFAULT_WORKSPACE
        elif isinstance(workspace_id, str) and workspace_id in self.workspaces:
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
        if ws in self.deleting:
            raise NotFound(f"workspace '{ws}' is being deleted.", details={"workspace_id": ws})
        if ws not in self.workspaces:
            # Created by another process on the same store (`mcp-locks workspaces create`)?
            rec = await self.store.get_workspace(ws)
            if rec is not None:
                self.workspaces[ws] = rec
                return ws
            raise NotFound(
                f"workspace '{ws}' does not exist.",
                hint=f"Create it with {{op:create_workspace}} (workspace_id '{ws}'),"
                f" or omit workspace_id to use '{DEFAULT_WORKSPACE}'.",
                details={"workspace_id": ws},
            )
        return ws

    def disk(self, workspace_id: str) -> WorkspaceDisk:
        """The folder holding a (known) workspace's files, opened on first use."""
        disk = self.disks.get(workspace_id)
        if disk is None:
            rec = self.workspaces.get(workspace_id)
            bound = rec is not None and rec.root is not None
            if not bound and self.files_dir is None:
                self._temp_files = tempfile.mkdtemp(prefix="mcp-locks-files-")
                self.files_dir = Path(self._temp_files)
            root = self.folder(workspace_id)
            assert root is not None  # bound, or under files_dir
            disk = self.disks[workspace_id] = WorkspaceDisk(root, bound=bound)
        return disk

    def folder(self, workspace_id: str) -> Path | None:
        """Where a workspace's files live, if that folder may exist yet (None: no file was ever kept)."""
        rec = self.workspaces.get(workspace_id)
        if rec is not None and rec.root is not None:
            return Path(rec.root)
        return self.files_dir / workspace_id if self.files_dir is not None else None

    # ------------------------------------------------------------------ file work in flight

    @contextlib.asynccontextmanager
    async def file_work(self, workspace_id: str) -> AsyncIterator[None]:
        """Run a file call (a read, a write, an upload chunk, a download's stream) as work on the workspace.

        Deleting the workspace cancels it and waits for it to end before the folder is closed, so no
        worker thread ever uses a closed descriptor; the call then ends with NOT_FOUND.
        """
        if workspace_id in self.deleting or workspace_id not in self.workspaces:
            raise workspace_deleted(workspace_id)
        scopes = self._file_work.setdefault(workspace_id, set())
        scope = anyio.CancelScope()
        scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            scopes.discard(scope)
            if not scopes and self._file_work.get(workspace_id) is scopes:
                del self._file_work[workspace_id]
                idle = self._file_work_idle.pop(workspace_id, None)
                if idle is not None:
                    idle.set()
        if scope.cancelled_caught:
            raise workspace_deleted(workspace_id)

    async def end_file_work(self, workspace_id: str) -> None:
        """Cancel the file calls in flight on a workspace being deleted and wait until they have ended.

        Call it once the workspace is in :attr:`deleting` (no new call starts). A cancelled call ends at
        its next checkpoint; a worker thread's blocking step (bounded disk I/O) finishes first.
        """
        scopes = self._file_work.get(workspace_id)
        if not scopes:
            return
        idle = self._file_work_idle.setdefault(workspace_id, anyio.Event())
        for scope in list(scopes):
            scope.cancel()
        await idle.wait()

    @property
    def active_actors(self) -> int:
        """How many workspace actors are running (the rest are evicted)."""
        return len(self.actors)


def workspace_deleted(workspace_id: str) -> NotFound:
    """The NOT_FOUND of a call that used a workspace deleted meanwhile."""
    return NotFound(
        f"workspace '{workspace_id}' was deleted (or is being deleted) while this call used its files.",
        hint="Nothing of this call was kept. Use another workspace, or create this one again ({op:create_workspace}).",
        details={"workspace_id": workspace_id},
    )
