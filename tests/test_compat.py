"""The opt-in ``storage`` tool: Fast.io's grouped call shape mapped onto the real tools, same checks, same answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
from mcp import Client
from mcp_types import CallToolResult, TextContent

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.compat import ACTIONS
from mcp_locks.faces.mcp.results import ERROR_META_KEY
from mcp_locks.faces.mcp.tools import build_mcp
from mcp_locks.stores.base import MemoryStore

from .servers import serve_in_thread
from .test_interop import need_node, run_ts

pytestmark = pytest.mark.anyio

#: What an agent taught by Fast.io's documentation sends.
SEED_CALL = {"action": "lock_file", "params": {"workspace_id": "default", "node_id": "reports/q3.md", "mode": "write"}}


@pytest.fixture
async def service() -> AsyncIterator[LockService]:
    # A manual clock: a refusal through storage and through the tool itself say exactly the same thing.
    async with LockService(MemoryStore(), clock=ManualClock()) as svc:
        yield svc


@pytest.fixture
async def client(service: LockService) -> AsyncIterator[Client]:
    async with Client(build_mcp(service, compat_storage=True)) as c:
        yield c


async def storage(c: Client, action: str, **params: Any) -> CallToolResult:
    return await c.call_tool("storage", {"action": action, "params": params})


def ok(r: CallToolResult) -> dict[str, Any]:
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


def error_body(r: CallToolResult) -> dict[str, Any]:
    """A coded error result's body (the text leads with its code; no structuredContent)."""
    assert r.is_error
    assert r.structured_content is None
    assert isinstance(r.content[0], TextContent)
    assert r.meta is not None
    body: dict[str, Any] = r.meta[ERROR_META_KEY]
    assert r.content[0].text.startswith(f"{body['code']}: ")
    return body


async def test_storage_is_off_by_default_so_tool_lists_stay_short(service: LockService) -> None:
    assert Settings().compat_storage_tool is False
    async with Client(build_mcp(service)) as c:
        assert "storage" not in {t.name for t in (await c.list_tools()).tools}


def test_the_setting_is_read_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_LOCKS_COMPAT_STORAGE_TOOL", "true")
    assert Settings().compat_storage_tool is True


async def test_the_setting_reaches_the_served_mcp_server() -> None:
    app = build_app(Settings(store="memory", insecure_no_auth=True, compat_storage_tool=True))
    assert "storage" in {t.name for t in await app.state.mcp.list_tools()}


async def test_on_it_is_listed_with_its_actions_and_every_hint(client: Client) -> None:
    tool = next(t for t in (await client.list_tools()).tools if t.name == "storage")
    assert tool.input_schema["properties"]["action"]["enum"] == list(ACTIONS)
    assert tool.input_schema["required"] == ["action"]
    assert tool.output_schema is not None
    assert tool.output_schema["type"] == "object"
    assert tool.annotations is not None
    assert tool.annotations.destructive_hint is True


async def test_the_seed_call_shape_takes_a_lock_answered_with_a_lock_id_then_releases_it(client: Client) -> None:
    grant = ok(await client.call_tool("storage", SEED_CALL))
    assert grant["lock_id"].startswith("lk_")
    assert grant["node_id"] == "reports/q3.md"
    assert grant["mode"] == "write"
    released = ok(await storage(client, "unlock_file", token=grant["token"]))
    assert released["released"]["lock_id"] == grant["lock_id"]
    status = ok(await storage(client, "check_lock_status", node_id="reports/q3.md"))
    assert status["locked"] is False


async def test_a_refusal_is_the_same_coded_error_as_the_tools_own(client: Client) -> None:
    ok(await client.call_tool("lock_file", {"node_id": "a.md", "mode": "write"}))
    direct = await client.call_tool("lock_file", {"node_id": "a.md", "mode": "write"})
    grouped = await storage(client, "lock_file", node_id="a.md", mode="write")
    assert error_body(grouped)["code"] == "LOCKED"
    assert error_body(grouped) == error_body(direct)
    assert grouped.content == direct.content


@pytest.mark.parametrize(
    ("action", "params", "field"),
    [
        ("lock_file", {}, "node_id"),  # missing
        ("lock_file", {"node_id": "a.md", "timeout": 0}, "timeout"),  # out of range
        ("lock_file", {"node_id": "a.md", "mode": "sideways"}, "mode"),  # not one of the modes
        ("lock_file", {"node_id": "a.md", "timout": 600}, "timout"),  # misspelt: never dropped silently
        ("write_file", {"node_id": "a.md", "content": "!", "encoding": "base64", "if_version": 0}, "content"),
        ("unlock_files", {"tokens": []}, "tokens"),
    ],
)
async def test_bad_params_are_invalid_argument_naming_the_field_as_the_tool_does(
    client: Client, action: str, params: dict[str, Any], field: str
) -> None:
    grouped = error_body(await storage(client, action, **params))
    assert grouped["code"] == "INVALID_ARGUMENT"
    assert grouped["details"]["field"] == field
    assert grouped == error_body(await client.call_tool(action, params))


async def test_an_unknown_action_is_invalid_argument_listing_the_actions(client: Client) -> None:
    body = error_body(await storage(client, "lock_folder", node_id="a.md"))
    assert body["code"] == "INVALID_ARGUMENT"
    assert body["details"]["field"] == "action"
    assert all(f"'{a}'" in body["message"] for a in ACTIONS)
    # storage maps the lock and file tools only, and never itself.
    for other in ("storage", "force_unlock", "create_workspace"):
        assert error_body(await storage(client, other))["details"]["field"] == "action"


async def test_params_that_are_not_an_object_are_invalid_argument(client: Client) -> None:
    body = error_body(await client.call_tool("storage", {"action": "list_locks", "params": ["a.md"]}))
    assert (body["code"], body["details"]["field"]) == ("INVALID_ARGUMENT", "params")
    body = error_body(await client.call_tool("storage", {"action": "list_locks", "parms": {}}))
    assert (body["code"], body["details"]["field"]) == ("INVALID_ARGUMENT", "parms")


async def every_action(c: Client) -> dict[str, dict[str, Any]]:
    """One successful call of every action through storage, in an order where each can succeed."""
    out: dict[str, dict[str, Any]] = {}

    async def run(action: str, **params: Any) -> dict[str, Any]:
        out[action] = ok(await storage(c, action, **params))
        return out[action]

    token = (await run("lock_file", node_id="doc.md", mode="write"))["token"]
    await run("renew_lock", token=token, timeout=600)
    await run("check_lock_status", node_id="doc.md", token=token)
    await run("list_locks")
    await run("write_file", node_id="doc.md", content="hello", token=token)
    await run("read_file", node_id="doc.md", token=token)
    await run("file_info", node_id="doc.md")
    await run("list_files")
    await run("delete_file", node_id="doc.md", token=token)
    await run("unlock_file", token=token)
    grants = (await run("lock_files", items=[{"node_id": "x.md"}, {"node_id": "y.md", "mode": "read"}]))["locks"]
    await run("unlock_files", tokens=[g["token"] for g in grants])
    return out


async def test_every_actions_answer_validates_against_the_declared_output_schema(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    declared = tools["storage"].output_schema
    assert declared is not None
    jsonschema.Draft202012Validator.check_schema(declared)
    union = jsonschema.Draft202012Validator(declared, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    answers = await every_action(client)
    assert set(answers) == set(ACTIONS)
    for action, answer in answers.items():
        union.validate(answer)
        # ... and it is the real tool's answer: it fits that tool's own schema.
        own = tools[action].output_schema
        assert own is not None
        jsonschema.Draft202012Validator(own).validate(answer)


@pytest.mark.slow
def test_the_typescript_client_accepts_a_lock_through_storage() -> None:
    """The TS SDK client checks structuredContent against the outputSchema on every result: a grant and a refusal."""
    need_node()
    app = build_app(Settings(store="memory", insecure_no_auth=True, compat_storage_tool=True))
    with serve_in_thread(app) as url:
        plan = {
            "deadlineMs": 30_000,
            "sessions": {"alice": {"transport": "streamable-http", "url": f"{url}/mcp", "headers": {}}},
            "groups": [
                {
                    "name": "storage",
                    "steps": [
                        {"op": "callTool", "session": "alice", "name": "storage", "arguments": SEED_CALL,
                         "tag": "grant", "save": {"token": "structuredContent.token"}},
                        {"op": "callTool", "session": "alice", "name": "storage", "arguments": SEED_CALL,
                         "tag": "refused"},
                        {"op": "callTool", "session": "alice", "name": "storage", "tag": "released",
                         "arguments": {"action": "unlock_file", "params": {"token": "${token}"}}},
                    ],
                }
            ],
        }  # fmt: skip
        outcome = run_ts(plan)
    assert "fatal" not in outcome, outcome
    records = {r["tag"]: r for r in outcome["groups"]["storage"]}
    assert all(r["ok"] for r in records.values()), records
    grant = records["grant"]["result"]
    assert not grant["isError"]
    assert grant["structuredContent"]["lock_id"].startswith("lk_")
    refused = records["refused"]["result"]
    assert refused["isError"]
    assert refused["text"].startswith("LOCKED: ")
    released = records["released"]["result"]["structuredContent"]["released"]
    assert released["lock_id"] == grant["structuredContent"]["lock_id"]
