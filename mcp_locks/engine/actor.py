"""One actor per workspace, modelled on a Cloudflare Durable Object."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar, cast

import anyio
import anyio.lowlevel

from mcp_locks.core.claims import Claim
from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import LockError, Unavailable
from mcp_locks.core.files import FileTable
from mcp_locks.core.records import (
    Event,
    FileMeta,
    FileOp,
    Granted,
    Lease,
    PutContent,
    Queued,
    Snapshot,
    StoreChange,
    TakeOutcome,
    WaiterOutcome,
)
from mcp_locks.core.table import Limits, LockTable
from mcp_locks.engine.disk import WorkspaceDisk
from mcp_locks.observe.events import EventHub
from mcp_locks.stores.base import SharedStore, Store

__all__ = ["Waiting", "WorkspaceActor"]

log = logging.getLogger("mcp_locks.actor")
T = TypeVar("T")

#: Seconds between catch-up steps of an actor whose callers wait in line on a shared store: the fallback
#: for a lost notification (a grant decided on another server is otherwise heard of within milliseconds).
POLL_INTERVAL = 1.0


def _not_in_place(node_id: str) -> Unavailable:
    return Unavailable(
        f"the change to '{node_id}' was committed but the file system refused to put it in place; the server"
        " retries with the next change to the workspace.",
        hint="Check {op:file_info} before retrying: its version says whether your change is the current one.",
        details={"node_id": node_id},
    )


class _Call(Generic[T]):
    __slots__ = ("error", "fn", "result")

    def __init__(self, fn: Callable[[LockTable, float], T]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: LockError | None = None


class _Batch:
    """The calls that will be applied and committed together; their callers share one event."""

    __slots__ = ("calls", "done")

    def __init__(self) -> None:
        self.calls: list[_Call[Any]] = []
        self.done = anyio.Event()


@dataclass(eq=False, slots=True)
class Waiting:
    """A place in line that one or more callers (a request and its retries) listen on."""

    waiter_id: int
    listeners: int = 0
    upgrade: bool = False
    request: tuple[str, str | None] = ("", None)  # (owner, request_id), forgotten if the grant is given back
    outcome: Granted | LockError | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class WorkspaceActor:
    """The only owner of one workspace's :class:`LockTable`.

    One task applies commands from a mailbox one at a time, commits what a
    batch of them changed as one store transaction (group commit), and only
    then answers the callers, so nothing is acknowledged before it is
    durable. It owns the timer: it sleeps until the next lease expiry or
    wait deadline, never polling, so a lease ends at its deadline and the
    waiters it frees are granted in the same step.

    It starts on first use (loading the table from the store) and stops after
    ``idle_timeout`` seconds with no command and nobody waiting; the caller
    of :meth:`run` then sets an alarm for the table's next deadline, as a
    Durable Object does, so expiries still happen on time.

    If a commit fails, the table is rebuilt from the store (which holds only
    what was committed) and every call of the failed batch gets UNAVAILABLE:
    nothing it did took effect.

    File writes ride the same batches: a write's metadata is committed with
    the batch, then its staged content is moved into place (one fsync per
    folder per batch), and only then are the callers answered, so no read
    runs between a commit and the rename it implies.
    """

    def __init__(
        self,
        workspace_id: str,
        store: Store,
        clock: Clock,
        *,
        limits: Limits,
        idle_timeout: float = 60.0,
        hub: EventHub | None = None,
        disk: WorkspaceDisk | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.store = store
        self.clock = clock
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.hub = hub
        self.table: LockTable | None = None
        self.disk = disk
        #: The workspace's file metadata, beside the lock table (see :class:`FileTable`).
        self.files = FileTable((), lambda node_id: None)
        #: Whether the workspace's folder ignores case (None: not asked yet; see _rebuild).
        self._case_insensitive: bool | None = None
        self._mailbox = _Batch()
        self._inflight: _Batch | None = None
        self.failed = False
        self._wake = anyio.Event()
        self._rearm = anyio.Event()
        self._timer_at: float | None = None
        self._waiting: dict[int, Waiting] = {}
        self._decided: list[Waiting] = []  # given an outcome in the current step, woken once it commits
        self.stopped = False
        self.next_deadline: float | None = None
        #: Other servers change this workspace too (a shared store): each step first catches up.
        self.shared = store.shared
        self._sync_wanted = False  # another server may have decided something for our waiters
        self._poll_at = math.inf
        self._skew = 0.0  # the database's clock minus ours (shared stores)
        self._extra: list[StoreChange] = []  # outcomes for other servers' waiters, and ours taken
        self._mine: frozenset[int] = frozenset()  # our waiters in the line as last loaded (shared stores)
        #: File content lives in the shared store: this server's folder is a copy it keeps up to date. Not for
        #: a workspace bound to a project folder: edits made there outside mcp-locks must never be overwritten,
        #: so every server must reach that folder itself.
        self.copies = self.shared and cast(SharedStore, store).content and not (disk is not None and disk.bound)
        self._check_copies = True  # after a load: compare every file's copy with its record (in the next step)

    # ------------------------------------------------------------------ callers

    async def call(
        self,
        fn: Callable[[LockTable, float], T],
        undo: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """Run ``fn(table, now)`` in the actor and return its result once committed.

        If the caller is cancelled meanwhile, the command still runs to its
        commit; ``undo`` then gets its result, to give back what nobody will
        ever receive (a grant whose token would be lost, a place in line).
        That holds too for a caller cancelled after its answer came back but
        before it took it: the cancellation then raises here, after ``undo``.
        """
        if self.stopped:
            raise Unavailable("this workspace is shutting down.", hint="Retry in a moment.")
        c: _Call[T] = _Call(fn)
        batch = self._mailbox
        batch.calls.append(c)
        self._wake.set()
        try:
            await batch.done.wait()
            if undo is not None and c.error is None:
                # A cancellation that came after the batch was done is not delivered by that wait (it had
                # ended): without this the answer would go up to a caller that can no longer take it.
                await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await batch.done.wait()
                if c.error is None and undo is not None:
                    await self._undo(undo, c.result)
            raise
        if c.error is not None:
            raise c.error
        return c.result  # type: ignore[no-any-return]

    async def _undo(self, undo: Callable[[T], Awaitable[None]], result: T) -> None:
        """Give back what a cancelled caller will never receive (shielded by the caller)."""
        try:
            await undo(result)
        except LockError as e:  # shutting down: the lease will expire on its own
            log.warning("could not give back an abandoned result in %s: %s", self.workspace_id, e.code)

    def queued(
        self, outcome: Granted | Queued, upgrade: bool = False, request: tuple[str, str | None] = ("", None)
    ) -> Granted | Waiting:
        """Inside a command: turn a Queued outcome into the place in line the caller will listen on."""
        if isinstance(outcome, Granted):
            return outcome
        w = self._waiting.get(outcome.waiter_id)
        if w is None:
            w = self._waiting[outcome.waiter_id] = Waiting(outcome.waiter_id, upgrade=upgrade, request=request)
        w.listeners += 1
        return w

    async def wait_for(self, w: Waiting) -> Granted:
        """Wait for a place in line to be granted (or fail); leaving the line if cancelled.

        A caller cancelled after its grant came back but before it took it gives the grant back too.
        """
        try:
            await w.done.wait()
            if isinstance(w.outcome, Granted):
                await anyio.lowlevel.checkpoint_if_cancelled()  # see call(): a late cancellation lands here
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                try:
                    await self.abandon(w)
                except LockError as e:  # shutting down: nothing left to leave
                    log.warning("could not leave the line in %s: %s", self.workspace_id, e.code)
            raise
        if isinstance(w.outcome, LockError):
            raise w.outcome
        assert isinstance(w.outcome, Granted)
        return w.outcome

    async def abandon(self, w: Waiting) -> None:
        """A listener went away: leave the line, or give back a grant nobody will receive."""

        def step(table: LockTable, now: float) -> None:
            w.listeners -= 1
            if w.listeners > 0:
                return
            if self._waiting.get(w.waiter_id) is w:
                # Still ours and still in line (a stale Waiting from before a rebuilt table is not).
                del self._waiting[w.waiter_id]
                if table.has_waiter(w.waiter_id):
                    table.cancel(now, w.waiter_id)
                    return
            if isinstance(w.outcome, Granted):
                self._give_back(table, now, w.outcome.leases, w.upgrade, w.request)

        await self._call_shielded(step)

    async def give_back(
        self, leases: tuple[Lease, ...], upgrade: bool = False, request: tuple[str, str | None] = ("", None)
    ) -> None:
        """Give back grants their caller never received (release them; undo an upgrade)."""
        await self._call_shielded(lambda table, now: self._give_back(table, now, leases, upgrade, request))

    @staticmethod
    def _give_back(
        table: LockTable, now: float, leases: tuple[Lease, ...], upgrade: bool, request: tuple[str, str | None]
    ) -> None:
        if table.seen_by_retry(*request):
            return  # a retry with the same request_id received this grant: it is not unseen
        table.forget_request(*request)  # a retry of this request_id is a new request, not a replay
        for le in leases:
            if table.lease(le.lock_id) is None:
                continue
            if upgrade:
                # The caller still believes it holds the read lock it asked to upgrade.
                table.acquire(
                    now, [Claim(le.node_id, "read", le.depth)], owner=le.owner, timeout=le.timeout, token=le.token
                )
            else:
                table.release(now, le.token)

    async def _call_shielded(self, fn: Callable[[LockTable, float], T]) -> T:
        with anyio.CancelScope(shield=True):
            result = await self.call(fn)
        return result

    # ------------------------------------------------------------------ loop

    @property
    def mailbox_depth(self) -> int:
        """Commands waiting for the next step."""
        return len(self._mailbox.calls)

    @property
    def busy(self) -> bool:
        """Whether commands are queued or callers wait in line."""
        return bool(self._mailbox.calls or self._waiting)

    async def _load(self, first_waiter_id: int = 1) -> LockTable:
        snap = await self.store.load(self.workspace_id)
        self._check_copies = True  # (shared stores) a load may follow a failed step: look at every copy again
        return await self._rebuild(snap, first_waiter_id, None, sweep=True)

    async def _rebuild(self, snap: Snapshot, first_waiter_id: int, old: LockTable | None, *, sweep: bool) -> LockTable:
        """A table (and file records) from ``snap``; a catch-up snapshot (``delta``) is merged into ``old``'s."""
        disk = self.disk
        if self._case_insensitive is None:  # asked of the folder once (a file is made and looked up: a thread)
            self._case_insensitive = (
                await anyio.to_thread.run_sync(lambda: disk.case_insensitive) if disk is not None else False
            )
        table = LockTable(
            self.workspace_id,
            limits=self.limits,
            fence_next=snap.fence_next,
            fence_reserved=snap.fence_reserved,
            first_waiter_id=max(first_waiter_id, snap.next_waiter),
            case_insensitive=self._case_insensitive,
        )
        table.track_waiters = self.shared
        self._mine = snap.mine
        if snap.delta and old is not None:
            table.restore(snap.leases, (), (), snap.waiters)
            table.carry_memory(old, snap.ended, snap.requests, snap.dropped)
        else:
            table.restore(snap.leases, snap.ended, snap.requests, snap.waiters)
        if old is not None:
            table.retired = old.retired  # a workspace being deleted stays so
        if self.hub is not None:
            self.hub.loaded(self.workspace_id, snap.event_seq, self.clock.now())
        if disk is not None:
            metas = snap.files
            if snap.delta:
                merged = {m.node_id: m for m in self.files.records()}
                merged.update((m.node_id, m) for m in snap.files)
                metas = list(merged.values())
            files = FileTable(metas, disk.probe, case_insensitive=self._case_insensitive)
            pending = files.pending()
            try:
                if pending:
                    # A crash between a commit and its rename left staged content: move it in now.
                    redone = await anyio.to_thread.run_sync(disk.recover, pending)
                    if redone:
                        log.warning("finished %d interrupted file change(s) in %s", redone, self.workspace_id)
                if sweep:
                    # Staged files no record names are writes that never committed (a failed batch, a crash).
                    keep = {m.pending for m in pending if m.pending}
                    await anyio.to_thread.run_sync(disk.sweep, keep)
            except Exception:
                # The locks need no disk: they keep working; file calls report the disk's state themselves.
                log.exception("could not tidy the file store of %s", self.workspace_id)
            self.files = files
        return table

    async def run(self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the table until idle (or cancelled)."""
        try:
            self.table = await self._load()
        except Exception:
            log.exception("could not load workspace %s", self.workspace_id)
            self.failed = True
            self.stopped = True
            self._fail_all(Unavailable("the lock store could not be read.", hint="Retry in a few seconds."))
            task_status.started()
            return
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._timer)
                await self._loop()
                tg.cancel_scope.cancel()
        finally:
            self.stopped = True
            if self.shared:  # cancelled mid-step: let go of the workspace (no-op if this server holds none)
                await self._end(ok=False)
            self._fail_all(Unavailable("the server is shutting down.", hint="Retry against the restarted server."))

    def _fail_all(self, err: LockError) -> None:
        batch, self._mailbox = self._mailbox, _Batch()
        for b in (self._inflight, batch):  # a batch cut short (cancelled mid-commit) is answered too
            if b is not None and not b.done.is_set():
                for c in b.calls:
                    c.result, c.error = None, err
                b.done.set()
        self._inflight = None
        for w in self._waiting.values():
            if w.outcome is None:
                w.outcome = err
            w.done.set()
        self._waiting.clear()
        self._decided.clear()

    def poke(self) -> None:
        """Another server changed the workspace: catch up soon if callers wait here (it may have served them)."""
        if self._waiting and not self.stopped:
            self._sync_wanted = True
            self._wake.set()

    async def _loop(self) -> None:
        idle_since = self.clock.now()
        while True:
            # Deadlines are in the store's clock when it has one (shared stores): ours plus the measured skew.
            now = self.clock.now() + self._skew
            table = self.table
            assert table is not None
            deadline = table.next_deadline()
            if self.shared and self._waiting and now >= self._poll_at:
                self._sync_wanted = True
            if not self._mailbox.calls and not self._sync_wanted and (deadline is None or deadline > now):
                if not self._waiting and now - idle_since >= self.idle_timeout:
                    # No await between this check and returning: nothing can slip into the mailbox.
                    self.next_deadline = deadline
                    self.stopped = True
                    return
                wake_at = deadline
                if not self._waiting:
                    idle_at = idle_since + self.idle_timeout
                    wake_at = idle_at if wake_at is None else min(wake_at, idle_at)
                elif self.shared:
                    wake_at = self._poll_at if wake_at is None else min(wake_at, self._poll_at)
                self._wake = anyio.Event()
                self._arm(None if wake_at is None else wake_at - self._skew)
                await self._wake.wait()
                continue
            await self._step()
            idle_since = self.clock.now() + self._skew

    def _arm(self, when: float | None) -> None:
        """Make sure the timer wakes the loop by ``when`` (a later time already armed is brought forward)."""
        if when is not None and (self._timer_at is None or when < self._timer_at):
            self._timer_at = when
            self._rearm.set()

    async def _timer(self) -> None:
        # The timer lives in its own task so the loop's idle wait is a plain event wait:
        # a timed wait (cancel scope + timer handle) per command cost ~20% of a lone call.
        # It may wake the loop early (after the armed deadline moved later); the loop re-arms.
        while True:
            self._rearm = anyio.Event()
            target = self._timer_at
            await self.clock.wait(self._rearm, target)
            if target is not None and self._timer_at == target and self.clock.now() >= target:
                self._timer_at = None
                self._wake.set()

    async def _step(self) -> None:
        pending, self._mailbox = self._mailbox, _Batch()
        self._inflight = pending
        if self.shared:
            self._sync_wanted = False
            try:
                now = await self._begin()
            except Exception as e:
                log.warning("could not begin a step in %s: %s", self.workspace_id, e)
                await self._end(ok=False)
                await self._recover(pending, e if isinstance(e, LockError) else None)
                return
            self._poll_at = now + POLL_INTERVAL
        else:
            now = self.clock.now()
        table = self.table
        assert table is not None
        batch = pending.calls
        broken = False
        ended = 0
        part = None if self.shared else self.limits.expire_batch
        try:
            ended = table.expire(now, part)
            self._take_outcomes(table, now)
        except Exception:
            log.exception("expiry failed in %s", self.workspace_id)
            broken = True
        if not broken and part is not None and ended >= part:
            broken = await self._expire_rest(table, now, part, ended)
        files = self.files
        # The call that recorded each file op, in order (None: an op carried over from a failed apply).
        op_calls: list[_Call[Any] | None] = [None] * len(files.ops)
        for c in batch:
            if broken:
                break
            before = len(files.ops)
            try:
                c.result = c.fn(table, now)
            except LockError as e:
                c.error = e
            except Exception:
                log.exception("command failed in %s", self.workspace_id)
                broken = True
                break
            if len(files.ops) > before:  # a file change: remember whose, in case the disk refuses it
                op_calls.extend([c] * (len(files.ops) - before))
            try:
                self._take_outcomes(table, now)
            except Exception:
                log.exception("delivering outcomes failed in %s", self.workspace_id)
                broken = True
        changes, table.changes = table.changes, []
        events, table.events = table.events, []
        extra: list[StoreChange] = []
        first = 0
        if not broken:
            first, extra = self._log(events)
        if self.copies and files.ops and self.disk is not None and not broken:
            disk = self.disk  # the content of each write goes into the same transaction as its record
            extra += [PutContent(op.node_id, partial(disk.open_staged, op.staged)) for op in files.ops if not op.delete]
        took = 0.0
        if not broken and (changes or extra or self.shared):  # a shared store's step ends with its commit
            try:
                started = time.perf_counter()
                await self.store.commit(self.workspace_id, [*changes, *extra] if extra else changes)
                took = time.perf_counter() - started
            except Exception:
                log.exception("commit failed in %s", self.workspace_id)
                broken = True
        ops: list[FileOp] = files.take_ops() if files.ops else []
        if not broken and ops and self.disk is not None:
            try:
                failed = await anyio.to_thread.run_sync(self.disk.apply, ops)
            except Exception:
                log.exception("applying file changes failed in %s", self.workspace_id)
                failed = list(range(len(ops)))
            # Committed, so every other call's result stands. A change that could not be put in place
            # stays pending: later steps read it from its staged file, and the next batch retries it.
            for i in failed:
                owner = op_calls[i]
                if owner is not None:
                    owner.result, owner.error = None, _not_in_place(ops[i].node_id)
            files.applied([op for i, op in enumerate(ops) if i not in failed], table)
            files.carry([ops[i] for i in failed])
        if self.shared:
            await self._end(ok=not broken)  # only now: no other server reads the files before they are in place
        if broken:
            await self._recover(pending)
            return
        if self.hub is not None and (events or took):
            self.hub.committed(self.workspace_id, events, first, took)
        pending.done.set()
        self._inflight = None
        self._answer_decided()

    async def _expire_rest(self, table: LockTable, now: float, part: int, ended: int) -> bool:
        """An expiry storm: the table ended ``ended`` (at least ``part``) leases; more may be due: end them in parts.

        Each part is committed and its waiters answered before the next, with a pause for the event
        loop between, so one workspace's storm does not stall every other call the server has (one
        commit of 100,000 ends and grants holds the loop for seconds). The step's own calls run after
        the whole storm. (A shared store's step ends with its one commit, so there a storm stays one
        part.) Logs one warning per storm: it means the server was paused or its clock stepped.
        Returns whether the step is broken.
        """
        started_at, parts = time.perf_counter(), 1
        while True:
            due = table.next_deadline()
            if due is None or due > now:
                log.warning(
                    "expiry storm in %s: %d leases were due at once (was the server paused, or its clock stepped?);"
                    " ended in %d part(s) of up to %d in %.2f s",
                    self.workspace_id,
                    ended,
                    parts,
                    part,
                    time.perf_counter() - started_at,
                )
                return False
            events, table.events = table.events, []
            changes, table.changes = table.changes, []
            first, extra = self._log(events)
            try:
                started = time.perf_counter()
                await self.store.commit(self.workspace_id, [*changes, *extra])
                took = time.perf_counter() - started
            except Exception:
                log.exception("commit failed in %s", self.workspace_id)
                return True
            if self.hub is not None:
                self.hub.committed(self.workspace_id, events, first, took)
            self._answer_decided()
            await anyio.lowlevel.checkpoint()
            try:
                ended += table.expire(now, part)
                parts += 1
                self._take_outcomes(table, now)
            except Exception:
                log.exception("expiry failed in %s", self.workspace_id)
                return True

    def _log(self, events: list[Event]) -> tuple[int, list[StoreChange]]:
        """The store changes that ride a commit besides the table's: the events' audit segment, and ``_extra``."""
        first = 0
        extra: list[StoreChange] = []
        if events and self.hub is not None:
            # The events' audit segment (also the webhooks' outbox) rides the same transaction.
            first, logged = self.hub.stamp(self.workspace_id, events)
            extra = [*logged]
        if self._extra:
            extra += self._extra
            self._extra = []
        return first, extra

    def _answer_decided(self) -> None:
        """Wake the waiters decided since the last commit (now durable)."""
        decided, self._decided = self._decided, []
        for w in decided:  # only those decided in this step: not a walk over everyone in line
            if self._waiting.get(w.waiter_id) is w:
                del self._waiting[w.waiter_id]
                w.done.set()

    def _take_outcomes(self, table: LockTable, now: float) -> None:
        while table.outcomes:
            outcomes, table.outcomes = table.outcomes, []
            for wid, outcome in outcomes:
                w = self._waiting.get(wid)
                if w is not None:
                    w.outcome = outcome
                    self._decided.append(w)
                elif self.shared:  # another server's waiter: that server answers it
                    self._extra.append(WaiterOutcome(wid, outcome))
                elif isinstance(outcome, Granted):  # pragma: no cover - every waiter has a listener
                    self._give_back(table, now, outcome.leases, False, ("", None))

    # ------------------------------------------------------------------ shared stores

    async def _begin(self) -> float:
        """Take the workspace across the cluster and catch up with what other servers did; returns ``now``."""
        begun = await cast(SharedStore, self.store).begin(self.workspace_id)
        local = self.clock.now()
        now = begun.now if begun.now is not None else local
        self._skew = now - local
        snap = begun.snapshot
        table = self.table
        assert table is not None
        if snap is not None:
            table = self.table = await self._rebuild(snap, table.next_waiter_id, table, sweep=False)
        if self.copies:
            if self._check_copies:
                await self._copy_files(self.files.records())
                self._check_copies = False
            elif snap is not None and snap.files:
                # What other servers wrote since this one last looked: copied whatever the disk shows.
                await self._copy_files(snap.files, changed=snap.delta)
        if self._mine:
            # Our waiters whose callers were answered while a step failed (or a previous actor stopped):
            # nobody listens for them here any more, so they leave the line.
            for wid in self._mine - self._waiting.keys():
                table.cancel(now, wid)
            self._mine = frozenset()
        if snap is None:
            return now
        for wid, w in self._waiting.items():
            outcome = begun.outcomes.pop(wid, None)
            if outcome is not None:  # another server served (or timed out) our waiter
                w.outcome = outcome
                self._decided.append(w)
                self._extra.append(TakeOutcome(wid))
            elif not table.has_waiter(wid) and w.outcome is None:
                w.outcome = Unavailable(
                    "this request's place in line was lost (the workspace was deleted, or this server lost the"
                    " database for a while).",
                    hint="Retry the call.",
                )
                self._decided.append(w)
        for wid, outcome in begun.outcomes.items():  # decided for callers who are gone: give back their grants
            self._extra.append(TakeOutcome(wid))
            if isinstance(outcome, Granted):
                self._give_back(table, now, outcome.leases, False, ("", None))
        table.regrant(now)  # waiters of a server that died may have left the line
        self._take_outcomes(table, now)
        return now

    async def _copy_files(self, metas: list[FileMeta], *, changed: bool = False) -> None:
        """Bring this server's copies of ``metas`` up to date from the store (inside a step: nobody writes meanwhile).

        A copy gets its record's size, content hash and mtime, so reads see it as the version the record
        names. Without ``changed``, a copy whose size and mtime already match its record is left as it
        is (every version has a precise mtime of its own); with it, every record is known to be newer
        than this server's copy. A copy that cannot be made is logged; reads of that file then answer
        UNAVAILABLE until a later step makes it.
        """
        disk = self.disk
        if disk is None:
            return
        store = cast(SharedStore, self.store)

        def stale() -> list[FileMeta]:  # one trip to a worker thread for all the stat calls
            out = []
            for m in metas:
                try:
                    found = disk.probe(m.node_id)
                except LockError as e:  # this one path cannot be looked at: the others still can
                    log.error("cannot look at '%s' in %s: %s", m.node_id, self.workspace_id, e.code)
                    continue
                here = found is not None and found.kind == "file"
                if m.deleted:
                    if here:
                        out.append(m)
                elif changed or not here or found is None or (found.size, found.mtime_ns) != (m.size, m.mtime_ns):
                    out.append(m)  # missing, or not the version the record names
            return out

        for m in await anyio.to_thread.run_sync(stale):
            if m.deleted:
                marker = await anyio.to_thread.run_sync(disk.marker)
                await anyio.to_thread.run_sync(disk.apply, [FileOp(m.node_id, marker, True)])
                continue
            f = await anyio.to_thread.run_sync(disk.staging)
            try:
                async for chunk in store.read_content(self.workspace_id, m.node_id):
                    await anyio.to_thread.run_sync(f.write, chunk)
                staged = await anyio.to_thread.run_sync(f.finish)
            except LockError as e:  # no content for it in the store
                await anyio.to_thread.run_sync(f.discard)
                log.error("cannot copy '%s' in %s: %s", m.node_id, self.workspace_id, e.code)
                continue
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(f.discard)
                raise
            if (staged.size, staged.sha256) != (m.size, m.sha256):
                await anyio.to_thread.run_sync(disk.discard, staged.name)
                log.error("the stored content of '%s' in %s does not match its record", m.node_id, self.workspace_id)
                continue
            await anyio.to_thread.run_sync(disk.set_mtime, staged.name, m.mtime_ns)
            await anyio.to_thread.run_sync(disk.apply, [FileOp(m.node_id, staged.name, False)])

    async def _end(self, ok: bool) -> None:
        """Give the workspace back to the cluster (rolling back what was not committed)."""
        try:
            with anyio.CancelScope(shield=True):
                await cast(SharedStore, self.store).end(self.workspace_id, ok)
        except Exception as e:
            log.warning("could not end a step in %s: %s", self.workspace_id, e)

    async def _recover(self, batch: _Batch, error: LockError | None = None) -> None:
        err = error or Unavailable(
            "the lock store could not commit this change; nothing in it took effect.",
            hint="Retry in a few seconds; locks committed before are unchanged.",
        )
        self._extra = []
        for c in batch.calls:
            c.result, c.error = None, err
        batch.done.set()
        for w in self._waiting.values():
            w.outcome = err
            w.done.set()
        self._waiting.clear()
        self._decided.clear()
        old = self.table
        try:
            self.table = await self._load(first_waiter_id=old.next_waiter_id if old is not None else 1)
            self.table.retired = old is not None and old.retired  # a workspace being deleted stays so
        except Exception:
            self.failed = True
            raise
