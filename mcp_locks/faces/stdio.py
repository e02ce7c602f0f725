"""MCP over stdio, for clients that can only launch a command (Claude Desktop-style configs).

Two ways:

* the bridge (``mcp-locks stdio --url URL --key KEY``): a stdio MCP server whose
  tools are the remote server's, each call forwarded over streamable HTTP with the
  agent's key, so every agent on a machine shares one lock table. Progress from a
  waiting call is passed back; cancelling a call cancels the remote call (which
  leaves the line).
* embedded (``mcp-locks stdio --embedded --data-dir PATH``): the engine in this
  process, for a single client; the data dir is claimed like ``serve`` claims it.
"""

from __future__ import annotations

from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, InputRequiredResult, Tool

from mcp_locks.core.errors import Unavailable
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.results import error_result
from mcp_locks.faces.mcp.tools import INSTRUCTIONS, build_mcp

__all__ = ["BridgeServer", "NoServer", "run_bridge", "run_embedded"]


class NoServer(Exception):
    """Nothing usable answers at the URL (the message says how to start one)."""


class BridgeServer(MCPServer[Any]):
    """A stdio MCP server that lists the remote server's tools and forwards every call to it."""

    def __init__(self, remote: Client, tools: list[Tool], instructions: str | None, version: str) -> None:
        super().__init__("mcp-locks", version=version, instructions=instructions or INSTRUCTIONS)
        self.remote = remote
        self.remote_tools = tools
        self._schemas = {t.name: t.input_schema for t in tools}

    async def list_tools(self) -> list[Tool]:
        """The remote server's tools, as it describes them."""
        return self.remote_tools

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        return self._schemas.get(name)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Forward the call; the remote answer comes back unchanged.

        A coded error keeps its ``isError``, its text and its ``_meta`` body, and gets no
        structuredContent (hosts check that against the output schema, even on errors).
        """

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            if context is not None:
                await context.report_progress(progress, total, message)

        try:
            return await self.remote.call_tool(name, arguments, progress_callback=progress)
        except (httpx2.TransportError, MCPError) as e:
            # The server went away (or restarted): a coded answer, not a dead bridge.
            return error_result(
                Unavailable(
                    f"the mcp-locks server did not answer this call ({type(e).__name__}).",
                    hint="Check that the server runs; if it restarted, restart this client's MCP connection.",
                )
            )


def _no_server(url: str, why: str) -> NoServer:
    base = url.removesuffix("/mcp")
    port = base.rsplit(":", 1)[-1] if base.count(":") == 2 else "8765"
    return NoServer(
        f"no mcp-locks server answers at {url} ({why}).\n"
        f"Start one in another terminal:   mcp-locks serve --port {port}\n"
        "then give this agent a key:      mcp-locks keys create --agent NAME --workspace default\n"
        "and pass it here with --key (or MCP_LOCKS_KEY). For one client without a server,\n"
        "use:                             mcp-locks stdio --embedded --data-dir PATH"
    )


async def run_bridge(url: str, key: str | None, version: str) -> None:
    """Serve stdio until the client hangs up, forwarding every tool call to ``url``."""
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/mcp"):
        endpoint += "/mcp"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # trust_env=False: the key must never go to a proxy named in the environment.
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=None), trust_env=False) as http:
        try:
            probe = await http.get(endpoint.removesuffix("/mcp") + "/healthz")
            healthy = probe.status_code == 200 and probe.json().get("status") == "ok"
        except httpx2.TransportError as e:
            raise _no_server(endpoint, str(e) or type(e).__name__) from None
        except ValueError:
            healthy = False
        if not healthy:
            raise _no_server(endpoint, f"/healthz answered {probe.status_code}, not an mcp-locks server")
        if not key:
            raise NoServer("the server needs an API key: pass --key KEY (or set MCP_LOCKS_KEY).")
        async with Client(streamable_http_client(endpoint, http_client=http)) as remote:
            listed = await remote.list_tools()
            bridge = BridgeServer(remote, listed.tools, remote.instructions, version)
            await bridge.run_stdio_async()


async def run_embedded(service: LockService, version: str) -> None:
    """Serve stdio with the engine in this process (the caller is trusted: it is the local user)."""
    async with service:
        await build_mcp(service, version=version).run_stdio_async()
