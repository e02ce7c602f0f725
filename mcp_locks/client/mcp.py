"""The Python client over MCP instead of REST: the same calls, leases and errors as :class:`LockClient`.

    async with McpLockClient("http://127.0.0.1:8765", key) as c:
        async with c.lock("reports/q3.md", mode="write", timeout=60, wait=30) as lease:
            write_report(fence=lease.fence)

It calls the lock tools over streamable HTTP at ``<url>/mcp`` (2026-07-28,
sessionless, unless ``mode="legacy"``), with the key as ``Authorization:
Bearer``. Holding, renewing, :class:`LeaseLost` and releasing are
:class:`LockClient`'s own; only the calls differ. Coded tool errors, and the
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

import anyio
import httpx2
import stamina
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, TextContent

from mcp_locks.client.errors import TRANSIENT_STATUS, Transient, decode_error
from mcp_locks.client.rest import RELEASE_WITHIN, LockClient
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
            async with Client(transport, mode=self.mode, read_timeout_seconds=self.timeout) as client:
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

    async def _connected(self) -> Client:
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
        return s.client

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
