"""The live event stream: a workspace's events as server-sent events, resumable, a few per key.

The limits are module constants so that a test can shorten them.
"""

from __future__ import annotations

import contextlib
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
from mcp_locks.faces.auth import Access, until_access_lost
from mcp_locks.faces.rest.operation import Call

__all__ = ["HELLO", "KEEPALIVE", "MAX_STREAMS_PER_KEY", "RECHECK_ACCESS", "stream_events"]

#: Seconds between keep-alive comments on an event stream.
KEEPALIVE = 15
#: Most event streams one key may hold open at once.
MAX_STREAMS_PER_KEY = 16
#: Seconds between checks that an open event stream's key is still live and still reaches its workspace, on
#: top of the check each access change on this server triggers at once (a fallback: see until_access_lost).
RECHECK_ACCESS = 15.0
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

    The stream ends as soon as the caller's key is revoked or loses the workspace (see
    :func:`~mcp_locks.faces.auth.until_access_lost`; every :data:`RECHECK_ACCESS` s at the latest),
    or when the workspace is deleted.
    """
    observe = service.observe
    async with observe.stream(workspace_id) as live:  # subscribed before reading the log: nothing falls in between
        yield HELLO
        watch = _AccessWatch()
        watching = service.background(partial(watch.run, service, caller, workspace_id), "event stream key check")
        try:
            last = after or 0
            if after is not None:
                while not watch.lost:
                    page = await observe.replay(workspace_id, last, 1000)
                    for ev in page:
                        if watch.lost:
                            return
                        yield _sse(workspace_id, ev)
                        last = ev.seq
                    if len(page) < 1000:
                        break
            while (item := await watch.receive(live)) is not None:
                ws, ev = item
                if ws == workspace_id and ev.seq > last:
                    last = ev.seq
                    yield _sse(workspace_id, ev)
        finally:
            watching.cancel()


class _AccessWatch:
    """Ends a stream's wait for its next event the moment its key no longer reaches its workspace."""

    def __init__(self) -> None:
        self.lost = False
        self._waiting: anyio.CancelScope | None = None

    async def run(self, access: Access, caller: Identity, workspace_id: str) -> None:
        """Until access is lost; then mark it and wake the stream (in a task beside it)."""
        await until_access_lost(access, caller, lambda: (workspace_id,), RECHECK_ACCESS)
        self.lost = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def receive(self, live: Live) -> tuple[str, Event] | None:
        """The next ``(workspace_id, event)`` of ``live``; None once access is lost or the feed ended.

        The feed ends when the reader fell far behind or the server is stopping: the client
        reconnects with Last-Event-ID and gets the rest from the log.
        """
        if self.lost:
            return None
        try:
            with anyio.CancelScope() as self._waiting:  # never across a yield: the scope stays in this task
                return await live.receive()
        except anyio.EndOfStream:
            return None
        finally:
            self._waiting = None
        return None  # cancelled by run(): access is lost


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
