"""The one place mcp-locks reaches into the MCP SDK's private attributes, and why.

``MCPServer`` (SDK 2.3) has no public accessor for the low-level server it wraps, and two things need it:
the ``subscriptions/listen`` and ``resources/(un)subscribe`` handlers, which the SDK serves without our
access checks, are replaced on it; and the legacy ``/sse`` endpoint drives it the way the SDK's own
``sse_app()`` does (whose route would answer a second time once the stream ends).
"""

from __future__ import annotations

from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer

__all__ = ["lowlevel"]


def lowlevel(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server behind ``server`` (a private attribute: see the module docstring)."""
    return server._lowlevel_server
