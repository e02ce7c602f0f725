"""Hypothesis over every MCP tool's arguments, drawn from the input schemas the SDK's in-memory client lists.

Each example runs up to a dozen calls on one fresh service (seeded with files and a lock), as an admin,
an agent and an unauthenticated local caller. Arguments start schema-valid (drawn from the schema) and
are then bent: values swapped for real tokens, ids and versions that earlier calls returned, for wrong
types, nulls, huge or hostile strings and nested junk, or left out, plus names no tool has. Whatever
comes in, a call answers a result (never a protocol error), a success carries structured content, an
error starts with a stable code from the error table (never INTERNAL), nothing quotes a traceback, and
the result could be sent over the wire (JSON).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

from mcp_locks import ERROR_TABLE
from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.engine.lock_service import LockService, ServiceLimits
from mcp_locks.faces.mcp.tools import build_mcp
from mcp_locks.stores.base import MemoryStore

from .helpers import STEP

pytestmark = pytest.mark.slow

#: Examples, each up to CALLS calls on a fresh service: together they bound the budget (~30 s here).
EXAMPLES = 600
CALLS = 12
#: Callers: the tools act for the in-memory server's local identity.
CALLERS = {
    "admin": Identity("k-admin", "root", "admin", ()),
    "agent": Identity("k-agent", "alice", "agent", ("default",)),
    "local": LOCAL,
}
#: Waits are real (a manual clock would never end one) and short: a wait in line costs at most this.
MAX_WAIT = 0.05


class CurrentService:
    """Stands for the running example's service, so the MCP servers (slow to build) are built once.

    The tools look the service up on each call; the file store they take once, when built, so it is
    looked up through a stand-in of its own.
    """

    def __init__(self) -> None:
        self.service = LockService(MemoryStore(), limits=ServiceLimits(max_wait=MAX_WAIT))  # until an example runs
        self.files = _Deferred(lambda: self.service.files)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)


class _Deferred:
    def __init__(self, target: Callable[[], object]) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


@dataclass(frozen=True)
class Servers:
    """One MCP server per caller over the current service, and every tool's input schema."""

    current: CurrentService
    mcp: dict[str, MCPServer[Any]]
    schemas: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def servers() -> Servers:
    current = CurrentService()
    mcp = {who: build_mcp(current, local=identity) for who, identity in CALLERS.items()}  # type: ignore[arg-type]

    async def listed() -> dict[str, dict[str, Any]]:
        async with current.service, Client(mcp["admin"]) as client:
            return {t.name: t.input_schema for t in (await client.list_tools()).tools}

    return Servers(current, mcp, anyio.run(listed))


# ---------------------------------------------------------------------- values


HUGE = st.sampled_from(["x" * 300_000, "é/" * 70_000, "\U0001f512" * 40_000, "a/" * 5000 + "b", "9" * 5000])
NASTY = st.sampled_from(
    [
        "", " ", ".", "..", "../../etc/passwd", "/abs", "a//b", "a/./b", "a/", "\x00", "a\x00b", "\u202e",
        "a\nb", "\t", "mlt_", "mlt_" + "A" * 43, "lk_", "lk_0", "default", "team", "🔒", ".mcp-locks/x",
        "x" * 256, "CON", "%2e%2e", "null", "0", "-1", "1e309", "NaN", "true", "[]", "{}",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 10**40, -1, 0])
    | st.floats()  # NaN and infinities too
    | st.text(max_size=40)
    | NASTY
)
JUNK = st.recursive(
    SCALARS | HUGE,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | NASTY, inner, max_size=3),
    max_leaves=6,
)


_KEPT = ("token", "lock_id", "node_id", "workspace_id", "version", "next_cursor", "next_offset")


@dataclass
class Pool:
    """What earlier calls answered: tokens, ids, versions and cursors, to send back in later calls."""

    seen: dict[str, list[Any]] = field(default_factory=dict)

    def harvest(self, value: Any) -> None:
        """Remember every id-like value in a structured result."""
        if isinstance(value, dict):
            for k, v in value.items():
                if k in _KEPT and v is not None and v not in self.seen.setdefault(k, []):
                    self.seen[k].append(v)
                self.harvest(v)
        elif isinstance(value, list):
            for v in value:
                self.harvest(v)

    def values_for(self, name: str) -> list[Any]:
        """Earlier answers that fit an argument called ``name``."""
        kind = {"tokens": "token", "if_version": "version", "cursor": "next_cursor", "offset": "next_offset"}
        got = self.seen.get(kind.get(name, name), [])
        if name == "tokens":
            return [got[: i + 1] for i in range(len(got))]
        if name == "items":
            return [[{"node_id": n, "mode": m}] for n in self.seen.get("node_id", []) for m in ("read", "write")]
        return list(got)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for the flat JSON schemas the tools list (types, enums, bounds, items, required).

    Long texts come from HUGE, so strings stay short here.
    """
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema.get("type", "string")
    options = [_of_type(kind, schema) for kind in ([kinds] if isinstance(kinds, str) else kinds)]
    return st.one_of(options)


def _of_type(kind: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(lo, hi)
    if kind == "number":
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False) | st.integers(
            None if lo is None else int(lo), None if hi is None else int(hi)
        )
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 3), 3),
        )  # fmt: skip
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    lo_len = schema.get("minLength", 0)
    return st.text(min_size=lo_len, max_size=max(lo_len, min(schema.get("maxLength", 24), 24)))


# Hypothesis favours the first choice of a sampled_from (and the smallest integer): the common case goes first.
RARELY = st.sampled_from([False] * 9 + [True])
#: Valid values that reach past the name checks more often than random text does.
LIKELY = {
    "workspace_id": st.sampled_from([None, "default", "team"]),
    "if_version": st.sampled_from([0, 1, 2]),
    "offset": st.sampled_from([0, 3, 2**63, 10**40]),  # valid: any whole number >= 0
    "length": st.sampled_from([None, 0, 2, 2**63]),
    "node_id": st.sampled_from(["a.md", "docs", "docs/b.md", "docs/sub/c.txt"]),
    "agent": st.sampled_from([None, "alice", "bob"]),
}


@st.composite
def arguments(draw: st.DrawFn, schema: dict[str, Any], pool: Pool) -> dict[str, Any]:
    """Arguments for a tool: schema-valid ones (or earlier answers), then some of them bent or dropped."""
    if draw(RARELY):
        return draw(st.dictionaries(st.text(max_size=12) | NASTY, JUNK, max_size=4))  # nothing like the schema
    names = list(schema.get("properties", {}))
    required = set(schema.get("required", []))
    valid: dict[str, Any] = draw(from_schema(schema))
    bent = set(draw(st.permutations(names))[: draw(st.sampled_from([0, 0, 0, 1, 1, 2, len(names)]))])
    args: dict[str, Any] = {}
    for name in names:
        earlier = pool.values_for(name)
        if name not in bent:
            if name not in required and not draw(st.booleans()):
                continue  # left to its default, as callers often do
            if earlier and draw(st.booleans()):
                args[name] = draw(st.sampled_from(earlier))
            elif name in LIKELY and draw(st.booleans()):
                args[name] = draw(LIKELY[name])
            elif name in valid:
                args[name] = valid[name]
            continue
        how = draw(st.sampled_from(["junk", "junk", "null", "drop", "huge", "nasty"]))
        if how != "drop":
            args[name] = draw({"junk": JUNK, "null": st.none(), "huge": HUGE, "nasty": NASTY}[how])
    if draw(RARELY):
        args[draw(st.sampled_from(["timout", "nodeid", "workspace", "__proto__", "token ", "\u202e"]))] = draw(JUNK)
    return args


# ---------------------------------------------------------------------- checks


def _texts(r: CallToolResult) -> Iterator[str]:
    for c in r.content:
        if isinstance(c, TextContent):
            yield c.text


def check_result(tool: str, r: CallToolResult) -> None:
    """A success with structured content, or an error with a stable code; no traceback; fit for the wire."""
    r.model_dump_json(by_alias=True, exclude_none=True)  # what an HTTP transport would send must be JSON
    for t in _texts(r):
        assert "Traceback" not in t, t[:500]
        assert 'File "' not in t, t[:500]
    if not r.is_error:
        assert r.structured_content is not None, tool
        return
    first = next(_texts(r))
    code = first.split(":", 1)[0]
    assert code in ERROR_TABLE, first[:500]
    assert code != "INTERNAL", f"{tool}: {first[:500]}"
    assert r.structured_content is None, first[:500]
    assert r.meta is not None, first[:500]
    body = r.meta["io.github.mcp-locks/error"]
    assert body["code"] == code, body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    assert isinstance(body["hint"], str), body
    assert isinstance(body["details"], dict), body


# ---------------------------------------------------------------------- the test


async def seed(service: LockService, pool: Pool) -> None:
    """Something to find: a workspace 'team', two files, and a lock of alice's (its token in the pool)."""
    admin, alice = CALLERS["admin"], CALLERS["agent"]
    await service.create_workspace("team", caller=admin)
    for node in ("a.md", "docs/b.md"):
        pool.harvest((await service.files.write(None, node, b"hello\n", if_version=0, caller=admin)).model_dump())
    pool.harvest((await service.lock(None, "docs/b.md", caller=alice)).model_dump())


@pytest.mark.timeout(120)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: an example is a few calls, shown as drawn
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_any_arguments_to_any_tool_get_a_result_or_a_coded_error(servers: Servers, data: st.DataObject) -> None:
    async def run() -> None:
        servers.current.service = LockService(MemoryStore(), limits=ServiceLimits(max_wait=MAX_WAIT))
        async with servers.current.service as service, AsyncExitStack() as stack:
            clients: dict[str, Client] = {}
            pool = Pool()
            await seed(service, pool)
            for _ in range(data.draw(st.integers(1, CALLS), "calls")):
                tool = data.draw(st.sampled_from(sorted(servers.schemas)), "tool")
                who = data.draw(st.sampled_from(sorted(CALLERS)), "who")
                args = data.draw(arguments(servers.schemas[tool], pool), "arguments")
                if who not in clients:
                    clients[who] = await stack.enter_async_context(Client(servers.mcp[who]))
                with anyio.fail_after(STEP):
                    r = await clients[who].call_tool(tool, args)
                check_result(tool, r)
                if not r.is_error:
                    pool.harvest(r.structured_content)

    anyio.run(run)
