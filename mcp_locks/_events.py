"""Where committed events go: the audit log, the webhook outbox, live subscribers and metrics.

Events flow one way. The pure tables record :class:`Event` tuples; the actor
stamps each with its place in the workspace's log (``seq``) and asks the
:class:`EventHub` what else to write: an :class:`AppendEvents` for the audit
log and an :class:`Enqueue` of webhook deliveries. Both ride the batch's one
store transaction, so an event is logged and queued for delivery exactly when
the change it describes is durable, and writing them costs no commit of its
own. After the commit the hub hands the events to live subscribers (the SSE
stream, MCP resource updates) and to the metrics, never blocking: a subscriber
that falls behind loses events rather than slowing a lock.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._table import Event, EventKind

__all__ = [
    "WEBHOOK_EVENTS",
    "AppendEvents",
    "Delivery",
    "Enqueue",
    "EventHub",
    "EventSink",
    "WebhookRecord",
    "event_dict",
]

log = logging.getLogger("mcp_locks.events")

#: The webhook event types and the log events each one covers.
WEBHOOK_EVENTS: dict[str, tuple[EventKind, ...]] = {
    "lock.granted": ("granted", "upgraded", "downgraded"),
    "lock.released": ("released",),
    "lock.expired": ("expired",),
    "lock.broken": ("broken",),
    "file.written": ("written",),
    "file.deleted": ("deleted",),
}
_TYPE_OF: dict[str, str] = {kind: t for t, kinds in WEBHOOK_EVENTS.items() for kind in kinds}


class AppendEvents(NamedTuple):
    """Store change: append events (stamped with their ``seq``) to the workspace's audit log."""

    events: tuple[Event, ...]


class Delivery(NamedTuple):
    """One webhook message waiting in the outbox (``delivery_id`` is its webhook-id header, kept across retries)."""

    delivery_id: str
    webhook_id: str
    event_type: str
    payload: str
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None


class Enqueue(NamedTuple):
    """Store change: put webhook deliveries in the outbox."""

    deliveries: tuple[Delivery, ...]


class WebhookRecord(NamedTuple):
    """A registered webhook. ``secret`` (whsec_...) signs its deliveries; it is shown to the admin once."""

    webhook_id: str
    workspace_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: float


def event_dict(workspace_id: str, ev: Event) -> dict[str, object]:
    """An event as JSON-ready data (the same fields as the AuditEvent model, times as ISO 8601)."""
    from ._models import AuditEvent

    return AuditEvent.of(workspace_id, ev).model_dump(mode="json")


class EventSink(NamedTuple):
    """Counts and timings the hub reports to (the metrics); every callable must be cheap and never raise."""

    events: Callable[[str, Sequence[Event]], None]
    commit_seconds: Callable[[float], None]


class EventHub:
    """Stamps, logs, queues and fans out every workspace's committed events."""

    def __init__(self, *, audit: bool = True) -> None:
        #: Whether events are written to the audit log (they are always published live).
        self.audit = audit
        self._seq: dict[str, int] = {}
        self._hooks: dict[str, tuple[WebhookRecord, ...]] = {}
        # Each subscriber, and whether it would rather be cut off than miss an event (it can replay the log).
        self._subscribers: dict[MemoryObjectSendStream[tuple[str, Event]], bool] = {}
        #: Called after a commit that queued deliveries (the dispatcher's wake-up).
        self.on_enqueued: Callable[[], None] | None = None
        self.sink: EventSink | None = None

    # ------------------------------------------------------------------ inside the actor's step

    def loaded(self, workspace_id: str, last_seq: int) -> None:
        """An actor loaded a workspace whose log ends at ``last_seq``: never hand out a seq twice."""
        if last_seq > self._seq.get(workspace_id, 0):
            self._seq[workspace_id] = last_seq

    def stamp(self, workspace_id: str, events: list[Event]) -> tuple[list[Event], list[AppendEvents | Enqueue]]:
        """Number ``events`` and return them with the store changes they need (audit rows, deliveries)."""
        n = self._seq.get(workspace_id, 0)
        stamped = [ev._replace(seq=n + i) for i, ev in enumerate(events, start=1)]
        self._seq[workspace_id] = n + len(events)
        changes: list[AppendEvents | Enqueue] = []
        if self.audit:
            changes.append(AppendEvents(tuple(stamped)))
        hooks = self._hooks.get(workspace_id)
        if hooks:
            out = self._deliveries(workspace_id, hooks, stamped)
            if out:
                changes.append(Enqueue(tuple(out)))
        return stamped, changes

    @staticmethod
    def _deliveries(workspace_id: str, hooks: tuple[WebhookRecord, ...], events: list[Event]) -> list[Delivery]:
        out: list[Delivery] = []
        for ev in events:
            kind = _TYPE_OF.get(ev.kind)
            if kind is None:
                continue
            data: dict[str, object] | None = None
            for h in hooks:
                if kind in h.events:
                    if data is None:
                        data = event_dict(workspace_id, ev)
                        data["event_id"] = f"{workspace_id}:{ev.seq}"
                    body = json.dumps({"type": kind, "timestamp": data["at"], "data": data}, separators=(",", ":"))
                    out.append(Delivery(f"msg_{secrets.token_hex(12)}", h.webhook_id, kind, body, ev.at, 0, ev.at))
        return out

    def committed(
        self, workspace_id: str, events: list[Event], changes: Sequence[AppendEvents | Enqueue], seconds: float
    ) -> None:
        """After the commit: count, fan out, and wake the dispatcher if deliveries were queued."""
        sink = self.sink
        if sink is not None:
            if seconds:
                sink.commit_seconds(seconds)
            if events:
                sink.events(workspace_id, events)
        if events:
            self._fan_out(workspace_id, events)
        if self.on_enqueued is not None and any(isinstance(c, Enqueue) for c in changes):
            self.on_enqueued()

    def forget(self, workspace_id: str) -> None:
        """A workspace was deleted: drop its webhooks (its log's seq is kept, so a re-created one continues)."""
        self._hooks.pop(workspace_id, None)

    # ------------------------------------------------------------------ webhooks registry

    def set_hooks(self, hooks: Sequence[WebhookRecord]) -> None:
        """Replace every workspace's webhooks."""
        by_ws: dict[str, list[WebhookRecord]] = {}
        for h in hooks:
            by_ws.setdefault(h.workspace_id, []).append(h)
        self._hooks = {ws: tuple(hs) for ws, hs in by_ws.items()}

    # ------------------------------------------------------------------ live subscribers

    def _fan_out(self, workspace_id: str, events: list[Event]) -> None:
        for send, cut_off in list(self._subscribers.items()):
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

    def close(self) -> None:
        """End every subscriber's stream (the server is stopping)."""
        for send in list(self._subscribers):
            send.close()
        self._subscribers.clear()

    @asynccontextmanager
    async def subscribe(
        self, buffer: int = 10_000, *, cut_off: bool = False
    ) -> AsyncIterator[MemoryObjectReceiveStream[tuple[str, Event]]]:
        """Receive ``(workspace_id, Event)`` for every committed event from now on, until the block exits.

        A subscriber more than ``buffer`` events behind misses events, or with ``cut_off`` sees its
        stream end (so it can resume from the audit log instead of silently skipping some).
        """
        send, recv = anyio.create_memory_object_stream[tuple[str, Event]](buffer)
        self._subscribers[send] = cut_off
        try:
            with recv:
                yield recv
        finally:
            self._subscribers.pop(send, None)
            send.close()
