"""The MCP face assembled: the server's instructions, its tools and the ``locks://`` resources.

Each domain module declares its tools (``locks``, ``observe``, ``admin``,
``files``); ``common`` holds what they share and ``results`` turns every
failure into a coded error result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.subscriptions import InMemorySubscriptionBus

from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp import admin, compat, files, locks, observe
from mcp_locks.faces.mcp.common import ToolSet, flat_schema
from mcp_locks.faces.mcp.progress import PROGRESS_EVERY, with_progress
from mcp_locks.faces.mcp.resources import register_resources
from mcp_locks.faces.mcp.results import ERROR_META_KEY, LockMCPServer, error_result

# PROGRESS_EVERY, with_progress, error_result, flat_schema: re-exported for the code that imports them from here.
__all__ = [
    "ERROR_META_KEY",
    "INSTRUCTIONS",
    "PROGRESS_EVERY",
    "build_mcp",
    "build_tools",
    "error_result",
    "flat_schema",
    "with_progress",
]

INSTRUCTIONS = """\
mcp-locks coordinates edits to shared files between agents.
Before editing a shared file: lock_file(node_id, mode="write") -> keep the returned token secret ->
read, change and write the file -> unlock_file(token). Use mode="read" to read while keeping writers out.
Leases end after `timeout` seconds (default 300) unless you call renew_lock; a lock whose lease ended is
gone and your next call with its token fails with LOCK_EXPIRED. If a file is locked you get LOCKED:
retry with wait=30 to wait in line (first come, first served), or work on something else.
To take several locks, use lock_files (all or none; it never deadlocks). Send request_id to make a
lock call safe to retry. Every grant carries a `fence` number that grows with every grant; pass it
along with writes to systems that can reject an older fence.
Your key decides who you are (the owner of your locks) and which workspaces you reach; list_workspaces
shows them. A token works only with the key that took its lock.
Files: the workspace's files are kept here and the locks are enforced on them. Edit with
lock_file -> read_file(token) -> write_file(token) -> unlock_file, or optimistically with
read_file -> write_file(if_version=<version read>) retrying on VERSION_MISMATCH. file_info says whether
you may edit a file now.
Errors start with a stable CODE and say what to do next.
"""


def build_mcp(
    service: LockService,
    *,
    name: str = "mcp-locks",
    version: str = "",
    extra_tools: Sequence[Tool] = (),
    local: Identity = LOCAL,
    compat_storage: bool = False,
) -> MCPServer[Any]:
    """An MCP server whose tools call ``service`` (plus ``extra_tools``, e.g. a benchmark's baseline).

    ``compat_storage`` adds the grouped ``storage`` tool (Fast.io's call shape; see ``compat``).
    """
    tools = [*build_tools(service, local=local, compat_storage=compat_storage), *extra_tools]
    bus = InMemorySubscriptionBus()
    server = LockMCPServer(name, version=version, instructions=INSTRUCTIONS, tools=tools, subscriptions=bus)
    register_resources(server, service, bus, local=local)
    return server


def build_tools(service: LockService, *, local: Identity = LOCAL, compat_storage: bool = False) -> list[Tool]:
    """The tools, bound to ``service``, acting for the caller's key (or ``local`` without HTTP).

    The SDK takes ready-made tools only when the server is built (``add_tool`` would
    rebuild them from the function and lose the flattened schemas), so the domains
    declare theirs on a :class:`ToolSet` and the server is built from its list.
    The order below is the order of tools/list, which clients see.
    """
    tools = ToolSet(local)
    locks.register(tools, service)
    observe.register(tools, service)
    locks.register_batch(tools, service)
    admin.register(tools, service)
    files.register(tools, service.files)
    if compat_storage:  # last: it is built from the tools it maps, and off by default to keep the list short
        compat.register(tools)
    return tools.tools
