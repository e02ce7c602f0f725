"""The attacker's isolation checks on the PostgreSQL store too: the same tests, run on a server backed by it.

The tests of keys, workspace isolation and tokens (tests/test_auth.py, tests/test_files.py) run on the
memory store, where the face tests live. Here they are imported as they are and run again on a server
whose keys, workspaces and locks live in PostgreSQL (a fresh schema per test), over every face: the
store answers the key lookups and the workspace checks, so isolation must hold there as well. One more
check, over both stores, asks every kind of call about a workspace the key does not reach.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mcp_locks.stores.base import MemoryStore, Store
from mcp_locks.stores.postgres import PostgresStore

from .conftest import _keyed_env
from .faces import Env, Face
from .pg import PG_URL, pg_schema

# Run here on PostgreSQL, exactly as written (pytest collects what the module's namespace holds).
from .test_auth import (
    test_a_bad_key_is_unauthenticated,
    test_a_key_with_a_known_id_but_a_wrong_secret_is_unauthenticated,
    test_a_revoked_key_stops_working_at_once,
    test_a_rotated_key_finds_the_old_keys_locks_broken_by_the_revocation,
    test_a_workspace_the_key_does_not_reach_is_forbidden_whether_or_not_it_exists,
    test_an_mcp_session_opened_with_one_key_refuses_another,
    test_another_agents_token_is_forbidden_and_the_lock_stays,
    test_force_unlock_needs_an_admin_key,
    test_the_owner_is_the_keys_agent_and_agent_names_a_session_below_it,
    test_workspaces_are_listed_only_where_the_key_reaches,
)
from .test_files import test_a_key_that_does_not_reach_the_workspace_cannot_touch_its_files

__all__ = [
    "test_a_bad_key_is_unauthenticated",
    "test_a_key_that_does_not_reach_the_workspace_cannot_touch_its_files",
    "test_a_key_with_a_known_id_but_a_wrong_secret_is_unauthenticated",
    "test_a_revoked_key_stops_working_at_once",
    "test_a_rotated_key_finds_the_old_keys_locks_broken_by_the_revocation",
    "test_a_workspace_the_key_does_not_reach_is_forbidden_whether_or_not_it_exists",
    "test_an_mcp_session_opened_with_one_key_refuses_another",
    "test_another_agents_token_is_forbidden_and_the_lock_stays",
    "test_force_unlock_needs_an_admin_key",
    "test_the_owner_is_the_keys_agent_and_agent_names_a_session_below_it",
    "test_workspaces_are_listed_only_where_the_key_reaches",
]

pytestmark = pytest.mark.anyio


@pytest.fixture
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """The keyed server of tests/conftest.py, on PostgreSQL (or the store a test names with ``indirect``)."""
    kind = getattr(request, "param", "postgresql")
    if kind == "memory":
        async with _keyed_env(MemoryStore(), tmp_path) as e:
            yield e
        return
    with pg_schema() as schema:
        store: Store = PostgresStore(PG_URL, schema=schema, db_clock=False)
        async with _keyed_env(store, tmp_path) as e:
            yield e


#: Every kind of call that names a workspace: none may tell whether a workspace the key does not reach exists.
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("lock", {"node_id": "a.md"}),
    ("status", {"node_id": "a.md"}),
    ("list_locks", {}),
    ("get_audit_log", {}),
    ("read_file", {"node_id": "a.md"}),
    ("file_info", {"node_id": "a.md"}),
    ("list_files", {}),
    ("write_file", {"node_id": "a.md", "content": "x", "if_version": 0}),
    ("delete_file", {"node_id": "a.md", "if_version": 1}),
]


@pytest.mark.parametrize("env", ["memory", "postgresql"], indirect=True)
async def test_no_call_tells_a_key_whether_a_workspace_it_does_not_reach_exists(face: Face) -> None:
    env = face.env
    await env.service.lock("team", "a.md", "write", agent="carol")  # something there to learn about
    for op, args in CALLS:
        answers = []
        for workspace in ("team", "nope"):
            out = await face(env.bob, op, workspace_id=workspace, **args)
            assert out.result is None, (op, workspace, out.result)
            answers.append((out.code, out.message, out.hint, out.details))
        existing, missing = answers
        assert existing[0] == "FORBIDDEN", (op, existing)
        # The same words but the workspace's name, whether or not it exists.
        assert existing == tuple(x.replace("nope", "team") if isinstance(x, str) else _renamed(x) for x in missing), op


def _renamed(details: object) -> object:
    if isinstance(details, dict):
        return {k: "team" if v == "nope" else v for k, v in details.items()}
    return details
