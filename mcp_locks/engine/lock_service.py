"""The service layer: workspace -> actor routing, argument rules, and the public results."""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, cast

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from mcp_locks.core.claims import Claim
from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import InvalidArgument, LockError, Unauthenticated
from mcp_locks.core.keys import LOCAL, Identity, KeyRecord, require_admin
from mcp_locks.core.models import (
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
from mcp_locks.core.names import DEFAULT_WORKSPACE, check_node_id, check_workspace_id
from mcp_locks.core.records import Event, Granted, Lease
from mcp_locks.core.table import Limits, LockTable, NodeStatus, WaiterView
from mcp_locks.engine.actor import Waiting
from mcp_locks.engine.admin import issue_key, no_live_key, update_key_workspaces
from mcp_locks.engine.arguments import (
    MAX_ITEMS,
    Who,
    check_depth,
    check_mode,
    check_seconds,
    check_text,
    check_token,
    decode_cursor,
    encode_cursor,
    who_is,
)
from mcp_locks.engine.disk import WorkspaceDisk
from mcp_locks.engine.file_service import FileLimits, FileService, remove_tree
from mcp_locks.engine.registry import WorkspaceRegistry
from mcp_locks.observe.events import EventHub
from mcp_locks.observe.observability import Observability, ObserveLimits
from mcp_locks.stores.base import SharedStore, Store, workspace_in_use

__all__ = ["LockService", "ServiceLimits"]

log = logging.getLogger("mcp_locks.service")

#: Most locks (and most waiting claims) one overview shows.
OVERVIEW_LIMIT = 1000
#: Seconds before a workspace whose store failed is woken again to catch up on expiries.
RETRY_AFTER_FAILURE = 5.0
#: The reason recorded on the locks a revoked key held (their holders read it in LOCK_BROKEN).
KEY_REVOKED = "key revoked"
#: Workspaces swept at once when a key is revoked (each may have to start its actor and load its table).
KEY_SWEEP_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Server settings that bound requests."""

    max_timeout: float = 86_400.0
    max_wait: float = 3_600.0
    idle_timeout: float = 60.0
    table: Limits = field(default_factory=Limits)
    observe: ObserveLimits = field(default_factory=ObserveLimits)


def _revoked_key(key_id: str | None) -> Unauthenticated:
    return Unauthenticated(
        "the key this request was made with has been revoked.",
        hint="Ask whoever runs the server for a new key, then retry with it.",
        details={"key_id": key_id},
    )


def _yours(mine: Lease | LockError | None, node: str, now: float) -> YourLock:
    if isinstance(mine, Lease):
        return YourLock(
            held=True,
            covers_node=mine.covers(node),
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
        self.clock = clock or Clock()
        self.limits = limits or ServiceLimits()
        self.hub = EventHub(audit=self.limits.observe.audit)
        #: The workspaces, their actors and folders (shared with the file and observe services).
        self.registry = WorkspaceRegistry(
            store,
            self.clock,
            self.hub,
            table_limits=self.limits.table,
            idle_timeout=self.limits.idle_timeout,
            files_dir=files_dir,
        )
        self._create_lock = anyio.Lock()
        #: The file store: reads and writes that obey the locks.
        self.files = FileService(self.registry, file_limits or FileLimits())
        #: The audit log, webhooks and metrics.
        self.observe = Observability(self.registry, self.limits.observe, self.hub)
        self.registry.on_actor_stopped = self.observe.actor_stopped
        #: Keys revoked through this server: a request they authenticated before their revocation is refused
        #: in the actor step, so nothing is granted to them after their locks were released.
        self._revoked: set[str] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.store.open()
            stack.push_async_callback(self.store.close)
            stack.callback(self.registry.close_disks)
            for rec in await self.store.list_workspaces():
                self.registry.workspaces[rec.workspace_id] = rec
            if DEFAULT_WORKSPACE not in self.registry.workspaces:
                rec = await self.store.create_workspace(DEFAULT_WORKSPACE, "Created on first start.", self.clock.now())
                self.registry.workspaces[DEFAULT_WORKSPACE] = rec
            self.registry.tg = self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tg.cancel_scope.cancel)
            for ws, when in (await self.store.deadlines()).items():
                self.registry.set_alarm(ws, when)
            self._tg.start_soon(self.registry.alarm_loop)
            if self.store.shared:
                self._tg.start_soon(cast(SharedStore, self.store).watch, self.registry.poked)
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

    @asynccontextmanager
    async def subscribe(self, buffer: int = 10_000) -> AsyncIterator[MemoryObjectReceiveStream[tuple[str, Event]]]:
        """Receive ``(workspace_id, Event)`` for every committed change from now on, until the block exits.

        A subscriber more than ``buffer`` events behind loses events; it never slows the lock path.
        """
        async with self.hub.subscribe(buffer) as recv:
            yield recv

    @property
    def access_changed(self) -> anyio.Event:
        """Set (and replaced) when a key is revoked or a workspace deleted here: open streams look again."""
        return self.registry.access_changed

    async def still_reaches(self, caller: Identity, workspace_id: str) -> bool:
        """Whether ``caller``'s key is still live and still reaches ``workspace_id`` (for long-lived streams)."""
        return await self.registry.still_reaches(caller, workspace_id)

    async def known_workspace(self, workspace_id: object, caller: Identity = LOCAL) -> str:
        """The workspace id if it exists and ``caller`` may use it (NOT_FOUND / FORBIDDEN otherwise)."""
        return await self.registry.known(workspace_id, caller)

    def background(self, fn: Callable[[], Awaitable[None]], what: str) -> anyio.CancelScope:
        """Run ``fn`` in the service's task group until it ends or the scope is cancelled (failures logged)."""
        return self.registry.background(fn, what)

    def disk(self, workspace_id: str) -> WorkspaceDisk:
        """The folder holding a (known) workspace's files."""
        return self.registry.disk(workspace_id)

    @property
    def active_actors(self) -> int:
        """How many workspace actors are running (the rest are evicted)."""
        return len(self.registry.actors)

    # ------------------------------------------------------------------ workspaces

    async def create_workspace(
        self, workspace_id: object, description: object = None, *, caller: Identity = LOCAL
    ) -> WorkspaceInfo:
        """Create a workspace (admin only; ALREADY_EXISTS if it exists)."""
        require_admin(caller, "creating a workspace")
        ws = check_workspace_id(workspace_id)
        desc = check_text(description, "description", 1024, allow_newlines=True)
        async with self._create_lock:
            rec = await self.store.create_workspace(ws, desc, self.clock.now())
            self.registry.workspaces[ws] = rec
        return WorkspaceInfo(workspace_id=ws, description=desc, created_at=utc(rec.created_at))

    async def list_workspaces(self, *, caller: Identity = LOCAL) -> list[WorkspaceInfo]:
        """The workspaces ``caller`` reaches (read from the store: other processes may have created some)."""
        for rec in await self.store.list_workspaces():
            self.registry.workspaces.setdefault(rec.workspace_id, rec)
        return [
            WorkspaceInfo(workspace_id=r.workspace_id, description=r.description, created_at=utc(r.created_at))
            for r in sorted(self.registry.workspaces.values(), key=lambda r: r.workspace_id)
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
        await self.registry.known(ws, caller)
        actor = self.registry.actor(ws)

        def retire(table: LockTable, now: float) -> None:
            # In the actor, so no grant can slip in between this check and the delete.
            if len(table) or table.waiter_count:
                raise workspace_in_use(ws, len(table) + table.waiter_count)
            table.retired = True

        await actor.call(retire)
        self.registry.deleting.add(ws)
        try:
            # File calls in flight (reads, writes, upload chunks, downloads) are cancelled and end with
            # NOT_FOUND; the folder is closed only once none of them can still use its descriptors.
            await self.registry.end_file_work(ws)
            async with self._create_lock:
                with anyio.CancelScope(shield=True):  # once asked, the store's delete runs to its end
                    await self.store.delete_workspace(ws, self.clock.now())
                rec = self.registry.workspaces.pop(ws)
                # Retired, it answered NOT_FOUND until now; a re-created workspace gets a new actor.
                self.registry.actors.pop(ws, None)
                disk = self.registry.disks.pop(ws, None)
            if disk is not None:
                disk.close(deleted=True)
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
            self.registry.deleting.discard(ws)
        self.observe.workspace_deleted(ws)
        self.registry.changed_access()
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
        """Revoke a key: it stops working at once. Admin only; NOT_FOUND if no such live key.

        Everything the key has open in the lock tables ends with it (:meth:`end_key`): its waiting
        requests are answered UNAUTHENTICATED and its locks are broken by ``caller``, as force_unlock does.
        """
        require_admin(caller, "revoking a key")
        kid = key_id if isinstance(key_id, str) and len(key_id) <= 64 else ""
        with anyio.CancelScope(shield=True):  # once revoked, its locks are released even if the admin's call goes
            if not await self.store.revoke_key(kid, self.clock.now()):
                raise no_live_key(kid)
            log.info("revoked key %s", kid)
            # Its waiting calls are answered (UNAUTHENTICATED) before its open streams and sessions are told to
            # end, so an MCP session ended for the revocation does not cut off the answer of a call in it.
            await self.end_key(kid, caller.agent or "local")
            self.registry.changed_access()
        record = await self.store.get_key(kid)
        assert record is not None  # revoked keys are kept
        return record

    async def end_key(self, key_id: str, by: str) -> None:
        """End what a revoked key has in every workspace: its waiters leave the line, its locks are broken.

        Run by the server that revokes the key; on a shared store its steps change the shared tables, so the
        other servers' waiters of that key are answered and their tables catch up. A server that learns of a
        revocation made elsewhere runs it too (the app's key watch); a second call for a key does nothing.
        ``by`` names the admin, for the holders.
        """
        if key_id in self._revoked:
            return  # ended here already: its waiters were refused and its locks broken, and it gets no more
        self._revoked.add(key_id)
        # Workspaces with leases (waiters wait for a lease, or behind a waiter that does), and running actors.
        wanted = set(self.registry.actors)
        try:
            wanted |= set(await self.store.deadlines())
        except Exception:  # the store failed: the running workspaces are still swept; leases elsewhere expire
            log.warning("could not list the workspaces holding locks of revoked key %s", key_id, exc_info=True)
        limiter = anyio.CapacityLimiter(KEY_SWEEP_CONCURRENCY)
        totals = [0, 0]  # locks broken, waiters refused

        async def sweep(ws: str) -> None:
            async with limiter:
                try:
                    ws = await self.registry.known(ws)
                    broken, left = await self.registry.actor(ws).call(
                        lambda table, now: table.revoke_key(now, key_id, by, KEY_REVOKED)
                    )
                except LockError as e:  # deleted meanwhile, or its store failed: its leases end by themselves
                    log.warning("could not end revoked key %s's locks in %s: %s", key_id, ws, e.code)
                    return
                totals[0] += len(broken)
                totals[1] += left

        async with anyio.create_task_group() as tg:
            for ws in sorted(wanted - self.registry.deleting):
                tg.start_soon(sweep, ws)
        if any(totals):
            log.warning("revoked key %s: %d lock(s) broken, %d waiting request(s) refused", key_id, *totals)

    async def update_key(
        self, key_id: object, add_workspaces: object = (), remove_workspaces: object = (), *, caller: Identity = LOCAL
    ) -> KeyRecord:
        """Add workspaces to a live agent key and remove others, at once for its next request. Admin only.

        Added workspaces must exist and the key keeps at least one (INVALID_ARGUMENT); NOT_FOUND if no such live key.
        """
        require_admin(caller, "changing a key")
        record = await update_key_workspaces(self.store, key_id, add_workspaces, remove_workspaces)
        log.info("key %s (agent %s) now reaches %s", record.key_id, record.agent, ",".join(record.workspaces))
        self.registry.changed_access()  # open streams of this key look again: a workspace may be gone from it
        return record

    # ------------------------------------------------------------------ locks

    def _lock_args(
        self, timeout: object, wait: object, note: object, request_id: object
    ) -> tuple[float, float, str | None, str | None]:
        t = check_seconds(
            timeout,
            "timeout",
            1,
            self.limits.max_timeout,
            "Pick a lease long enough for the work, then {op:renew_lock}.",
        )
        w = check_seconds(wait, "wait", 0, self.limits.max_wait, "Use wait=0 to fail at once when the file is locked.")
        rid = check_text(request_id, "request_id", 128)
        if rid is not None and not rid:
            raise InvalidArgument("request_id must not be empty.", details={"field": "request_id"})
        return t, w, check_text(note, "note", 1024, allow_newlines=True), rid

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
        who: Who,
    ) -> Granted:
        actor = self.registry.actor(ws)
        request = (owner, request_id)
        upgrade = False  # decided in the actor: only a read lease asked for "write" is upgraded
        revoked = self._revoked

        def step(table: LockTable, now: float) -> Granted | Waiting:
            nonlocal upgrade
            if revoked and who.key_id in revoked:
                # Authenticated before its key was revoked, here after: its locks were just released.
                raise _revoked_key(who.key_id)
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
        ws = await self.registry.known(workspace_id, caller)
        claim = Claim(check_node_id(node_id), check_mode(mode), check_depth(depth))
        t, w, n, rid = self._lock_args(timeout, wait, note, request_id)
        who = who_is(caller, agent)
        tok = check_token(token) if token is not None else None
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
        ws = await self.registry.known(workspace_id, caller)
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
                        check_mode(d.get("mode", "write"), f"items[{i}].mode"),
                        check_depth(d.get("depth", "node"), f"items[{i}].depth"),
                    )
                )
            else:
                claims.append(
                    Claim(
                        check_node_id(item.node_id, f"items[{i}].node_id"),
                        check_mode(item.mode, f"items[{i}].mode"),
                        check_depth(item.depth, f"items[{i}].depth"),
                    )
                )
        t, w, n, rid = self._lock_args(timeout, wait, note, request_id)
        who = who_is(caller, agent)
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
        ws = await self.registry.known(workspace_id, caller)
        tok = check_token(token)
        node = check_node_id(node_id) if node_id is not None else None
        as_key = who_is(caller, None).as_key
        lease, held_ms = await self.registry.actor(ws).call(lambda table, now: table.release(now, tok, node, as_key))
        return UnlockResult(workspace_id=ws, released=LockInfo.of(lease), held_ms=held_ms)

    async def unlock_many(
        self, workspace_id: object = None, tokens: object = None, *, caller: Identity = LOCAL
    ) -> UnlockFilesResult:
        """Release each token's lock; a bad token is reported in its place and does not stop the others."""
        ws = await self.registry.known(workspace_id, caller)
        as_key = who_is(caller, None).as_key
        if not isinstance(tokens, Sequence) or isinstance(tokens, str) or not tokens:
            raise InvalidArgument("tokens must be a list of 1 to 100 tokens.", details={"field": "tokens"})
        if len(tokens) > MAX_ITEMS:
            raise InvalidArgument(
                f"unlock_files takes at most {MAX_ITEMS} tokens (got {len(tokens)}).",
                details={"field": "tokens", "limit": MAX_ITEMS},
            )
        toks = [check_token(t, f"tokens[{i}]") for i, t in enumerate(tokens)]

        def step(table: LockTable, now: float) -> list[UnlockOutcome]:
            out: list[UnlockOutcome] = []
            for i, tok in enumerate(toks):
                try:
                    lease, held = table.release(now, tok, as_key=as_key)
                except LockError as e:
                    # The hint keeps its {op:} markers: each face says it in its own words (UnlockFilesResult.said).
                    text = f"{e.code}: {e.message}" + (f" {e.hint}" if e.hint else "")
                    out.append(UnlockOutcome(index=i, released=False, error_code=e.code, error=text))
                else:
                    out.append(
                        UnlockOutcome(
                            index=i, released=True, lock_id=lease.lock_id, node_id=lease.node_id, held_ms=held
                        )
                    )
            return out

        results = await self.registry.actor(ws).call(step)
        return UnlockFilesResult(workspace_id=ws, released=sum(r.released for r in results), results=results)

    async def force_unlock(
        self, workspace_id: object = None, lock_id: object = None, reason: object = None, *, caller: Identity = LOCAL
    ) -> UnlockResult:
        """Break someone's lock (admin only), recording who and why; its token then answers LOCK_BROKEN."""
        require_admin(caller, "force_unlock")
        ws = await self.registry.known(workspace_id, caller)
        if not isinstance(lock_id, str) or not lock_id or len(lock_id) > 64:
            raise InvalidArgument(
                "lock_id must be the lock_id of a held lock.",
                hint="{op:list_locks} and {op:check_lock_status} show lock ids.",
                details={"field": "lock_id"},
            )
        why = check_text(reason, "reason", 1024)
        if why is None or not why.strip():
            raise InvalidArgument(
                "reason must say why the lock is broken; its holder will read it.", details={"field": "reason"}
            )
        by = caller.agent or "local"
        lid = lock_id
        lease, held_ms = await self.registry.actor(ws).call(lambda table, now: table.force_release(now, lid, by, why))
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
        ws = await self.registry.known(workspace_id, caller)
        node = check_node_id(node_id) if node_id is not None else None
        as_key = who_is(caller, None).as_key
        tok = check_token(token)
        t = (
            None
            if timeout is None
            else check_seconds(timeout, "timeout", 1, self.limits.max_timeout, "Pick a lease long enough for the work.")
        )
        lease: Lease = await self.registry.actor(ws).call(lambda table, now: table.renew(now, tok, t, as_key, node))
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
        ws = await self.registry.known(workspace_id, caller)
        node = check_node_id(node_id)
        tok = check_token(token) if token is not None else None
        as_key = who_is(caller, None).as_key

        def step(table: LockTable, now: float) -> tuple[NodeStatus, Lease | LockError | None, float]:
            return table.status(now, node), table.holding(now, tok, as_key) if tok else None, now

        st, mine, now = await self.registry.actor(ws).call(step)
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
        ws = await self.registry.known(workspace_id, caller)
        pre = unicodedata.normalize("NFC", check_text(prefix, "prefix", 1024) or "")  # node ids are NFC
        own = check_text(owner, "owner", 64)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be an integer from 1 to 1000.", details={"field": "limit"})
        after = decode_cursor(cursor) if isinstance(cursor, str) and cursor else None
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidArgument("cursor must be a string.", details={"field": "cursor"})
        lim = limit
        leases, nxt = await self.registry.actor(ws).call(lambda table, now: table.page(now, pre, own, lim, after))
        return LockPage(
            workspace_id=ws,
            locks=[LockInfo.of(le) for le in leases],
            next_cursor=encode_cursor(nxt) if nxt else None,
        )

    async def overview(self, workspace_id: object = None, *, caller: Identity = LOCAL) -> WorkspaceOverview:
        """Every held lock and waiting claim of a workspace (the first 1000 of each), as of one instant."""
        ws = await self.registry.known(workspace_id, caller)

        def step(table: LockTable, now: float) -> tuple[list[Lease], bool, list[WaiterView], bool, float]:
            leases, nxt = table.page(now, limit=OVERVIEW_LIMIT)
            waiters, more = table.line(now, OVERVIEW_LIMIT)
            return leases, nxt is not None, waiters, more, now

        leases, more_locks, waiters, more_waiters, now = await self.registry.actor(ws).call(step)
        return WorkspaceOverview(
            workspace_id=ws,
            at=utc(now),
            locks=[LockInfo.of(le) for le in leases],
            waiters=[WaiterInfo.of(w) for w in waiters],
            truncated=more_locks or more_waiters,
        )
