"""Keys, workspace isolation and owner checks: every rule over REST and MCP (both protocol eras), on real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcp_locks import AlreadyExists, Settings, build_app
from mcp_locks.engine.admin import bootstrap_admin_key
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .faces import Env, Face, Outcome
from .helpers import until_event
from .servers import serve_app

pytestmark = pytest.mark.anyio


def error_of(r: httpx.Response, code: str) -> dict[str, Any]:
    """The error body of a refusal: REST's own, or (a refused key on an MCP endpoint) inside a JSON-RPC error."""
    assert r.status_code != 500, r.text
    doc = r.json()
    if "jsonrpc" in doc:  # MCP clients read a non-2xx answer only as a JSON-RPC error
        assert doc["error"]["message"].startswith(f"{code}: "), doc
        doc = doc["error"]["data"]
    body: dict[str, Any] = doc["error"]
    assert body["code"] == code, body
    return body


# ---------------------------------------------------------------------- who you are


async def test_a_request_without_a_key_is_unauthenticated(face: Face) -> None:
    r = await face.raw(None)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in error_of(r, "UNAUTHENTICATED")["message"]


@pytest.mark.parametrize(
    "authorization",
    ["Bearer nonsense", "Bearer mlk_000000000000_" + "A" * 43, "Bearer", "Basic dXNlcjpwYXNz"],
    ids=["malformed", "unknown-id", "empty", "not-bearer"],
)
async def test_a_bad_key_is_unauthenticated(face: Face, authorization: str) -> None:
    r = await face.raw(None, {"Authorization": authorization})
    assert r.status_code == 401
    error_of(r, "UNAUTHENTICATED")


async def test_a_key_with_a_known_id_but_a_wrong_secret_is_unauthenticated(face: Face) -> None:
    forged = face.env.alice[: -len("A" * 43)] + "A" * 43
    assert forged != face.env.alice
    r = await face.raw(forged)
    assert r.status_code == 401


async def test_a_revoked_key_stops_working_at_once(face: Face) -> None:
    key, record = await face.env.service.create_key("dave", ["default"])
    assert (await face(key, "status", node_id="a.md")).result is not None
    r = await face.http.delete(
        f"{face.env.url}/v1/admin/keys/{record.key_id}", headers={"Authorization": f"Bearer {face.env.admin}"}
    )
    assert r.json()["revoked_at"] is not None
    assert (await face.raw(key)).status_code == 401


async def test_the_owner_is_the_keys_agent_and_agent_names_a_session_below_it(face: Face) -> None:
    grant = (await face(face.env.alice, "lock", node_id="a.md", agent="helper-1")).ok
    assert (grant["owner"], grant["label"]) == ("alice/helper-1", "helper-1")
    status = (await face(face.env.bob, "status", node_id="a.md")).ok
    assert (status["holders"][0]["owner"], status["holders"][0]["label"]) == ("alice/helper-1", "helper-1")
    # bob cannot take it by calling himself alice
    denied = await face(face.env.bob, "lock", node_id="a.md", agent="alice")
    assert denied.code == "LOCKED"


# ---------------------------------------------------------------------- where you may go


@pytest.mark.parametrize("workspace", ["team", "nope"], ids=["existing", "missing"])
async def test_a_workspace_the_key_does_not_reach_is_forbidden_whether_or_not_it_exists(
    face: Face, workspace: str
) -> None:
    out = await face(face.env.bob, "lock", workspace_id=workspace, node_id="a.md")
    assert out.code == "FORBIDDEN"
    assert out.message == f"this key does not reach workspace '{workspace}'."
    assert "exist" not in out.message + out.hint


async def test_an_admin_may_use_every_workspace_but_gets_not_found_for_a_missing_one(face: Face) -> None:
    assert (await face(face.env.admin, "lock", workspace_id="team", node_id="a.md")).ok["owner"] == "root"
    assert (await face(face.env.admin, "status", workspace_id="nope", node_id="a.md")).code == "NOT_FOUND"


async def test_workspaces_are_listed_only_where_the_key_reaches(face: Face) -> None:
    mine = (await face(face.env.bob, "list_workspaces")).ok["workspaces"]
    assert [w["workspace_id"] for w in mine] == ["default"]
    every = (await face(face.env.admin, "list_workspaces")).ok["workspaces"]
    assert [w["workspace_id"] for w in every] == ["default", "team"]


async def test_only_an_admin_creates_workspaces(face: Face) -> None:
    assert (await face(face.env.alice, "create_workspace", workspace_id="mine")).code == "FORBIDDEN"
    assert (await face(face.env.admin, "create_workspace", workspace_id="mine")).ok["workspace_id"] == "mine"


async def test_a_key_bound_to_one_workspace_uses_it_when_none_is_named(face: Face) -> None:
    grant = (await face(face.env.carol, "lock", node_id="plan.md")).ok
    assert grant["workspace_id"] == "team"


async def test_the_storage_paths_refuse_a_key_that_reaches_several_workspaces(env: Env) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {env.alice}"}) as h:
        r = await h.post(f"{env.url}/v1/storage/nodes/a.md/lock", json={})
    assert r.status_code == 422
    assert "/v1/workspaces/" in error_of(r, "INVALID_ARGUMENT")["hint"]


# ---------------------------------------------------------------------- whose lock it is


@pytest.mark.parametrize("op", ["unlock", "renew", "upgrade"])
async def test_another_agents_token_is_forbidden_and_the_lock_stays(face: Face, op: str) -> None:
    grant = (await face(face.env.alice, "lock", node_id="a.md", mode="read")).ok
    if op == "upgrade":
        out = await face(face.env.bob, "lock", node_id="a.md", mode="write", token=grant["token"])
    else:
        out = await face(face.env.bob, op, node_id="a.md", token=grant["token"])
    assert out.code == "FORBIDDEN"
    assert "alice" in out.message
    status = (await face(face.env.alice, "status", node_id="a.md")).ok
    assert [(h["lock_id"], h["mode"]) for h in status["holders"]] == [(grant["lock_id"], "read")]


async def test_an_admin_may_release_anyones_lock_with_its_token(face: Face) -> None:
    grant = (await face(face.env.alice, "lock", node_id="a.md")).ok
    out = await face(face.env.admin, "unlock", node_id="a.md", token=grant["token"])
    assert out.ok["released"]["owner"] == "alice"


async def test_force_unlock_frees_the_node_and_tells_the_holder_who_and_why(face: Face) -> None:
    grant = (await face(face.env.alice, "lock", node_id="a.md")).ok
    broken = await face(
        face.env.admin, "force_unlock", workspace_id="default", lock_id=grant["lock_id"], reason="agent crashed"
    )
    assert broken.ok["released"]["lock_id"] == grant["lock_id"]
    assert (await face(face.env.bob, "lock", node_id="a.md")).ok["owner"] == "bob"
    late = await face(face.env.alice, "renew", node_id="a.md", token=grant["token"])
    assert late.code == "LOCK_BROKEN"
    assert "agent crashed" in late.message
    assert late.details is not None
    assert (late.details["broken_by"], late.details["reason"]) == ("root", "agent crashed")


async def test_force_unlock_needs_an_admin_key(face: Face) -> None:
    grant = (await face(face.env.alice, "lock", node_id="a.md")).ok
    out = await face(face.env.bob, "force_unlock", workspace_id="default", lock_id=grant["lock_id"], reason="mine")
    assert out.code == "FORBIDDEN"
    assert (await face(face.env.alice, "status", node_id="a.md")).ok["locked"]


async def test_force_unlock_of_a_lock_that_is_not_held_is_lock_not_found(face: Face) -> None:
    out = await face(face.env.admin, "force_unlock", workspace_id="default", lock_id="lk_nothing", reason="x")
    assert out.code == "LOCK_NOT_FOUND"


async def test_a_session_closing_a_cycle_with_another_key_is_told_deadlock(face: Face) -> None:
    env = face.env
    a = (await face(env.alice, "lock", node_id="a.md", agent="one")).ok
    assert a["owner"] == "alice/one"
    assert (await face(env.bob, "lock", node_id="b.md")).ok["owner"] == "bob"
    async with env.service.subscribe() as events:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                got: list[Outcome] = []

                async def alice_one_waits_for_b() -> None:
                    got.append(await face(env.alice, "lock", node_id="b.md", agent="one", wait=60))

                tg.start_soon(alice_one_waits_for_b)
                await until_event(events, "queued", "b.md")
                out = await face(env.bob, "lock", node_id="a.md", wait=60)
                assert out.code == "DEADLOCK"
                assert "alice/one" in out.message
                await face(env.alice, "unlock", node_id="a.md", token=a["token"])  # alice gives up a.md ...
                tg.cancel_scope.cancel()  # ... and stops waiting for b.md


async def test_a_session_waiting_behind_another_session_of_a_key_in_a_cycle_is_not_a_deadlock(face: Face) -> None:
    """alice/one holds a.md; alice/two waits for bob's b.md; bob waiting for a.md waits for alice/one, who waits
    for nobody: no cycle, so bob queues (and is granted once alice/one lets go)."""
    env = face.env
    a = (await face(env.alice, "lock", node_id="a.md", agent="one")).ok
    b = (await face(env.bob, "lock", node_id="b.md")).ok
    async with env.service.subscribe() as events:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                got: list[Outcome] = []

                async def wait_for(key: str, node: str, agent: str | None) -> None:
                    got.append(await face(key, "lock", node_id=node, agent=agent, wait=60))

                tg.start_soon(wait_for, env.alice, "b.md", "two")
                await until_event(events, "queued", "b.md")
                tg.start_soon(wait_for, env.bob, "a.md", None)
                await until_event(events, "queued", "a.md")
                await face(env.alice, "unlock", node_id="a.md", token=a["token"])
                await until_event(events, "granted", "a.md")
                await face(env.bob, "unlock", node_id="b.md", token=b["token"])
    assert sorted(o.ok["owner"] for o in got) == ["alice/two", "bob"]


# ---------------------------------------------------------------------- what reaches the server at all


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Host": "evil.example:8765"}, 421, "BAD_HOST"),
        ({"Origin": "http://evil.example"}, 403, "FORBIDDEN"),
        ({"Origin": "null"}, 403, "FORBIDDEN"),
    ],
    ids=["host", "origin", "null-origin"],
)
async def test_foreign_host_and_origin_headers_are_refused_on_loopback(
    face: Face, headers: dict[str, str], status: int, code: str
) -> None:
    r = await face.raw(face.env.alice, headers)
    assert r.status_code == status
    error_of(r, code)


async def test_a_loopback_origin_is_allowed(face: Face) -> None:
    if face.name == "mcp-sse":
        headers = {"Origin": face.env.url, "Authorization": f"Bearer {face.env.alice}"}
        async with face.http.stream("GET", f"{face.env.url}/sse", headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
        return
    if face.name == "rest":
        r = await face.raw(face.env.alice, {"Origin": face.env.url}, json={})
    else:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}
        accept = {"Accept": "application/json, text/event-stream"}
        r = await face.raw(face.env.alice, {"Origin": face.env.url, **accept}, json=body)
    assert r.status_code == 200, r.text


async def test_an_oversized_body_is_refused_with_413(face: Face) -> None:
    r = await face.raw(face.env.alice, json={"note": "x" * (1 << 20)})
    assert r.status_code == 413
    assert error_of(r, "PAYLOAD_TOO_LARGE")["details"]["limit"] == 1 << 20


async def test_a_refusal_on_an_mcp_endpoint_is_a_json_rpc_error_an_mcp_client_reads_and_rest_keeps_its_body(
    face: Face,
) -> None:
    r = await face.raw(face.env.alice, json={"note": "x" * (1 << 20)})
    doc = r.json()
    if face.name == "rest":
        assert "jsonrpc" not in doc
        assert doc["error"]["code"] == "PAYLOAD_TOO_LARGE"
    else:
        assert doc["jsonrpc"] == "2.0"
        assert doc["id"] is None
        assert doc["error"]["code"] == -32011  # not the key's -32010: the refusal's own code is in message and data
        assert doc["error"]["message"].startswith("PAYLOAD_TOO_LARGE: ")
        assert doc["error"]["data"]["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_an_oversized_body_without_a_length_is_refused_with_413(face: Face) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 65536  # 1.25 MiB in all, streamed without Content-Length

    r = await face.raw(face.env.alice, content=chunks(), json=None)
    assert r.status_code == 413


async def test_a_rate_limited_key_gets_429_with_retry_after(tmp_path: Path) -> None:
    service = LockService(MemoryStore())
    app = build_app(Settings(store="memory", data_dir=tmp_path, rate_limit="3/minute"), service)
    async with serve_app(app) as url:
        key, _ = await service.create_key("fast", ["default"])
        other, _ = await service.create_key("calm", ["default"])
        async with httpx.AsyncClient() as h:
            codes = [
                (await h.get(f"{url}/v1/workspaces", headers={"Authorization": f"Bearer {key}"})).status_code
                for _ in range(4)
            ]
            r = await h.get(f"{url}/v1/workspaces", headers={"Authorization": f"Bearer {key}"})
            calm = await h.get(f"{url}/v1/workspaces", headers={"Authorization": f"Bearer {other}"})
    assert codes == [200, 200, 200, 429]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert error_of(r, "RATE_LIMITED")["details"]["retry_after"] == int(r.headers["retry-after"])
    assert calm.status_code == 200  # the limit is per key


async def test_insecure_no_auth_is_refused_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="insecure-no-auth"):
        build_app(Settings(store="memory", data_dir=tmp_path, host="0.0.0.0", insecure_no_auth=True))


async def test_without_auth_the_agent_argument_names_the_owner(tmp_path: Path) -> None:
    app = build_app(Settings(store="memory", data_dir=tmp_path, insecure_no_auth=True))
    async with serve_app(app) as url, httpx.AsyncClient() as h:
        r = await h.post(f"{url}/v1/workspaces/default/nodes/a.md/lock", json={"agent": "alice"})
        me = await h.get(f"{url}/v1/me")
    assert (r.json()["owner"], r.json()["label"]) == ("alice", None)
    assert me.json()["authenticated"] is False
    assert not (tmp_path / "admin.key").exists()


async def test_an_admin_key_from_the_environment_is_registered_and_no_file_is_written(tmp_path: Path) -> None:
    from mcp_locks.core.keys import new_key

    key, _ = new_key("ops", (), "admin", 0)
    service = LockService(MemoryStore())
    app = build_app(Settings(store="memory", data_dir=tmp_path, admin_key=key), service)
    async with serve_app(app) as url, httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as h:
        me = (await h.get(f"{url}/v1/me")).json()
    assert (me["role"], me["authenticated"]) == ("admin", True)
    assert not (tmp_path / "admin.key").exists()


async def test_a_rotated_key_finds_the_old_keys_locks_broken_by_the_revocation(face: Face) -> None:
    env = face.env
    old, old_record = await env.service.create_key("erin", ["default"])
    grant = (await face(old, "lock", node_id="a.md")).ok
    await env.service.revoke_key(old_record.key_id)
    new, _ = await env.service.create_key("erin", ["default"])  # the same agent, a new key
    out = await face(new, "unlock", node_id="a.md", token=grant["token"])
    assert out.code == "LOCK_BROKEN"
    assert out.details["reason"] == "key revoked"
    assert (await face(env.alice, "status", node_id="a.md")).ok["holders"] == []


async def test_an_agent_has_one_live_key_at_a_time(env: Env) -> None:
    with pytest.raises(AlreadyExists, match="already has a live key"):
        await env.service.create_key("alice", ["default"])


async def test_an_mcp_session_opened_with_one_key_refuses_another(env: Env) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=env.url) as h:
        opened = await h.post("/mcp", json=init, headers={**accept, "Authorization": f"Bearer {env.alice}"})
        assert opened.status_code == 200, opened.text
        session = opened.headers["mcp-session-id"]
        hijack = await h.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers={**accept, "Authorization": f"Bearer {env.bob}", "Mcp-Session-Id": session},
        )
    assert 400 <= hijack.status_code < 500
    assert "lock_file" not in hijack.text


def test_a_throwaway_memory_server_never_writes_its_admin_key_into_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "admin.key").write_text("the real server's key\n")
    path = anyio.run(lambda: bootstrap_admin_key(MemoryStore(), tmp_path, None, 0, persistent=False))
    assert path is not None
    assert not path.startswith(str(tmp_path))
    assert Path(path).stat().st_mode & 0o777 == 0o600
    Path(path).unlink()
    assert (tmp_path / "admin.key").read_text() == "the real server's key\n"


def test_an_existing_admin_key_file_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "admin.key").write_text("an older key\n")
    store = MemoryStore()
    path = anyio.run(lambda: bootstrap_admin_key(store, tmp_path, None, 0))
    assert path == str(tmp_path / "admin-2.key")
    assert (tmp_path / "admin.key").read_text() == "an older key\n"
    assert [r.role for r in anyio.run(store.list_keys)] == ["admin"]
    assert anyio.run(lambda: bootstrap_admin_key(store, tmp_path, None, 0)) is None  # an admin exists: nothing more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin-2.key", "admin.key"]


async def test_a_legacy_sse_session_opened_with_one_key_refuses_another(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url, timeout=10) as h:
        headers = {"Authorization": f"Bearer {env.alice}"}
        async with h.stream("GET", "/sse", headers=headers) as stream:
            endpoint = None
            # One reader, kept while the session is used: a dropped, partly read aiter_lines() is closed
            # when the garbage collector finalises it, and that closes the connection (and the session).
            lines = stream.aiter_lines()
            async for line in lines:  # the first event names where to post
                if line.startswith("data: "):
                    endpoint = line.removeprefix("data: ").strip()
                    break
            assert endpoint is not None
            assert endpoint.startswith("/messages/?session_id=")
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            hijack = await h.post(endpoint, json=ping, headers={"Authorization": f"Bearer {env.bob}"})
            own = await h.post(endpoint, json=ping, headers=headers)
    assert 400 <= hijack.status_code < 500
    assert own.status_code == 202  # accepted into the stream


async def test_check_lock_status_with_a_token_answers_do_i_still_hold_it(face: Face) -> None:
    env = face.env
    grant = (await face(env.alice, "lock", node_id="a.md", timeout=60)).ok
    mine = (await face(env.alice, "status", node_id="a.md", token=grant["token"])).ok["yours"]
    assert (mine["held"], mine["covers_node"], mine["lock_id"], mine["seconds_left"]) == (
        True,
        True,
        grant["lock_id"],
        60,  # the manual clock has not moved
    )
    assert (await face(env.bob, "status", node_id="a.md", token=grant["token"])).code == "FORBIDDEN"
    await face(env.admin, "force_unlock", workspace_id="default", lock_id=grant["lock_id"], reason="test")
    gone = (await face(env.alice, "status", node_id="a.md", token=grant["token"])).ok["yours"]
    assert (gone["held"], gone["code"]) == (False, "LOCK_BROKEN")
    assert "test" in gone["message"]
