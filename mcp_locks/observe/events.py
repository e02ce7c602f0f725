"""Where committed events go: the audit log, webhooks, live subscribers and metrics.

Events flow one way. The pure tables record :class:`Event` tuples; the actor
stamps each with its place in the workspace's log (``seq``) and the
:class:`EventHub` adds an :class:`AppendEvents` to the batch, so the log rides
the batch's one store transaction: an event is logged exactly when the change
it describes is durable, at no commit of its own. The log is also the webhook
outbox: the dispatcher tails it from each webhook's cursor (see
``_webhooks``), so queueing a delivery costs the lock path nothing. After the
commit the hub hands the events to live subscribers (the SSE stream, MCP
resource updates) and to the metrics, never blocking: a subscriber that falls
behind loses events rather than slowing a lock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mcp_locks.core.records import (
    TYPE_OF,
    WEBHOOK_EVENTS,
    AppendEvents,
    Delivery,
    Event,
    WebhookRecord,
    event_dict,
    webhook_body,
)

__all__ = [
    "MARK",
    "TYPE_OF",
    "WEBHOOK_EVENTS",
    "AppendEvents",
    "Delivery",
    "EventHub",
    "EventSink",
    "WebhookRecord",
    "event_dict",
    "webhook_body",
]

log = logging.getLogger("mcp_locks.events")

#: What :meth:`EventHub.mark` puts in a subscriber's stream: a placeholder, told from events by identity
#: (``item is MARK``).
MARK: tuple[str, Event] = ("", Event("left", 0.0, "", ""))


class EventSink(NamedTuple):
    """Counts and timings the hub reports to (the metrics); every callable must be cheap and never raise."""

    events: Callable[[str, Sequence[Event]], None]
    commit_seconds: Callable[[float], None]


class EventHub:
    """Stamps, logs and fans out every workspace's committed events."""

    def __init__(self, *, audit: bool = True) -> None:
        #: Whether events are written to the audit log (they are always published live).
        self.audit = audit
        self._seq: dict[str, int] = {}
        self._hooked: frozenset[str] = frozenset()  # workspaces with webhooks
        # Each subscriber: whether it would rather be cut off than miss an event (it can replay the log),
        # and the one workspace it follows (None: all).
        self._subscribers: dict[MemoryObjectSendStream[tuple[str, Event]], tuple[bool, str | None]] = {}
        # Each subscription's own send side, by the stream its reader got (what :meth:`mark` sends on).
        self._send_of: dict[
            MemoryObjectReceiveStream[tuple[str, Event]], MemoryObjectSendStream[tuple[str, Event]]
        ] = {}
        #: Called after a commit logged events in a workspace with webhooks (the dispatcher's wake-up).
        self.on_logged: Callable[[], None] | None = None
        self.sink: EventSink | None = None

    # ------------------------------------------------------------------ inside the actor's step

    def loaded(self, workspace_id: str, last_seq: int, now: float) -> None:
        """An actor loaded a workspace whose log ends at ``last_seq``: never hand out a seq twice.

        Without a log (``audit`` off) nothing remembers the last seq across restarts, so the first
        load in a process starts from the time in milliseconds: seqs still only grow, and a feed
        resuming with Last-Event-ID after a restart misses nothing.
        """
        floor = last_seq if self.audit or workspace_id in self._seq else max(last_seq, int(now * 1000))
        if floor > self._seq.get(workspace_id, 0):
            self._seq[workspace_id] = floor

    def stamp(self, workspace_id: str, events: list[Event]) -> tuple[int, list[AppendEvents]]:
        """Number ``events`` (the seq of the first) and return the store change that logs them (if the log is on).

        The events themselves are left unstamped: only live subscribers need each one's seq, and
        :meth:`committed` stamps them only when there is one (~0.6 µs an event otherwise spent).
        """
        first = self._seq.get(workspace_id, 0) + 1
        self._seq[workspace_id] = first + len(events) - 1
        return first, [AppendEvents(tuple(events), first)] if self.audit else []

    def last_seq(self, workspace_id: str) -> int:
        """The last seq handed out in ``workspace_id`` by this process (0 if none yet)."""
        return self._seq.get(workspace_id, 0)

    def committed(self, workspace_id: str, events: list[Event], first: int, seconds: float) -> None:
        """After the commit: count, fan out, and wake the webhook dispatcher if the workspace has webhooks.

        ``events`` are unstamped, the first of them numbered ``first`` (see :meth:`stamp`).
        """
        sink = self.sink
        if sink is not None:
            if seconds:
                sink.commit_seconds(seconds)
            if events:
                sink.events(workspace_id, events)
        if events:
            if self._subscribers:
                self._fan_out(workspace_id, AppendEvents(tuple(events), first).stamped())
            if self.on_logged is not None and workspace_id in self._hooked:
                self.on_logged()

    def set_hooks(self, hooks: Sequence[WebhookRecord]) -> None:
        """Which workspaces have webhooks (their commits wake the dispatcher)."""
        self._hooked = frozenset(h.workspace_id for h in hooks)

    # ------------------------------------------------------------------ live subscribers

    def _fan_out(self, workspace_id: str, events: list[Event]) -> None:
        for send, (cut_off, only) in list(self._subscribers.items()):
            if only is not None and only != workspace_id:
                continue
            for ev in events:
                try:
                    send.send_nowait((workspace_id, ev))
                except anyio.WouldBlock:
                    # A subscriber that cannot keep up loses events (or its stream); it never slows the lock path.
                    log.warning(
                        "event subscriber fell behind; %s", "closing its stream" if cut_off else "dropping events"
                    )
                    if cut_off:
                        self._subscribers.pop(send, None)
                        send.close()
                    break
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._subscribers.pop(send, None)
                    break

    def mark(self, recv: MemoryObjectReceiveStream[tuple[str, Event]]) -> bool:
        """Put :data:`MARK` in ``recv`` (a stream :meth:`subscribe` gave) after every event already sent to it.

        Its reader then knows which of its events were committed before this call and which after.
        False if it could not go in: the subscription ended, or it is a full buffer behind (with
        ``cut_off`` its stream then ends, as it would at the next event).
        """
        send = self._send_of.get(recv)
        subscriber = self._subscribers.get(send) if send is not None else None
        if send is None or subscriber is None:
            return False
        try:
            send.send_nowait(MARK)
            return True
        except anyio.WouldBlock:
            if subscriber[0]:
                self._subscribers.pop(send, None)
                send.close()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._subscribers.pop(send, None)
        return False

    def close(self) -> None:
        """End every subscriber's stream (the server is stopping)."""
        for send in list(self._subscribers):
            send.close()
        self._subscribers.clear()

    @asynccontextmanager
    async def subscribe(
        self, buffer: int = 10_000, *, cut_off: bool = False, workspace_id: str | None = None
    ) -> AsyncIterator[MemoryObjectReceiveStream[tuple[str, Event]]]:
        """Receive ``(workspace_id, Event)`` for every committed event from now on, until the block exits.

        A subscriber more than ``buffer`` events behind misses events, or with ``cut_off`` sees its
        stream end (so it can resume from the audit log instead of silently skipping some).
        With ``workspace_id``, only that workspace's events are sent. :meth:`mark` marks a place in it.
        """
        send, recv = anyio.create_memory_object_stream[tuple[str, Event]](buffer)
        self._subscribers[send] = (cut_off, workspace_id)
        self._send_of[recv] = send
        try:
            with recv:
                yield recv
        finally:
            self._subscribers.pop(send, None)
            self._send_of.pop(recv, None)
            send.close()
