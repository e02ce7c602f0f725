"""What the service shows of itself: the audit log, webhooks, the live event feed and metrics."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, cast

import anyio
import anyio.abc
import anyio.streams.buffered
from anyio.streams.memory import MemoryObjectReceiveStream

from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import InvalidArgument, NotFound
from mcp_locks.core.keys import LOCAL, Identity, require_admin
from mcp_locks.core.models import AuditEvent, AuditPage, CreatedWebhook, WebhookInfo, WebhookList, utc
from mcp_locks.core.names import check_node_id
from mcp_locks.core.records import WEBHOOK_EVENTS, AuditQuery, Event, WebhookRecord
from mcp_locks.observe.delivery import DeliveryWorker
from mcp_locks.observe.events import EventHub
from mcp_locks.observe.metrics import Metrics, WorkspaceGauges
from mcp_locks.observe.webhooks import Dispatcher, WebhookLimits, check_webhook_url
from mcp_locks.stores.base import SharedStore, Store

__all__ = ["Observability", "ObserveLimits"]

log = logging.getLogger("mcp_locks.observe")

#: Seconds between sweeps of audit entries older than the retention.
PRUNE_EVERY = 3_600.0
#: Seconds between the cluster's webhook deliverer's reads of the webhooks (other servers add and delete them).
HOOKS_REFRESH = 1.0
#: Most webhooks per workspace (each event is queued once per matching webhook).
MAX_WEBHOOKS = 20


@dataclass(frozen=True, slots=True)
class ObserveLimits:
    """Audit log and webhook settings."""

    #: Write every event to the audit log (off: events are still streamed live and counted).
    audit: bool = True
    #: Days audit entries are kept.
    audit_days: float = 30.0
    webhooks: WebhookLimits = field(default_factory=WebhookLimits)


def _since(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if dt.tzinfo is not None:
                return dt.timestamp()
    raise InvalidArgument(
        "since must be an ISO 8601 time with a time zone (2026-11-28T09:00:00Z) or seconds since the epoch.",
        details={"field": "since"},
    )


def _seq_cursor(cursor: object) -> int | None:
    if cursor is None:
        return None
    if isinstance(cursor, str) and cursor.startswith("a") and cursor[1:].isascii() and cursor[1:].isdigit() \
            and len(cursor) < 24:  # fmt: skip
        return int(cursor[1:])
    raise InvalidArgument(
        "cursor is not a cursor returned by get_audit_log.",
        hint="Pass next_cursor from the previous page unchanged, or omit it to start from the newest event.",
        details={"field": "cursor"},
    )


class Workspaces(Protocol):
    """What observability needs of the server's workspaces (the engine's registry provides it)."""

    store: Store
    clock: Clock

    async def known(self, workspace_id: object, caller: Identity = LOCAL) -> str:
        """The workspace id if it exists and ``caller`` may use it (NOT_FOUND / FORBIDDEN otherwise)."""
        ...

    def gauges(self) -> dict[str, WorkspaceGauges]:
        """The gauges of every running workspace actor."""
        ...


class Observability:
    """The service's audit log, webhooks and metrics (``service.observe``)."""

    def __init__(self, service: Workspaces, limits: ObserveLimits, hub: EventHub) -> None:
        self.service = service
        self.limits = limits
        self.hub = hub
        self._hooks: dict[str, WebhookRecord] = {}
        self._managing = anyio.Lock()  # creates and deletes of webhooks, one at a time
        self._last: dict[str, WorkspaceGauges] = {}
        #: Sweeps of the audit log so far; ``pruned`` is set (and replaced) after each.
        self.prune_passes = 0
        self.pruned = anyio.Event()
        self.dispatcher = Dispatcher(
            service.store, service.clock, lambda: self._hooks, limits.webhooks, on_outcome=self._delivered
        )
        #: Delivers from a process of its own, if the store can be served so (set up in :meth:`start`).
        self._worker: DeliveryWorker | None = None
        self.metrics = Metrics(self._gauges, self._backlog)
        self._no_worker = anyio.Event()  # the ready event when there is no worker: never set
        self._tg: anyio.abc.TaskGroup | None = None
        hub.sink = self.metrics.sink()
        hub.on_logged = self.dispatcher.wake

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Load the webhooks and start delivering and pruning (in the service's task group)."""
        for h in await self.service.store.list_webhooks():
            self._hooks[h.webhook_id] = h
        self.hub.set_hooks(list(self._hooks.values()))
        store = self.service.store
        if not self.limits.audit:
            if self._hooks:
                log.warning("webhooks are not delivered while the audit log is off (--no-audit): they read it")
            self.hub.on_logged = None
        elif store.shared:
            # Several servers, one log: one of them (whichever holds the role) delivers for the cluster.
            tg.start_soon(cast(SharedStore, store).lead, "webhooks", self._deliver_for_the_cluster)
        elif self.limits.webhooks.worker and (args := store.delivery_worker_args()) is not None:
            self._worker = DeliveryWorker(store, args, self.limits.webhooks, self._delivered)
            self.hub.on_logged = self._worker.poke
            self._tg = tg
            if self._hooks or (await store.delivery_backlog())[0]:
                self._start_worker()  # else on the first webhook: most servers never need the process
        else:
            tg.start_soon(self.dispatcher.run)
        tg.start_soon(self._prune_loop)

    async def _deliver_for_the_cluster(self) -> None:
        """Deliver every server's events; webhooks made or deleted on other servers are picked up as it goes."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.dispatcher.run)
            while True:
                await anyio.sleep(HOOKS_REFRESH)
                await self._refresh_hooks()

    async def _refresh_hooks(self) -> None:
        """Read the webhooks again (a shared store: other servers add and delete them too)."""
        hooks = {h.webhook_id: h for h in await self.service.store.list_webhooks()}
        if hooks != self._hooks:
            self._hooks = hooks
            self.hub.set_hooks(list(hooks.values()))

    # ------------------------------------------------------------------ the delivery worker process

    def _start_worker(self) -> None:
        if self._worker is not None and self._tg is not None:
            self._worker.start(self._tg)

    @property
    def worker_ready(self) -> anyio.Event:
        """Set once the delivery worker process (if the store uses one) is up."""
        return self._worker.ready if self._worker is not None else self._no_worker

    @property
    def worker_pid(self) -> int | None:
        """The delivery worker's process id while one runs."""
        return self._worker.pid if self._worker is not None else None

    def _backlog(self) -> int:
        worker = self._worker
        return worker.backlog if worker is not None and worker.started else self.dispatcher.backlog

    def _delivered(self, outcome: str) -> None:
        self.metrics.deliveries.labels(outcome).inc()

    def _gauges(self) -> dict[str, WorkspaceGauges]:
        return {**self._last, **self.service.gauges()}

    def actor_stopped(self, workspace_id: str, held: int | None) -> None:
        """Keep the last count of an evicted actor (its leases are still held) for the gauges."""
        if held is None:
            self._last.pop(workspace_id, None)
        else:
            self._last[workspace_id] = WorkspaceGauges(held, 0, 0)

    async def _prune_loop(self) -> None:
        clock = self.service.clock
        while True:
            try:
                n = await self.service.store.prune_audit(clock.now() - self.limits.audit_days * 86_400)
                if n:
                    log.info("pruned %d audit entries older than %g days", n, self.limits.audit_days)
            except Exception:
                log.warning("pruning the audit log failed; trying again later", exc_info=True)
            self.prune_passes += 1
            done, self.pruned = self.pruned, anyio.Event()
            done.set()
            await clock.wait(anyio.Event(), clock.now() + PRUNE_EVERY)

    # ------------------------------------------------------------------ audit log

    async def audit_log(
        self,
        workspace_id: object = None,
        node_id: object = None,
        agent: object = None,
        since: object = None,
        limit: object = 100,
        cursor: object = None,
        *,
        caller: Identity = LOCAL,
    ) -> AuditPage:
        """A page of the workspace's event log, newest first (``next_cursor`` pages to older events)."""
        ws = await self.service.known(workspace_id, caller)
        node = check_node_id(node_id) if node_id is not None else None
        if agent is not None and (not isinstance(agent, str) or not 0 < len(agent) <= 64):
            raise InvalidArgument("agent must be an agent name (1-64 characters).", details={"field": "agent"})
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be an integer from 1 to 1000.", details={"field": "limit"})
        q = AuditQuery(ws, node, agent, _since(since), _seq_cursor(cursor), limit + 1)
        events = await self.service.store.audit(q)
        more = len(events) > limit
        events = events[:limit]
        return AuditPage(
            workspace_id=ws,
            events=[AuditEvent.of(ws, ev) for ev in events],
            next_cursor=f"a{events[-1].seq}" if more else None,
        )

    async def replay(self, workspace_id: str, after: int, limit: int = 1000) -> list[Event]:
        """Logged events after seq ``after``, oldest first (at most ``limit``; none without an audit log)."""
        if not self.limits.audit:
            return []
        return await self.service.store.audit(AuditQuery(workspace_id, limit=limit, after_seq=after))

    @asynccontextmanager
    async def stream(
        self, workspace_id: str, buffer: int = 10_000
    ) -> AsyncIterator[MemoryObjectReceiveStream[tuple[str, Event]]]:
        """One workspace's live events; the stream ends if the reader falls ``buffer`` behind (resume from the log)."""
        async with self.hub.subscribe(buffer, cut_off=True, workspace_id=workspace_id) as recv:
            yield recv

    # ------------------------------------------------------------------ webhooks (admin)

    async def create_webhook(
        self, workspace_id: object, url: object, events: object, *, caller: Identity = LOCAL
    ) -> CreatedWebhook:
        """Register a webhook for some event types of one workspace; the signing secret is in this answer only."""
        require_admin(caller, "managing webhooks")
        ws = await self.service.known(workspace_id, caller)
        checked = check_webhook_url(url, self.limits.webhooks.allow_private)
        if not isinstance(events, list | tuple) or not events or not all(isinstance(e, str) for e in events):
            raise InvalidArgument(
                "events must be a non-empty list of event types.",
                hint=f"Pick from: {', '.join(WEBHOOK_EVENTS)}.",
                details={"field": "events"},
            )
        unknown = [e for e in events if e not in WEBHOOK_EVENTS]
        if unknown:
            raise InvalidArgument(
                f"unknown event type '{unknown[0]}'.",
                hint=f"Pick from: {', '.join(WEBHOOK_EVENTS)}.",
                details={"field": "events", "known": list(WEBHOOK_EVENTS)},
            )
        if not self.limits.audit:
            raise InvalidArgument(
                "webhooks need the audit log, and this server runs with it off (--no-audit).",
                hint="Restart the server with the audit log on, or follow GET /v1/workspaces/{w}/events instead.",
                details={"field": "url"},
            )
        async with self._managing:  # no await between the count and the registration of another create
            if sum(h.workspace_id == ws for h in self._hooks.values()) >= MAX_WEBHOOKS:
                raise InvalidArgument(
                    f"workspace '{ws}' already has {MAX_WEBHOOKS} webhooks.",
                    hint="Delete one you no longer need, or let one receiver handle several event types.",
                    details={"limit": MAX_WEBHOOKS},
                )
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            # It gets the events logged from now on: its cursor starts at the end of the log.
            newest = await self.service.store.audit(AuditQuery(ws, limit=1))
            cursor = max(self.hub.last_seq(ws), newest[0].seq if newest else 0)
            rec = WebhookRecord(
                f"wh_{secrets.token_hex(8)}", ws, checked, tuple(dict.fromkeys(events)), secret,
                self.service.clock.now(), cursor,
            )  # fmt: skip
            await self.service.store.put_webhook(rec)
            self._hooks[rec.webhook_id] = rec
            self._hooks_changed()
        log.info("created webhook %s for %s (%s)", rec.webhook_id, ws, ",".join(rec.events))
        return CreatedWebhook(**_info(rec).model_dump(), secret=secret)

    async def list_webhooks(self, workspace_id: object, *, caller: Identity = LOCAL) -> WebhookList:
        """A workspace's webhooks (never their secrets)."""
        require_admin(caller, "managing webhooks")
        ws = await self.service.known(workspace_id, caller)
        if self.service.store.shared:
            await self._refresh_hooks()
        return WebhookList(webhooks=[_info(h) for h in self._hooks.values() if h.workspace_id == ws])

    async def delete_webhook(
        self, workspace_id: object, webhook_id: object, *, caller: Identity = LOCAL
    ) -> WebhookInfo:
        """Remove a webhook; its undelivered messages are dropped."""
        require_admin(caller, "managing webhooks")
        ws = await self.service.known(workspace_id, caller)
        async with self._managing:
            if self.service.store.shared:
                await self._refresh_hooks()
            rec = self._hooks.get(webhook_id) if isinstance(webhook_id, str) else None
            if rec is None or rec.workspace_id != ws:
                raise NotFound(
                    f"workspace '{ws}' has no webhook '{webhook_id}'.",
                    hint="{op:list_webhooks} shows the ids.",
                    details={"webhook_id": str(webhook_id)[:64]},
                )
            await self.service.store.delete_webhook(rec.webhook_id)  # first: if it fails, nothing changed
            del self._hooks[rec.webhook_id]
            self._hooks_changed()
        return _info(rec)

    def workspace_deleted(self, workspace_id: str) -> None:
        """The store dropped the workspace's webhooks: forget them here too."""
        self._hooks = {k: h for k, h in self._hooks.items() if h.workspace_id != workspace_id}
        self._hooks_changed()
        self._last.pop(workspace_id, None)

    def _hooks_changed(self) -> None:
        self.hub.set_hooks(list(self._hooks.values()))
        if self._worker is not None:
            self._start_worker()
            self._worker.poke(b"h")


def _info(h: WebhookRecord) -> WebhookInfo:
    return WebhookInfo(
        webhook_id=h.webhook_id,
        workspace_id=h.workspace_id,
        url=h.url,
        events=list(h.events),
        created_at=utc(h.created_at),
    )
