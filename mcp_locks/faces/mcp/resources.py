"""MCP resources: a workspace's held locks and a node's lock status, to read and to subscribe to.

``locks://{workspace_id}`` reads as the first page (up to 1000) of the
workspace's held locks, like ``list_locks``, with ``truncated``;
``locks://{workspace_id}/{node_id}`` reads as ``check_lock_status`` of the node
(``node_id`` may hold ``/``). Both act for the caller's key, like the tools.

Updates are level triggers ("this changed, read it again"), sent when a lock
is granted, released, expires, is broken, renewed, upgraded or downgraded, and
for a node also when a request joins or leaves the line for it: to the
workspace, to the node, to its ancestors when the number of locks below them
changes, and to the nodes below a tree lock or tree request. A burst of
changes may be announced once (and a place in line that shifts because
someone ahead left is not announced on its own).

* 2026-07-28 clients listen with ``subscriptions/listen`` (``Client.listen``):
  events go through the server's subscription bus.
* 2025-11-25 (and older) sessions use ``resources/subscribe`` /
  ``resources/unsubscribe`` and get ``notifications/resources/updated`` on
  their standalone stream, until they unsubscribe or the session ends.

Either way, subscribing checks what reading checks (the key must reach the
workspace). One task reads :meth:`LockService.subscribe` while anyone
subscribes, and stops when the last subscription ends or the service stops.

Access is followed, not only checked once: a listen stream ends (with
UNAUTHENTICATED or FORBIDDEN) the moment its key is revoked or loses a
workspace it listens to, and a 2025-era session's subscriptions to a
workspace its key lost are dropped (with a last update, so that the client
reads again and is told why); a revoked key's sessions are ended by the app.
A key may hold :func:`limit_listens` listen streams at once (LIMIT_EXCEEDED).
"""

from __future__ import annotations

import json
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any
from urllib.parse import quote

import anyio
from mcp.server.connection import Connection
from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer, ResourceSecurity
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ListenHandler, ResourceUpdated, SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import UriTemplate
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    EmptyResult,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    UnsubscribeRequestParams,
)

from mcp_locks.core.errors import Forbidden, InvalidArgument, LimitExceeded, LockError, Unauthenticated, Unavailable
from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.core.models import LockPage, LockStatus
from mcp_locks.core.names import ancestors
from mcp_locks.core.records import Event
from mcp_locks.engine.arguments import MAX_ITEMS
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.auth import current_caller, rpc_code, until_access_lost
from mcp_locks.faces.mcp.results import MCP_WORDS
from mcp_locks.faces.mcp.sdk import lowlevel

__all__ = [
    "NODE_TEMPLATE",
    "PAGE",
    "WORKSPACE_TEMPLATE",
    "limit_listens",
    "node_uri",
    "register_resources",
    "workspace_uri",
]

WORKSPACE_TEMPLATE = "locks://{workspace_id}"
NODE_TEMPLATE = "locks://{workspace_id}/{+node_id}"
#: Locks a workspace resource shows; beyond them it says ``truncated`` (page on with list_locks).
PAGE = 1000
#: URIs one legacy session may subscribe to.
MAX_SESSION_URIS = 1000
#: Seconds between looks at a subscriber's key on top of the look each access change triggers (a fallback).
RECHECK_ACCESS = 15.0

_WORKSPACE = UriTemplate.parse(WORKSPACE_TEMPLATE)
_NODE = UriTemplate.parse(NODE_TEMPLATE)
#: Events that change held locks (what the workspace resource and holders show).
_LEASE_KINDS = frozenset({"granted", "released", "expired", "broken", "renewed", "upgraded", "downgraded"})
#: Events that change how many locks are held (what ancestors' ``locks_below`` shows).
_COUNT_KINDS = frozenset({"granted", "released", "expired", "broken"})
#: Events that change a node's status at all.
_NODE_KINDS = _LEASE_KINDS | {"queued", "left"}


def workspace_uri(workspace_id: str) -> str:
    """The resource of a workspace's held locks."""
    return f"locks://{workspace_id}"


def node_uri(workspace_id: str, node_id: str) -> str:
    """The resource of a node's lock status (the node id percent-encoded but for its ``/``)."""
    return f"locks://{workspace_id}/{quote(node_id, safe='/')}"


def mcp_error(err: LockError, uri: str) -> MCPError:
    """A JSON-RPC error whose message starts with our code, with the REST error body in ``data``."""
    code = INTERNAL_ERROR if err.http_status >= 500 else INVALID_PARAMS
    return MCPError(code=code, message=err.text(MCP_WORDS), data={"uri": uri, "error": err.to_dict(MCP_WORDS)})


def refusal(err: LockError) -> MCPError:
    """A refusal of the request itself (a cap, a lost key) as the guard words it: our code, the body in ``data``."""
    return MCPError(code=rpc_code(err), message=err.text(MCP_WORDS), data={"error": err.to_dict(MCP_WORDS)})


def access_lost(lost: str) -> LockError:
    """Why a subscription ended: ``lost`` is what :func:`until_access_lost` answered."""
    if not lost:
        return Unauthenticated(
            "this key was revoked: its subscriptions ended.", hint="Ask the server's admin for a new key."
        )
    return Forbidden(
        f"this key no longer reaches workspace '{lost}' (taken from the key, or deleted): its subscription ended.",
        hint="Ask an admin for a key that reaches it.",
        details={"workspace_id": lost},
    )


def _parse(uri: str) -> tuple[str, str] | None:
    """``(workspace_id, node_id)`` a URI names (node_id ``""`` for the workspace), or None if it is not ours."""
    for template in (_NODE, _WORKSPACE):
        params = template.match(uri)
        if params is not None:
            ws, node = params.get("workspace_id", ""), params.get("node_id", "")
            if isinstance(ws, str) and isinstance(node, str):
                return ws, node
    return None


class _Watches:
    """Who listens to what: per workspace, per node (``""`` = the workspace), the exact URIs and how often.

    Listen streams match URIs exactly as the client spelled them, so those are what is published.
    """

    def __init__(self) -> None:
        self._by_ws: dict[str, dict[str, Counter[str]]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_ws)

    def add(self, ws: str, node: str, uri: str) -> None:
        self._by_ws.setdefault(ws, {}).setdefault(node, Counter())[uri] += 1

    def remove(self, ws: str, node: str, uri: str) -> None:
        nodes = self._by_ws.get(ws, {})
        uris = nodes.get(node)
        if uris is None or uri not in uris:
            return
        uris[uri] -= 1
        if uris[uri] <= 0:
            del uris[uri]
            if not uris:
                del nodes[node]
                if not nodes:
                    del self._by_ws[ws]

    def affected(self, ws: str, ev: Event) -> Iterator[str]:
        """The watched URIs whose content ``ev`` changes."""
        nodes = self._by_ws.get(ws)
        if not nodes or ev.kind not in _NODE_KINDS:
            return
        keys = {ev.node_id}
        if ev.kind in _LEASE_KINDS:
            keys.add("")
        if ev.kind in _COUNT_KINDS:
            keys.update(ancestors(ev.node_id))
        if ev.depth == "tree":
            below = ev.node_id + "/"
            keys.update(n for n in nodes if n.startswith(below))
        for key in keys:
            yield from nodes.get(key, ())


class _LegacySession:
    """A 2025-era session's subscriptions and the task that sends its notifications, coalesced."""

    def __init__(self, session: ServerSession, caller: Identity) -> None:
        self.session = session
        self.caller = caller
        self.uris: dict[str, tuple[str, str]] = {}
        self.pending: dict[str, None] = {}  # an ordered set: one notification per URI however many changes
        self.wake = anyio.Event()
        self.scope: anyio.CancelScope | None = None

    def notify(self, uri: str) -> None:
        self.pending[uri] = None
        self.wake.set()

    async def run(self, feed: _Feed) -> None:
        """Send the notifications, and drop the subscriptions to workspaces the key loses."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow_access, feed)
            await self._send()

    async def _send(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            while self.pending:
                uri = next(iter(self.pending))
                del self.pending[uri]
                try:
                    await self.session.send_resource_updated(uri)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return  # the session ended meanwhile (its key revoked, its client gone)

    async def _follow_access(self, feed: _Feed) -> None:
        def workspaces() -> set[str]:
            return {ws for ws, _ in self.uris.values()}

        while True:
            lost = await until_access_lost(feed.service, self.caller, workspaces, RECHECK_ACCESS)
            for uri, (ws, _) in list(self.uris.items()):
                if not lost or ws == lost:
                    feed.forget(self, uri)
                    self.notify(uri)  # a last "read it again": reading now says why it ended
            if not lost:
                return


class _Feed:
    """Turns committed lock events into resource updates for everyone subscribed."""

    def __init__(self, service: LockService, bus: SubscriptionBus) -> None:
        self.service = service
        self.bus = bus
        self.watches = _Watches()
        self.sessions: dict[Connection, _LegacySession] = {}
        self._legacy: dict[str, set[_LegacySession]] = {}  # URI -> the sessions subscribed to it
        self._scope: anyio.CancelScope | None = None
        self._ready: anyio.Event | None = None

    # ------------------------------------------------------------------ the one reader of service events

    async def watch(self, ws: str, node: str, uri: str) -> None:
        """Count ``uri`` as watched; returns once changes are being followed."""
        self.watches.add(ws, node, uri)
        try:
            if self._ready is None:
                ready = anyio.Event()
                self._scope = self.service.background(partial(self._run, ready), "resource updates")
                self._ready = ready
            ready = self._ready
            await ready.wait()
            if self._ready is not ready:  # it stopped (the service is stopping)
                raise Unavailable("the lock service stopped.", hint="Retry once the server runs.")
        except BaseException:
            self.unwatch(ws, node, uri)
            raise

    def unwatch(self, ws: str, node: str, uri: str) -> None:
        """Stop counting ``uri``; the reader stops with the last one."""
        self.watches.remove(ws, node, uri)
        if not self.watches and self._scope is not None:
            self._scope.cancel()
            self._scope = self._ready = None

    async def _run(self, ready: anyio.Event) -> None:
        try:
            async with self.service.subscribe() as events:
                ready.set()
                async for ws, ev in events:
                    for uri in list(self.watches.affected(ws, ev)):
                        for s in self._legacy.get(uri, ()):
                            s.notify(uri)
                        await self.bus.publish(ResourceUpdated(uri=uri))
        finally:
            if self._ready is ready:
                self._scope = self._ready = None
            ready.set()

    # ------------------------------------------------------------------ 2025-era sessions

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], caller: Identity, uri: str, ws: str, node: str
    ) -> None:
        conn = _connection_of(ctx)
        s = self.sessions.get(conn)
        if s is None:
            s = self.sessions[conn] = _LegacySession(ctx.session, caller)
            conn.exit_stack.callback(self.drop, conn)  # the session ended: forget it
        if uri in s.uris:
            return
        if len(s.uris) >= MAX_SESSION_URIS:
            raise LimitExceeded(
                f"this session already subscribes to {MAX_SESSION_URIS} resources.",
                hint="Unsubscribe from some, or subscribe to the workspace resource instead.",
                details={"limit": MAX_SESSION_URIS},
            )
        s.uris[uri] = (ws, node)  # before the wait: a second subscribe to it meanwhile is a no-op
        self._legacy.setdefault(uri, set()).add(s)
        try:
            await self.watch(ws, node, uri)
            if s.scope is None:
                s.scope = self.service.background(partial(s.run, self), "resource update notifications")
        except BaseException:
            if uri in s.uris:
                self._detach(s, uri)  # watch() took back its own count
            raise

    def unsubscribe(self, ctx: ServerRequestContext[Any, Any], uri: str) -> None:
        conn = _connection_of(ctx)
        s = self.sessions.get(conn)
        if s is None or uri not in s.uris:
            return
        self.forget(s, uri)
        if not s.uris and s.scope is not None:  # the session stays known until it ends: no sender meanwhile
            s.scope.cancel()
            s.scope = None

    def drop(self, conn: Connection) -> None:
        s = self.sessions.pop(conn, None)
        if s is None:
            return
        if s.scope is not None:
            s.scope.cancel()
        for uri in list(s.uris):
            self.forget(s, uri)

    def forget(self, s: _LegacySession, uri: str) -> None:
        """``s`` no longer subscribes to ``uri``."""
        self.unwatch(*self._detach(s, uri), uri)

    def _detach(self, s: _LegacySession, uri: str) -> tuple[str, str]:
        ws, node = s.uris.pop(uri)
        s.pending.pop(uri, None)
        subscribed = self._legacy.get(uri)
        if subscribed is not None:
            subscribed.discard(s)
            if not subscribed:
                del self._legacy[uri]
        return ws, node


def _connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection:
    """The connection a request came on (its ``exit_stack`` unwinds when the session ends).

    The SDK exposes it to lowlevel handlers only through the session proxy's private attribute.
    """
    conn = getattr(ctx.session, "_connection", None)
    if not isinstance(conn, Connection):  # pragma: no cover - a changed SDK
        raise MCPError(code=INTERNAL_ERROR, message="INTERNAL: this server cannot follow the session's end.")
    return conn


class _ListenSlots:
    """Listen streams open per key, at most ``cap`` each (None: no cap; keyless callers are never capped)."""

    def __init__(self) -> None:
        self.cap: int | None = None
        self.open: Counter[str] = Counter()

    @contextmanager
    def taken(self, caller: Identity) -> Iterator[None]:
        """Hold one of ``caller``'s slots for the block (LIMIT_EXCEEDED if none is free)."""
        key = caller.key_id if caller.authenticated else ""
        if key and self.cap is not None and self.open[key] >= self.cap:
            raise LimitExceeded(
                f"this key already holds {self.cap} listen streams open, the most one key may hold.",
                hint="Close listen streams you no longer read; one stream can listen to many resources at"
                f" once (up to {MAX_ITEMS} URIs).",
                details={"limit": self.cap},
            )
        self.open[key] += 1
        try:
            yield
        finally:
            self.open[key] -= 1
            if self.open[key] <= 0:
                del self.open[key]


#: Each server's listen slots (see :func:`limit_listens`).
_SLOTS: weakref.WeakKeyDictionary[MCPServer[Any], _ListenSlots] = weakref.WeakKeyDictionary()


def limit_listens(server: MCPServer[Any], per_key: int | None) -> None:
    """Let one key hold at most ``per_key`` listen streams on ``server`` at once (None: no cap)."""
    slots = _SLOTS.get(server)
    if slots is not None:  # a server without our resources has no listen streams of ours
        slots.cap = per_key


class _Reader:
    """Reads what a ``locks://`` URI names, for the caller's key (``local`` without HTTP)."""

    def __init__(self, service: LockService, local: Identity) -> None:
        self.service = service
        self.local = local

    async def workspace(self, workspace_id: str, *, limit: int = PAGE) -> LockPage:
        """The first page of the workspace's held locks."""
        return await self.service.list_locks(workspace_id, limit=limit, caller=current_caller(self.local))

    async def node(self, workspace_id: str, node_id: str) -> LockStatus:
        """The node's lock status."""
        return await self.service.status(workspace_id, node_id, caller=current_caller(self.local))

    async def check(self, uri: str) -> tuple[str, str]:
        """The workspace and node (``""``: the workspace) ``uri`` names, once the caller may read it.

        MCPError, as reading would answer, if not.
        """
        target = _parse(uri)
        try:
            if target is None:
                raise InvalidArgument(
                    f"'{uri[:200]}' is not a resource of this server.",
                    hint="Subscribe to locks://{workspace_id} or locks://{workspace_id}/{node_id}.",
                    details={"field": "uri"},
                )
            ws, node = target
            if node:
                st = await self.node(ws, node)
                return st.workspace_id, st.node_id
            return (await self.workspace(ws, limit=1)).workspace_id, ""
        except LockError as e:
            raise mcp_error(e, uri) from None


def register_resources(
    server: MCPServer[Any], service: LockService, bus: SubscriptionBus, *, local: Identity = LOCAL
) -> None:
    """Register the ``locks://`` resources on ``server``, and subscriptions to them in both eras.

    ``bus`` must be the subscription bus ``server`` was built with (``MCPServer(subscriptions=bus)``).
    """
    reader = _Reader(service, local)
    _register_reads(server, reader)
    slots = _SLOTS[server] = _ListenSlots()
    _register_subscriptions(server, reader, _Feed(service, bus), bus, slots)


def _register_reads(server: MCPServer[Any], reader: _Reader) -> None:
    """The two resource templates, read for the caller's key."""
    # Our own rules check the parameters (with coded errors), so the SDK's path checks would only
    # answer differently ("Unknown resource") for what check_node_id refuses anyway.
    ours = ResourceSecurity(exempt_params={"workspace_id", "node_id"})

    @server.resource(
        WORKSPACE_TEMPLATE,
        name="workspace_locks",
        title="Locks held in a workspace",
        description=f"The locks held in the workspace, ordered by node_id, as list_locks returns them (the first "
        f"{PAGE}; `truncated` says there are more: page on with list_locks). Subscribe to hear when a lock in it "
        "is granted, released, renewed, changes mode, expires or is broken.",
        mime_type="application/json",
        security=ours,
    )
    async def workspace_locks(workspace_id: str) -> str:
        try:
            page = await reader.workspace(workspace_id)
        except LockError as e:
            raise mcp_error(e, workspace_uri(workspace_id)) from None
        return json.dumps({**page.model_dump(mode="json"), "truncated": page.next_cursor is not None})

    @server.resource(
        NODE_TEMPLATE,
        name="node_status",
        title="Lock status of a file or folder",
        description="Whether the node (a workspace-relative path such as reports/q3.md, percent-encoded but for "
        "its '/') is locked, by whom, until when, and who waits, as check_lock_status returns it. Subscribe to "
        "hear when that changes: locks on it or on a folder above it, requests in line for it, and (for a "
        "folder) locks taken or ended below it.",
        mime_type="application/json",
        security=ours,
    )
    async def node_status(workspace_id: str, node_id: str) -> str:
        try:
            return (await reader.node(workspace_id, node_id)).model_dump_json()
        except LockError as e:
            raise mcp_error(e, node_uri(workspace_id, node_id)) from None


def _register_subscriptions(
    server: MCPServer[Any], reader: _Reader, feed: _Feed, bus: SubscriptionBus, slots: _ListenSlots
) -> None:
    """``subscriptions/listen`` (2026-07-28) and ``resources/(un)subscribe`` (2025-era sessions).

    Each checks what reading would, then follows the URIs through ``feed``. The SDK serves
    neither with our checks, so the lowlevel handlers are replaced (see :mod:`mcp_locks.faces.mcp.sdk`).
    """
    low = lowlevel(server)
    entry = low.get_request_handler("subscriptions/listen")
    listen = entry.handler if entry is not None else ListenHandler(bus)

    async def on_listen(ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams) -> HandlerResult:
        uris = list(dict.fromkeys(params.notifications.resource_subscriptions or ()))
        if len(uris) > MAX_ITEMS:
            err = LimitExceeded(f"one listen stream takes at most {MAX_ITEMS} resources (got {len(uris)}).")
            raise mcp_error(err, uris[0])
        caller = current_caller(reader.local)
        try:
            with slots.taken(caller):
                return await _listen(ctx, params, caller, uris)
        except LockError as e:
            raise refusal(e) from None

    async def _listen(
        ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams, caller: Identity, uris: list[str]
    ) -> HandlerResult:
        targets = [(uri, *await reader.check(uri)) for uri in uris]
        watched: list[tuple[str, str, str]] = []
        try:
            for uri, ws, node in targets:
                try:
                    await feed.watch(ws, node, uri)
                except LockError as e:
                    raise mcp_error(e, uri) from None
                watched.append((uri, ws, node))
            workspaces = {ws for _, ws, _ in targets}
            return await _while_reached(feed.service, caller, workspaces, partial(listen, ctx, params))
        finally:
            for uri, ws, node in watched:
                feed.unwatch(ws, node, uri)

    async def on_subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        ws, node = await reader.check(params.uri)
        try:
            await feed.subscribe(ctx, current_caller(reader.local), params.uri, ws, node)
        except LockError as e:
            raise mcp_error(e, params.uri) from None
        return EmptyResult()

    async def on_unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        feed.unsubscribe(ctx, params.uri)
        return EmptyResult()

    low.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, on_listen)
    low.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
    low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)


async def _while_reached(
    service: LockService, caller: Identity, workspaces: set[str], serve: Callable[[], Awaitable[HandlerResult]]
) -> HandlerResult:
    """``serve()``, cut short the moment ``caller``'s key is revoked or loses one of ``workspaces``.

    Cut short, the stream ends with the reason as its error (the client's listen raises it at once).
    """
    lost: str | None = None
    async with anyio.create_task_group() as tg:

        async def follow() -> None:
            nonlocal lost
            lost = await until_access_lost(service, caller, lambda: workspaces, RECHECK_ACCESS)
            tg.cancel_scope.cancel()

        tg.start_soon(follow)
        result = await serve()
        tg.cancel_scope.cancel()
    if lost is not None:
        raise access_lost(lost)
    return result
