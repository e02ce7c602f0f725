"""Resource subscriptions through the bridge: the host's, followed on the server with listen streams.

The host subscribes in its own era: ``resources/subscribe`` (2025-11-25 and older, what
hosts on the TypeScript SDK send) or ``subscriptions/listen`` (2026-07-28). Either way
the URIs join one set (at most :data:`MAX_FOLLOWED`), which the bridge follows on the
server with ``subscriptions/listen`` streams of at most :data:`STREAM_URIS` URIs each
(the server's limit). New URIs join a stream with room: a stream for its URIs and the
new ones is opened, and the old one closed only once the new one is acknowledged, so
no change falls between them. Each update from the server reaches the host's legacy
subscriptions as ``notifications/resources/updated`` and its listen streams through
the subscription bus.

The server refuses a whole stream if it refuses any one URI (a workspace deleted, a key
that lost one): the refused URI is left out and the stream opened for the rest. A URI
the host asks for fails that request only; one it followed already is dropped (the host
is told it changed: reading it says why).

When a stream ends on its own, only it is opened again (after a pause); a transport
error means the connection is gone, and then every stream is reopened with the
reconnection, and the host is told that every URI it follows may have changed (the
updates of the outage are lost; updates are "read it again" signals, so one more is
harmless).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client
from mcp.client.subscriptions import Subscription
from mcp.server.session import ServerSession
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import INVALID_PARAMS, LoggingMessageNotification, LoggingMessageNotificationParams

from mcp_locks.client.errors import decode_error
from mcp_locks.core.errors import LimitExceeded, LockError
from mcp_locks.engine.arguments import MAX_ITEMS
from mcp_locks.faces.mcp.resources import MAX_SESSION_URIS
from mcp_locks.faces.stdio.link import CALL_BUDGET, HELD, Link, broken, pause_before

__all__ = ["MAX_FOLLOWED", "REOPEN_TRIES", "STREAM_URIS", "NotFollowed", "Relay"]

log = logging.getLogger("mcp_locks.stdio")

#: URIs one listen stream carries at most (the server refuses a stream with more).
STREAM_URIS = MAX_ITEMS
#: URIs the bridge follows for its host at most (as many as a legacy session may subscribe to on the server).
MAX_FOLLOWED = MAX_SESSION_URIS
#: Failed attempts in a row to reopen a listen stream that ended, after which the connection is taken for lost.
REOPEN_TRIES = 5


class NotFollowed(Exception):
    """The server does not follow ``uri`` (``error`` says why: its refusal, or UNAVAILABLE)."""

    def __init__(self, uri: str, error: LockError) -> None:
        super().__init__(uri, error)
        self.uri, self.error = uri, error


@dataclass(eq=False)
class _Stream:
    """One listen stream on the server: the URIs it follows, and the scope that closes it."""

    uris: frozenset[str]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


def _refused_uri(exc: BaseException) -> str | None:
    """The URI a refusal of a listen stream names (the server's check of it failed), if it is one."""
    if isinstance(exc, MCPError) and exc.code == INVALID_PARAMS and isinstance(exc.error.data, dict):
        uri = exc.error.data.get("uri")
        if isinstance(uri, str) and decode_error(exc.error.data) is not None:
            return uri
    return None


class Relay:
    """The URIs the host follows, the server's listen streams for them, and the way back to the host."""

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
        self._streams: list[_Stream] = []
        #: The URIs a watch() in progress adds (followed as if the host did, until it returns).
        self._adding: set[str] = set()

    # ------------------------------------------------------------------ what the host follows

    async def watch(self, uris: Iterable[str]) -> None:
        """Follow ``uris`` too; returns once the server follows them.

        NotFollowed if it refuses one (the first it refused) or cannot be asked; then none of them is counted.
        """
        wanted = list(dict.fromkeys(uris))
        async with self._lock:
            streamed = self._streamed()
            new = [uri for uri in wanted if uri not in streamed]
            if new:
                if len(self.watched.keys() | set(new)) > MAX_FOLLOWED:
                    err = LimitExceeded(
                        f"this bridge already follows {len(self.watched)} resources (at most {MAX_FOLLOWED}).",
                        hint="Unsubscribe from some, or subscribe to the workspace resource instead.",
                        details={"limit": MAX_FOLLOWED},
                    )
                    raise NotFollowed(new[0], err)
                self._adding = set(new)
                try:
                    refused = await self._follow(new)
                except LockError as e:
                    raise NotFollowed(new[0], e) from None
                finally:
                    self._adding = set()
                for uri in new:
                    if uri in refused:
                        raise NotFollowed(uri, refused[uri])
            self.watched.update(wanted)

    def unwatch(self, uris: Iterable[str]) -> None:
        """Follow ``uris`` once less; a stream closes when none of its URIs is followed.

        A smaller set is not worth a new stream: the server's extra updates are dropped here.
        """
        for uri in uris:
            self.watched[uri] -= 1
            if self.watched[uri] <= 0:
                del self.watched[uri]
        live = self._live()
        for stream in [s for s in self._streams if s.uris.isdisjoint(live)]:
            stream.scope.cancel()
            self._streams.remove(stream)

    def _streamed(self) -> set[str]:
        return set().union(*(s.uris for s in self._streams))

    def _live(self) -> set[str]:
        """The URIs followed for the host (and those being added)."""
        return self.watched.keys() | self._adding

    # ------------------------------------------------------------------ the server's streams

    async def run(self, client: Client) -> None:
        """Beside each connection: reopen the streams for what the host follows, and say it may have changed."""
        async with anyio.create_task_group() as tg:
            self._client, self._tg = client, tg
            try:
                async with self._lock:
                    followed = list(self.watched)
                    if followed:
                        try:
                            await self._follow(followed)  # what the server refuses now is dropped (and announced)
                        except LockError as e:  # not reached: the next reconnection tries again
                            log.warning("could not follow %d resources again: %s", len(followed), e)
                for uri in followed:
                    await self.announce(uri)
                await anyio.sleep_forever()
            finally:
                self._client = self._tg = None
                self._streams = []

    async def _follow(self, uris: list[str]) -> dict[str, LockError]:
        """Follow ``uris`` (none streamed yet) on streams with room or new ones; what the server refused, and why.

        Under the lock. A refused URI the host followed is dropped; LockError if the server cannot be asked.
        """
        refused: dict[str, LockError] = {}
        pending = list(uris)
        for _ in range(len(uris)):  # each round places at least one URI
            if not pending:
                break
            # A stream's URIs the host no longer follows are left out of the stream that replaces it.
            live = self._live()
            roomy = [s for s in self._streams if len(s.uris & live) < STREAM_URIS]
            old = roomy[0] if roomy else None
            kept = old.uris & live if old is not None else frozenset()
            room = STREAM_URIS - len(kept)
            batch, pending = pending[:room], pending[room:]
            refused.update(await self._replace(old, kept | set(batch)))
        return refused

    async def _replace(self, old: _Stream | None, uris: frozenset[str]) -> dict[str, LockError]:
        """A stream for ``uris`` in place of ``old`` once the server acknowledged it; what it refused."""
        link, client, tg = self.link, self._client, self._tg
        assert link is not None
        if client is None or tg is None:
            raise link.unavailable("it is reconnecting")
        stream = _Stream(uris)
        refused: dict[str, LockError] = await tg.start(self._keep, link, client, stream)
        if stream.uris:  # (empty if it refused them all)
            self._streams.append(stream)
        if old is not None:
            old.scope.cancel()
            if old in self._streams:  # (unwatch() may have closed it meanwhile)
                self._streams.remove(old)
        return refused

    async def _keep(
        self, link: Link, client: Client, stream: _Stream, *, task_status: TaskStatus[dict[str, LockError]]
    ) -> None:
        """Keep ``stream`` open until its scope is cancelled.

        Started once the server first acknowledged it (with the URIs it refused); failing to
        open it at first raises. When it ends, it is opened again after a pause, under the
        lock; a transport error, or REOPEN_TRIES failed attempts in a row, means the
        connection is lost.
        """
        first, attempt, failures = True, 0, 0
        with stream.scope:
            while stream.uris:  # each round ends after a pause that grows unless the stream lasted
                if not first:
                    await anyio.sleep(pause_before(attempt))
                opened = anyio.current_time()
                ended: Exception | None = None
                async with contextlib.AsyncExitStack() as stack:
                    try:
                        if first:
                            sub, refused = await self._open(stack, link, client, stream)
                        else:
                            async with self._lock:
                                sub, refused = await self._open(stack, link, client, stream)
                    except Exception as e:
                        if first:
                            raise link.explain(e) from None
                        failures += 1
                        if broken(e) or failures >= REOPEN_TRIES:
                            log.debug("could not reopen a listen stream: %r", e)
                            link.lost(client)
                            return
                        attempt += 1
                        continue
                    if sub is None:  # it refused them all
                        if first:
                            task_status.started(refused)
                        return
                    if first:
                        first = False
                        task_status.started(refused)
                    else:  # reopened: what changed while it was closed was not heard
                        for uri in sorted(stream.uris):
                            await self.announce(uri)
                    failures, opened = 0, anyio.current_time()
                    try:
                        async for event in sub:
                            if isinstance(event, ResourceUpdated):
                                await self.announce(event.uri)
                    except Exception as e:
                        ended = e
                if ended is not None and broken(ended):  # the connection is gone: reconnect
                    log.debug("a listen stream broke: %r", ended)
                    link.lost(client)
                    return
                log.debug("a listen stream for %d resources ended (%r); reopening it", len(stream.uris), ended)
                attempt = 1 if anyio.current_time() - opened >= HELD else attempt + 1
            if first:
                task_status.started({})

    async def _open(
        self, stack: contextlib.AsyncExitStack, link: Link, client: Client, stream: _Stream
    ) -> tuple[Subscription | None, dict[str, LockError]]:
        """``stream``'s listen stream, entered on ``stack``, without the URIs the server refuses (dropped).

        None if it refused them all; the refusals by URI. Any other failure raises.
        """
        refused: dict[str, LockError] = {}
        with anyio.fail_after(CALL_BUDGET):  # an acknowledgment that never comes is a connection that stopped
            for _ in range(len(stream.uris)):  # each refusal leaves one URI out
                try:
                    sub = await stack.enter_async_context(client.listen(resource_subscriptions=sorted(stream.uris)))
                    return sub, refused
                except MCPError as e:
                    uri = _refused_uri(e)
                    if uri is None or uri not in stream.uris:
                        raise
                    refused[uri] = link.explain(e)
                    stream.uris -= {uri}
                    await self._drop(uri, refused[uri])
        return None, refused

    async def _drop(self, uri: str, why: LockError) -> None:
        """The server no longer follows ``uri``: if the host did, say it changed (reading it says why); forget it."""
        if uri in self.watched:
            log.warning("the server no longer follows %s: %s", uri, why)
            await self.announce(uri)
            del self.watched[uri]
            self.legacy.discard(uri)

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
