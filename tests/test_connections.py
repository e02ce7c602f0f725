"""Long-lived connections on the faces: revocation ends them, per-key caps bound them, and HTTP hygiene.

Every connection kind is opened with a real client on a real server on loopback: the streamable HTTP
session and its GET stream, the legacy HTTP+SSE session, a ``subscriptions/listen`` stream, a 2025-era
``resources/subscribe``, and the REST event stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import SubscriptionLost
from mcp.shared.exceptions import MCPError
from mcp_types import ResourceUpdatedNotification, TextResourceContents
from starlette.applications import Starlette

import mcp_locks.faces.rest.event_stream
from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.keys import Identity, parse_key_id
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.app import REVOKED_ELSEWHERE
from mcp_locks.faces.auth import REFUSED_RPC_CODE
from mcp_locks.faces.mcp.resources import workspace_uri
from mcp_locks.faces.mcp.sdk import http_sessions
from mcp_locks.stores.base import MemoryStore

from .helpers import STEP
from .servers import serve_app
from .test_resources import subscribe

pytestmark = pytest.mark.anyio

#: The issue promises that revoking a key ends, within one second, every long-lived connection the key has
#: open (and that a listen stream stops delivering at once). Real time is the subject here, so each
#: revocation and the end of the connection it must cause happen inside this bound.
REVOKE_REACH = 1.0

LEGACY = "2025-11-25"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Server:
    """A keyed server: alice reaches default and team, bob default; admin is an admin key."""

    url: str
    app: Starlette
    service: LockService
    admin: str
    alice: str
    bob: str

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def sessions_of(self, key: str) -> int:
        """The MCP sessions (streamable HTTP and legacy SSE) ``key`` holds on the server now."""
        key_id = parse_key_id(key)
        assert key_id is not None
        count: int = self.app.state.sessions.count(key_id)
        return count


@asynccontextmanager
async def server(tmp_path: Path, **settings: Any) -> AsyncIterator[Server]:
    service = LockService(MemoryStore(), clock=ManualClock())
    app = build_app(Settings(store="memory", data_dir=tmp_path, **settings), service)
    async with serve_app(app) as url:
        await service.create_workspace("team")
        admin, _ = await service.create_key("root", [], "admin")
        alice, _ = await service.create_key("alice", ["default", "team"])
        bob, _ = await service.create_key("bob", ["default"])
        yield Server(url, app, service, admin, alice, bob)


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    async with server(tmp_path) as s:
        yield s


async def revoke(s: Server, key: str) -> None:
    """Revoke ``key`` through the admin API, as an operator would."""
    async with httpx.AsyncClient(timeout=STEP) as http:
        r = await http.delete(f"{s.url}/v1/admin/keys/{parse_key_id(key)}", headers=s.auth(s.admin))
        assert r.status_code == 200, r.text


async def take_workspace(s: Server, key: str, workspace_id: str) -> None:
    """Remove ``workspace_id`` from ``key`` through the admin API."""
    async with httpx.AsyncClient(timeout=STEP) as http:
        r = await http.patch(
            f"{s.url}/v1/admin/keys/{parse_key_id(key)}",
            json={"remove_workspaces": [workspace_id]},
            headers=s.auth(s.admin),
        )
        assert r.status_code == 200, r.text


async def lose(s: Server, how: str, key: str, workspace_id: str) -> None:
    """Take ``workspace_id`` from ``key``: revoke the key, or remove the workspace from it."""
    if how == "revoked":
        await revoke(s, key)
    else:
        await take_workspace(s, key, workspace_id)


async def until_closed(stream: AsyncIterator[Any]) -> None:
    """Read ``stream`` (a response's body) to its end: a server that ends a stream ends it cleanly, no broken chunk."""
    async for _ in stream:
        pass


async def until_sessions(s: Server, key: str, count: int) -> None:
    """Until the server counts ``count`` sessions of ``key`` (it frees a place once the session's task ends)."""
    with anyio.fail_after(STEP):
        while s.sessions_of(key) != count:  # noqa: ASYNC110 - nothing to wait on but the count
            await anyio.sleep(0.01)


async def open_session(http: httpx.AsyncClient, s: Server, key: str) -> httpx.Response:
    """A 2025-era streamable HTTP session opened by hand (the answer to its initialize)."""
    return await http.post(f"{s.url}/mcp", json=INIT, headers={**s.auth(key), **MCP_ACCEPT})


async def initialized(http: httpx.AsyncClient, s: Server, key: str, session_id: str) -> None:
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    headers = {**s.auth(key), **MCP_ACCEPT, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": LEGACY}
    assert (await http.post(f"{s.url}/mcp", json=note, headers=headers)).status_code == 202


@asynccontextmanager
async def sse_session(http: httpx.AsyncClient, s: Server, key: str) -> AsyncIterator[AsyncIterator[str]]:
    """A legacy HTTP+SSE session, open once its first event (where to post) arrived; yields its lines to come."""
    async with http.stream("GET", f"{s.url}/sse", headers=s.auth(key)) as r:
        assert r.status_code == 200, await r.aread()
        lines = r.aiter_lines()
        with anyio.fail_after(STEP):
            async for line in lines:
                if line.startswith("data: /messages/"):
                    break
        yield lines


@asynccontextmanager
async def modern_client(s: Server, key: str) -> AsyncIterator[Client]:
    async with (
        httpx.AsyncClient(headers=s.auth(key), timeout=STEP) as h,
        Client(streamable_http_client(f"{s.url}/mcp", http_client=h)) as c,
    ):
        yield c


@asynccontextmanager
async def event_stream(s: Server, key: str, workspace_id: str) -> AsyncIterator[httpx.Response]:
    """The REST event stream of ``workspace_id``, open."""
    async with (
        httpx.AsyncClient(timeout=STEP) as http,
        http.stream("GET", f"{s.url}/v1/workspaces/{workspace_id}/events", headers=s.auth(key)) as r,
    ):
        assert r.status_code == 200
        yield r


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, however deep its groups nest."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def assert_refused(r: httpx.Response, code: str) -> dict[str, Any]:
    """``r`` is a guard refusal on an MCP endpoint: a JSON-RPC error carrying the error body in ``data``."""
    body = r.json()
    assert body["error"]["code"] == REFUSED_RPC_CODE, body
    err: dict[str, Any] = body["error"]["data"]["error"]
    assert err["code"] == code, err
    assert body["error"]["message"].startswith(f"{code}: ")
    return err


# ---------------------------------------------------------------------- revocation ends every connection


async def test_a_revoked_keys_streamable_http_session_and_its_get_stream_end_within_a_second(srv: Server) -> None:
    async with httpx.AsyncClient(timeout=STEP) as http:
        opened = await open_session(http, srv, srv.alice)
        assert opened.status_code == 200, opened.text
        sid = opened.headers["mcp-session-id"]
        await initialized(http, srv, srv.alice, sid)
        get = {**srv.auth(srv.alice), "Accept": "text/event-stream", "Mcp-Session-Id": sid}
        async with http.stream("GET", f"{srv.url}/mcp", headers={**get, "MCP-Protocol-Version": LEGACY}) as r:
            assert r.status_code == 200
            with anyio.fail_after(REVOKE_REACH):
                await revoke(srv, srv.alice)
                await until_closed(r.aiter_raw())
    assert sid not in dict(http_sessions(srv.app.state.mcp.session_manager))  # the session itself ended


async def test_a_revoked_keys_legacy_sse_session_ends_within_a_second(srv: Server) -> None:
    async with httpx.AsyncClient(timeout=STEP) as http, sse_session(http, srv, srv.alice) as lines:
        assert srv.sessions_of(srv.alice) == 1
        with anyio.fail_after(REVOKE_REACH):
            await revoke(srv, srv.alice)
            await until_closed(lines)
    await until_sessions(srv, srv.alice, 0)


async def drain_updates(sub: Any) -> None:
    async for ev in sub:
        raise AssertionError(f"an update reached a key that lost the workspace: {ev}")


@pytest.mark.parametrize("how", ["revoked", "workspace taken"])
async def test_a_listen_stream_ends_within_a_second_when_its_key_loses_the_workspace(srv: Server, how: str) -> None:
    async with modern_client(srv, srv.alice) as c, c.listen(resource_subscriptions=[workspace_uri("team")]) as sub:
        with anyio.fail_after(REVOKE_REACH):
            await lose(srv, how, srv.alice, "team")
            with pytest.raises(SubscriptionLost) as ended:
                await drain_updates(sub)
    cause = ended.value.__cause__
    assert isinstance(cause, MCPError)
    expected = "UNAUTHENTICATED" if how == "revoked" else "FORBIDDEN"
    assert cause.error.message.startswith(f"{expected}: "), cause.error.message


@pytest.mark.parametrize("how", ["revoked", "workspace taken"])
async def test_a_rest_event_stream_ends_within_a_second_when_its_key_loses_the_workspace(srv: Server, how: str) -> None:
    async with event_stream(srv, srv.alice, "team") as r:
        chunks = r.aiter_raw()
        with anyio.fail_after(STEP):
            await chunks.__anext__()  # connected (see the test below)
        with anyio.fail_after(REVOKE_REACH):
            await lose(srv, how, srv.alice, "team")
            async for chunk in chunks:
                assert b"data:" not in chunk


async def test_a_key_revoked_by_another_process_ends_its_streams_within_a_second(srv: Server) -> None:
    # Straight in the store, as `mcp-locks keys revoke` on the data dir (or another server of a cluster)
    # does: this server hears of it only through the store's key version.
    key_id = parse_key_id(srv.bob)
    assert key_id is not None
    async with event_stream(srv, srv.bob, "default") as r, httpx.AsyncClient(timeout=STEP) as http:
        chunks = r.aiter_raw()
        with anyio.fail_after(STEP):
            await chunks.__anext__()
        async with sse_session(http, srv, srv.bob) as legacy:
            with anyio.fail_after(REVOKE_REACH):
                await srv.service.store.revoke_key(key_id, srv.service.clock.now())
                await until_closed(chunks)
                await until_closed(legacy)


async def test_a_legacy_subscription_to_a_workspace_taken_from_the_key_is_dropped_with_a_last_update(
    srv: Server,
) -> None:
    updates, heard = anyio.create_memory_object_stream[str](100)

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            await updates.send(message.params.uri)

    async with httpx.AsyncClient(headers=srv.auth(srv.alice), timeout=STEP) as h, updates, heard:
        transport = streamable_http_client(f"{srv.url}/mcp", http_client=h)
        async with Client(transport, mode="legacy", message_handler=on_message) as c:
            team, default = workspace_uri("team"), workspace_uri("default")
            await subscribe(c, team)
            await subscribe(c, default)
            await take_workspace(srv, srv.alice, "team")
            with anyio.fail_after(REVOKE_REACH):
                assert await heard.receive() == team  # read it again...
            with pytest.raises(MCPError) as refused:
                await c.read_resource(team)
            assert refused.value.error.message.startswith("FORBIDDEN: ")  # ...and be told why
            await srv.service.lock("team", "a.md", "write")
            await srv.service.lock("default", "b.md", "write")
            with anyio.fail_after(STEP):
                assert await heard.receive() == default  # the team lock came first, unheard
            content = (await c.read_resource(default)).contents[0]
            assert isinstance(content, TextResourceContents)
            assert json.loads(content.text)["locks"]


# ---------------------------------------------------------------------- per-key caps


async def test_a_key_may_hold_only_so_many_streamable_sessions_and_a_closed_one_frees_its_place(
    tmp_path: Path,
) -> None:
    async with server(tmp_path, max_sessions_per_key=2) as s, httpx.AsyncClient(timeout=STEP) as http:
        sids = []
        for _ in range(2):
            opened = await open_session(http, s, s.alice)
            assert opened.status_code == 200, opened.text
            sids.append(opened.headers["mcp-session-id"])
        over = await open_session(http, s, s.alice)
        assert over.status_code == 429
        err = assert_refused(over, "LIMIT_EXCEEDED")
        assert err["details"]["limit"] == 2
        assert "Close the sessions you no longer use" in err["hint"]
        assert (await open_session(http, s, s.bob)).status_code == 200  # another key is not crowded out
        headers = {**s.auth(s.alice), "Mcp-Session-Id": sids[0], "MCP-Protocol-Version": LEGACY}
        assert (await http.delete(f"{s.url}/mcp", headers=headers)).status_code == 200
        assert (await open_session(http, s, s.alice)).status_code == 200


async def test_legacy_sse_sessions_count_against_the_same_cap_and_a_disconnect_frees_its_place(
    tmp_path: Path,
) -> None:
    async with server(tmp_path, max_sessions_per_key=2) as s, httpx.AsyncClient(timeout=STEP) as http:
        assert (await open_session(http, s, s.alice)).status_code == 200
        async with sse_session(http, s, s.alice):
            over = await http.get(f"{s.url}/sse", headers=s.auth(s.alice))
            assert over.status_code == 429
            assert_refused(over, "LIMIT_EXCEEDED")
            assert (await open_session(http, s, s.alice)).status_code == 429
        await until_sessions(s, s.alice, 1)  # the server noticed the client left
        async with sse_session(http, s, s.alice):
            assert s.sessions_of(s.alice) == 2


async def test_the_mcp_sdk_client_is_told_limit_exceeded_beyond_the_session_cap(tmp_path: Path) -> None:
    async with server(tmp_path, max_sessions_per_key=1) as s, AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            h = await stack.enter_async_context(httpx.AsyncClient(headers=s.auth(s.alice), timeout=STEP))
            clients.append(Client(streamable_http_client(f"{s.url}/mcp", http_client=h), mode="legacy"))
        await stack.enter_async_context(clients[0])
        with pytest.raises(BaseException) as refused:  # noqa: PT011 - the SDK wraps it in an ExceptionGroup
            await stack.enter_async_context(clients[1])
    mcp_errors = [e for e in leaves(refused.value) if isinstance(e, MCPError)]
    assert mcp_errors, repr(refused.value)
    assert mcp_errors[0].error.code == REFUSED_RPC_CODE
    assert mcp_errors[0].error.message.startswith("LIMIT_EXCEEDED: ")


async def test_a_key_may_hold_only_so_many_listen_streams_and_a_closed_one_frees_its_place(tmp_path: Path) -> None:
    async with server(tmp_path, max_listens_per_key=2) as s, modern_client(s, s.alice) as c:
        uri = workspace_uri("default")
        async with c.listen(resource_subscriptions=[uri]):
            async with c.listen(resource_subscriptions=[uri]):
                with pytest.raises(MCPError) as refused:
                    async with c.listen(resource_subscriptions=[uri]):
                        pass
                assert refused.value.error.code == REFUSED_RPC_CODE
                assert refused.value.error.message.startswith("LIMIT_EXCEEDED: ")
                assert isinstance(refused.value.error.data, dict)
                assert refused.value.error.data["error"]["details"] == {"limit": 2}
                async with modern_client(s, s.bob) as other, other.listen(resource_subscriptions=[uri]):
                    pass  # another key is not crowded out
            with anyio.fail_after(STEP):  # the server notices the closed one: its place is free again
                while True:
                    try:
                        async with c.listen(resource_subscriptions=[uri]) as sub:
                            assert sub.honored.resource_subscriptions == [uri]
                            break
                    except MCPError:
                        await anyio.sleep(0.01)


async def test_without_keys_no_per_key_cap_applies(tmp_path: Path) -> None:
    caps = {"max_sessions_per_key": 1, "max_listens_per_key": 1, "insecure_no_auth": True}
    service = LockService(MemoryStore(), clock=ManualClock())
    app = build_app(Settings(store="memory", data_dir=tmp_path, **caps), service)
    async with serve_app(app) as url, httpx.AsyncClient(timeout=STEP) as http, AsyncExitStack() as stack:
        for _ in range(3):
            assert (await http.post(f"{url}/mcp", json=INIT, headers=MCP_ACCEPT)).status_code == 200
        c = await stack.enter_async_context(Client(f"{url}/mcp"))
        for _ in range(3):
            await stack.enter_async_context(c.listen(resource_subscriptions=[workspace_uri("default")]))


# ---------------------------------------------------------------------- the REST event stream answers at once


async def test_the_rest_event_stream_sends_its_first_bytes_at_once_on_a_quiet_workspace(srv: Server) -> None:
    # Before any event and well before the first keep-alive (STEP < KEEPALIVE), the client sees bytes.
    assert mcp_locks.faces.rest.event_stream.KEEPALIVE > STEP
    async with event_stream(srv, srv.bob, "default") as r:
        with anyio.fail_after(STEP):
            first = await r.aiter_raw().__anext__()
    assert first.startswith(b": connected")
    assert b"data:" not in first


async def test_a_quiet_rest_event_stream_gets_keep_alive_comments(srv: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mcp_locks.faces.rest.event_stream, "KEEPALIVE", 0.05)  # real time: shortened
    async with event_stream(srv, srv.bob, "default") as r:
        lines = r.aiter_lines()
        with anyio.fail_after(STEP):
            assert await lines.__anext__() == ": connected"
            while (line := await lines.__anext__()) == "":
                pass
    assert line.startswith(": ping")


# ---------------------------------------------------------------------- HTTP hygiene


async def _answer(s: Server, http: httpx.AsyncClient, surface: str) -> httpx.Response:
    admin = s.auth(s.admin)
    if surface == "file download":
        put = await http.put(f"{s.url}/v1/workspaces/default/files/page.html?if_version=0",
                             content=b"<script>alert(1)</script>", headers=admin)  # fmt: skip
        assert put.status_code in (200, 201), put.text
        return await http.get(f"{s.url}/v1/workspaces/default/files/page.html", headers=admin)
    if surface == "mcp":
        return await open_session(http, s, s.admin)
    path, headers = {
        "dashboard": ("/", {}),
        "healthz": ("/healthz", {}),
        "metrics": ("/metrics", admin),
        "rest json": ("/v1/workspaces", admin),
        "guard refusal": ("/v1/workspaces", {}),
        "unknown route": ("/v1/nothing-here", admin),
    }[surface]
    return await http.get(f"{s.url}{path}", headers=headers)


@pytest.mark.parametrize(
    "surface",
    ["dashboard", "healthz", "metrics", "rest json", "guard refusal", "unknown route", "file download", "mcp"],
)
async def test_every_answer_says_nosniff(srv: Server, surface: str) -> None:
    async with httpx.AsyncClient(timeout=STEP) as http:
        r = await _answer(srv, http, surface)
    assert r.headers.get_list("x-content-type-options") == ["nosniff"], (r.status_code, dict(r.headers))


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/mcp",
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/openid-configuration",
        "/mcp/.well-known/openid-configuration",
    ],
)
async def test_oauth_discovery_paths_answer_not_found_without_a_key_so_a_bad_key_reads_as_one(
    srv: Server, path: str
) -> None:
    async with httpx.AsyncClient(timeout=STEP) as http:
        plain = await http.get(f"{srv.url}{path}")
        wrong = await http.get(f"{srv.url}{path}", headers={"Authorization": "Bearer mlk_000000000000_" + "x" * 43})
        refused = await http.post(f"{srv.url}/mcp", json=INIT, headers={**MCP_ACCEPT, "Authorization": "Bearer bad"})
    for r in (plain, wrong):
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "NOT_FOUND"
        assert "Authorization: Bearer mlk_" in err["hint"]
    assert refused.status_code == 401
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert "resource_metadata" not in challenge  # no pointer into an OAuth flow


async def test_a_key_revoked_by_another_process_has_its_locks_broken_within_a_second(srv: Server) -> None:
    # As above, straight in the store: the key watch must also end what the key holds in the engine.
    key_id = parse_key_id(srv.bob)
    assert key_id is not None
    rec = await srv.service.store.get_key(key_id)
    assert rec is not None
    bob = Identity(rec.key_id, rec.agent, rec.role, rec.workspaces)
    await srv.service.lock("default", "held.md", caller=bob)
    async with srv.service.subscribe() as events:
        with anyio.fail_after(REVOKE_REACH):
            await srv.service.store.revoke_key(key_id, srv.service.clock.now())
            broken = await anext(ev async for _, ev in events if ev.kind == "broken")
    assert (broken.node_id, broken.by, broken.reason) == ("held.md", REVOKED_ELSEWHERE, "key revoked")
    assert (await srv.service.status("default", "held.md")).holders == []
