"""Pushed lease loss: a guarded block hears within a second that its lock was broken, expired or released.

Renewal alone notices a lost lease only at the next renewal, a third of the lease later. So while a
client holds guarded leases (``lock``, ``lock_many``) it also follows the events the server already
sends, and cancels a block as soon as one of them says its lease ended:

* over REST, the workspace's event stream (``GET /v1/workspaces/{w}/events``): a ``broken``,
  ``expired`` or ``released`` event whose ``lock_id`` is the lease's (events never carry tokens; the
  lock id names exactly one lease, so another holder's lease on the same node is never touched);
* over MCP (:mod:`mcp_locks.client.mcp`), updates of the leases' node resources
  (``subscriptions/listen``, or ``resources/subscribe`` in a 2025-era session): an update only says
  "this node changed", so the client then asks ``check_lock_status`` with each lease's token there.

One stream per client (per workspace over REST), shared by all its held leases: opened lazily when the
first guarded lease starts, closed when the last one ends, reconnected with bounded backoff. Every
(re)connection checks each held lease once with ``check_lock_status``, so an end that happened while
no stream was open is not lost. Renewal stays the fallback: a server that refuses the stream (or has
none) leaves the client on renewal alone, which it says at debug level.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import anyio.abc
import httpx2

from mcp_locks.client.errors import error_of
from mcp_locks.core.errors import (
    ERROR_TABLE,
    LockBroken,
    LockError,
    LockExpired,
    LockNotFound,
    Unauthenticated,
)

if TYPE_CHECKING:
    from mcp_locks.client.rest import Lease, LockClient

__all__ = ["LOSS_KINDS", "Guard", "LeasePush", "RestPush", "loss_of"]

log = logging.getLogger("mcp_locks.client")

#: Event kinds that end a lease (``released`` by someone else: only a holder of its token can).
LOSS_KINDS = frozenset({"broken", "expired", "released"})
#: First pause before reconnecting a dropped stream; it doubles after each failed try ...
FIRST_PAUSE = 0.1
#: ... up to this (seconds): a server that is down is asked again at least this often.
LONGEST_PAUSE = 10.0
#: A connection that lasted this long (seconds) worked: the next reconnect starts from FIRST_PAUSE again.
STEADY = 1.0
#: Most reconnects of one stream (at LONGEST_PAUSE apiece, days of trying).
MAX_RECONNECTS = 100_000
#: Ends of leases not followed yet, remembered per stream (an event may arrive before its grant's answer).
REMEMBERED_ENDS = 256
#: The stream's timeouts: the server sends a keep-alive comment every 15 s, so 60 s of silence is a dead link.
STREAM_TIMEOUT = httpx2.Timeout(30, read=60)

#: The hint of every pushed loss.
_AGAIN = (
    "Stop writing under this lock: another agent may hold the node now. Take the lock again with"
    " {op:lock_file}, re-read the file, and redo the change."
)


class NoStream(Exception):
    """The server offers no stream to follow (or refuses it): the client keeps to renewal."""


@dataclass(eq=False)
class Guard:
    """One guarded block: its leases, the scope its body runs in, and what it lost."""

    leases: list[Lease]
    body: anyio.CancelScope
    #: The leases lost under the block, first first, each with why.
    lost: list[tuple[Lease, LockError]] = field(default_factory=list)
    #: Leases the server said are over (``id(lease)``): the block's exit does not release them.
    definite: set[int] = field(default_factory=set)

    def lose(self, lease: Lease, err: LockError, *, definite: bool) -> None:
        """Record that ``lease`` ended (the first word on it wins) and cancel the body at its next await."""
        if definite:
            self.definite.add(id(lease))
        if lease.lost is not None:
            return
        lease.lost = err
        self.lost.append((lease, err))
        self.body.cancel()


def _when(at: object) -> str:
    """An event's time as the server's refusals say it (UTC, to the second)."""
    try:
        return datetime.fromisoformat(str(at)).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return str(at)


def loss_of(event: dict[str, Any]) -> LockError:
    """The error a ``broken``, ``expired`` or ``released`` event means for the lease it names."""
    lock_id, node, kind, at = event.get("lock_id"), event.get("node_id"), event.get("kind"), _when(event.get("at"))
    details: dict[str, Any] = {"lock_id": lock_id, "node_id": node, "ended_at": at}
    if kind == "broken":
        by, why = event.get("by"), event.get("reason")
        return LockBroken(
            f"lock {lock_id} on '{node}' was broken by '{by}' at {at}: {why}",
            hint=_AGAIN,
            details={**details, "broken_by": by, "reason": why},
        )
    if kind == "expired":
        return LockExpired(
            f"lock {lock_id} on '{node}' expired at {at}; its lease was not renewed in time.",
            hint=_AGAIN,
            details={**details, "expired_at": at},
        )
    return LockNotFound(
        f"lock {lock_id} on '{node}' was released at {at} by someone else holding its token.",
        hint=_AGAIN,
        details=details,
    )


@dataclass(eq=False)
class Topic:
    """One stream and what it follows: a workspace's (REST), or the client's one (MCP)."""

    name: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: How many followed leases it covers; it stops at zero.
    count: int = 0
    #: Lock ids to check once, now (the checker's work), and what wakes the checker.
    pending: set[str] = field(default_factory=set)
    wake: anyio.Event = field(default_factory=anyio.Event)
    #: Lock ids to check once their stream covers them (MCP: once their node is subscribed).
    awaiting: set[str] = field(default_factory=set)
    #: Set when the followed leases change, or the stream died: what the follower waits on.
    changed: anyio.Event = field(default_factory=anyio.Event)
    live: bool = False
    dead: bool = False
    #: REST: the last event's seq (to resume from), and ends of leases not followed yet.
    last: int | None = None
    recent: OrderedDict[str, LockError] = field(default_factory=OrderedDict)

    def check(self, lock_ids: set[str]) -> None:
        """Have the checker look at these leases once."""
        if lock_ids:
            self.pending |= lock_ids
            self.wake.set()

    def changes(self) -> anyio.Event:
        """A fresh event for the follower to wait on (set by the next change)."""
        self.changed = anyio.Event()
        return self.changed


class LeasePush:
    """Follows the held leases of one client and pushes their loss to their blocks.

    Subclasses say which stream covers a lease (:meth:`topic_of`) and how to follow it (:meth:`follow`).
    """

    def __init__(self, client: LockClient) -> None:
        self.client = client
        self._held: dict[str, tuple[Lease, Guard]] = {}  # lock_id -> the lease and its block
        self._topics: dict[str, Topic] = {}
        #: Connections made so far (any stream): a guarded lock call notes it before asking for its grant.
        self.connects = 0

    # ------------------------------------------------------------------ what subclasses say

    def topic_of(self, lease: Lease) -> str:
        """The stream that covers ``lease``."""
        raise NotImplementedError

    async def follow(self, t: Topic) -> None:
        """Follow one connection of ``t``'s stream until it ends (:meth:`connected` once it is live)."""
        raise NotImplementedError

    def added(self, t: Topic, lock_id: str, since: int) -> None:
        """A lease ``t`` covers starts being followed; ``since``: :attr:`connects` before its grant was asked."""

    # ------------------------------------------------------------------ the held leases

    def add(self, guard: Guard, since: int) -> None:
        """Follow ``guard``'s leases (its block is about to start)."""
        for lease in guard.leases:
            t = self._topics.get(self.topic_of(lease)) or self._start(self.topic_of(lease))
            if lease.lock_id not in self._held:
                t.count += 1
            self._held[lease.lock_id] = (lease, guard)
            early = t.recent.pop(lease.lock_id, None)
            if early is not None:  # its end came on the stream before its grant's answer did
                guard.lose(lease, early, definite=True)
            else:
                self.added(t, lease.lock_id, since)

    def remove(self, guard: Guard) -> None:
        """Stop following ``guard``'s leases (its block ended); a stream with nothing left to follow stops."""
        for lease in guard.leases:
            entry = self._held.get(lease.lock_id)
            if entry is not None and entry[1] is guard:
                self.forget(lease.lock_id)

    def forget(self, lock_id: str) -> None:
        """Stop following one lease (this client releases it: its ``released`` event is no loss)."""
        entry = self._held.pop(lock_id, None)
        if entry is None:
            return
        name = self.topic_of(entry[0])
        t = self._topics[name]
        t.count -= 1
        t.pending.discard(lock_id)
        t.awaiting.discard(lock_id)
        if t.count <= 0:
            t.scope.cancel()
            del self._topics[name]
        else:
            t.changed.set()

    def forget_tokens(self, tokens: list[str]) -> None:
        """:meth:`forget` the followed leases with these tokens."""
        gone = set(tokens)
        for lock_id in [lock_id for lock_id, (lease, _) in self._held.items() if lease.token in gone]:
            self.forget(lock_id)

    def close(self) -> None:
        """Stop every stream (the client is closing)."""
        for t in self._topics.values():
            t.scope.cancel()
        self._topics.clear()
        self._held.clear()

    def lock_ids(self, t: Topic) -> set[str]:
        """The followed leases ``t`` covers."""
        return {lock_id for lock_id, (lease, _) in self._held.items() if self.topic_of(lease) == t.name}

    # ------------------------------------------------------------------ what a stream says

    def connected(self, t: Topic) -> None:
        """``t``'s stream is live: check each lease it covers once (an end may have come while it was not)."""
        t.live = True
        self.connects += 1
        t.awaiting.clear()
        t.check(self.lock_ids(t))

    def ended(self, t: Topic, lock_id: str, err: LockError) -> None:
        """The server says lease ``lock_id`` ended: its block stops (or, not followed yet, it is remembered)."""
        entry = self._held.get(lock_id)
        if entry is not None:
            entry[1].lose(entry[0], err, definite=True)
            return
        t.recent[lock_id] = err
        while len(t.recent) > REMEMBERED_ENDS:
            t.recent.popitem(last=False)

    def lose_all(self, t: Topic, err: LockError) -> None:
        """Every lease ``t`` covers is lost (the key no longer works: it was revoked)."""
        for lease, guard in list(self._held.values()):
            if self.topic_of(lease) == t.name:
                guard.lose(lease, err, definite=True)

    # ------------------------------------------------------------------ the stream's task

    def _start(self, name: str) -> Topic:
        t = self._topics[name] = Topic(name)
        self.client._entered().start_soon(self._run, t)
        return t

    async def _run(self, t: Topic) -> None:
        with t.scope:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._checker, t)
                    await self._follow_on(t)
                    tg.cancel_scope.cancel()
            except Exception:  # never into the client's task group: renewal still guards the leases
                log.debug("lease-loss stream %r failed; renewal only", t.name, exc_info=True)

    async def _follow_on(self, t: Topic) -> None:
        """Follow ``t``'s stream, reconnecting after a drop with a growing pause, until it is refused or stopped."""
        pause = FIRST_PAUSE
        for _ in range(MAX_RECONNECTS):
            t.live = t.dead = False
            began = anyio.current_time()
            try:
                await self.follow(t)
                why = "it ended"
            except Unauthenticated as e:  # the key no longer works (revoked): nothing it held is held
                self.lose_all(t, e)
                return
            except LockError as e:
                if e.http_status < 500 and e.http_status != 429:
                    log.debug("no lease-loss stream for %r (%s); renewal only", t.name, e.code)
                    return
                why = e.code
            except NoStream as e:
                log.debug("no lease-loss stream for %r (%s); renewal only", t.name, e)
                return
            except Exception as e:  # a dropped link, a proxy's junk: reconnect
                why = repr(e)
            if t.live and anyio.current_time() - began >= STEADY:
                pause = FIRST_PAUSE
            log.debug("lease-loss stream for %r dropped (%s); reconnecting in %.1f s", t.name, why, pause)
            await anyio.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)

    async def _checker(self, t: Topic) -> None:
        """Check what ``t.pending`` names, a batch at a time; a batch's losses land together."""
        while True:
            await t.wake.wait()
            t.wake = anyio.Event()
            batch = [self._held[i] for i in sorted(t.pending) if i in self._held]
            t.pending.clear()
            found: list[tuple[Lease, Guard, LockError]] = []
            async with anyio.create_task_group() as tg:
                for lease, guard in batch:
                    tg.start_soon(self._check_one, lease, guard, found)
            for lease, guard, err in found:
                if self._held.get(lease.lock_id) == (lease, guard):  # not released by its block meanwhile
                    guard.lose(lease, err, definite=True)

    async def _check_one(self, lease: Lease, guard: Guard, found: list[tuple[Lease, Guard, LockError]]) -> None:
        err = await self._still_held(lease)
        if err is not None:
            found.append((lease, guard, err))

    async def _still_held(self, lease: Lease) -> LockError | None:
        """Why ``lease`` is over, by ``check_lock_status`` with its token; None if held or if the server cannot say."""
        try:
            status = await self.client.status(lease.node_id, lease=lease)
        except Unauthenticated as e:
            return e
        except LockError as e:  # busy or unreachable: renewal will tell
            log.debug("could not check lock %s: %s", lease.lock_id, e.code)
            return None
        yours = status.get("yours") or {}
        if yours.get("held", True):
            return None
        code, message = yours.get("code"), yours.get("message")
        cls = ERROR_TABLE.get(code, LockNotFound) if isinstance(code, str) else LockNotFound
        text = message if isinstance(message, str) else f"lock {lease.lock_id} on '{lease.node_id}' is not held."
        return cls(text, hint=_AGAIN, details={"lock_id": lease.lock_id, "node_id": lease.node_id})


class RestPush(LeasePush):
    """Follows each workspace's REST event stream (one per workspace the client holds guarded leases in)."""

    def topic_of(self, lease: Lease) -> str:
        """A stream per workspace."""
        return lease.workspace_id

    def added(self, t: Topic, lock_id: str, since: int) -> None:
        """Covered by the stream from now on; checked once only if it (re)connected while the grant came."""
        # The stream was (re)connected while the grant was on its way: the end may have come before.
        if t.live and self.connects != since:
            t.check({lock_id})

    async def follow(self, t: Topic) -> None:
        """Read the workspace's events (resuming after the last one seen) until the stream ends."""
        headers = {"Last-Event-ID": str(t.last)} if t.last is not None else {}
        path = f"/v1/workspaces/{quote(t.name, safe='')}/events"
        async with self.client._http.sse(path, headers=headers, timeout=STREAM_TIMEOUT) as source:
            response = source.response
            if not response.is_success:
                await response.aread()
                try:
                    body = response.json()
                except ValueError:
                    body = None
                raise error_of(response.status_code, body)
            log.debug("lease loss in workspace %r is pushed by its event stream", t.name)
            self.connected(t)
            async for sse in source:
                try:
                    event = json.loads(sse.data)
                except ValueError:  # not an event of ours (a block with no data, say): nothing to follow
                    continue
                if not isinstance(event, dict):
                    continue
                if isinstance(event.get("seq"), int):
                    t.last = event["seq"]
                lock_id = event.get("lock_id")
                if event.get("kind") in LOSS_KINDS and isinstance(lock_id, str):
                    self.ended(t, lock_id, loss_of(event))
