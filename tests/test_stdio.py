"""`mcp-locks stdio`: the bridge to a running server, and the embedded engine, driven by the SDK's stdio client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from anyio.abc import TaskStatus
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import (
    ResourceUpdatedNotification,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
)

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.keys import NOBODY
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.tools import PROGRESS_EVERY, build_mcp
from mcp_locks.faces.stdio import bridge as bridge_module
from mcp_locks.faces.stdio import link as link_module
from mcp_locks.faces.stdio.bridge import Bridge
from mcp_locks.faces.stdio.launch import linked
from mcp_locks.faces.stdio.link import Link
from mcp_locks.faces.stdio.relay import Relay
from mcp_locks.stores.base import MemoryStore

from .helpers import STEP, until_event
from .servers import KeyedServer, _QuietServer, free_socket, keyed_server, serve_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def stdio(*args: str, **client: Any) -> Client:
    """A client of ``python -m mcp_locks stdio ARGS`` (a subprocess speaking MCP on its stdin/stdout).

    ``client`` goes to the SDK's Client (``mode="legacy"`` is a 2025-era host, as hosts on the TypeScript SDK are).
    """
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_locks", "stdio", *args])
    return Client(stdio_client(params), **client)


async def subscribe(host: Client, uri: str, *, on: bool = True) -> None:
    """resources/subscribe (or unsubscribe), as 2025-era hosts send it (the SDK flags it as removed in 2026)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await (host.subscribe_resource(uri) if on else host.unsubscribe_resource(uri))


class Updates:
    """The resource updates a 2025-era host hears (its message handler), to wait for one by one."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self._arrived = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            self.uris.append(message.params.uri)
            self._arrived.set()

    async def until(self, count: int) -> list[str]:
        """The updates once there are ``count`` of them."""
        with anyio.fail_after(STEP):
            while len(self.uris) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.uris


Env = KeyedServer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with keyed_server(tmp_path, agent="desktop-agent") as server:
        yield server


def ok(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    content: dict[str, Any] = result.structured_content
    return content


async def test_the_bridge_offers_the_servers_tools_and_locks_as_the_keys_agent(env: Env) -> None:
    with anyio.fail_after(STEP * 3):
        async with stdio("--url", env.url, "--key", env.key) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"lock_file", "unlock_file", "check_lock_status", "force_unlock"} <= names
            grant = ok(await c.call_tool("lock_file", {"node_id": "notes.md", "agent": "desktop"}))
            assert (grant["owner"], grant["label"]) == ("desktop-agent/desktop", "desktop")
            assert (await env.service.status(None, "notes.md")).holders[0].lock_id == grant["lock_id"]
            refused = await c.call_tool("lock_file", {"node_id": "notes.md"})
            assert refused.is_error
            assert refused.content[0].text.startswith("LOCKED: ")  # type: ignore[union-attr]
            # Forwarded as the server answered: the body in _meta, no structuredContent for hosts to reject.
            assert refused.structured_content is None
            assert refused.meta is not None
            assert refused.meta["io.github.mcp-locks/error"]["code"] == "LOCKED"
            ok(await c.call_tool("unlock_file", {"token": grant["token"]}))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_bridge_passes_progress_back_and_a_cancelled_wait_leaves_the_line(env: Env, mode: str) -> None:
    holder = await env.service.lock(None, "doc.md", agent="other")
    progressed = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.set()

    with anyio.fail_after(STEP * 3):
        async with stdio("--url", env.url, "--key", env.key, mode=mode) as c, env.service.subscribe() as events:
            async with anyio.create_task_group() as tg:
                args = {"node_id": "doc.md", "wait": 600}
                tg.start_soon(lambda: c.call_tool("lock_file", args, progress_callback=on_progress))
                await until_event(events, "queued", "doc.md")
                env.clock.advance(PROGRESS_EVERY)
                await progressed.wait()
                tg.cancel_scope.cancel()  # a 2025-era host sends notifications/cancelled; a 2026 one drops the call
            left = await until_event(events, "left", "doc.md")
    assert left.code == "CANCELLED"
    status = await env.service.status(None, "doc.md")
    assert status.holders[0].lock_id == holder.lock_id
    assert status.waiters == []


async def test_the_bridge_lists_and_reads_the_servers_resources(env: Env) -> None:
    await env.service.lock(None, "plans/q3.md", agent="other")
    with anyio.fail_after(STEP * 3):
        async with stdio("--url", env.url, "--key", env.key) as c:
            templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
            assert templates == {"locks://{workspace_id}", "locks://{workspace_id}/{+node_id}"}
            await c.list_resources()  # answers (the server lists no concrete resources)
            assert (await c.list_prompts()).prompts == []  # the server has none: forwarded as an empty list
            node = json.loads((await c.read_resource("locks://default/plans/q3.md")).contents[0].text)  # type: ignore[union-attr]
            assert node["locked"] is True
            workspace = json.loads((await c.read_resource("locks://default")).contents[0].text)  # type: ignore[union-attr]
            assert [h["node_id"] for h in workspace["locks"]] == ["plans/q3.md"]
            with pytest.raises(MCPError) as refused:  # the server's refusal, code first, its body in data
                await c.read_resource("locks://elsewhere")
            assert refused.value.error.message.startswith("FORBIDDEN: ")
            assert refused.value.error.data["error"]["code"] == "FORBIDDEN"


async def test_a_subscription_through_the_bridge_hears_when_a_lock_changes_in_both_eras(env: Env) -> None:
    uri = "locks://default/notes.md"
    updates = Updates()
    with anyio.fail_after(STEP * 3):
        async with stdio("--url", env.url, "--key", env.key, mode="legacy", message_handler=updates) as old:
            await subscribe(old, uri)  # as hosts on the TypeScript SDK do
            with warnings.catch_warnings():  # logging/setLevel too (the server sends no log messages today)
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await old.set_logging_level("info")
            async with (
                stdio("--url", env.url, "--key", env.key) as new,
                new.listen(resource_subscriptions=[uri]) as sub,
            ):
                grant = await env.service.lock(None, "notes.md", agent="other")
                assert await updates.until(1) == [uri]
                event = await anext(aiter(sub))
                assert getattr(event, "uri", None) == uri
            await subscribe(old, uri, on=False)
            await env.service.unlock(None, grant.token)
            ok(await old.call_tool("check_lock_status", {"node_id": "notes.md"}))  # (a round trip: nothing came)
            assert updates.uris == [uri]


def test_the_bridge_says_how_to_start_a_server_when_none_answers() -> None:
    from .servers import free_socket

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    done = subprocess.run(
        [sys.executable, "-m", "mcp_locks", "stdio", "--url", f"http://127.0.0.1:{port}", "--key", "mlk_x"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"mcp-locks serve --port {port}" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


async def test_embedded_mode_runs_the_engine_for_one_client_and_claims_the_data_dir(tmp_path: Path) -> None:
    with anyio.fail_after(STEP * 3):
        async with stdio("--embedded", "--data-dir", str(tmp_path)) as c:
            grant = ok(await c.call_tool("lock_file", {"node_id": "a.md", "agent": "solo"}))
            assert grant["owner"] == "solo"  # the local user: the agent argument names the owner
            second = await anyio.run_process(
                [sys.executable, "-m", "mcp_locks", "stdio", "--embedded", "--data-dir", str(tmp_path)],
                stdin=subprocess.DEVNULL,
                check=False,
            )
            assert second.returncode != 0
            assert "is using" in second.stderr.decode()
        async with stdio("--embedded", "--data-dir", str(tmp_path)) as c:  # the lock survived the restart
            status = ok(await c.call_tool("check_lock_status", {"node_id": "a.md"}))
            assert status["holders"][0]["lock_id"] == grant["lock_id"]


async def test_the_claude_desktop_example_config_starts_a_working_bridge(env: Env) -> None:
    import json
    import shutil

    config = json.loads((Path(__file__).parents[1] / "examples" / "claude_desktop_config.json").read_text())
    entry = config["mcpServers"]["locks"]
    args = [env.url if a == "http://127.0.0.1:8765" else a for a in entry["args"]]  # this test's server
    command = shutil.which(entry["command"])
    if command is None:  # not on PATH (the package is not installed in this interpreter's scripts)
        command, args = sys.executable, ["-m", "mcp_locks", *args]
    params = StdioServerParameters(command=command, args=args, env={**entry["env"], "MCP_LOCKS_KEY": env.key})
    with anyio.fail_after(STEP * 3):
        async with Client(stdio_client(params)) as c:
            grant = ok(await c.call_tool("lock_file", {"node_id": "from-desktop.md"}))
    assert grant["owner"] == "desktop-agent"


def _socket_on(port: int) -> socket.socket:
    """A listening loopback socket on ``port`` (the same port again once the last one closed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


async def serve_on(
    port: int,
    store: MemoryStore,
    data_dir: Path,
    stop: anyio.Event,
    stopped: anyio.Event,
    *,
    task_status: TaskStatus[LockService],
) -> None:
    """A server on ``port`` over ``store`` (its keys and locks outlive a restart) from now until ``stop``."""
    service = LockService(store)
    app = build_app(Settings(store="memory", data_dir=data_dir), service)
    server = _QuietServer(uvicorn.Config(app, log_level="warning", lifespan="on"))
    sock = _socket_on(port)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(STEP):
                await server.up.wait()
            task_status.started(service)
            await stop.wait()
            server.should_exit = server.force_exit = True
    finally:
        sock.close()
        stopped.set()


async def test_the_bridge_outlives_a_server_restart_and_says_unavailable_meanwhile(tmp_path: Path) -> None:
    picked = free_socket()
    port = picked.getsockname()[1]
    picked.close()
    store, url, uri = MemoryStore(), f"http://127.0.0.1:{port}", "locks://default/a.md"
    updates = Updates()
    first_stop, first_stopped, second_stop = anyio.Event(), anyio.Event(), anyio.Event()
    with anyio.fail_after(STEP * 4):
        async with anyio.create_task_group() as servers:
            first = await servers.start(serve_on, port, store, tmp_path, first_stop, first_stopped)
            key, _ = await first.create_key("desk", ["default"])
            async with stdio("--url", url, "--key", key, mode="legacy", message_handler=updates) as bridge:
                ok(await bridge.call_tool("check_lock_status", {"node_id": "a.md"}))
                await subscribe(bridge, uri)
                first_stop.set()
                await first_stopped.wait()
                with anyio.fail_after(2):  # at once, not after a timeout
                    down = await bridge.call_tool("check_lock_status", {"node_id": "a.md"})
                assert down.is_error
                assert down.content[0].text.startswith("UNAVAILABLE: ")  # type: ignore[union-attr]
                assert down.meta is not None
                assert down.meta["io.github.mcp-locks/error"]["code"] == "UNAVAILABLE"
                assert down.structured_content is None
                await servers.start(serve_on, port, store, tmp_path, second_stop, anyio.Event())
                ok(await bridge.call_tool("check_lock_status", {"node_id": "a.md"}))  # the first call after it
                # The subscription is renewed, and the host told that a.md may have changed meanwhile...
                assert await updates.until(1) == [uri]
                # ...and it hears the next change.
                grant = ok(await bridge.call_tool("lock_file", {"node_id": "a.md"}))
                assert grant["owner"] == "desk"
                assert await updates.until(2) == [uri, uri]
            second_stop.set()


REFUSED_KEYS = {"wrong": "mlk_0123456789ab_" + "A" * 43, "ellipsis": "mlk_…", "placeholder": "YOUR_KEY"}


@pytest.mark.parametrize("key", list(REFUSED_KEYS.values()), ids=list(REFUSED_KEYS))
async def test_a_refused_key_ends_the_bridge_with_one_line_and_no_traceback(env: Env, key: str) -> None:
    with anyio.fail_after(STEP * 3):
        done = await anyio.run_process(
            [sys.executable, "-m", "mcp_locks", "stdio", "--url", env.url, "--key", key],
            stdin=subprocess.DEVNULL,
            check=False,
        )
    said = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert done.returncode != 0
    assert len(said) == 1, said
    assert "UNAUTHENTICATED: the server refused " in said[0]
    assert ("key 0123456789ab" if key.startswith("mlk_0") else "a malformed key") in said[0]
    assert "mcp-locks keys create --agent NAME" in said[0]
    assert "MCP_LOCKS_KEY" in said[0]
    assert "A" * 43 not in said[0]  # never the secret


# ---------------------------------------------------------------------- the bridge in this process


@asynccontextmanager
async def bridged(url: str, key: str, **host: Any) -> AsyncIterator[tuple[Client, Relay]]:
    """The bridge in this process, wired as ``mcp-locks stdio`` wires it, with a host on it (``host``: its Client).

    Yields the host and the bridge's relay (its link is ``relay.link``), so a test can reach inside.
    """
    async with linked(url + "/mcp", key) as relay:
        link = relay.link
        assert link is not None
        assert link.client is not None, link.error
        bridge = Bridge(link, relay, instructions="", version="test")
        async with Client(bridge.server, **host) as c:
            yield c, relay


class Listens:
    """A server's subscriptions/listen streams, which a test can end (gracefully, as the server may)."""

    def __init__(self, mcp: Any) -> None:
        low = mcp._lowlevel_server  # the handler our resources register (a private attribute, as they use)
        entry = low.get_request_handler("subscriptions/listen")
        assert entry is not None
        inner = entry.handler
        self.scopes: list[anyio.CancelScope] = []
        self.opened = 0
        self._changed = anyio.Event()

        async def on_listen(ctx: Any, params: SubscriptionsListenRequestParams) -> Any:
            with anyio.CancelScope() as scope:
                self.scopes.append(scope)
                self.opened += 1
                self._changed.set()
                try:
                    return await inner(ctx, params)
                finally:
                    self.scopes.remove(scope)
            # Ended here: the graceful close (its result names the stream, as the SDK's own close does).
            return SubscriptionsListenResult(_meta={SUBSCRIPTION_ID_META_KEY: ctx.request_id})

        low.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, on_listen)

    def end_all(self) -> None:
        for scope in self.scopes:
            scope.cancel()

    async def until_opened(self, count: int) -> None:
        """Once ``count`` streams were opened in all."""
        with anyio.fail_after(STEP):
            while self.opened < count:
                self._changed = anyio.Event()
                await self._changed.wait()


#: The two URIs the host of :func:`following_two_when_the_key_loses_one` follows: one in ``default``, which its key
#: keeps, and one in ``other``, which the key loses.
KEPT, LOST = "locks://default/a.md", "locks://other/b.md"


@asynccontextmanager
async def following_two_when_the_key_loses_one(env: Env) -> AsyncIterator[tuple[Client, Relay, Updates]]:
    """A 2025-era host on the bridge, its key good for ``default`` and ``other``, subscribed to KEPT and LOST; then
    the key loses ``other``. Yields the host, the bridge's relay and the updates the host hears, all within STEP * 3."""
    await env.service.create_workspace("other")
    key, record = await env.service.create_key("desk", ["default", "other"])
    updates = Updates()
    with anyio.fail_after(STEP * 3):
        async with bridged(env.url, key, mode="legacy", message_handler=updates) as (host, relay):
            await subscribe(host, KEPT)
            await subscribe(host, LOST)
            await env.service.update_key(record.key_id, remove_workspaces=["other"])
            yield host, relay, updates


async def test_a_uri_the_key_lost_fails_only_its_own_subscription_and_the_others_are_still_followed(
    env: Env,
) -> None:
    c = "locks://default/c.md"
    async with following_two_when_the_key_loses_one(env) as (host, _, updates):
        await subscribe(host, c)  # not refused for LOST's sake
        with pytest.raises(MCPError) as refused:  # LOST itself is: the server no longer lets this key read it
            await subscribe(host, LOST)
        assert refused.value.error.data["uri"] == LOST
        assert refused.value.error.data["error"]["code"] == "FORBIDDEN"
        # LOST was dropped when the server refused it (the host was told it changed: reading it says why).
        assert await updates.until(1) == [LOST]
        await env.service.lock(None, "c.md", agent="other")
        assert await updates.until(2) == [LOST, c]
        await env.service.lock(None, "a.md", agent="other")
        assert await updates.until(3) == [LOST, c, KEPT]


async def test_after_a_reconnection_a_uri_the_key_lost_is_dropped_and_the_others_are_followed_again(
    env: Env,
) -> None:
    async with following_two_when_the_key_loses_one(env) as (_, relay, updates):
        link = relay.link
        assert link is not None
        assert link.client is not None
        link.lost(link.client)  # as after an outage
        # LOST is refused and dropped (the host told it changed); KEPT is followed again (and may have changed).
        assert await updates.until(2) == [LOST, KEPT]
        await env.service.lock(None, "a.md", agent="other")
        assert await updates.until(3) == [LOST, KEPT, KEPT]
        assert LOST not in relay.watched


async def test_a_host_may_follow_more_uris_than_one_listen_stream_carries(env: Env) -> None:
    uris = [f"locks://default/f{i:03}.md" for i in range(150)]  # the server takes 100 on one stream
    with anyio.fail_after(STEP * 3):
        async with (
            bridged(env.url, env.key) as (host, _),
            host.listen(resource_subscriptions=uris) as sub,
        ):
            await env.service.lock(None, "f149.md", agent="other")
            assert getattr(await anext(aiter(sub)), "uri", None) == uris[149]
            await env.service.lock(None, "f000.md", agent="other")
            assert getattr(await anext(aiter(sub)), "uri", None) == uris[0]


@asynccontextmanager
async def endable_server(data_dir: Path) -> AsyncIterator[tuple[KeyedServer, Listens]]:
    """A keyed server (as ``keyed_server``) whose listen streams the test can end."""
    clock = ManualClock()
    service = LockService(MemoryStore(), clock=clock)
    mcp = build_mcp(service, local=NOBODY)
    listens = Listens(mcp)
    async with serve_app(build_app(Settings(store="memory", data_dir=data_dir), service, mcp=mcp)) as url:
        key, _ = await service.create_key("desk", ["default"])
        admin, _ = await service.create_key("root", [], "admin")
        yield KeyedServer(url, service, clock, key, admin), listens


async def test_a_listen_stream_that_ends_is_reopened_alone_and_a_waiting_lock_call_keeps_its_place(
    tmp_path: Path,
) -> None:
    uri = "locks://default/notes.md"
    updates = Updates()
    got: list[Any] = []
    with anyio.fail_after(STEP * 3):
        async with (
            endable_server(tmp_path) as (env, listens),
            bridged(env.url, env.key, mode="legacy", message_handler=updates) as (host, _),
            env.service.subscribe() as events,
        ):
            holder = await env.service.lock(None, "doc.md", agent="other")
            await subscribe(host, uri)
            async with anyio.create_task_group() as tg:

                async def wait_in_line() -> None:
                    got.append(await host.call_tool("lock_file", {"node_id": "doc.md", "wait": 600}))

                tg.start_soon(wait_in_line)
                await until_event(events, "queued", "doc.md")
                listens.end_all()
                await listens.until_opened(2)  # that stream again, and nothing else
                assert await updates.until(1) == [uri]  # the host is told it may have changed meanwhile
                await env.service.lock(None, "notes.md", agent="other")
                assert await updates.until(2) == [uri, uri]
                await env.service.unlock(None, holder.token)
            assert ok(got[0])["owner"] == "desk"


async def test_a_connection_that_dies_as_soon_as_it_opens_is_retried_after_ever_longer_pauses(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []
    enough = anyio.Event()

    def pause_before(attempt: int) -> float:
        attempts.append(attempt)
        if len(attempts) < 4:
            return 0.0
        enough.set()
        return STEP * 10  # (the test ends first)

    monkeypatch.setattr(link_module, "pause_before", pause_before)
    endpoint = env.url + "/mcp"
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {env.key}"}, trust_env=False) as http:

        async def dies_at_once(client: Client) -> None:
            link.lost(client)

        link = Link(endpoint, lambda: Client(streamable_http_client(endpoint, http_client=http)), dies_at_once)
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                await tg.start(link.run)
                await enough.wait()
                tg.cancel_scope.cancel()
    assert attempts == [1, 2, 3, 4]


async def test_two_subscribes_to_one_uri_at_once_follow_it_once(env: Env) -> None:
    uri = "locks://default/a.md"
    with anyio.fail_after(STEP * 3):
        async with bridged(env.url, env.key, mode="legacy") as (host, relay):
            async with anyio.create_task_group() as tg:
                tg.start_soon(subscribe, host, uri)
                tg.start_soon(subscribe, host, uri)
            assert relay.watched == {uri: 1}
            await subscribe(host, uri, on=False)
            assert uri not in relay.watched


async def test_a_call_left_unanswered_past_its_budget_answers_unavailable_and_leaves_the_line(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge_module, "CALL_BUDGET", 0.5, raising=False)
    holder = await env.service.lock(None, "doc.md", agent="other")
    async with bridged(env.url, env.key) as (host, _), env.service.subscribe() as events:
        with anyio.fail_after(STEP):
            # The server's clock stands still, so its wait never runs out: to the bridge, a silent server.
            down = await host.call_tool("lock_file", {"node_id": "doc.md", "wait": 0.5})
        assert down.is_error
        assert down.content[0].text.startswith("UNAVAILABLE: ")  # type: ignore[union-attr]
        left = await until_event(events, "left", "doc.md")
    assert left.code == "CANCELLED"
    assert (await env.service.status(None, "doc.md")).holders[0].lock_id == holder.lock_id
