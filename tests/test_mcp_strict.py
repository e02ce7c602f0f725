"""MCP tool arguments are checked as strictly as REST bodies: a value of the wrong JSON type is refused, not coerced.

The MCP SDK validates tool arguments in pydantic's lax mode, which read ``timeout="60"`` as 60 s,
``timeout=true`` as a 1-second lease and ``if_version=false`` as "create only", and it parsed string arguments
as JSON (``note="null"`` became no note). REST bodies were always strict. Each row below sends one argument of
the wrong type to one tool: the call must be an INVALID_ARGUMENT tool error naming that field (a result, never
a protocol error), nothing may take effect, and where REST carries the same argument in a JSON body (or a
query string) REST refuses it with the same code and field. Rows marked "guard" were refused before the fix
too; they keep every argument type of every tool in the table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .faces import ERROR_META_KEY
from .servers import serve_app

pytestmark = pytest.mark.anyio

#: A token shaped like ours that no lock has.
NO_TOKEN = "mlt_" + "x" * 40


@dataclass(frozen=True)
class Row:
    """One tool called with one argument of the wrong type, and the REST request that sends the same value."""

    tool: str
    args: dict[str, Any]
    field: str  # what details.field must name
    key: str = "alice"  # "alice" (an agent) or "admin"
    rest: tuple[str, str, dict[str, Any] | None] | None = None  # (method, path below /v1, JSON body)


LOCK = "/workspaces/default/nodes/a.md/lock"
UPLOAD_COMPLETE = "/workspaces/default/uploads/u1/complete"
SHA = "0" * 64

ROWS = {
    # numbers: a string or a bool where seconds are expected
    "lock_file timeout '60'": Row("lock_file", {"node_id": "a.md", "timeout": "60"}, "timeout",
                                  rest=("POST", LOCK, {"timeout": "60"})),
    "lock_file timeout true": Row("lock_file", {"node_id": "a.md", "timeout": True}, "timeout",
                                  rest=("POST", LOCK, {"timeout": True})),
    "lock_file wait true": Row("lock_file", {"node_id": "a.md", "wait": True}, "wait",
                               rest=("POST", LOCK, {"wait": True})),
    "lock_file wait '0'": Row("lock_file", {"node_id": "a.md", "wait": "0"}, "wait",
                              rest=("POST", LOCK, {"wait": "0"})),
    "renew_lock timeout '60'": Row("renew_lock", {"token": NO_TOKEN, "timeout": "60"}, "timeout",
                                   rest=("POST", f"{LOCK}/renew", {"token": NO_TOKEN, "timeout": "60"})),
    "renew_lock timeout true": Row("renew_lock", {"token": NO_TOKEN, "timeout": True}, "timeout",
                                   rest=("POST", f"{LOCK}/renew", {"token": NO_TOKEN, "timeout": True})),
    "lock_files timeout '60'": Row("lock_files", {"items": [{"node_id": "a.md"}], "timeout": "60"}, "timeout",
                                   rest=("POST", "/workspaces/default/locks/batch",
                                         {"items": [{"node_id": "a.md"}], "timeout": "60"})),
    "lock_files wait true": Row("lock_files", {"items": [{"node_id": "a.md"}], "wait": True}, "wait",
                                rest=("POST", "/workspaces/default/locks/batch",
                                      {"items": [{"node_id": "a.md"}], "wait": True})),
    # integers: a string, a bool or a float (1.0 too: REST has always refused it)
    "list_locks limit '5'": Row("list_locks", {"limit": "5"}, "limit"),  # a query string is text in REST
    "list_locks limit true": Row("list_locks", {"limit": True}, "limit",
                                 rest=("GET", "/workspaces/default/locks?limit=true", None)),
    "list_locks limit 5.0": Row("list_locks", {"limit": 5.0}, "limit",
                                rest=("GET", "/workspaces/default/locks?limit=5.0", None)),
    "get_audit_log limit true": Row("get_audit_log", {"limit": True}, "limit",
                                    rest=("GET", "/workspaces/default/audit?limit=true", None)),
    "read_file offset true": Row("read_file", {"node_id": "a.md", "offset": True}, "offset"),
    "read_file length '10'": Row("read_file", {"node_id": "a.md", "length": "10"}, "length"),
    "write_file if_version false": Row("write_file", {"node_id": "a.md", "content": "x", "if_version": False},
                                       "if_version",
                                       rest=("POST", UPLOAD_COMPLETE,
                                             {"node_id": "a.md", "sha256": SHA, "if_version": False})),
    "write_file if_version '0'": Row("write_file", {"node_id": "a.md", "content": "x", "if_version": "0"},
                                     "if_version",
                                     rest=("POST", UPLOAD_COMPLETE,
                                           {"node_id": "a.md", "sha256": SHA, "if_version": "0"})),
    "write_file if_version 0.0": Row("write_file", {"node_id": "a.md", "content": "x", "if_version": 0.0},
                                     "if_version",
                                     rest=("POST", UPLOAD_COMPLETE,
                                           {"node_id": "a.md", "sha256": SHA, "if_version": 0.0})),
    "delete_file if_version true": Row("delete_file", {"node_id": "a.md", "if_version": True}, "if_version"),
    "storage lock_file timeout '60'": Row("storage", {"action": "lock_file",
                                                      "params": {"node_id": "a.md", "timeout": "60"}}, "timeout"),
    # strings, literals and lists (guard)
    "lock_file mode 1 (guard)": Row("lock_file", {"node_id": "a.md", "mode": 1}, "mode",
                                    rest=("POST", LOCK, {"mode": 1})),
    "lock_file depth true (guard)": Row("lock_file", {"node_id": "a.md", "depth": True}, "depth",
                                        rest=("POST", LOCK, {"depth": True})),
    "lock_file note 5 (guard)": Row("lock_file", {"node_id": "a.md", "note": 5}, "note",
                                    rest=("POST", LOCK, {"note": 5})),
    "lock_file agent true (guard)": Row("lock_file", {"node_id": "a.md", "agent": True}, "agent",
                                        rest=("POST", LOCK, {"agent": True})),
    "lock_file request_id 42 (guard)": Row("lock_file", {"node_id": "a.md", "request_id": 42}, "request_id",
                                           rest=("POST", LOCK, {"request_id": 42})),
    "lock_file node_id 7 (guard)": Row("lock_file", {"node_id": 7}, "node_id"),  # a path segment in REST
    "lock_file workspace_id 7 (guard)": Row("lock_file", {"node_id": "a.md", "workspace_id": 7}, "workspace_id"),
    "lock_files items 'a.md' (guard)": Row("lock_files", {"items": "a.md"}, "items",
                                           rest=("POST", "/workspaces/default/locks/batch", {"items": "a.md"})),
    "lock_files items.0.node_id 5 (guard)": Row("lock_files", {"items": [{"node_id": 5}]}, "items.0.node_id",
                                                rest=("POST", "/workspaces/default/locks/batch",
                                                      {"items": [{"node_id": 5}]})),
    "unlock_files tokens.0 5 (guard)": Row("unlock_files", {"tokens": [5]}, "tokens.0",
                                           rest=("POST", "/workspaces/default/locks/unlock", {"tokens": [5]})),
    "write_file content 5 (guard)": Row("write_file", {"node_id": "a.md", "content": 5, "if_version": 0},
                                        "content"),
    "file_info agent 5 (guard)": Row("file_info", {"node_id": "a.md", "agent": 5}, "agent"),
    "create_workspace workspace_id 5 (guard)": Row("create_workspace", {"workspace_id": 5}, "workspace_id",
                                                   key="admin", rest=("POST", "/workspaces", {"workspace_id": 5})),
    "force_unlock reason 5 (guard)": Row("force_unlock", {"lock_id": "l1", "reason": 5}, "reason", key="admin",
                                         rest=("POST", "/workspaces/default/locks/l1/force-unlock", {"reason": 5})),
}  # fmt: skip
REST_ROWS = {name: row for name, row in ROWS.items() if row.rest is not None}


@dataclass
class Server:
    """A keyed server (with the opt-in storage tool) and an MCP client per key."""

    url: str
    keys: dict[str, str]
    http: httpx.AsyncClient
    stack: AsyncExitStack

    async def call(self, key: str, tool: str, args: dict[str, Any]) -> CallToolResult:
        h = await self.stack.enter_async_context(httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}))
        client = await self.stack.enter_async_context(Client(streamable_http_client(f"{self.url}/mcp", http_client=h)))
        return await client.call_tool(tool, args)

    async def rest(self, key: str, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        return await self.http.request(
            method, f"{self.url}/v1{path}", json=body, headers={"Authorization": f"Bearer {key}"}
        )

    async def state(self) -> dict[str, Any]:
        """What exists: the locks and files of the workspaces, and the workspaces (seen by the admin key)."""
        admin = self.keys["admin"]
        workspaces = (await self.rest(admin, "GET", "/workspaces", None)).json()
        found: dict[str, Any] = {"workspaces": sorted(w["workspace_id"] for w in workspaces["workspaces"])}
        for ws in ("default", "team"):
            found[f"{ws} locks"] = (await self.rest(admin, "GET", f"/workspaces/{ws}/locks", None)).json()["locks"]
            found[f"{ws} files"] = (await self.rest(admin, "GET", f"/workspaces/{ws}/files", None)).json()["files"]
        return found


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    service = LockService(MemoryStore(), clock=ManualClock())
    app = build_app(Settings(store="memory", data_dir=tmp_path, compat_storage_tool=True), service)
    async with serve_app(app) as url, AsyncExitStack() as stack:
        await service.create_workspace("team")
        admin, _ = await service.create_key("root", [], "admin")
        alice, _ = await service.create_key("alice", ["default", "team"])
        http = await stack.enter_async_context(httpx.AsyncClient())
        yield Server(url, {"admin": admin, "alice": alice}, http, stack)


def refusal(result: CallToolResult) -> dict[str, Any]:
    """The error body of a tool error result (failing unless it is one, coded as results.error_result codes)."""
    text = result.content[0].text if result.content and isinstance(result.content[0], TextContent) else ""
    assert result.is_error, f"the call succeeded: {result.structured_content}"
    assert result.structured_content is None, result.structured_content
    assert result.meta is not None, text
    body: dict[str, Any] = result.meta[ERROR_META_KEY]
    assert text.startswith(f"{body['code']}: "), text
    return body


@pytest.mark.parametrize("row", ROWS.values(), ids=list(ROWS))
async def test_an_mcp_argument_of_the_wrong_type_is_refused_naming_it_and_nothing_happens(
    server: Server, row: Row
) -> None:
    before = await server.state()
    body = refusal(await server.call(server.keys[row.key], row.tool, row.args))
    assert body["code"] == "INVALID_ARGUMENT", body
    assert body["details"]["field"] == row.field, body
    assert row.field.split(".")[0] in body["message"], body
    assert body["hint"], body
    assert "pydantic" not in body["message"] + body["hint"], body
    assert await server.state() == before


@pytest.mark.parametrize("row", REST_ROWS.values(), ids=list(REST_ROWS))
async def test_rest_refuses_the_same_wrong_type_with_the_same_code_and_field_as_mcp(server: Server, row: Row) -> None:
    assert row.rest is not None
    key = server.keys[row.key]
    answer = await server.rest(key, *row.rest)
    rest = answer.json()["error"]
    mcp = refusal(await server.call(key, row.tool, row.args))
    assert (answer.status_code, rest["code"], rest["details"]["field"]) == (422, "INVALID_ARGUMENT", row.field)
    assert (mcp["code"], mcp["details"]["field"]) == (rest["code"], rest["details"]["field"])


async def test_a_text_argument_is_taken_as_the_text_sent_never_parsed_as_json(server: Server) -> None:
    # "null" is a valid note and a valid session name: it must not turn into "no note" and "no session".
    result = await server.call(server.keys["alice"], "lock_file", {"node_id": "a.md", "note": "null", "agent": "null"})
    assert not result.is_error, result.content
    grant = result.structured_content
    assert grant is not None
    assert (grant["note"], grant["owner"]) == ("null", "alice/null")


async def test_an_array_argument_sent_as_json_text_is_still_read_as_the_array(server: Server) -> None:
    # Kept on purpose (some hosts send arrays as JSON text, and no string is a valid array, so nothing
    # can be misread): the items arrive as the array the text holds, checked strictly like any other.
    items = '[{"node_id": "a.md", "mode": "write"}]'
    result = await server.call(server.keys["alice"], "lock_files", {"items": items, "timeout": 60})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert [g["node_id"] for g in result.structured_content["locks"]] == ["a.md"]


async def test_an_array_sent_as_json_text_is_checked_as_strictly_as_an_array(server: Server) -> None:
    items = '[{"node_id": 5}]'
    body = refusal(await server.call(server.keys["alice"], "lock_files", {"items": items}))
    assert (body["code"], body["details"]["field"]) == ("INVALID_ARGUMENT", "items.0.node_id")
