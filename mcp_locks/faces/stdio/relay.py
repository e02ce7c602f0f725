"""Resource subscriptions through the bridge: the host's, followed on the server with one listen stream.

The host subscribes in its own era: ``resources/subscribe`` (2025-11-25 and older, what
hosts on the TypeScript SDK send) or ``subscriptions/listen`` (2026-07-28). Either way
the URIs join one set, which the bridge follows on the server with one
``subscriptions/listen`` stream; when the set grows, a new stream is opened for the
whole set and the old one closed only once the new one is acknowledged, so no change
falls between them. Each update from the server reaches the host's legacy
subscriptions as ``notifications/resources/updated`` and its listen streams through
the subscription bus.

When the connection is lost, the stream is reopened with the reconnection, and the
host is told that every URI it follows may have changed (the updates of the outage
are lost; updates are "read it again" signals, so one more is harmless).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client
from mcp.server.session import ServerSession
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import LoggingMessageNotification, LoggingMessageNotificationParams

from mcp_locks.faces.stdio.link import Link

__all__ = ["Relay"]

log = logging.getLogger("mcp_locks.stdio")


class Relay:
    """The URIs the host follows, the server's listen stream for them, and the way back to the host."""

    def __init__(self, bus: SubscriptionBus) -> None:
        self.bus = bus
        self.link: Link | None = None
        #: The host's session, for notifications outside a request (set by the first request that needs it).
        self.host: ServerSession | None = None
        #: URI -> how many of the host's subscriptions follow it (its legacy ones and its listen streams).
        self.watched: Counter[str] = Counter()
        #: URIs the host subscribed to with resources/subscribe (they get notifications/resources/updated).
        self.legacy: set[str] = set()
        self._lock = anyio.Lock()
        self._client: Client | None = None
        self._tg: TaskGroup | None = None
        self._stream: anyio.CancelScope | None = None
        self._streamed: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ what the host follows

    async def watch(self, uris: Iterable[str]) -> None:
        """Follow ``uris`` too; returns once the server follows them (its refusal raises, as a LockError)."""
        wanted = list(dict.fromkeys(uris))
        async with self._lock:
            if not set(wanted) <= self._streamed:
                await self._open({*self.watched, *wanted})
            self.watched.update(wanted)

    def unwatch(self, uris: Iterable[str]) -> None:
        """Follow ``uris`` once less; the stream closes when nothing is followed.

        A smaller set is not worth a new stream: the server's extra updates are dropped here.
        """
        for uri in uris:
            self.watched[uri] -= 1
            if self.watched[uri] <= 0:
                del self.watched[uri]
        if not self.watched and self._stream is not None:
            self._stream.cancel()
            self._stream, self._streamed = None, frozenset()

    # ------------------------------------------------------------------ the server's stream

    async def run(self, client: Client) -> None:
        """Beside each connection: reopen the stream for what the host follows, and say it may have changed."""
        async with anyio.create_task_group() as tg:
            self._client, self._tg = client, tg
            try:
                async with self._lock:
                    followed = set(self.watched)
                    if followed:
                        try:
                            await self._open(followed)
                        except Exception as e:  # a refusal now: the next reconnection tries again
                            log.warning("could not follow %d resources again: %s", len(followed), e)
                for uri in followed:
                    await self.announce(uri)
                await anyio.sleep_forever()
            finally:
                self._client = self._tg = self._stream = None
                self._streamed = frozenset()

    async def _open(self, uris: set[str]) -> None:
        """A stream for ``uris``, in place of the current one once the server acknowledged it."""
        link, client, tg = self.link, self._client, self._tg
        assert link is not None
        if client is None or tg is None:
            raise link.unavailable("it is reconnecting")
        stream = await tg.start(self._listen, link, client, sorted(uris))
        old, self._stream, self._streamed = self._stream, stream, frozenset(uris)
        if old is not None:
            old.cancel()

    async def _listen(
        self, link: Link, client: Client, uris: list[str], *, task_status: TaskStatus[anyio.CancelScope]
    ) -> None:
        started = False
        with anyio.CancelScope() as scope:
            try:
                async with client.listen(resource_subscriptions=uris) as sub:
                    task_status.started(scope)
                    started = True
                    async for event in sub:
                        if isinstance(event, ResourceUpdated):
                            await self.announce(event.uri)
            except Exception as e:
                if not started:  # refused or not reached: the caller hears why
                    raise link.explain(e) from None
                log.debug("the listen stream ended: %r", e)  # it broke: the connection is gone
        if not scope.cancel_called:  # it ended without being closed here: the server went away
            link.lost(client)

    # ------------------------------------------------------------------ back to the host

    async def announce(self, uri: str) -> None:
        """Tell the host ``uri`` changed: its legacy subscription, and its listen streams through the bus."""
        if uri not in self.watched:
            return
        host = self.host
        if uri in self.legacy and host is not None:
            try:
                await host.send_resource_updated(uri)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):  # the host hung up
                return
        await self.bus.publish(ResourceUpdated(uri=uri))

    async def log(self, params: LoggingMessageNotificationParams) -> None:
        """Pass a log message from the server on to the host."""
        host = self.host
        if host is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):  # the host hung up
                await host.send_notification(LoggingMessageNotification(params=params))
