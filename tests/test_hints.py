"""Hints are face-neutral in the engine and said in each face's own words: a tool for an agent, a route for REST."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mcp import Client

from mcp_locks.core.errors import LockNotFound, render_hint
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.tools import build_mcp
from mcp_locks.faces.rest.hints import REST_WORDS
from mcp_locks.faces.rest.routes import build_ops
from mcp_locks.stores.base import MemoryStore

from .faces import Face

pytestmark = pytest.mark.anyio

SOURCE = Path(__file__).parents[1] / "mcp_locks"
OP_MARK = re.compile(r"\{op:([a-z_]+)\}")


def _named_in_hints() -> set[str]:
    return {m for p in SOURCE.rglob("*.py") for m in OP_MARK.findall(p.read_text()) if p.name != "errors.py"}


def _routes() -> set[str]:
    ops = build_ops(LockService(MemoryStore()))
    return {f"{op.method} " + re.sub(r"\{(\w+):\w+\}", r"{\1}", op.path) for op in ops}


def test_a_hint_says_each_operation_in_the_words_it_is_given_and_in_its_own_name_otherwise() -> None:
    hint = "Take a new lock with {op:lock_file}; see {op:list_locks}. Keep {node_id} as it is."
    assert render_hint(hint) == "Take a new lock with lock_file; see list_locks. Keep {node_id} as it is."
    said = "Take a new lock with POST /lock; see list_locks. Keep {node_id} as it is."
    assert render_hint(hint, {"lock_file": "POST /lock"}) == said


def test_every_route_the_rest_vocabulary_names_is_a_route_the_face_serves() -> None:
    assert set(REST_WORDS.values()) <= _routes(), set(REST_WORDS.values()) - _routes()


def test_every_operation_a_hint_names_has_words_for_rest_callers() -> None:
    named = _named_in_hints()
    assert named, "no hint names an operation: the marker pattern changed?"
    assert named <= set(REST_WORDS), named - set(REST_WORDS)


async def test_every_operation_a_hint_names_is_an_mcp_tool_or_has_words_for_agents() -> None:
    async with LockService(MemoryStore()) as service, Client(build_mcp(service)) as c:
        tools = {t.name for t in (await c.list_tools()).tools}
    from mcp_locks.faces.mcp.results import MCP_WORDS

    assert _named_in_hints() <= tools | set(MCP_WORDS), _named_in_hints() - tools - set(MCP_WORDS)


def test_a_refusal_rendered_for_rest_names_no_tool() -> None:
    err = LockNotFound("gone.", hint="Take a new lock with {op:lock_file}.")
    route = "POST /v1/workspaces/{workspace_id}/nodes/{node_id}/lock"
    assert err.to_dict(REST_WORDS)["hint"] == f"Take a new lock with {route}."


async def test_a_refusal_names_the_tool_to_an_agent_and_the_route_to_a_rest_caller(face: Face) -> None:
    await face(face.env.alice, "lock", node_id="h.md", mode="write")
    got = await face(face.env.alice, "renew", node_id="h.md", token="mlt_" + "x" * 43)
    assert got.code == "LOCK_NOT_FOUND"
    if face.name == "rest":
        assert "POST /v1/workspaces/{workspace_id}/nodes/{node_id}/lock" in got.hint
        assert "lock_file" not in got.hint
    else:
        assert "Take a new lock with lock_file" in got.hint
        assert "/v1/" not in got.hint
