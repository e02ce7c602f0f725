"""The MCP tools through real clients: in memory, and over streamable HTTP in both protocol eras."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.sse import sse_client
from mcp_types import CallToolResult, TextContent

from mcp_locks import ERROR_TABLE, Settings, build_app
from mcp_locks.client.mcp import ERROR_META_KEY as CLIENT_META_KEY
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.auth import KeyVerifier, identity_of
from mcp_locks.faces.mcp.results import ERROR_META_KEY as RESULTS_META_KEY
from mcp_locks.faces.mcp.results import error_result
from mcp_locks.faces.mcp.tools import PROGRESS_EVERY, build_mcp, with_progress
from mcp_locks.stores.base import MemoryStore

from .faces import Env, McpFace
from .helpers import Events, until_event
from .servers import serve_app

pytestmark = pytest.mark.anyio

TRANSPORTS = ["memory", "http-modern", "http-legacy", "sse"]
TOOLS = {
    "lock_file",
    "unlock_file",
    "renew_lock",
    "check_lock_status",
    "list_locks",
    "lock_files",
    "unlock_files",
    "create_workspace",
    "list_workspaces",
    "force_unlock",
    "read_file",
    "write_file",
    "delete_file",
    "list_files",
    "file_info",
    "get_audit_log",
}
CODES = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "LOCKED",
    "WAIT_TIMEOUT",
    "DEADLOCK",
    "LOCK_EXPIRED",
    "LOCK_NOT_FOUND",
    "LIMIT_EXCEEDED",
    "FORBIDDEN",
    "LOCK_BROKEN",
}
STEP = 10
#: Where a tool error carries its body: the wire contract, spelt out (the server's constant must match it).
ERROR_META_KEY = "io.github.mcp-locks/error"


class Server:
    """One service with a way to open more clients to it."""

    def __init__(self, transport: str, service: LockService, url: str | None) -> None:
        self.transport = transport
        self.service = service
        assert isinstance(service.clock, ManualClock)
        self.clock: ManualClock = service.clock
        self.url = url
        self.mcp = build_mcp(service)

    def client(self) -> Client:
        if self.transport == "memory":
            return Client(self.mcp)
        if self.transport == "sse":
            return Client(sse_client(f"{self.url}/sse"))
        mode = "legacy" if self.transport == "http-legacy" else "auto"
        return Client(f"{self.url}/mcp", mode=mode)


@pytest.fixture(params=TRANSPORTS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    # A manual clock: leases and waits end when a test says so, whatever the transport.
    service = LockService(MemoryStore(), clock=ManualClock())
    if request.param == "memory":
        async with service:
            yield Server("memory", service, None)
        return
    # Keys are not the subject here (test_auth.py covers them): the `agent` argument names the owner.
    app = build_app(Settings(store="memory", insecure_no_auth=True), service)
    async with serve_app(app) as url:
        srv = Server(request.param, service, url)
        srv.mcp = app.state.mcp
        yield srv


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with server.client() as c:
        yield c


def text(r: CallToolResult) -> str:
    assert isinstance(r.content[0], TextContent)
    return r.content[0].text


def ok(r: CallToolResult) -> dict[str, Any]:
    assert not r.is_error, text(r)
    assert r.structured_content is not None
    return r.structured_content


def err(r: CallToolResult, code: str) -> dict[str, Any]:
    """A coded error result's body: no structuredContent, the body in _meta, the text leading with the code."""
    assert r.is_error, r.structured_content
    assert text(r).startswith(f"{code}: "), text(r)
    assert r.structured_content is None, r.structured_content
    assert r.meta is not None
    body: dict[str, Any] = r.meta[ERROR_META_KEY]
    assert body["code"] == code
    assert set(body) == {"code", "message", "hint", "details"}
    return body


async def test_tools_list_shows_every_tool_with_input_and_output_schemas(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert len(tool.description or "") > 80
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None
    lock = tools["lock_file"].input_schema["properties"]
    assert lock["mode"]["enum"] == ["read", "write", "shared", "exclusive"]
    assert lock["timeout"]["minimum"] == 1
    assert tools["lock_file"].input_schema["required"] == ["node_id"]


async def test_lock_then_unlock_round_trips_with_structured_content(client: Client) -> None:
    grant = ok(await client.call_tool("lock_file", {"node_id": "reports/q3.md", "agent": "alice", "note": "edit"}))
    assert grant["token"].startswith("mlt_")
    assert grant["expires_at"].endswith("Z")
    assert grant["owner"] == "alice"
    status = ok(await client.call_tool("check_lock_status", {"node_id": "reports/q3.md"}))
    assert status["locked"] is True
    assert "token" not in json.dumps(status)
    released = ok(await client.call_tool("unlock_file", {"token": grant["token"]}))
    assert released["released"]["lock_id"] == grant["lock_id"]


async def test_a_conflict_is_locked_naming_the_holder_and_what_to_do(client: Client) -> None:
    ok(await client.call_tool("lock_file", {"node_id": "a.md", "agent": "alice"}))
    body = err(await client.call_tool("lock_file", {"node_id": "a.md", "agent": "bob"}), "LOCKED")
    assert "alice" in body["message"]
    assert "wait=" in body["hint"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"node_id": "../etc/passwd"}, "node_id"),
        ({"node_id": "a//b"}, "node_id"),
        ({"node_id": "/abs"}, "node_id"),
        ({"node_id": "x\x00y"}, "node_id"),
        ({"node_id": "é" * 600}, "node_id"),
        ({"node_id": 5}, "node_id"),
        ({}, "node_id"),
        ({"node_id": "a", "timeout": 0}, "timeout"),
        ({"node_id": "a", "timeout": 10**9}, "timeout"),
        ({"node_id": "a", "wait": -1}, "wait"),
        ({"node_id": "a", "mode": "rw"}, "mode"),
        ({"node_id": "a", "depth": "deep"}, "depth"),
        ({"node_id": "a", "workspace_id": "Bad Id"}, "workspace_id"),
        ({"node_id": "a", "agent": "x" * 65}, "agent"),
    ],
)
async def test_malformed_arguments_are_invalid_argument_naming_the_field(
    client: Client, args: dict[str, Any], field: str
) -> None:
    body = err(await client.call_tool("lock_file", args), "INVALID_ARGUMENT")
    assert body["details"]["field"] == field
    assert "Traceback" not in body["message"]
    assert "pydantic" not in body["message"]


async def test_an_unknown_workspace_is_not_found_with_a_hint_to_create_it(client: Client) -> None:
    body = err(await client.call_tool("lock_file", {"node_id": "a", "workspace_id": "ghost"}), "NOT_FOUND")
    assert "create_workspace" in body["hint"]
    ok(await client.call_tool("create_workspace", {"workspace_id": "ghost"}))
    ok(await client.call_tool("lock_file", {"node_id": "a", "workspace_id": "ghost"}))
    err(await client.call_tool("create_workspace", {"workspace_id": "ghost"}), "ALREADY_EXISTS")


class Waiting:
    """A call that a second client makes in a task of its own (see :func:`another_client_waiting`)."""

    def __init__(self, events: Events) -> None:
        self.events = events  # the service's committed events, from before the call was made
        self.results: list[CallToolResult] = []  # the call's result, once it has returned
        self.scope = anyio.CancelScope()

    def cancel(self) -> None:
        """Take the call back, as a client that goes away does."""
        self.scope.cancel()


@asynccontextmanager
async def another_client_waiting(
    server: Server, node_id: str, tool: str, args: dict[str, Any], **options: Any
) -> AsyncIterator[Waiting]:
    """A second client calls ``tool`` (``args``, ``options``) in a task of its own; the body runs once that call
    is queued on ``node_id``, and the block ends once the call has returned or was taken back, all within STEP."""
    async with server.client() as other, server.service.subscribe() as events:
        waiting = Waiting(events)

        async def call() -> None:
            with waiting.scope:
                waiting.results.append(await other.call_tool(tool, args, **options))

        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await until_event(events, "queued", node_id)
                yield waiting


async def test_a_waiting_lock_file_is_granted_when_another_client_unlocks(server: Server, client: Client) -> None:
    holder = ok(await client.call_tool("lock_file", {"node_id": "doc.md", "agent": "alice"}))
    args = {"node_id": "doc.md", "agent": "bob", "wait": 60}
    async with another_client_waiting(server, "doc.md", "lock_file", args) as bob:
        ok(await client.call_tool("unlock_file", {"token": holder["token"]}))
    got = ok(bob.results[0])
    assert got["owner"] == "bob"
    assert got["fence"] > holder["fence"]


async def test_cancelling_a_waiting_call_removes_the_waiter(server: Server, client: Client) -> None:
    ok(await client.call_tool("lock_file", {"node_id": "doc.md", "agent": "alice"}))
    args = {"node_id": "doc.md", "agent": "bob", "wait": 600}
    async with another_client_waiting(server, "doc.md", "lock_file", args) as bob:
        bob.cancel()
        left = await until_event(bob.events, "left", "doc.md")
    assert left.code == "CANCELLED"
    assert (await server.service.status(None, "doc.md")).waiters == []


async def test_lock_files_is_all_or_none_over_mcp(client: Client) -> None:
    ok(await client.call_tool("lock_file", {"node_id": "b", "agent": "bob"}))
    items = [{"node_id": "a"}, {"node_id": "b", "mode": "read"}, {"node_id": "src", "depth": "tree"}]
    err(await client.call_tool("lock_files", {"items": items, "agent": "alice"}), "LOCKED")
    page = ok(await client.call_tool("list_locks", {}))
    assert [x["node_id"] for x in page["locks"]] == ["b"]
    got = ok(await client.call_tool("lock_files", {"items": [items[0], items[2]], "agent": "alice"}))
    tokens = [g["token"] for g in got["locks"]]
    assert [g["node_id"] for g in got["locks"]] == ["a", "src"]
    out = ok(await client.call_tool("unlock_files", {"tokens": tokens}))
    assert out["released"] == 2


async def test_upgrade_and_downgrade_keep_the_same_lock(client: Client) -> None:
    read = ok(await client.call_tool("lock_file", {"node_id": "a", "mode": "read"}))
    up = ok(await client.call_tool("lock_file", {"node_id": "a", "mode": "write", "token": read["token"]}))
    assert (up["lock_id"], up["mode"]) == (read["lock_id"], "write")
    assert up["fence"] > read["fence"]
    down = ok(await client.call_tool("lock_file", {"node_id": "a", "mode": "read", "token": read["token"]}))
    assert down["mode"] == "read"


async def test_renew_restarts_the_lease(client: Client) -> None:
    g = ok(await client.call_tool("lock_file", {"node_id": "a", "timeout": 60}))
    r = ok(await client.call_tool("renew_lock", {"token": g["token"], "timeout": 600}))
    assert r["expires_at"] > g["expires_at"]
    assert r["timeout"] == 600


async def test_unlocking_twice_says_it_was_already_released(client: Client) -> None:
    g = ok(await client.call_tool("lock_file", {"node_id": "a"}))
    ok(await client.call_tool("unlock_file", {"token": g["token"]}))
    body = err(await client.call_tool("unlock_file", {"token": g["token"]}), "LOCK_NOT_FOUND")
    assert "already released" in body["message"]
    assert g["token"] not in json.dumps(body)


async def test_a_retried_request_id_returns_the_first_grant(client: Client) -> None:
    args = {"node_id": "a", "agent": "alice", "request_id": "r-1"}
    first = ok(await client.call_tool("lock_file", args))
    again = ok(await client.call_tool("lock_file", args))
    assert again["token"] == first["token"]
    assert again["replayed"] is True


async def test_a_misspelt_argument_is_refused_with_a_suggestion(client: Client) -> None:
    body = err(await client.call_tool("lock_file", {"node_id": "a", "timout": 600}), "INVALID_ARGUMENT")
    assert "did you mean 'timeout'" in body["message"]
    assert body["details"]["field"] == "timout"


async def test_an_unknown_tool_is_an_invalid_argument_listing_the_tools(client: Client) -> None:
    body = err(await client.call_tool("lock_everything", {}), "INVALID_ARGUMENT")
    assert "lock_file" in body["hint"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tool=st.sampled_from(sorted(TOOLS)),
    args=st.dictionaries(
        st.sampled_from(
            [
                "node_id",
                "workspace_id",
                "mode",
                "timeout",
                "wait",
                "depth",
                "token",
                "items",
                "tokens",
                "prefix",
                "limit",
                "cursor",
                "request_id",
                "agent",
                "note",
                "lock_id",
                "reason",
                "description",
                "junk",
            ]
        ),
        json_values,
        max_size=6,
    ),
    who=st.sampled_from([LOCAL, Identity("k1", "alice", "agent", ("default",)), Identity("k2", "root", "admin", ())]),
)
def test_junk_arguments_never_crash_a_tool(tool: str, args: dict[str, Any], who: Identity) -> None:
    async def run() -> None:
        async with LockService(MemoryStore()) as service, Client(build_mcp(service, local=who)) as c:
            r = await c.call_tool(tool, args)  # one call on a fresh service: nothing can make it wait
            if r.is_error:
                code = text(r).split(":", 1)[0]
                assert code in CODES, text(r)
                assert "Traceback" not in text(r)
            else:
                assert r.structured_content is not None

    anyio.run(run)


async def test_healthz_answers_ok() -> None:
    async with serve_app(build_app(Settings(store="memory", insecure_no_auth=True))) as url, httpx.AsyncClient() as h:
        r = await h.get(f"{url}/healthz")
    assert r.json()["status"] == "ok"


async def test_a_waiting_call_reports_its_place_in_line_as_progress(server: Server, client: Client) -> None:
    holder = ok(await client.call_tool("lock_file", {"node_id": "doc.md", "agent": "alice"}))
    messages: list[str] = []
    reported = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")
        reported.set()

    args = {"node_id": "doc.md", "agent": "bob", "wait": 60}
    async with another_client_waiting(server, "doc.md", "lock_file", args, progress_callback=on_progress) as bob:
        server.clock.advance(PROGRESS_EVERY)
        await reported.wait()
        ok(await client.call_tool("unlock_file", {"token": holder["token"]}))
    assert "position 1 in line" in messages[0]
    assert "alice" in messages[0]
    assert ok(bob.results[0])["owner"] == "bob"


@pytest.mark.parametrize("items", [False, True], ids=["lock_file", "lock_files"])
async def test_a_wait_that_runs_out_is_wait_timeout_over_mcp(server: Server, client: Client, items: bool) -> None:
    ok(await client.call_tool("lock_file", {"node_id": "doc.md", "agent": "alice"}))
    args: dict[str, Any] = {"agent": "bob", "wait": 30}
    if items:
        args["items"] = [{"node_id": "doc.md"}, {"node_id": "other.md"}]
    else:
        args["node_id"] = "doc.md"
    async with another_client_waiting(server, "doc.md", "lock_files" if items else "lock_file", args) as bob:
        server.clock.advance(30)
    body = err(bob.results[0], "WAIT_TIMEOUT")
    assert "alice" in body["message"]


async def test_a_cycle_is_deadlock_over_mcp_while_the_other_call_waits(server: Server, client: Client) -> None:
    ok(await client.call_tool("lock_file", {"node_id": "x", "agent": "alice"}))
    ok(await client.call_tool("lock_file", {"node_id": "y", "agent": "bob"}))
    args = {"node_id": "y", "agent": "alice", "wait": 600}
    async with another_client_waiting(server, "y", "lock_file", args) as alice:
        body = err(await client.call_tool("lock_file", {"node_id": "x", "agent": "bob", "wait": 600}), "DEADLOCK")
        assert "alice" in body["message"]
        alice.cancel()


async def test_a_failing_progress_report_never_cuts_a_wait_short() -> None:
    clock = ManualClock()

    class BrokenContext:
        async def report_progress(self, *args: object) -> None:
            raise anyio.BrokenResourceError("the client went away")

    async with LockService(MemoryStore(), clock=clock) as service, service.subscribe() as events:
        holder = await service.lock(None, "f", agent="alice")
        got: list[str] = []
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:

                async def wait_for_it() -> None:
                    g = await with_progress(
                        service,
                        BrokenContext(),  # type: ignore[arg-type]
                        None,
                        "f",
                        LOCAL,
                        "bob",
                        60,
                        lambda: service.lock(None, "f", agent="bob", wait=60),
                    )
                    got.append(g.owner)

                tg.start_soon(wait_for_it)
                await until_event(events, "queued", "f")
                clock.advance(PROGRESS_EVERY)  # the report fails (and is logged)
                await service.unlock(None, holder.token)
    assert got == ["bob"]


# ---------------------------------------------------------------------- every answer is one every host reads
#
# Hosts built on the TypeScript SDK (Claude Code, Claude Desktop, VS Code, ...) check structuredContent against
# the tool's outputSchema whenever it is present, error or not, and throw instead of showing the text. So every
# success must fit its schema exactly, and no error may carry structuredContent (its body is in _meta).

MCP_FACES = ["memory", "mcp-modern", "mcp-legacy", "mcp-sse"]
#: The codes the tools answer with that one server's tools can provoke (STALE_FENCE needs data restored
#: from elsewhere: test_every_code_renders_as_a_spec_true_error_result covers its rendering).
LIVE_CODES = [
    "LOCKED",
    "LOCK_NOT_FOUND",
    "LOCK_EXPIRED",
    "INVALID_ARGUMENT",
    "FORBIDDEN",
    "NOT_FOUND",
    "VERSION_MISMATCH",
    "DEADLOCK",
]
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", re.IGNORECASE)


def _is_datetime(value: object) -> bool:
    """RFC 3339 date-time, checked here because jsonschema checks it only with an optional package."""
    if not isinstance(value, str):
        return True
    if _RFC3339.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date-time")(_is_datetime)


class Agents:
    """MCP clients of the keyed server (``env``) as its admin, alice and bob; every answer is checked."""

    def __init__(self, env: Env, clients: dict[str, Client]) -> None:
        self.env = env
        self.clients = clients
        self.schemas: dict[str, dict[str, Any]] = {}
        self.succeeded: set[str] = set()

    async def list_tools(self) -> None:
        for tool in (await self.clients["admin"].list_tools()).tools:
            assert tool.output_schema is not None, tool.name
            jsonschema.Draft202012Validator.check_schema(tool.output_schema)
            self.schemas[tool.name] = tool.output_schema

    async def ok(self, who: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """A success whose structuredContent the strictest reading of its outputSchema accepts."""
        body = ok(await self.clients[who].call_tool(tool, args))
        validator = jsonschema.Draft202012Validator(self.schemas[tool], format_checker=FORMATS)
        problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
        assert not problems, (tool, problems)
        self.succeeded.add(tool)
        return body

    async def refused(self, who: str, tool: str, args: dict[str, Any], code: str) -> dict[str, Any]:
        """An error result of ``code`` in the spec-true shape; its _meta body."""
        return err(await self.clients[who].call_tool(tool, args), code)


@pytest.fixture(params=MCP_FACES)
async def agents(request: pytest.FixtureRequest, env: Env) -> AsyncIterator[Agents]:
    keys = {"admin": env.admin, "alice": env.alice, "bob": env.bob}
    async with AsyncExitStack() as stack:
        clients: dict[str, Client] = {}
        if request.param == "memory":  # no HTTP: each client acts for the key's identity
            verifier = KeyVerifier(env.service.store)
            for who, key in keys.items():
                token = await verifier.verify_token(key)
                assert token is not None
                server = build_mcp(env.service, local=identity_of(token))
                clients[who] = await stack.enter_async_context(Client(server))
        else:
            face = McpFace(env.url, {"mcp-legacy": "legacy", "mcp-sse": "sse"}.get(request.param, "auto"), stack)
            clients = {who: await face.client(key) for who, key in keys.items()}
        a = Agents(env, clients)
        await a.list_tools()
        yield a


async def test_every_tool_succeeds_with_structured_content_its_output_schema_accepts(agents: Agents) -> None:
    a = agents
    await a.ok("alice", "list_workspaces", {})
    await a.ok("admin", "create_workspace", {"workspace_id": "proj", "description": "a project"})
    g = await a.ok("alice", "lock_file", {"node_id": "a.md", "note": "editing", "agent": "sub-1"})
    await a.ok("alice", "renew_lock", {"token": g["token"], "timeout": 600})
    await a.ok("bob", "lock_file", {"node_id": "b.md"})
    await _status_with_a_waiter(a, g["token"])
    await a.ok("alice", "check_lock_status", {"node_id": "docs"})
    await a.ok("alice", "list_locks", {"limit": 1})
    await a.ok("alice", "write_file", {"node_id": "a.md", "content": "hello\n", "token": g["token"]})
    await a.ok("alice", "read_file", {"node_id": "a.md", "token": g["token"]})
    await a.ok("alice", "file_info", {"node_id": "a.md"})
    await a.ok("alice", "unlock_file", {"token": g["token"], "node_id": "a.md"})
    await a.ok("alice", "check_lock_status", {"node_id": "a.md", "token": g["token"]})  # `yours`: released
    binary = {"node_id": "bin/x", "content": "AAEC/w==", "encoding": "base64", "if_version": 0}
    await a.ok("alice", "write_file", binary)
    await a.ok("alice", "read_file", {"node_id": "bin/x"})
    await a.ok("alice", "file_info", {"node_id": "never-written.md"})
    await a.ok("alice", "list_files", {"prefix": ""})
    await a.ok("alice", "delete_file", {"node_id": "bin/x", "if_version": 1})
    many = await a.ok("alice", "lock_files", {"items": [{"node_id": "c.md"}, {"node_id": "src", "depth": "tree"}]})
    tokens = [x["token"] for x in many["locks"]]
    await a.ok("alice", "unlock_files", {"tokens": [*tokens, tokens[0]]})  # the repeat is refused in results[]
    held = await a.ok("bob", "check_lock_status", {"node_id": "b.md"})
    await a.ok("admin", "force_unlock", {"lock_id": held["holders"][0]["lock_id"], "reason": "stuck"})
    await a.ok("alice", "get_audit_log", {"limit": 1000})
    assert a.succeeded == set(a.schemas) == TOOLS


@asynccontextmanager
async def _while_waiting(a: Agents, who: str, node_id: str) -> AsyncIterator[None]:
    """While ``who``'s lock_file call for ``node_id`` waits in line (the call is cancelled on leaving)."""
    async with a.env.service.subscribe() as events:
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:

                async def waits() -> None:
                    await a.clients[who].call_tool("lock_file", {"node_id": node_id, "wait": 600})

                tg.start_soon(waits)
                await until_event(events, "queued", node_id)
                yield
                tg.cancel_scope.cancel()


async def _status_with_a_waiter(a: Agents, token: str) -> None:
    """check_lock_status of alice's a.md while bob waits in line for it."""
    async with _while_waiting(a, "bob", "a.md"):
        status = await a.ok("alice", "check_lock_status", {"node_id": "a.md", "token": token})
        assert status["waiters"], status


async def _deadlock(a: Agents) -> None:
    """Alice holds x and waits for y; bob holds y and asks for x: DEADLOCK while alice's call waits."""
    await a.ok("alice", "lock_file", {"node_id": "x"})
    await a.ok("bob", "lock_file", {"node_id": "y"})
    async with _while_waiting(a, "alice", "y"):
        await a.refused("bob", "lock_file", {"node_id": "x", "wait": 600}, "DEADLOCK")


async def _provoke(a: Agents, code: str) -> None:
    """Make the tools answer ``code`` (each refusal is checked by :meth:`Agents.refused`)."""
    if code == "LOCKED":
        await a.ok("alice", "lock_file", {"node_id": "a.md"})
        await a.refused("bob", "lock_file", {"node_id": "a.md"}, code)
        await a.refused("bob", "read_file", {"node_id": "a.md"}, code)
    elif code == "LOCK_NOT_FOUND":
        g = await a.ok("alice", "lock_file", {"node_id": "a.md"})
        await a.ok("alice", "unlock_file", {"token": g["token"]})
        await a.refused("alice", "unlock_file", {"token": g["token"]}, code)
    elif code == "LOCK_EXPIRED":
        g = await a.ok("alice", "lock_file", {"node_id": "a.md", "timeout": 1})
        a.env.clock.advance(2)
        await a.refused("alice", "renew_lock", {"token": g["token"]}, code)
    elif code == "INVALID_ARGUMENT":
        await a.refused("alice", "lock_file", {"node_id": "a.md", "mode": "rw"}, code)  # the input schema
        await a.refused("alice", "lock_file", {"node_id": "a.md", "timout": 600}, code)  # an unknown field
        await a.refused("alice", "lock_everything", {}, code)  # an unknown tool
        await a.refused("alice", "lock_file", {"node_id": "../etc/passwd"}, code)  # the tool's own rules
    elif code == "FORBIDDEN":
        await a.refused("bob", "lock_file", {"node_id": "a.md", "workspace_id": "team"}, code)
    elif code == "NOT_FOUND":
        await a.refused("admin", "lock_file", {"node_id": "a.md", "workspace_id": "ghost"}, code)
    elif code == "VERSION_MISMATCH":
        await a.ok("alice", "write_file", {"node_id": "v.md", "content": "1", "if_version": 0})
        await a.refused("bob", "write_file", {"node_id": "v.md", "content": "2", "if_version": 0}, code)
    else:
        assert code == "DEADLOCK", code
        await _deadlock(a)


@pytest.mark.parametrize("code", LIVE_CODES)
async def test_an_error_result_has_its_code_first_its_body_in_meta_and_no_structured_content(
    agents: Agents, code: str
) -> None:
    await _provoke(agents, code)


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_code_renders_as_a_spec_true_error_result(code: str) -> None:
    e = ERROR_TABLE[code]("what went wrong.", hint="What to do next.", details={"field": "x"})
    wire = error_result(e).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert "structuredContent" not in wire
    assert wire["isError"] is True
    assert wire["content"] == [{"type": "text", "text": f"{code}: what went wrong. What to do next."}]
    assert wire["_meta"] == {ERROR_META_KEY: {"code": code, "message": "what went wrong.", "hint": "What to do next.",
                                              "details": {"field": "x"}}}  # fmt: skip
    assert ERROR_META_KEY == RESULTS_META_KEY == CLIENT_META_KEY
