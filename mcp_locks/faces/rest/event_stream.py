"""The live event stream: a workspace's events as server-sent events, resumable, a few per key.

The limits are module constants so that a test can shorten them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from mcp_locks.core.errors import InvalidArgument, LimitExceeded
from mcp_locks.core.keys import Identity
from mcp_locks.core.models import AuditEvent
from mcp_locks.core.records import Event
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.auth import Access
from mcp_locks.faces.rest.operation import Call
from mcp_locks.observe.events import MARK, EventHub

__all__ = ["HELLO", "KEEPALIVE", "MAX_STREAMS_PER_KEY", "RECHECK_ACCESS", "RETRY_LOOK", "stream_events"]

log = logging.getLogger("mcp_locks.rest")

#: Seconds between keep-alive comments on an event stream.
KEEPALIVE = 15
#: Most event streams one key may hold open at once.
MAX_STREAMS_PER_KEY = 16
#: Seconds between checks that an open event stream's key is still live and still reaches its workspace, on
#: top of the check each access change on this server triggers at once (a fallback).
RECHECK_ACCESS = 15.0
#: Seconds before a look at the key that the store could not answer is tried again (the stream holds meanwhile).
RETRY_LOOK = 1.0
#: What a stream sends at once, before any event, so a client on a quiet workspace sees it is connected.
#: A comment, not a lone ``retry:`` field: some clients (httpx-sse) hand a block without data to the
#: caller as an event with empty data.
HELLO = ServerSentEvent(comment="connected")

Live = MemoryObjectReceiveStream[tuple[str, Event]]


async def stream_events(service: LockService, open_streams: dict[str, int], call: Call) -> Response:
    """The workspace's events from the one after Last-Event-ID (else from now), counted in ``open_streams``."""
    ws = await service.known_workspace(call.params["workspace_id"], call.caller)
    after = _resume_after(call.request)
    who = call.caller.key_id or "local"
    if open_streams.get(who, 0) >= MAX_STREAMS_PER_KEY:
        raise LimitExceeded(
            f"this key already has {MAX_STREAMS_PER_KEY} event streams open.",
            hint="Close one (one stream per workspace is enough), or use another key.",
            details={"limit": MAX_STREAMS_PER_KEY},
        )
    feed = _counted(open_streams, who, _event_feed(service, ws, after, call.caller))
    return EventSourceResponse(feed, ping=KEEPALIVE, headers={"Cache-Control": "no-store"})


def _resume_after(request: Request) -> int | None:
    """The seq to resume after: the ``Last-Event-ID`` header, else ``?after``; None for live events only."""
    last = request.headers.get("last-event-id") or request.query_params.get("after")
    if last is None:
        return None
    last = last.strip()
    if not (last.isascii() and last.isdigit()) or len(last) > 18:
        raise InvalidArgument("Last-Event-ID must be the id of an event this stream sent (an integer).",
                              details={"field": "Last-Event-ID"})  # fmt: skip
    return int(last)


async def _event_feed(
    service: LockService, workspace_id: str, after: int | None, caller: Identity
) -> AsyncGenerator[ServerSentEvent, None]:
    """A comment at once, then logged events after ``after`` (if given), then live ones, each once, in seq order.

    The stream ends as soon as the caller's key is revoked or loses the workspace (looked at on each access
    change on this server, every :data:`RECHECK_ACCESS` s at the latest), or when the workspace is deleted.
    It ends after the events committed before that change was heard (a revoked key's own locks broken, say),
    and none committed after it goes out: see :class:`_AccessWatch`.
    """
    observe = service.observe
    async with observe.stream(workspace_id) as live:  # subscribed before reading the log: nothing falls in between
        watch = _AccessWatch(service.hub, live)
        looking = service.background(partial(watch.run, service, caller, workspace_id), "event stream key check")
        listeners = service.registry.access_listeners
        listeners.append(watch.heard)
        watch.heard()  # the first look, at once: a change made before the line above went unheard
        try:
            yield HELLO
            last = after or 0
            if after is not None:
                while True:
                    page = await observe.replay(workspace_id, last, 1000)
                    # The page may hold events committed after any mark placed so far: sent once each is cleared.
                    if not await watch.passed(watch.marks):
                        return
                    for ev in page:
                        yield _sse(workspace_id, ev)
                        last = ev.seq
                    if len(page) < 1000:
                        break
            marks = 0
            async for item in live:  # ends if the subscriber fell far behind, or the server stops
                if item is MARK:  # what follows it was committed after an access change was heard
                    marks += 1
                    if not await watch.passed(marks):
                        return
                    continue
                ev = item[1]  # the subscription carries this workspace's events only
                if ev.seq > last:
                    last = ev.seq
                    yield _sse(workspace_id, ev)
        finally:
            looking.cancel()
            listeners.remove(watch.heard)


class _AccessWatch:
    """Holds a stream at each mark in its live events until a look at its key, begun after the mark, says fine.

    Each access change heard on this server (a key revoked or changed, a workspace deleted, a key change made
    elsewhere that the app's key watch saw) puts a mark in the stream at once, behind every event committed
    before it, and wakes the look. The stream sends what comes before a mark; at the mark it waits for the
    look, then goes on, or ends if the key no longer reaches the workspace. So a revoked key is sent what was
    committed before the revocation was heard here (the breaks of its own locks, when it was revoked through
    this server), and nothing committed after. A stream whose key is fine pays one look per access change.

    A feed that ends (the subscriber fell far behind, or the server is stopping) ends the stream: the client
    reconnects with Last-Event-ID and gets the rest from the log.
    """

    def __init__(self, hub: EventHub, live: Live) -> None:
        self._hub = hub
        self._live = live
        #: Marks put in the stream so far, and how many of them a look begun after them found fine.
        self.marks = 0
        self.cleared = 0
        #: The looks stopped: the key no longer reaches the workspace (or the service is stopping).
        self.lost = False
        self._changed = anyio.Event()  # wakes the look
        self._looked = anyio.Event()  # wakes a stream held at a mark

    def heard(self) -> None:
        """Access changed (an access listener, called at once): mark the stream here and look again."""
        self._mark()
        self._changed.set()

    def _mark(self) -> None:
        # One that cannot go in has cut the stream off: it ends after the events before, all committed before.
        if self._hub.mark(self._live):
            self.marks += 1

    async def run(self, access: Access, caller: Identity, workspace_id: str) -> None:
        """Look after each mark until the key no longer reaches the workspace (in a task beside the stream)."""
        try:
            failing = False  # logged once per outage, not at every retry of every stream
            while True:
                self._changed = anyio.Event()  # before the look: a change heard during it triggers the next one
                upto = self.marks
                try:
                    fine: bool | None = await access.still_reaches(caller, workspace_id)
                    failing = False
                except Exception:  # the store did not answer: nothing is decided, the marks hold until a look does
                    if not failing:
                        log.warning("could not check whether key %s is still live", caller.key_id, exc_info=True)
                    failing = True
                    fine = None
                if fine is False:
                    return
                if fine:
                    self.cleared = upto
                    self._wake()
                with anyio.move_on_after(RECHECK_ACCESS if fine else RETRY_LOOK):
                    await self._changed.wait()
                if not self._changed.is_set():
                    self._mark()  # a periodic look is marked too: what follows waits for it
        finally:  # the key is lost, or the service stops: a stream held at a mark ends there
            self.lost = True
            self._wake()

    def _wake(self) -> None:
        done, self._looked = self._looked, anyio.Event()
        done.set()

    async def passed(self, mark: int) -> bool:
        """Whether the stream may go past its ``mark``-th mark (waiting for the look); False: end it there."""
        while self.cleared < mark and not self.lost:
            await self._looked.wait()
        return self.cleared >= mark


async def _counted(
    counts: dict[str, int], who: str, feed: AsyncGenerator[ServerSentEvent, None]
) -> AsyncIterator[ServerSentEvent]:
    """``feed``, counted in ``counts[who]`` from its first step until it ends (or the client leaves)."""
    counts[who] = counts.get(who, 0) + 1
    try:
        async with contextlib.aclosing(feed) as inner:  # closing this closes the feed (and its subscription)
            async for item in inner:
                yield item
    finally:
        counts[who] -= 1
        if not counts[who]:
            del counts[who]


def _sse(workspace_id: str, ev: Event) -> ServerSentEvent:
    return ServerSentEvent(data=AuditEvent.of(workspace_id, ev).model_dump_json(), id=str(ev.seq), event=ev.kind)
