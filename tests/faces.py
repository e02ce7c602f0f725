"""One way to call every operation over REST or MCP, so a rule is tested once and run on every face."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

import httpx
import jsonschema
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

from mcp_locks import ERROR_TABLE
from mcp_locks.core.clock import ManualClock
from mcp_locks.engine.lock_service import LockService

#: Where an MCP tool error carries its body (mcp_locks.faces.mcp.results.ERROR_META_KEY).
ERROR_META_KEY = "io.github.mcp-locks/error"

FACES = ["rest", "mcp-modern", "mcp-legacy", "mcp-sse"]


@dataclass(frozen=True)
class Outcome:
    """What a call answered: its result, or an error code with the message, hint and details."""

    result: dict[str, Any] | None
    code: str | None = None
    message: str = ""
    hint: str = ""
    details: dict[str, Any] | None = None

    @property
    def ok(self) -> dict[str, Any]:
        assert self.result is not None, f"{self.code}: {self.message}"
        return self.result


def check_against_openapi(doc: dict[str, Any], operation_id: str, status: int, body: Any) -> None:
    """Assert ``body`` matches what the OpenAPI document says ``operation_id`` answers with ``status``."""
    op = next(
        op for methods in doc["paths"].values() for op in methods.values() if op.get("operationId") == operation_id
    )
    responses = op["responses"]
    response = responses.get(str(status)) or responses[f"{str(status)[0]}XX"]
    schema = {**response["content"]["application/json"]["schema"], "components": doc["components"]}
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


class RestFace:
    """Operations as REST requests; every answer is checked against /v1/openapi.json."""

    def __init__(self, url: str, http: httpx.AsyncClient, doc: dict[str, Any]) -> None:
        self.url = url
        self.http = http
        self.doc = doc
        self.single: dict[str | None, bool] = {}

    async def _bound_to_one(self, key: str | None) -> bool:
        if key not in self.single:
            headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
            me = (await self.http.get(f"{self.url}/v1/me", headers=headers)).json()
            self.single[key] = me.get("role") == "agent" and len(me["workspaces"]) == 1
        return self.single[key]

    async def call(self, key: str | None, op: str, **a: Any) -> Outcome:
        if op in _FILE_OPS:
            return await self.file_call(key, op, **a)
        ws = a.pop("workspace_id", None) if op != "create_workspace" else "-"
        if ws is None and not await self._bound_to_one(key):
            ws = "default"  # as the MCP tools do; /v1/storage/... is for keys bound to one workspace
        base = f"{self.url}/v1/workspaces/{ws}" if ws is not None else None
        node = quote(a.pop("node_id", ""), safe="/")
        nodes = f"{base}/nodes/{node}" if base else f"{self.url}/v1/storage/nodes/{node}"
        suffix = "" if base else "_storage"
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        if op == "lock":
            method, url, body, opid = "POST", f"{nodes}/lock", a, "lock" + suffix
        elif op == "status":
            if "token" in a:
                headers["Lock-Token"] = a.pop("token")
            method, url, body, opid = "GET", f"{nodes}/lock", None, "status" + suffix
        elif op == "renew":
            method, url, body, opid = "POST", f"{nodes}/lock/renew", a, "renew" + suffix
        elif op == "unlock":
            headers["Lock-Token"] = a.pop("token")
            method, url, body, opid = "DELETE", f"{nodes}/lock", None, "unlock_header" + suffix
        elif op == "list_locks":
            query = {k: str(v) for k, v in a.items() if v is not None}
            method, url, body, opid = "GET", f"{base or self.url + '/v1/workspaces/default'}/locks", None, op
            url += "?" + urlencode(query) if query else ""
        elif op == "force_unlock":
            lock_id = a.pop("lock_id")
            method, url, body, opid = "POST", f"{base}/locks/{lock_id}/force-unlock", a, op
        elif op == "create_workspace":
            method, url, body, opid = "POST", f"{self.url}/v1/workspaces", a, op
        elif op == "list_workspaces":
            method, url, body, opid = "GET", f"{self.url}/v1/workspaces", None, op
        elif op == "get_audit_log":
            if node:
                a["node_id"] = unquote(node)
            query = {k: str(v) for k, v in a.items() if v is not None}
            method, url, body, opid = "GET", f"{base or self.url + '/v1/workspaces/default'}/audit", None, op
            url += "?" + urlencode(query)
        else:
            raise AssertionError(op)
        r = await self.http.request(method, url, json=body, headers=headers)
        data = r.json()
        check_against_openapi(self.doc, opid, r.status_code, data)
        if r.is_success:
            return Outcome(data)
        e = data["error"]
        assert ERROR_TABLE[e["code"]].http_status == r.status_code, (e["code"], r.status_code)
        return Outcome(None, e["code"], e["message"], e["hint"], e["details"])

    async def file_call(self, key: str | None, op: str, **a: Any) -> Outcome:
        """File operations: content travels as raw bytes, versions in ETag / If-Match headers."""
        ws = a.pop("workspace_id", None) or "default"
        base = f"{self.url}/v1/workspaces/{ws}"
        node = quote(a.pop("node_id", ""), safe="/")
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        if a.get("token") is not None:
            headers["Lock-Token"] = a.pop("token")
        a.pop("token", None)
        version = a.pop("if_version", None)
        if version == 0:
            headers["If-None-Match"] = "*"
        elif version is not None:
            headers["If-Match"] = f'"{version}"'
        params = {"agent": a.pop("agent")} if a.get("agent") else {}
        a.pop("agent", None)
        if op == "read_file":
            r = await self.http.get(f"{base}/files/{node}", headers=headers)
            if r.is_success:
                info = {"version": int(r.headers["x-version"]), "fence": int(r.headers["x-fence"]),
                        "etag": r.headers["etag"], "size": len(r.content)}  # fmt: skip
                return Outcome({"content": r.content.decode(), "encoding": "utf-8", "file": info})
            opid = "read_file"
        elif op == "write_file":
            data = a.pop("content").encode()
            r = await self.http.put(f"{base}/files/{node}", content=data, headers=headers, params=params)
            opid = "write_file"
        elif op == "delete_file":
            r = await self.http.delete(f"{base}/files/{node}", headers=headers, params=params)
            opid = "delete_file"
        elif op == "file_info":
            r = await self.http.get(f"{base}/file-info/{node}", headers=headers, params=params)
            opid = "file_info"
        elif op == "list_files":
            r = await self.http.get(f"{base}/files", headers=headers, params=a)
            opid = "list_files"
        else:
            raise AssertionError(op)
        data = r.json()
        check_against_openapi(self.doc, opid, r.status_code, data)
        if r.is_success:
            if op == "write_file":
                assert r.headers["etag"] == data["file"]["etag"]
            return Outcome(data)
        e = data["error"]
        assert ERROR_TABLE[e["code"]].http_status == r.status_code, (e["code"], r.status_code)
        return Outcome(None, e["code"], e["message"], e["hint"], e["details"])


_FILE_OPS = {"read_file", "write_file", "delete_file", "file_info", "list_files"}

_TOOLS = {
    **{op: op for op in _FILE_OPS},
    "lock": "lock_file",
    "status": "check_lock_status",
    "renew": "renew_lock",
    "unlock": "unlock_file",
    "list_locks": "list_locks",
    "force_unlock": "force_unlock",
    "create_workspace": "create_workspace",
    "list_workspaces": "list_workspaces",
    "get_audit_log": "get_audit_log",
}


class McpFace:
    """Operations as MCP tool calls over streamable HTTP, one session per key."""

    def __init__(self, url: str, mode: str, stack: AsyncExitStack) -> None:
        self.url = url
        self.mode = mode
        self.stack = stack
        self.clients: dict[str | None, Client] = {}

    async def client(self, key: str | None) -> Client:
        if key not in self.clients:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            if self.mode == "sse":  # the 2024-11-05 HTTP+SSE transport
                client = Client(sse_client(f"{self.url}/sse", headers=headers))
            else:
                h = await self.stack.enter_async_context(httpx.AsyncClient(headers=headers))
                transport = streamable_http_client(f"{self.url}/mcp", http_client=h)
                client = Client(transport, mode=self.mode)  # type: ignore[arg-type]
            self.clients[key] = await self.stack.enter_async_context(client)
        return self.clients[key]

    async def call(self, key: str | None, op: str, **a: Any) -> Outcome:
        if op == "renew":
            a.pop("node_id", None)  # REST puts it in the path; renew_lock needs only the token
        r = await (await self.client(key)).call_tool(_TOOLS[op], a)
        if not r.is_error:
            assert r.structured_content is not None
            return Outcome(r.structured_content)
        # An error carries no structuredContent (TS-SDK hosts check it against the output schema even then):
        # its body is in _meta, and its text starts with the code.
        assert r.structured_content is None, r.structured_content
        assert r.meta is not None
        e = r.meta[ERROR_META_KEY]
        text = r.content[0].text if isinstance(r.content[0], TextContent) else ""
        assert text.startswith(f"{e['code']}: "), text
        return Outcome(None, e["code"], e["message"], e["hint"], e["details"])


@dataclass
class Env:
    """A running server with an admin and three agent keys."""

    url: str
    service: LockService
    clock: ManualClock
    admin: str
    alice: str  # default + team
    bob: str  # default
    carol: str  # team only


class Face:
    """A face plus a raw HTTP client for what no client library would send."""

    def __init__(self, name: str, env: Env, impl: RestFace | McpFace, http: httpx.AsyncClient) -> None:
        self.name = name
        self.env = env
        self.impl = impl
        self.http = http

    async def __call__(self, key: str | None, op: str, **args: Any) -> Outcome:
        return await self.impl.call(key, op, **args)

    @property
    def path(self) -> str:
        """A path of this face that needs a key."""
        if self.name == "mcp-sse":
            return "/messages/?session_id=" + "0" * 32  # where an SSE client posts
        return "/mcp" if self.name.startswith("mcp") else "/v1/workspaces/default/nodes/a.md/lock"

    async def raw(self, key: str | None, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        """POST to this face's path with only the headers given."""
        h = {"Authorization": f"Bearer {key}"} if key is not None else {}
        body = kw.pop("json", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"} if self.name != "rest" else {})
        return await self.http.post(f"{self.env.url}{self.path}", json=body, headers={**h, **(headers or {})}, **kw)
