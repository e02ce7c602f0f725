"""The locks:// resources through real clients on every transport: reading, and updates in both protocol eras."""

# ruff: noqa: F811  (the `server` and `client` fixtures are imported from test_mcp, then named as parameters)

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from mcp import Client
from mcp.client.subscriptions import ListenNotSupportedError
from mcp.shared.exceptions import MCPError
from mcp_types import (
    EmptyResult,
    ResourceUpdatedNotification,
    SubscribeRequest,
    SubscribeRequestParams,
    TextResourceContents,
    UnsubscribeRequest,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_locks.core.clock import ManualClock
from mcp_locks.core.keys import Identity
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.resources import PAGE, node_uri, workspace_uri
from mcp_locks.faces.mcp.tools import build_mcp
from mcp_locks.stores.base import MemoryStore

from .faces import McpFace
from .helpers import STEP
from .servers import keyed_server
from .test_mcp import TRANSPORTS, Server, client, ok, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio


def modern(c: Client) -> bool:
    return c.session.protocol_version in MODERN_PROTOCOL_VERSIONS


async def read(c: Client, uri: str) -> dict[str, Any]:
    r = await c.read_resource(uri)
    content = r.contents[0]
    assert isinstance(content, TextResourceContents)
    assert content.mime_type == "application/json"
    body: dict[str, Any] = json.loads(content.text)
    return body


async def subscribe(c: Client, uri: str) -> None:
    """The 2025-era request (the SDK's own helper is deprecated, and warnings fail the tests)."""
    await c.session.send_request(SubscribeRequest(params=SubscribeRequestParams(uri=uri)), EmptyResult)


class Updates:
    """The URIs a subscriber (``client``) was told changed, whichever era it speaks."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client
        self.send, self.receive = anyio.create_memory_object_stream[str](100)

    def __enter__(self) -> Updates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.send.close()
        self.receive.close()

    async def next(self) -> str:
        with anyio.fail_after(STEP):
            return await self.receive.receive()


@asynccontextmanager
async def watching(c: Client, updates: Updates, *uris: str) -> AsyncIterator[None]:
    """Subscribe ``c`` to ``uris`` the way its era does (``c`` must deliver to ``updates``, see :func:`subscriber`)."""
    if modern(c):
        async with c.listen(resource_subscriptions=uris) as sub, anyio.create_task_group() as tg:

            async def forward() -> None:
                async for ev in sub:
                    await updates.send.send(getattr(ev, "uri", ""))

            tg.start_soon(forward)
            yield
            tg.cancel_scope.cancel()
    else:
        for uri in uris:
            await subscribe(c, uri)
        yield


async def try_to_watch(c: Client, uri: str) -> None:
    """Subscribe to ``uri`` and leave at once."""
    with Updates() as updates:
        async with watching(c, updates, uri):
            pass


@asynccontextmanager
async def subscriber(server: Server, *uris: str) -> AsyncIterator[Updates]:
    """Another client of ``server`` (as ``.client``), subscribed to ``uris``."""
    c = server.client()
    updates = Updates(c)

    async def on_message(message: Any) -> None:  # 2025-era notifications arrive here
        if isinstance(message, ResourceUpdatedNotification):
            await updates.send.send(message.params.uri)

    c.message_handler = on_message
    with updates:
        async with c, watching(c, updates, *uris):
            yield updates


# ---------------------------------------------------------------------- reading


async def test_the_workspace_resource_reads_as_its_held_locks(client: Client) -> None:
    ok(await client.call_tool("lock_file", {"node_id": "b.md", "agent": "alice"}))
    ok(await client.call_tool("lock_file", {"node_id": "a/x.md", "agent": "bob", "mode": "read"}))
    body = await read(client, workspace_uri("default"))
    assert [(x["node_id"], x["owner"]) for x in body["locks"]] == [("a/x.md", "bob"), ("b.md", "alice")]
    assert body["truncated"] is False
    assert body["next_cursor"] is None
    assert "token" not in json.dumps(body)


async def test_a_workspace_with_more_locks_than_a_page_reads_as_truncated(server: Server, client: Client) -> None:
    for start in range(0, PAGE + 1, 100):
        items = [{"node_id": f"f{i:05}"} for i in range(start, min(start + 100, PAGE + 1))]
        await server.service.lock_many(None, items)
    body = await read(client, workspace_uri("default"))
    assert len(body["locks"]) == PAGE
    assert body["truncated"] is True
    page = ok(await client.call_tool("list_locks", {"cursor": body["next_cursor"]}))
    assert [x["node_id"] for x in page["locks"]] == [f"f{PAGE:05}"]


async def test_a_node_resource_reads_as_check_lock_status_with_slashes_and_spaces(client: Client) -> None:
    node = "reports/2024 q3/summary.md"
    ok(await client.call_tool("lock_file", {"node_id": node, "agent": "alice"}))
    uri = node_uri("default", node)
    assert uri == "locks://default/reports/2024%20q3/summary.md"
    body = await read(client, uri)
    assert body == ok(await client.call_tool("check_lock_status", {"node_id": node}))
    assert body["locked"] is True
    assert body["holders"][0]["owner"] == "alice"


async def test_the_resource_templates_are_listed(client: Client) -> None:
    templates = {t.uri_template: t for t in (await client.list_resource_templates()).resource_templates}
    assert set(templates) == {"locks://{workspace_id}", "locks://{workspace_id}/{+node_id}"}
    assert all(t.mime_type == "application/json" for t in templates.values())


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("locks://ghost", "NOT_FOUND"),
        ("locks://default/a/../b", "INVALID_ARGUMENT"),
        ("locks://default/", "INVALID_ARGUMENT"),
        ("locks://Bad%20Id/a", "INVALID_ARGUMENT"),
    ],
)
async def test_a_bad_resource_uri_is_a_coded_mcp_error_without_a_traceback(client: Client, uri: str, code: str) -> None:
    with pytest.raises(MCPError) as refused:
        await read(client, uri)
    assert refused.value.message.startswith(f"{code}: "), refused.value.message
    assert refused.value.data["error"]["code"] == code
    assert "Traceback" not in refused.value.message


# ---------------------------------------------------------------------- updates


async def test_a_subscriber_hears_when_another_client_locks_and_unlocks_the_node(
    server: Server, client: Client
) -> None:
    uri = node_uri("default", "docs/a.md")
    async with subscriber(server, uri) as updates:
        grant = ok(await client.call_tool("lock_file", {"node_id": "docs/a.md", "agent": "alice"}))
        assert await updates.next() == uri
        assert (await read(client, uri))["locked"] is True
        ok(await client.call_tool("unlock_file", {"token": grant["token"]}))
        assert await updates.next() == uri
        assert (await read(client, uri))["locked"] is False


async def test_a_workspace_subscriber_hears_about_a_lock_anywhere_in_it(server: Server, client: Client) -> None:
    uri = workspace_uri("default")
    async with subscriber(server, uri) as updates:
        ok(await client.call_tool("lock_file", {"node_id": "deep/down/x.md"}))
        assert await updates.next() == uri


async def test_a_subscriber_hears_when_the_lease_expires(server: Server, client: Client) -> None:
    uri = node_uri("default", "a.md")
    ok(await client.call_tool("lock_file", {"node_id": "a.md", "timeout": 30}))
    async with subscriber(server, uri) as updates:
        server.clock.advance(30)
        assert await updates.next() == uri
        assert (await read(client, uri))["locked"] is False


async def test_a_subscriber_hears_when_an_admin_breaks_the_lock(server: Server, client: Client) -> None:
    uri = node_uri("default", "a.md")
    grant = ok(await client.call_tool("lock_file", {"node_id": "a.md", "agent": "alice"}))
    async with subscriber(server, uri) as updates:
        ok(await client.call_tool("force_unlock", {"lock_id": grant["lock_id"], "reason": "stuck"}))
        assert await updates.next() == uri


async def test_a_folder_subscriber_hears_about_locks_below_it(server: Server, client: Client) -> None:
    uri = node_uri("default", "src")
    async with subscriber(server, uri) as updates:
        ok(await client.call_tool("lock_file", {"node_id": "src/pkg/mod.py"}))
        assert await updates.next() == uri
        assert (await read(client, uri))["locks_below"] == 1


async def test_a_node_subscriber_hears_when_a_folder_above_it_is_tree_locked(server: Server, client: Client) -> None:
    uri = node_uri("default", "src/pkg/mod.py")
    async with subscriber(server, uri) as updates:
        ok(await client.call_tool("lock_file", {"node_id": "src", "depth": "tree"}))
        assert await updates.next() == uri
        assert (await read(client, uri))["covering"][0]["node_id"] == "src"


async def test_a_change_elsewhere_is_not_announced(server: Server, client: Client) -> None:
    uri = node_uri("default", "a.md")
    async with subscriber(server, uri) as updates:
        ok(await client.call_tool("lock_file", {"node_id": "b.md"}))
        ok(await client.call_tool("lock_file", {"node_id": "a.md"}))
        assert await updates.next() == uri  # events are announced in order: b.md would have come first
        ok(await client.call_tool("lock_file", {"node_id": "a.md/x", "agent": "bob"}))  # below a.md: it changed
        assert await updates.next() == uri


async def test_the_event_reader_stops_when_the_last_subscriber_leaves(server: Server) -> None:
    before = len(server.service.hub._subscribers)
    async with subscriber(server, workspace_uri("default")):
        assert len(server.service.hub._subscribers) == before + 1
    with anyio.fail_after(STEP):
        while len(server.service.hub._subscribers) > before:  # until the server notices that the client left
            await anyio.lowlevel.checkpoint()


# ---------------------------------------------------------------------- eras


async def test_each_era_advertises_subscriptions_and_serves_only_its_own_way(server: Server, client: Client) -> None:
    caps = client.session.server_capabilities
    assert caps is not None
    assert caps.resources is not None
    assert caps.resources.subscribe is True
    uri = workspace_uri("default")
    if modern(client):  # 2026-07-28: subscriptions/listen; resources/subscribe is gone
        async with client.listen(resource_subscriptions=[uri]) as sub:
            assert sub.honored.resource_subscriptions == [uri]
        with pytest.raises(MCPError):
            await subscribe(client, uri)
    else:  # 2025-11-25: resources/subscribe and unsubscribe; no listen
        await subscribe(client, uri)
        await client.session.send_request(UnsubscribeRequest(params=UnsubscribeRequestParams(uri=uri)), EmptyResult)
        with pytest.raises(ListenNotSupportedError):
            async with client.listen(resource_subscriptions=[uri]):
                pass


async def test_a_legacy_session_that_unsubscribes_hears_no_more(server: Server, client: Client) -> None:
    if modern(client):
        pytest.skip("2026-07-28 clients stop listening by closing the stream")
    a, b = node_uri("default", "a.md"), node_uri("default", "b.md")
    async with subscriber(server, a, b) as updates:
        assert updates.client is not None
        unsubscribe = UnsubscribeRequest(params=UnsubscribeRequestParams(uri=a))
        await updates.client.session.send_request(unsubscribe, EmptyResult)
        ok(await client.call_tool("lock_file", {"node_id": "a.md"}))
        ok(await client.call_tool("lock_file", {"node_id": "b.md"}))
        assert await updates.next() == b  # a.md came first, unheard


# ---------------------------------------------------------------------- keys


@pytest.fixture(params=TRANSPORTS)
async def outsider(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Client]:
    """A client whose key reaches only 'default' (the server also has a workspace 'team')."""
    if request.param == "memory":
        async with LockService(MemoryStore(), clock=ManualClock()) as service:
            await service.create_workspace("team")
            bob = Identity("k1", "bob", "agent", ("default",))
            async with Client(build_mcp(service, local=bob)) as c:
                yield c
        return
    async with keyed_server(tmp_path, agent="bob") as env, AsyncExitStack() as stack:
        await env.service.create_workspace("team")
        mode = {"http-legacy": "legacy", "sse": "sse"}.get(request.param, "auto")
        yield await McpFace(env.url, mode, stack).client(env.key)


async def test_a_key_that_does_not_reach_the_workspace_cannot_read_its_resources(outsider: Client) -> None:
    for uri in (workspace_uri("team"), node_uri("team", "a.md")):
        with pytest.raises(MCPError) as refused:
            await read(outsider, uri)
        assert refused.value.message.startswith("FORBIDDEN: "), refused.value.message
    assert (await read(outsider, workspace_uri("default")))["locks"] == []


async def test_a_key_that_does_not_reach_the_workspace_cannot_subscribe_to_it(outsider: Client) -> None:
    for uri in (workspace_uri("team"), node_uri("team", "a.md")):
        with pytest.raises(MCPError) as refused:
            await try_to_watch(outsider, uri)
        assert refused.value.message.startswith("FORBIDDEN: "), refused.value.message
