"""Every tool's annotations say what it really does, and a new tool needs a deliberate entry here.

Hosts act on these hints (asking before a destructive call, retrying an idempotent one), so each is
set explicitly: a missing hint would be read as its default, which is "destructive" and "open world".
The meaning of each hint is the MCP specification's: readOnly = changes nothing; destructive = may
remove or replace what exists (false: only adds or extends); idempotent = repeating the same call has
no further effect on the server's state (its answer may differ, e.g. an error the second time);
openWorld = reaches beyond this server. No tool reaches beyond this server's own locks and files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mcp import Client
from mcp_types import Tool

from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.tools import build_mcp
from mcp_locks.stores.base import MemoryStore

pytestmark = pytest.mark.anyio

RO = (True, False, True, False)  # (readOnly, destructive, idempotent, openWorld)

#: (readOnly, destructive, idempotent, openWorld) for every tool, the compatibility tool included.
EXPECTED: dict[str, tuple[bool, bool, bool, bool]] = {
    # A new lock each time: without request_id a repeat takes another (or is refused). Adds, destroys nothing.
    "lock_file": (False, False, False, False),
    # Releases the caller's own lock (the token proves it); the file is untouched; a repeat is LOCK_NOT_FOUND.
    "unlock_file": (False, False, True, False),
    # Sets the lease to end `timeout` s from now: extends, never removes; a repeat sets the same deadline.
    "renew_lock": (False, False, True, False),
    "check_lock_status": RO,  # reports, takes no lock
    "list_locks": RO,  # reports
    "lock_files": (False, False, False, False),  # as lock_file, for several nodes at once
    "unlock_files": (False, False, True, False),  # as unlock_file, for several tokens
    # Makes a workspace; a repeat is ALREADY_EXISTS and changes nothing.
    "create_workspace": (False, False, True, False),
    "list_workspaces": RO,  # reports
    # Breaks another agent's lock (it loses it): destructive; a repeat finds it gone.
    "force_unlock": (False, True, True, False),
    "read_file": RO,  # reads content, records nothing
    # Replaces the whole file, and every write makes a new version (a repeat is a further change).
    "write_file": (False, True, False, False),
    # Removes the file; a repeat finds it gone (NOT_FOUND) or its version moved on (VERSION_MISMATCH).
    "delete_file": (False, True, True, False),
    "list_files": RO,  # reports
    "file_info": RO,  # "changes nothing"
    "get_audit_log": RO,  # reads the log
    # Opt-in Fast.io shape: the union of its actions (write_file and delete_file destroy, lock_file adds).
    "storage": (False, True, False, False),
}


@pytest.fixture
async def listed() -> AsyncIterator[dict[str, Tool]]:
    async with LockService(MemoryStore()) as service, Client(build_mcp(service, compat_storage=True)) as c:
        yield {t.name: t for t in (await c.list_tools()).tools}


async def test_every_tool_has_a_deliberate_entry_and_no_entry_is_stale(listed: dict[str, Tool]) -> None:
    assert set(listed) - set(EXPECTED) == set(), "a new tool: decide its hints and add it to EXPECTED"
    assert set(EXPECTED) - set(listed) == set(), "a tool was removed or renamed: update EXPECTED"


async def test_every_tool_carries_all_four_hints_as_expected(listed: dict[str, Tool]) -> None:
    for name, tool in listed.items():
        a = tool.annotations
        assert a is not None, name
        got = (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
        assert None not in got, f"{name} leaves a hint to the host's default: {got}"
        assert got == EXPECTED[name], f"{name}: {got} != {EXPECTED[name]}"
