"""Clients for mcp-locks: :class:`LockClient` over REST, :class:`McpLockClient` over MCP.

    async with LockClient("http://127.0.0.1:8765", key) as c:
        async with c.lock("reports/q3.md", mode="write", timeout=60, wait=30) as lease:
            write_report(fence=lease.fence)

A lease held in an ``async with`` is renewed in the background; if it is lost for good the body is
cancelled and :class:`LeaseLost` is raised. Refusals raise the server's :class:`~mcp_locks.LockError`
subclasses (both clients read the server's error bodies with :func:`mcp_locks.client.errors.decode_error`).
Importing this package loads no HTTP library and no server module: each client loads on first use (the REST
client with httpx2 and anyio, the MCP client with the MCP SDK), so :mod:`mcp_locks.client.errors` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp_locks.client.mcp import McpLockClient
    from mcp_locks.client.rest import Lease, LeaseLost, LockClient, SyncLockClient

__all__ = ["Lease", "LeaseLost", "LockClient", "McpLockClient", "SyncLockClient"]

#: The module each public name is loaded from when it is first asked for (PEP 562).
_WHERE = {
    "Lease": "mcp_locks.client.rest",
    "LeaseLost": "mcp_locks.client.rest",
    "LockClient": "mcp_locks.client.rest",
    "SyncLockClient": "mcp_locks.client.rest",
    "McpLockClient": "mcp_locks.client.mcp",
}


def __getattr__(name: str) -> Any:
    """Load a client (and its HTTP stack) only when it is asked for."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'mcp_locks.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # asked once: later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The public names and the submodules loaded so far."""
    return sorted({*__all__, *(k for k in globals() if not k.startswith("_"))})
