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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Self

import anyio
import httpx2
import stamina
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, TextContent

from ._clock import Clock
from ._errors import ERROR_TABLE, Internal, LockError, LockNotFound, Unavailable
from ._names import check_node_id
from .client import _TRANSIENT_STATUS, RELEASE_WITHIN, Lease, LockClient, _Transient

__all__ = ["McpLockClient"]

log = logging.getLogger("mcp_locks.client")


def _error_from(body: Any) -> LockError | None:
    """The LockError an ``{"error": {...}}`` body (REST, or a tool's structured content) describes."""
    try:
        err = body["error"]
        cls = ERROR_TABLE.get(err["code"], Internal)
        return cls(err["message"], hint=err.get("hint", ""), details=err.get("details") or {})
    except (KeyError, TypeError):
        return None


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
        self._refusal: LockError | _Transient | None = None

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self._stack.push_async_callback(self._mcp_http.aclose)
        self._stack.push_async_callback(self._disconnect)  # first: the session ends before its HTTP client
        return self

    # ------------------------------------------------------------------ the session

    async def _on_response(self, response: httpx2.Response) -> None:
        if response.status_code < 400:
            return
        refusal: LockError | _Transient | None
        if response.status_code in _TRANSIENT_STATUS:
            refusal = _Transient(f"HTTP {response.status_code}")
        else:
            await response.aread()
            try:
                refusal = _error_from(response.json())
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
                raise _Transient(f"could not open an MCP session: {s.error!r}")
        else:
            await s.ready.wait()
        if s.client is None:
            raise _Transient("the MCP session ended")
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
            async for attempt in stamina.retry_context(on=_Transient, attempts=self.attempts, timeout=None):
                with attempt:
                    result = await self._call_once(name, args, wait)
        except _Transient as e:
            raise Unavailable(
                f"the lock server at {self.endpoint} did not answer: {e}.", hint="Check that it runs, then retry."
            ) from None
        body: dict[str, Any] | None = result.structured_content
        if result.is_error:
            text = next((c.text for c in result.content if isinstance(c, TextContent)), "")
            raise _error_from(body) or Internal(f"the server answered {name} with an error: {text[:200]}")
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
                raise _Transient(e.message) from None
            if e.code == REQUEST_TIMEOUT:
                raise _Transient(e.message) from None
            refusal = self._refusal if self._refusals != refusals else None
            if refusal is not None:
                raise refusal from None
            raise Internal(f"the server answered {name} with MCP error {e.code}: {e.message}") from None

    # ------------------------------------------------------------------ calls

    def _ws(self, workspace_id: str | None) -> str:
        return workspace_id or self.workspace_id

    async def acquire(
        self,
        node_id: str,
        *,
        mode: Literal["read", "write"] = "write",
        timeout: float = 300,
        wait: float = 0,
        depth: Literal["node", "tree"] = "node",
        note: str | None = None,
        workspace_id: str | None = None,
    ) -> Lease:
        """Take one lock and return its lease (no background renewal; see :meth:`lock`)."""
        args = {
            "node_id": check_node_id(node_id),
            "workspace_id": self._ws(workspace_id),
            "mode": mode,
            "timeout": timeout,
            "wait": wait,
            "depth": depth,
            "note": note,
            "request_id": uuid.uuid4().hex,  # a retried request gets the same grant back
        }
        sent_at = self.clock.now()
        grant = await self._tool("lock_file", args, wait=wait)
        return Lease._of(grant, self.clock.now() if wait else sent_at)

    async def acquire_many(
        self,
        items: Sequence[tuple[str, Literal["read", "write"]] | dict[str, str]],
        *,
        timeout: float = 300,
        wait: float = 0,
        note: str | None = None,
        workspace_id: str | None = None,
    ) -> list[Lease]:
        """Take every lock in ``items`` (``(node_id, mode)`` pairs or ``{node_id, mode, depth}``), all or none."""
        listed = [i if isinstance(i, dict) else {"node_id": i[0], "mode": i[1]} for i in items]
        for item in listed:
            check_node_id(item.get("node_id"))
        args = {
            "items": listed,
            "workspace_id": self._ws(workspace_id),
            "timeout": timeout,
            "wait": wait,
            "note": note,
            "request_id": uuid.uuid4().hex,
        }
        sent_at = self.clock.now()
        result = await self._tool("lock_files", args, wait=wait)
        at = self.clock.now() if wait else sent_at
        return [Lease._of(g, at) for g in result["locks"]]

    async def renew(self, lease: Lease, timeout: float | None = None) -> Lease:
        """Restart ``lease``; updates and returns it."""
        sent_at = self.clock.now()
        args = {"token": lease.token, "workspace_id": lease.workspace_id, "timeout": timeout}
        result = await self._tool("renew_lock", args)
        lease.expires_at = datetime.fromisoformat(result["expires_at"])
        lease.timeout = result["timeout"]
        lease.local_deadline = sent_at + lease.timeout
        return lease

    async def release(self, lease: Lease) -> None:
        """Release ``lease``; releasing twice is not an error (see :meth:`LockClient.release`)."""
        args = {"token": lease.token, "workspace_id": lease.workspace_id, "node_id": lease.node_id}
        try:
            await self._tool("unlock_file", args)
        except LockNotFound as e:
            if e.details.get("lock_id") != lease.lock_id:
                raise

    async def status(
        self, node_id: str, *, workspace_id: str | None = None, lease: Lease | None = None
    ) -> dict[str, Any]:
        """What check_lock_status answers (with ``lease``: also whether you still hold it, as ``yours``)."""
        ws = workspace_id or (lease.workspace_id if lease is not None else None)
        args = {"node_id": check_node_id(node_id), "workspace_id": self._ws(ws)}
        if lease is not None:
            args["token"] = lease.token
        return await self._tool("check_lock_status", args)

    async def list_locks(
        self,
        prefix: str = "",
        *,
        owner: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        workspace_id: str | None = None,
    ) -> dict[str, Any]:
        """One page of held locks (``locks`` and ``next_cursor``), as list_locks answers."""
        args = {
            "workspace_id": self._ws(workspace_id),
            "prefix": prefix,
            "owner": owner,
            "limit": limit,
            "cursor": cursor,
        }
        return await self._tool("list_locks", args)
