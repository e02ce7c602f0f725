"""The Python client over MCP instead of REST: the same calls, leases and errors as :class:`LockClient`.

    async with McpLockClient("http://127.0.0.1:8765", key) as c:
        async with c.lock("reports/q3.md", mode="write", timeout=60, wait=30) as lease:
            write_report(fence=lease.fence)

It calls the lock tools over streamable HTTP at ``<url>/mcp`` (2026-07-28,
sessionless, unless ``mode="legacy"``), with the key as ``Authorization:
Bearer``. Holding, renewing, :class:`LeaseLost` and releasing are
:class:`LockClient`'s own; only the calls differ, and how a lost lease is
pushed: a guarded block's nodes are followed as ``locks://`` resources
(``subscriptions/listen``, or ``resources/subscribe`` in a legacy session), and
an update of one has the client ask ``check_lock_status`` with the lease's token
(:mod:`mcp_locks.client.push`). Coded tool errors, and the
server's HTTP refusals (``UNAUTHENTICATED``, ``RATE_LIMITED``, ...), raise the
same :class:`~mcp_locks.LockError` subclasses; a lost connection or a 502/503/504
is retried like REST (the connection is opened again), every lock call with a
fresh ``request_id``.

The MCP session runs in a task of its own: a transport that fails tears down
that task's scope, never the caller's.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import quote

import anyio
import anyio.abc
import httpx2
import stamina
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import (
    CONNECTION_CLOSED,
    REQUEST_TIMEOUT,
    CallToolResult,
    EmptyResult,
    ResourceUpdatedNotification,
    SubscribeRequest,
    SubscribeRequestParams,
    TextContent,
    UnsubscribeRequest,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_locks.client.errors import TRANSIENT_STATUS, Transient, decode_error
from mcp_locks.client.push import LeasePush, NoStream, Topic
from mcp_locks.client.rest import RELEASE_WITHIN, Lease, LockClient
from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import ERROR_META_KEY, ERROR_TABLE, Internal, LockError, Unavailable

__all__ = ["ERROR_META_KEY", "McpLockClient"]

log = logging.getLogger("mcp_locks.client")

#: ``CODE: message hint``, the text every tool error starts with.
_LEADING_CODE = re.compile(r"([A-Z][A-Z_]*): (.*)", re.DOTALL)


def _tool_error(name: str, result: CallToolResult) -> LockError:
    """The LockError a tool's error result describes: its ``_meta`` body, else the code its text starts with."""
    text = next((c.text for c in result.content if isinstance(c, TextContent)), "")
    err = decode_error((result.meta or {}).get(ERROR_META_KEY))
    if err is not None:
        return err
    leading = _LEADING_CODE.fullmatch(text)
    if leading is not None and leading[1] in ERROR_TABLE:
        # An older server or a proxy that dropped _meta: the class and the words, without hint or details.
        return ERROR_TABLE[leading[1]](leading[2])
    return Internal(f"the server answered {name} with an error: {text[:200]}")


@dataclass(eq=False)
class _Session:
    """One MCP client session, held open by a task of its own until ``stop`` (or until it fails)."""

    client: Client | None = None
    error: BaseException | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)


class McpLockClient(LockClient):
    """:class:`LockClient` speaking MCP; use as an async context manager (see the module docstring).

    ``url`` is the server's base URL (``<url>/mcp`` is called; a URL ending in ``/mcp`` is used as it is).
    ``mode`` picks the protocol era: ``"auto"`` (2026-07-28 when the server offers it) or ``"legacy"``
    (a 2025-11-25 session). ``transport`` replaces the HTTP transport (tests inject failures with it).
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        workspace_id: str = "default",
        timeout: float = 30.0,
        attempts: int = 5,
        clock: Clock | None = None,
        mode: Literal["auto", "legacy"] = "auto",
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, key, workspace_id=workspace_id, timeout=timeout, attempts=attempts, clock=clock)
        self.endpoint = self.url if self.url.endswith("/mcp") else f"{self.url}/mcp"
        self.mode = mode
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # No read timeout on the wire: a waiting lock call is silent until it is answered. Each call
        # has its own bound instead (timeout + wait), and an answer that does not come is retried.
        self._mcp_http = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(timeout, read=None),
            transport=transport,
            trust_env=False,
            event_hooks={"response": [self._on_response]},
        )
        self._session: _Session | None = None
        # The server's last HTTP refusal (the SDK reports every one as "Server returned an error response").
        self._refusals = 0
        self._refusal: LockError | Transient | None = None

    def _new_push(self) -> LeasePush:
        """The MCP client follows its leases' node resources."""
        return McpPush(self)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self._stack.push_async_callback(self._mcp_http.aclose)
        self._stack.push_async_callback(self._disconnect)  # first: the session ends before its HTTP client
        return self

    # ------------------------------------------------------------------ the session

    async def _on_response(self, response: httpx2.Response) -> None:
        if response.status_code < 400:
            return
        refusal: LockError | Transient | None
        if response.status_code in TRANSIENT_STATUS:
            refusal = Transient(f"HTTP {response.status_code}")
        else:
            await response.aread()
            try:
                refusal = decode_error(response.json())
            except ValueError:
                refusal = None
        self._refusals += 1
        self._refusal = refusal

    async def _run(self, s: _Session) -> None:
        try:
            transport = streamable_http_client(self.endpoint, http_client=self._mcp_http)
            async with Client(
                transport, mode=self.mode, read_timeout_seconds=self.timeout, message_handler=self._on_message
            ) as client:
                s.client = client
                s.ready.set()
                await s.stop.wait()
        except Exception as e:  # a failed transport ends the session (and only it); the next call reconnects
            s.error = e
            log.debug("MCP session to %s ended: %r", self.endpoint, e)
        finally:
            s.client = None
            if self._session is s:
                self._session = None
            s.ready.set()
            s.done.set()

    async def _on_message(self, message: object) -> None:
        """A legacy session's resource updates go to the push (other messages need nothing)."""
        if isinstance(message, ResourceUpdatedNotification) and isinstance(self._pusher, McpPush):
            self._pusher.updated(message.params.uri)

    async def _connected(self) -> Client:
        return (await self._open())[1]

    async def _open(self) -> tuple[_Session, Client]:
        """The live session and its client (opened if there is none); Transient if it cannot be, or the refusal."""
        s = self._session
        if s is None:
            tg = self._entered()
            s = self._session = _Session()
            refusals = self._refusals
            tg.start_soon(self._run, s)
            await s.ready.wait()
            if s.client is None:
                refusal = self._refusal if self._refusals != refusals else None
                if isinstance(refusal, LockError):
                    raise refusal  # e.g. UNAUTHENTICATED: retrying will not help
                raise Transient(f"could not open an MCP session: {s.error!r}")
        else:
            await s.ready.wait()
        if s.client is None:
            raise Transient("the MCP session ended")
        return s, s.client

    def _refused(self, e: MCPError, refusals: int) -> Exception:
        """What an MCP error means: worth retrying (Transient), the server's coded refusal, or NoStream."""
        if e.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
            return Transient(e.message)
        refusal = self._refusal if self._refusals != refusals else None
        if refusal is not None:
            return refusal
        return decode_error({"error": {"data": e.error.data}}) or NoStream(f"MCP error {e.code}: {e.message}")

    def _retire(self, client: Client) -> None:
        s = self._session
        if s is not None and s.client is client:
            self._session = None
            s.stop.set()

    async def _disconnect(self) -> None:
        s, self._session = self._session, None
        if s is not None:
            s.stop.set()
            with anyio.move_on_after(RELEASE_WITHIN, shield=True):
                await s.done.wait()

    async def _tool(self, name: str, args: dict[str, Any], wait: float = 0) -> dict[str, Any]:
        """Call a tool, retrying what may pass; a coded refusal raises its LockError."""
        args = {k: v for k, v in args.items() if v is not None}
        try:
            async for attempt in stamina.retry_context(on=Transient, attempts=self.attempts, timeout=None):
                with attempt:
                    result = await self._call_once(name, args, wait)
        except Transient as e:
            raise Unavailable(
                f"the lock server at {self.endpoint} did not answer: {e}.", hint="Check that it runs, then retry."
            ) from None
        if result.is_error:
            raise _tool_error(name, result)
        body: dict[str, Any] | None = result.structured_content
        if body is None:
            raise Internal(f"the server answered {name} without a structured result.")
        return body

    async def _call_once(self, name: str, args: dict[str, Any], wait: float) -> CallToolResult:
        client = await self._connected()
        refusals = self._refusals
        try:
            return await client.call_tool(name, args, read_timeout_seconds=self.timeout + wait)
        except MCPError as e:
            if e.code == CONNECTION_CLOSED:
                self._retire(client)
                raise Transient(e.message) from None
            if e.code == REQUEST_TIMEOUT:
                raise Transient(e.message) from None
            refusal = self._refusal if self._refusals != refusals else None
            if refusal is not None:
                raise refusal from None
            raise Internal(f"the server answered {name} with MCP error {e.code}: {e.message}") from None

    # ------------------------------------------------------------------ calls

    async def _op(self, tool: str, workspace_id: str, args: dict[str, Any], wait: float = 0) -> Any:
        """One operation as its tool call (the public calls, shared with :class:`LockClient`, build ``args``)."""
        if tool == "renew_lock":
            args.pop("node_id")  # the tool finds the lock by its token
        return await self._tool(tool, {"workspace_id": workspace_id, **args}, wait=wait)


def node_uri(workspace_id: str, node_id: str) -> str:
    """A node's ``locks://`` resource, spelled as the server spells it (subscriptions match URIs exactly)."""
    return f"locks://{workspace_id}/{quote(node_id, safe='/')}"


#: Most times one stream follows a change of the held leases before it starts over (each waits for a change).
_MAX_CHANGES = 1_000_000
#: Longest a legacy session spends unsubscribing from the nodes once no block holds them (seconds).
UNSUBSCRIBE_WITHIN = 2.0


class McpPush(LeasePush):
    """Follows the held leases' node resources over the client's MCP connection: one stream for the client.

    2026-07-28: one ``subscriptions/listen`` stream over every held node; when the nodes change, a new
    stream opens before the old one closes, so no update falls in between. 2025-era sessions:
    ``resources/subscribe`` and ``resources/unsubscribe`` as nodes come and go, on the session the calls
    use. An update says only that a node changed: the leases on it are checked with ``check_lock_status``.
    """

    def __init__(self, client: McpLockClient) -> None:
        super().__init__(client)
        self.mcp = client

    def topic_of(self, lease: Lease) -> str:
        """One stream for the client."""
        return ""

    def added(self, t: Topic, lock_id: str, since: int) -> None:
        """Subscribe to its node (if new), then check it once."""
        t.awaiting.add(lock_id)  # checked once its node is subscribed: an update before that went unheard
        t.changed.set()

    def updated(self, uri: str) -> None:
        """A followed node changed: check the leases held on it."""
        t = self._topics.get("")
        if t is not None:
            t.check({lock_id for lock_id, (lease, _) in self._held.items() if _uri(lease) == uri})

    def uris(self) -> list[str]:
        """The held leases' node resources."""
        return sorted({_uri(lease) for lease, _ in self._held.values()})

    def to_cover(self, t: Topic, first: bool) -> set[str]:
        """Taken with the URIs about to be subscribed: the leases to check once they are (all, the first time).

        A lease added after this waits for the next round, whose subscription covers its node.
        """
        ready = self.lock_ids(t) if first else set(t.awaiting)
        t.awaiting -= ready
        return ready

    def covered(self, t: Topic, ready: set[str], first: bool) -> None:
        """The stream now covers the nodes of ``ready``: check those leases once."""
        if first:
            t.live = True
            self.connects += 1
        t.check(ready)

    async def follow(self, t: Topic) -> None:
        """Subscribe to the held nodes on the live session until the stream or the session ends."""
        refusals = self.mcp._refusals
        session, client = await self.mcp._open()
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:  # errors leave it as themselves, never as a group
            try:
                if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                    await self._listen(t, client, tg)
                else:
                    await self._subscribe(t, session, client, tg)
            except MCPError as e:
                failure = self.mcp._refused(e, refusals)
            except Exception as e:  # handed on below, outside the task group
                failure = e
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _listen(self, t: Topic, client: Client, tg: anyio.abc.TaskGroup) -> None:
        current: anyio.CancelScope | None = None
        listening: list[str] | None = None
        for n in range(_MAX_CHANGES):
            changed = t.changes()
            want, ready = self.uris(), self.to_cover(t, first=n == 0)
            if want and want != listening:
                scope = await tg.start(self._listen_once, t, client, want)
                if current is not None:
                    current.cancel()  # only now: the new stream is acknowledged
                current, listening = scope, want
            self.covered(t, ready, first=n == 0)
            await changed.wait()
            if t.dead:
                raise Transient("the listen stream ended")

    async def _listen_once(
        self, t: Topic, client: Client, uris: list[str], *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]
    ) -> None:
        """One listen stream over ``uris``, started once the server acknowledged it."""
        started = False
        with anyio.CancelScope() as scope:
            try:
                async with client.listen(resource_subscriptions=uris) as sub:
                    task_status.started(scope)
                    started = True
                    async for event in sub:
                        if isinstance(event, ResourceUpdated):
                            self.updated(event.uri)
            except Exception as e:
                if not started:
                    raise
                log.debug("listen stream for lease loss ended: %r", e)
        if not scope.cancel_called:  # it ended by itself: the follower reconnects
            t.dead = True
            t.changed.set()

    async def _subscribe(self, t: Topic, session: _Session, client: Client, tg: anyio.abc.TaskGroup) -> None:
        async def session_ended() -> None:
            await session.done.wait()
            t.dead = True
            t.changed.set()

        tg.start_soon(session_ended)
        subscribed: set[str] = set()
        try:
            for n in range(_MAX_CHANGES):
                changed = t.changes()
                want, ready = set(self.uris()), self.to_cover(t, first=n == 0)
                for uri in sorted(want - subscribed):
                    subscribe = SubscribeRequest(params=SubscribeRequestParams(uri=uri))
                    await client.session.send_request(subscribe, EmptyResult)
                    subscribed.add(uri)
                await _unsubscribe(client, subscribed - want, subscribed)
                self.covered(t, ready, first=n == 0)
                await changed.wait()
                if t.dead:
                    raise Transient("the MCP session ended")
        finally:
            # The session outlives this stream (the calls use it): leave it subscribed to nothing (a session
            # takes a bounded number of subscriptions), briefly, even when stopped by the last block's end.
            if subscribed and not session.done.is_set():
                with anyio.move_on_after(UNSUBSCRIBE_WITHIN, shield=True):
                    try:
                        await _unsubscribe(client, set(subscribed), subscribed)
                    except Exception as e:  # the session is going: its subscriptions go with it
                        log.debug("could not unsubscribe: %r", e)


async def _unsubscribe(client: Client, uris: set[str], subscribed: set[str]) -> None:
    """Unsubscribe the session from ``uris`` (taking each out of ``subscribed``)."""
    for uri in sorted(uris):
        await client.session.send_request(UnsubscribeRequest(params=UnsubscribeRequestParams(uri=uri)), EmptyResult)
        subscribed.discard(uri)


def _uri(lease: Lease) -> str:
    return node_uri(lease.workspace_id, lease.node_id)
