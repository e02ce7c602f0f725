"""The REST API on a real server: every route, its OpenAPI document, hostile input and junk."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from mcp_locks import ERROR_TABLE, Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .faces import check_against_openapi
from .helpers import STEP, until_event
from .servers import raw_request, serve_app, serve_in_thread

pytestmark = pytest.mark.anyio


@dataclass
class Api:
    """A running server, an httpx client holding an agent key, and the OpenAPI document."""

    url: str
    service: LockService
    http: httpx.AsyncClient
    key: str
    admin: str
    doc: dict[str, Any]

    async def call(self, operation_id: str, method: str, path: str, **kw: Any) -> httpx.Response:
        """Send a request and check the answer against the OpenAPI document."""
        r = await self.http.request(method, f"{self.url}{path}", **kw)
        check_against_openapi(self.doc, operation_id, r.status_code, r.json())
        return r


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    service = LockService(MemoryStore(), clock=ManualClock())
    app = build_app(Settings(store="memory", data_dir=tmp_path), service)
    async with serve_app(app) as url:
        key, _ = await service.create_key("alice", ["default"])
        admin, _ = await service.create_key("root", [], "admin")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as h:
            doc = (await h.get(f"{url}/v1/openapi.json")).json()
            yield Api(url, service, h, key, admin, doc)


NODE = "/v1/workspaces/default/nodes/reports/q3.md/lock"


def code_of(r: httpx.Response) -> str:
    assert r.status_code < 500, r.text
    code: str = r.json()["error"]["code"]
    assert ERROR_TABLE[code].http_status == r.status_code
    return code


async def test_the_openapi_document_describes_every_route_and_needs_no_key(api: Api) -> None:
    async with httpx.AsyncClient() as anonymous:
        doc = (await anonymous.get(f"{api.url}/v1/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    app = build_app(Settings(store="memory", insecure_no_auth=True))
    served = {
        (m, r.path.replace(":path}", "}").replace(":locktoken}", "}"))
        for r in app.routes
        if isinstance(r, Route) and r.path.startswith("/v1/")
        for m in (r.methods or set()) - {"HEAD"}
    }
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    for code in ERROR_TABLE:
        assert code in doc["info"]["description"]


async def test_lock_status_renew_and_unlock_by_the_lock_token_header(api: Api) -> None:
    grant = (await api.call("lock", "POST", NODE, json={"mode": "write", "timeout": 60, "note": "q3"})).json()
    assert (grant["node_id"], grant["owner"], grant["timeout"]) == ("reports/q3.md", "alice", 60)
    status = (await api.call("status", "GET", NODE)).json()
    assert status["holders"][0]["lock_id"] == grant["lock_id"]
    assert grant["token"] not in json.dumps(status)
    renewed = await api.call("renew", "POST", f"{NODE}/renew", json={"token": grant["token"], "timeout": 120})
    assert renewed.json()["timeout"] == 120
    released = await api.call("unlock_header", "DELETE", NODE, headers={"Lock-Token": f"<{grant['token']}>"})
    assert released.json()["released"]["lock_id"] == grant["lock_id"]
    again = await api.call("unlock_header", "DELETE", NODE, headers={"Lock-Token": grant["token"]})
    assert code_of(again) == "LOCK_NOT_FOUND"


async def test_unlock_with_the_token_in_the_path(api: Api) -> None:
    grant = (await api.call("lock", "POST", NODE, json={})).json()
    r = await api.call("unlock", "DELETE", f"{NODE}/{grant['token']}")
    assert r.json()["released"]["node_id"] == "reports/q3.md"


async def test_a_token_for_another_node_is_refused_and_the_lock_stays(api: Api) -> None:
    grant = (await api.call("lock", "POST", NODE, json={})).json()
    r = await api.call("unlock_header", "DELETE", "/v1/workspaces/default/nodes/other.md/lock",
                       headers={"Lock-Token": grant["token"]})  # fmt: skip
    assert code_of(r) == "INVALID_ARGUMENT"
    assert (await api.call("status", "GET", NODE)).json()["locked"]


async def test_a_node_named_like_a_route_word_is_still_a_node(api: Api) -> None:
    path = "/v1/workspaces/default/nodes/a/lock/lock"
    grant = (await api.call("lock", "POST", path, json={})).json()
    assert grant["node_id"] == "a/lock"
    r = await api.call("unlock_header", "DELETE", path, headers={"Lock-Token": grant["token"]})
    assert r.json()["released"]["node_id"] == "a/lock"


async def test_a_conflict_is_423_locked_with_the_one_error_body(api: Api) -> None:
    await api.call("lock", "POST", NODE, json={})
    r = await api.call("lock", "POST", NODE, json={}, headers={"Authorization": f"Bearer {api.admin}"})
    assert r.status_code == 423
    body = r.json()["error"]
    assert (body["code"], body["details"]["holders"][0]["owner"]) == ("LOCKED", "alice")
    assert "wait=" in body["hint"]


async def test_batch_lock_and_unlock_and_paged_listing(api: Api) -> None:
    items = [{"node_id": f"src/f{i}.py", "mode": "write"} for i in range(5)]
    got = (await api.call("lock_files", "POST", "/v1/workspaces/default/locks/batch", json={"items": items})).json()
    assert [g["node_id"] for g in got["locks"]] == [i["node_id"] for i in items]
    first = (await api.call("list_locks", "GET", "/v1/workspaces/default/locks", params={"limit": 3})).json()
    rest = await api.call("list_locks", "GET", "/v1/workspaces/default/locks",
                          params={"limit": 3, "cursor": first["next_cursor"]})  # fmt: skip
    listed = [x["node_id"] for x in first["locks"] + rest.json()["locks"]]
    assert listed == sorted(i["node_id"] for i in items)
    tokens = [g["token"] for g in got["locks"]] + ["mlt_not_a_lock"]
    out = await api.call("unlock_files", "POST", "/v1/workspaces/default/locks/unlock", json={"tokens": tokens})
    assert out.json()["released"] == 5
    assert out.json()["results"][5]["error_code"] == "LOCK_NOT_FOUND"


async def test_the_storage_paths_work_for_a_key_bound_to_one_workspace(api: Api) -> None:
    grant = (await api.call("lock_storage", "POST", "/v1/storage/nodes/notes.txt/lock", json={})).json()
    assert grant["workspace_id"] == "default"
    status = (await api.call("status_storage", "GET", "/v1/storage/nodes/notes.txt/lock")).json()
    assert status["locked"]
    r = await api.call("unlock_storage", "DELETE", f"/v1/storage/nodes/notes.txt/lock/{grant['token']}")
    assert r.status_code == 200


async def test_a_waiting_rest_call_is_granted_when_the_holder_unlocks(api: Api) -> None:
    grant = (await api.call("lock", "POST", NODE, json={})).json()
    got: list[httpx.Response] = []
    admin = {"Authorization": f"Bearer {api.admin}"}
    async with api.service.subscribe() as events, anyio.create_task_group() as tg:

        async def wait_for_it() -> None:
            got.append(await api.call("lock", "POST", NODE, json={"wait": 60}, headers=admin))

        tg.start_soon(wait_for_it)
        await until_event(events, "queued", "reports/q3.md")
        await api.call("unlock_header", "DELETE", NODE, headers={"Lock-Token": grant["token"]})
    assert got[0].json()["owner"] == "root"


async def test_a_client_that_hangs_up_while_waiting_leaves_the_line(api: Api) -> None:
    await api.call("lock", "POST", NODE, json={})
    admin = {"Authorization": f"Bearer {api.admin}"}
    async with api.service.subscribe() as events:
        async with anyio.create_task_group() as tg:
            # The waiting request runs in the task group; cancelling it closes its connection.
            tg.start_soon(lambda: api.http.post(f"{api.url}{NODE}", json={"wait": 600}, headers=admin, timeout=STEP))
            await until_event(events, "queued", "reports/q3.md")
            tg.cancel_scope.cancel()
        left = await until_event(events, "left", "reports/q3.md")
    assert left.code == "CANCELLED"
    assert (await api.call("status", "GET", NODE)).json()["waiters"] == []


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/workspaces/default/nodes/../x/lock",
        b"/v1/workspaces/default/nodes/a//b/lock",
        b"/v1/workspaces/default/nodes/%2e%2e/x/lock",
        b"/v1/workspaces/default/nodes/x%00y/lock",
        b"/v1/workspaces/default/nodes/" + b"d/" * 600 + b"f/lock",
        b"/v1/workspaces/default/nodes/bad%ff%fe/lock",
        b"/v1/workspaces/default/nodes/%2Fabs/lock",
        b"/v1/workspaces/Bad%20Id/nodes/a/lock",
    ],
    ids=["dotdot", "empty-segment", "encoded-dotdot", "nul", "too-long", "not-utf8", "absolute", "bad-workspace"],
)
async def test_hostile_paths_are_refused_with_a_code_and_lock_nothing(api: Api, target: bytes) -> None:
    headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
    status, body = await raw_request(api.url, "POST", target, headers, b"{}")
    assert 400 <= status < 500, body
    error = json.loads(body)["error"]
    assert error["code"] in ("INVALID_ARGUMENT", "NOT_FOUND")
    listed = (await api.call("list_locks", "GET", "/v1/workspaces/default/locks")).json()
    assert listed["locks"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timeout": "soon"}, "timeout"),
        ({"mode": "rw"}, "mode"),
        ({"wait": -1}, "wait"),
        ({"timout": 60}, "timout"),
        ([1, 2], "body"),
        ({"depth": None}, "depth"),
    ],
)
async def test_wrong_types_and_unknown_fields_are_invalid_argument_naming_the_field(
    api: Api, body: Any, field: str
) -> None:
    r = await api.call("lock", "POST", NODE, json=body)
    assert code_of(r) == "INVALID_ARGUMENT"
    assert r.json()["error"]["details"]["field"] == field


async def test_a_misspelt_field_gets_a_suggestion(api: Api) -> None:
    r = await api.call("lock", "POST", NODE, json={"timout": 60})
    assert "did you mean 'timeout'?" in r.json()["error"]["message"]


async def test_a_body_not_declared_as_json_is_refused_so_browsers_must_ask_first(api: Api) -> None:
    r = await api.call("lock", "POST", NODE, content=b'{"mode": "write"}', headers={"Content-Type": "text/plain"})
    assert (r.status_code, code_of(r)) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert (await api.call("status", "GET", NODE)).json()["locked"] is False


async def test_a_body_that_is_not_json_is_invalid_argument(api: Api) -> None:
    r = await api.call("lock", "POST", NODE, content=b"{not json", headers={"Content-Type": "application/json"})
    assert code_of(r) == "INVALID_ARGUMENT"


async def test_missing_fields_are_named(api: Api) -> None:
    r = await api.call("renew", "POST", f"{NODE}/renew", json={})
    assert r.json()["error"]["details"]["field"] == "token"


async def test_unknown_routes_and_methods_get_the_one_error_body(api: Api) -> None:
    r = await api.http.get(f"{api.url}/v1/nothing-here")
    assert (r.status_code, code_of(r)) == (404, "NOT_FOUND")
    r = await api.http.put(f"{api.url}{NODE}")
    assert (r.status_code, code_of(r)) == (405, "METHOD_NOT_ALLOWED")


async def test_a_method_not_allowed_names_every_method_of_the_path_in_allow(api: Api) -> None:
    # RFC 9110: a 405 must carry Allow. Each operation is a route of its own, so all of the path's count.
    r = await api.http.put(f"{api.url}{NODE}")
    assert (r.status_code, code_of(r)) == (405, "METHOD_NOT_ALLOWED")
    assert r.headers["allow"] == "DELETE, GET, HEAD, POST"
    assert r.json()["error"]["details"]["allowed"] == ["DELETE", "GET", "HEAD", "POST"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (NODE, {"wait": True}),
        (NODE, {"timeout": "60"}),
        (f"{NODE}/renew", {"token": "mlt_x", "timeout": False}),
        ("/v1/workspaces/default/locks/batch", {"items": [{"node_id": "a"}], "timeout": "60"}),
    ],
    ids=["bool-wait", "string-timeout", "bool-renew-timeout", "string-batch-timeout"],
)
async def test_a_body_value_of_the_wrong_json_type_is_refused_not_converted(
    api: Api, path: str, body: dict[str, Any]
) -> None:
    # Lax parsing once took {"wait": true} as a one-second wait: the body must match the documented schema.
    r = await api.http.post(f"{api.url}{path}", json=body)
    assert code_of(r) == "INVALID_ARGUMENT"
    assert r.json()["error"]["details"]["field"] in body
    assert (await api.call("status", "GET", NODE)).json()["locked"] is False


async def test_the_openapi_document_states_the_rules_of_ids_tokens_and_chunk_numbers(api: Api) -> None:
    ops = {op["operationId"]: op for methods in api.doc["paths"].values() for op in methods.values()}
    params = {p["name"]: p["schema"] for op in ops.values() for p in op.get("parameters", []) if p["in"] == "path"}
    assert params["workspace_id"]["pattern"] == "^[a-z0-9_-]{1,63}$"
    assert params["token"]["pattern"] == "^mlt_[A-Za-z0-9_-]+$"  # any other text names no route
    assert params["index"] == {"type": "integer", "minimum": 0}
    schemas = api.doc["components"]["schemas"]
    assert schemas["CreateWorkspaceRequest"]["properties"]["workspace_id"]["pattern"] == "^[a-z0-9_-]{1,63}$"
    assert schemas["CreateKeyRequest"]["properties"]["agent"]["pattern"].startswith("^[A-Za-z0-9]")
    bad = await api.call("lock", "POST", "/v1/workspaces/Not_Valid/nodes/a/lock", json={})
    assert code_of(bad) == "INVALID_ARGUMENT"  # what the pattern says is what the server refuses


async def test_the_openapi_document_lists_every_query_parameter_a_route_reads(api: Api) -> None:
    # delete_file and file_info read ?agent= and the event stream ?after=, once without saying so.
    ops = {op["operationId"]: op for methods in api.doc["paths"].values() for op in methods.values()}
    query = {name: {p["name"] for p in op.get("parameters", []) if p["in"] == "query"} for name, op in ops.items()}
    assert {"if_version", "agent"} <= query["delete_file"]
    assert "agent" in query["file_info"]
    assert "after" in query["events"]


async def test_admin_routes_manage_keys_and_workspaces(api: Api) -> None:
    admin = {"Authorization": f"Bearer {api.admin}"}
    made = await api.call("create_workspace", "POST", "/v1/workspaces", json={"workspace_id": "docs"}, headers=admin)
    assert made.status_code == 201
    key = await api.call("create_key", "POST", "/v1/admin/keys",
                         json={"agent": "bob", "workspaces": ["docs"]}, headers=admin)  # fmt: skip
    created = key.json()
    assert created["key"].startswith(f"mlk_{created['key_id']}_")
    listed = (await api.call("list_keys", "GET", "/v1/admin/keys", headers=admin)).json()["keys"]
    assert created["key_id"] in [k["key_id"] for k in listed]
    assert created["key"] not in json.dumps(listed)
    bob = {"Authorization": f"Bearer {created['key']}"}
    assert (await api.call("list_workspaces", "GET", "/v1/workspaces", headers=bob)).json()["workspaces"][0][
        "workspace_id"
    ] == "docs"
    assert code_of(await api.call("list_keys", "GET", "/v1/admin/keys")) == "FORBIDDEN"  # alice is no admin
    gone = await api.call("revoke_key", "DELETE", f"/v1/admin/keys/{created['key_id']}", headers=admin)
    assert gone.json()["revoked_at"] is not None
    again = await api.call("revoke_key", "DELETE", f"/v1/admin/keys/{created['key_id']}", headers=admin)
    assert code_of(again) == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"agent": "bob", "workspaces": ["ghost"]}, "NOT_FOUND"),
        ({"agent": "bob", "workspaces": []}, "INVALID_ARGUMENT"),
        ({"agent": "bad name!", "workspaces": ["default"]}, "INVALID_ARGUMENT"),
        ({"agent": "bob", "workspaces": ["default"], "role": "root"}, "INVALID_ARGUMENT"),
    ],
    ids=["missing-workspace", "no-workspace", "bad-agent", "bad-role"],
)
async def test_a_bad_key_request_is_refused_with_a_code(api: Api, body: dict[str, Any], code: str) -> None:
    r = await api.call("create_key", "POST", "/v1/admin/keys", json=body,
                       headers={"Authorization": f"Bearer {api.admin}"})  # fmt: skip
    assert code_of(r) == code


# ---------------------------------------------------------------------- junk


@pytest.fixture(scope="module")
def junk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, dict[str, Any]]]:
    from mcp_locks.core.keys import new_key

    admin, _ = new_key("fuzz", (), "admin", 0)
    data = tmp_path_factory.mktemp("junk")
    app = build_app(Settings(store="memory", data_dir=data, admin_key=admin, max_wait=1))
    with serve_in_thread(app) as url:
        doc = httpx.get(f"{url}/v1/openapi.json").json()
        yield url, admin, doc


_text = st.one_of(
    st.sampled_from(["default", "a.md", "..", "", "mlt_x", "lk_x", "%00", "a/b", "é", "\u202e", "x" * 300]),
    st.text(max_size=20),
)
_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_junk_sent_to_any_route_never_gets_a_5xx_or_a_traceback(
    junk_server: tuple[str, str, dict[str, Any]], data: st.DataObject
) -> None:
    url, admin, doc = junk_server
    path = data.draw(st.sampled_from(sorted(doc["paths"])), "path")
    method = data.draw(st.sampled_from(sorted({*doc["paths"][path], "put", "patch"})), "method")
    for name in ("workspace_id", "node_id", "token", "lock_id", "key_id"):
        value = data.draw(_text, name)
        path = path.replace("{" + name + "}", quote(value, safe="") or "x")
    body = data.draw(_json, "body")
    headers = {"Authorization": f"Bearer {admin}"}
    if data.draw(st.booleans(), "lock-token"):
        headers["Lock-Token"] = data.draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126)))
    with httpx.stream(method.upper(), f"{url}{path}", json=body, headers=headers, timeout=STEP) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            assert r.status_code == 200  # an event stream that opened: it never ends, so stop at its headers
            return
        r.read()
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        code = r.json()["error"]["code"]
        assert ERROR_TABLE[code].http_status == r.status_code


async def test_a_workspace_is_deleted_only_when_idle_and_its_keys_lose_it(api: Api) -> None:
    admin = {"Authorization": f"Bearer {api.admin}"}
    await api.call("create_workspace", "POST", "/v1/workspaces", json={"workspace_id": "tmp"}, headers=admin)
    made = await api.call("create_key", "POST", "/v1/admin/keys", json={"agent": "bob", "workspaces": ["tmp"]},
                          headers=admin)  # fmt: skip
    bob = {"Authorization": f"Bearer {made.json()['key']}"}
    node = "/v1/workspaces/tmp/nodes/a.md/lock"
    grant = (await api.call("lock", "POST", node, json={}, headers=bob)).json()
    busy = await api.call("delete_workspace", "DELETE", "/v1/workspaces/tmp", headers=admin)
    assert code_of(busy) == "LOCKED"
    assert (await api.call("status", "GET", node, headers=bob)).json()["locked"]  # nothing was lost
    await api.call("unlock_header", "DELETE", node, headers={**bob, "Lock-Token": grant["token"]})
    gone = await api.call("delete_workspace", "DELETE", "/v1/workspaces/tmp", headers=admin)
    assert gone.json()["workspace_id"] == "tmp"
    assert code_of(await api.call("lock", "POST", node, json={}, headers=admin)) == "NOT_FOUND"
    assert (await api.call("list_workspaces", "GET", "/v1/workspaces", headers=bob)).json()["workspaces"] == []
    await api.call("create_workspace", "POST", "/v1/workspaces", json={"workspace_id": "tmp"}, headers=admin)
    assert code_of(await api.call("lock", "POST", node, json={}, headers=bob)) == "FORBIDDEN"
    fresh = await api.call("lock", "POST", node, json={}, headers=admin)
    assert fresh.json()["owner"] == "root"  # the re-created workspace works


async def test_the_default_workspace_cannot_be_deleted(api: Api) -> None:
    r = await api.call("delete_workspace", "DELETE", "/v1/workspaces/default",
                       headers={"Authorization": f"Bearer {api.admin}"})  # fmt: skip
    assert code_of(r) == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (NODE, b"[" * 5000 + b"]" * 5000),
        (NODE, b'{"\\udc80": 1}'),
        ("/v1/workspaces/default/locks/batch", b'{"items": [{"node_id": "a", "\\udc80": 1}]}'),
    ],
    ids=["deep-nesting", "lone-surrogate-key", "lone-surrogate-nested-key"],
)
async def test_pathological_json_is_invalid_argument_not_a_crash(api: Api, path: str, body: bytes) -> None:
    r = await api.http.post(f"{api.url}{path}", content=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, code_of(r)) == (422, "INVALID_ARGUMENT")


async def test_a_deeply_nested_cursor_is_invalid_argument(api: Api) -> None:
    cursor = base64.urlsafe_b64encode(b"[" * 3000).decode()
    r = await api.call("list_locks", "GET", "/v1/workspaces/default/locks", params={"cursor": cursor})
    assert code_of(r) == "INVALID_ARGUMENT"
