"""Clients for mcp-locks: :class:`LockClient` over REST, :class:`McpLockClient` over MCP.

    async with LockClient("http://127.0.0.1:8765", key) as c:
        async with c.lock("reports/q3.md", mode="write", timeout=60, wait=30) as lease:
            write_report(fence=lease.fence)

A lease held in an ``async with`` is renewed in the background; if it is lost for good the body is
cancelled and :class:`LeaseLost` is raised. Refusals raise the server's :class:`~mcp_locks.LockError`
subclasses (both clients read the server's error bodies with :func:`mcp_locks.client.errors.decode_error`).
Importing this package loads no server module (the MCP client loads the MCP SDK on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp_locks.client.rest import Lease, LeaseLost, LockClient, SyncLockClient

if TYPE_CHECKING:
    from mcp_locks.client.mcp import McpLockClient

__all__ = ["Lease", "LeaseLost", "LockClient", "McpLockClient", "SyncLockClient"]


def __getattr__(name: str) -> Any:
    """Load :class:`McpLockClient` (and with it the MCP SDK) only when it is asked for."""
    if name == "McpLockClient":
        from mcp_locks.client.mcp import McpLockClient

        return McpLockClient
    raise AttributeError(f"module 'mcp_locks.client' has no attribute {name!r}")
