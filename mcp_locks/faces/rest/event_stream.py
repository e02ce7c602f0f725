"""The live event stream: a workspace's events as server-sent events, resumable, a few per key.

The limits are module constants so that a test can shorten them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from mcp_locks.core.errors import InvalidArgument, LimitExceeded
from mcp_locks.core.keys import Identity
from mcp_locks.core.models import AuditEvent
from mcp_locks.core.records import Event
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.rest.operation import Call

__all__ = ["KEEPALIVE", "MAX_STREAMS_PER_KEY", "RECHECK_ACCESS", "stream_events"]

#: Seconds between keep-alive comments on an event stream.
KEEPALIVE = 15
#: Most event streams one key may hold open at once.
MAX_STREAMS_PER_KEY = 16
#: Seconds between checks that an open event stream's key is still live and still reaches its workspace.
RECHECK_ACCESS = 15.0


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
    """Logged events after ``after`` (if given), then live ones, each once, in seq order.

    The stream ends when the caller's key is revoked or loses the workspace (checked every
    :data:`RECHECK_ACCESS` seconds), or when the workspace is deleted.
    """
    observe = service.observe
    async with observe.stream(workspace_id) as live:  # subscribed before reading the log: nothing falls in between
        last = after or 0
        if after is not None:
            while True:
                page = await observe.replay(workspace_id, last, 1000)
                for ev in page:
                    yield _sse(workspace_id, ev)
                    last = ev.seq
                if len(page) < 1000:
                    break
        checked, seen = anyio.current_time(), service.access_changed
        while True:
            # At once after a revocation here; every RECHECK_ACCESS s for one made elsewhere (the CLI).
            if seen.is_set() or anyio.current_time() - checked >= RECHECK_ACCESS:
                checked, seen = anyio.current_time(), service.access_changed
                if not await service.still_reaches(caller, workspace_id):
                    return
            try:
                with anyio.fail_after(RECHECK_ACCESS):
                    ws, ev = await live.receive()
            except TimeoutError:
                continue  # quiet: time to look at the key again
            except anyio.EndOfStream:
                # The reader fell far behind, or the server is stopping: the client reconnects with
                # Last-Event-ID and gets the rest from the log.
                return
            if seen.is_set() and not await service.still_reaches(caller, workspace_id):
                return
            if ws == workspace_id and ev.seq > last:
                last = ev.seq
                yield _sse(workspace_id, ev)


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
