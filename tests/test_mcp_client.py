"""McpLockClient against a real keyed server: LockClient's calls and leases over MCP, and what only MCP brings."""

# ruff: noqa: F811  (the `env` fixture is imported from test_client, then named as a parameter)

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import httpx2
import pytest
from mcp_types import CallToolResult, TextContent

from mcp_locks import InvalidArgument, LockBroken, Locked, McpLockClient, RateLimited, Unauthenticated, Unavailable
from mcp_locks.client import LeaseLost
from mcp_locks.client.mcp import _tool_error
from mcp_locks.client.rest import RENEW_FRACTION
from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import Internal

from .helpers import STEP, until_event
from .servers import free_socket
from .test_client import Env, env, held, no_backoff  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio


def tool_of(request: httpx2.Request) -> str | None:
    """The tool a request calls (None for anything else, e.g. the discovery probe)."""
    try:
        body = json.loads(request.content)
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("method") == "tools/call":
        name = body["params"]["name"]
        return name if isinstance(name, str) else None
    return None


class Recording(httpx2.AsyncHTTPTransport):
    """Records the tools called; subclasses change what some calls get (``answer``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        tool = tool_of(request)
        if tool is not None:
            self.calls.append(tool)
        return await self.answer(tool, request)

    async def answer(self, tool: str | None, request: httpx2.Request) -> httpx2.Response:
        return await super().handle_async_request(request)


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(env: Env, mode: str) -> AsyncIterator[McpLockClient]:
    async with McpLockClient(env.url, env.key, clock=env.clock, mode=mode) as c:  # type: ignore[arg-type]
        yield c


# ---------------------------------------------------------------------- LockClient's behaviour, over MCP


async def test_a_lock_is_held_for_the_block_over_mcp_and_released_after(env: Env, client: McpLockClient) -> None:
    async with client.lock("reports/q3.md", timeout=60) as lease:
        assert lease.fence >= 1
        assert "token" not in repr(lease)
        assert await held(env, "reports/q3.md")
        status = await client.status("reports/q3.md", lease=lease)
        assert status["yours"]["held"] is True
    assert not await held(env, "reports/q3.md")


async def test_a_held_lease_is_renewed_over_mcp_past_its_first_deadline(env: Env, client: McpLockClient) -> None:
    async with env.service.subscribe() as events, client.lock("a.md", timeout=30) as lease:
        first_deadline = lease.expires_at
        env.clock.advance(30 * RENEW_FRACTION)
        await until_event(events, "renewed", "a.md")
        env.clock.advance(30 * RENEW_FRACTION)
        await until_event(events, "renewed", "a.md")
        env.clock.advance(30 * RENEW_FRACTION + 1)
        assert (await client.status("a.md", lease=lease))["yours"]["held"] is True
        assert lease.expires_at > first_deadline


async def test_a_broken_lease_stops_the_body_with_lease_lost_over_mcp(env: Env, client: McpLockClient) -> None:
    reached = anyio.Event()

    async def work() -> None:
        async with client.lock("a.md", timeout=30) as lease:
            await env.service.force_unlock(None, lease.lock_id, "agent looked stuck")
            env.clock.advance(30 * RENEW_FRACTION)  # the next renewal finds it broken
            await anyio.sleep_forever()
            reached.set()

    with anyio.fail_after(STEP), pytest.raises(LeaseLost) as lost:
        await work()
    assert isinstance(lost.value.cause, LockBroken)
    assert "agent looked stuck" in str(lost.value)
    assert not reached.is_set()


async def test_lock_many_holds_every_lock_for_the_block_or_none(env: Env, client: McpLockClient) -> None:
    await env.service.lock(None, "c.md", agent="bob")
    with pytest.raises(Locked):
        async with client.lock_many([("a.md", "write"), ("c.md", "read")]):
            pass
    assert not await held(env, "a.md")
    async with client.lock_many([("a.md", "write"), {"node_id": "src", "mode": "read", "depth": "tree"}]) as leases:
        assert [(le.node_id, le.depth) for le in leases] == [("a.md", "node"), ("src", "tree")]
        page = await client.list_locks()
        assert [x["node_id"] for x in page["locks"]] == ["a.md", "c.md", "src"]
    assert not await held(env, "src")


async def test_a_malformed_node_id_is_refused_before_any_tool_call(env: Env) -> None:
    transport = Recording()
    async with McpLockClient(env.url, env.key, clock=env.clock, transport=transport) as c:
        with pytest.raises(InvalidArgument, match=r"'\.' or '\.\.'"):
            await c.acquire("a/../b")
    assert transport.calls == []


async def test_a_waiting_lock_is_granted_when_the_holder_releases(env: Env, client: McpLockClient) -> None:
    holder = await env.service.lock(None, "a.md", agent="bob")
    async with env.service.subscribe() as events, anyio.create_task_group() as tg:
        got: list[str] = []

        async def wait_for_it() -> None:
            got.append((await client.acquire("a.md", wait=600)).node_id)

        tg.start_soon(wait_for_it)
        await until_event(events, "queued", "a.md")
        await env.service.unlock(None, holder.token)
    assert got == ["a.md"]


# ---------------------------------------------------------------------- errors and retries


async def test_a_coded_refusal_raises_its_error_and_is_not_retried(env: Env) -> None:
    await env.service.lock(None, "a.md", agent="bob")
    transport = Recording()
    async with McpLockClient(env.url, env.key, clock=env.clock, transport=transport) as c:
        with pytest.raises(Locked) as refused:
            await c.acquire("a.md")
    assert refused.value.details["holders"][0]["owner"] == "bob"
    assert transport.calls == ["lock_file"]


def test_a_tool_error_without_its_meta_body_is_read_from_the_code_its_text_starts_with() -> None:
    def result(text: str) -> CallToolResult:
        return CallToolResult(is_error=True, content=[TextContent(type="text", text=text)])

    locked = _tool_error("lock_file", result("LOCKED: 'a.md' is locked by bob. Retry with wait=30."))
    assert isinstance(locked, Locked)
    assert locked.message == "'a.md' is locked by bob. Retry with wait=30."
    assert isinstance(_tool_error("lock_file", result("NOT_A_CODE: what")), Internal)
    assert isinstance(_tool_error("lock_file", result("Error executing tool lock_file")), Internal)


async def test_a_bad_key_is_unauthenticated(env: Env) -> None:
    async with McpLockClient(env.url, "mlk_000000000000_" + "A" * 43, clock=env.clock) as c:
        with pytest.raises(Unauthenticated):
            await c.acquire("a.md")


async def test_an_http_refusal_raises_the_servers_coded_error(env: Env) -> None:
    class RateLimits(Recording):
        async def answer(self, tool: str | None, request: httpx2.Request) -> httpx2.Response:
            if tool == "check_lock_status":
                body = {"error": {"code": "RATE_LIMITED", "message": "slow down", "details": {"retry_after": 2}}}
                return httpx2.Response(429, json=body)
            return await super().answer(tool, request)

    async with McpLockClient(env.url, env.key, clock=env.clock, transport=RateLimits()) as c:
        with pytest.raises(RateLimited) as refused:
            await c.status("a.md")
        assert refused.value.details["retry_after"] == 2
        await c.list_locks()  # the session is still fine


async def test_a_lost_connection_is_retried_on_a_new_session_and_gives_one_grant(env: Env) -> None:
    class LosesFirstAnswer(Recording):
        lost = False

        async def answer(self, tool: str | None, request: httpx2.Request) -> httpx2.Response:
            response = await super().answer(tool, request)
            if tool == "lock_file" and not self.lost:
                self.lost = True  # the server granted it; the client never hears
                await response.aclose()
                raise httpx2.ReadError("connection reset", request=request)
            return response

    transport = LosesFirstAnswer()
    async with McpLockClient(env.url, env.key, clock=env.clock, transport=transport) as c:
        lease = await c.acquire("a.md")
    assert transport.calls == ["lock_file", "lock_file"]
    page = await env.service.list_locks(None)
    assert [x.lock_id for x in page.locks] == [lease.lock_id]  # one lock: the retry was given the first grant


async def test_a_proxy_error_is_retried(env: Env) -> None:
    class BadGatewayOnce(Recording):
        async def answer(self, tool: str | None, request: httpx2.Request) -> httpx2.Response:
            if tool == "list_locks" and self.calls.count("list_locks") == 1:
                return httpx2.Response(502, text="bad gateway")
            return await super().answer(tool, request)

    transport = BadGatewayOnce()
    async with McpLockClient(env.url, env.key, clock=env.clock, transport=transport) as c:
        assert (await c.list_locks())["locks"] == []
    assert transport.calls == ["list_locks", "list_locks"]


async def test_a_session_that_cannot_be_opened_is_unavailable_after_the_retries() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    async with McpLockClient(f"http://127.0.0.1:{port}", "k", attempts=3) as c:
        with pytest.raises(Unavailable, match="did not answer"):
            await c.acquire("a.md")


class Signalling(Clock):
    """The server's clock as the client sees it, saying each time the client starts waiting on it."""

    def __init__(self, inner: Clock) -> None:
        self.inner = inner
        self.waiting = anyio.Event()

    def now(self) -> float:
        return self.inner.now()

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        self.waiting.set()
        await self.inner.wait(event, deadline)

    async def next_wait(self) -> None:
        with anyio.fail_after(STEP):
            await self.waiting.wait()
        self.waiting = anyio.Event()


async def test_a_refused_renewal_that_may_pass_is_retried_and_the_lease_kept(env: Env) -> None:
    class BusyOnce(Recording):
        async def answer(self, tool: str | None, request: httpx2.Request) -> httpx2.Response:
            if tool == "renew_lock" and self.calls.count("renew_lock") == 1:
                body = {"error": {"code": "RATE_LIMITED", "message": "slow down", "details": {"retry_after": 1}}}
                return httpx2.Response(429, json=body)
            return await super().answer(tool, request)

    clock = Signalling(env.clock)
    async with (
        McpLockClient(env.url, env.key, clock=clock, transport=BusyOnce()) as c,
        env.service.subscribe() as events,
        c.lock("a.md", timeout=30) as lease,
    ):
        await clock.next_wait()  # the renewal waits for its time ...
        env.clock.advance(30 * RENEW_FRACTION)
        await clock.next_wait()  # ... is refused once, and pauses for retry_after ...
        env.clock.advance(1)
        await until_event(events, "renewed", "a.md")  # ... then is retried
        assert lease.lost is None


async def test_a_failing_transport_never_cancels_the_callers_body(env: Env) -> None:
    class DiesOnRenew(Recording):
        async def answer(self, tool: str | None, request: httpx2.Request) -> httpx2.Response:
            if tool == "renew_lock" and self.calls.count("renew_lock") == 1:
                raise httpx2.ConnectError("refused", request=request)  # ends that MCP session
            return await super().answer(tool, request)

    transport = DiesOnRenew()
    async with (
        McpLockClient(env.url, env.key, clock=env.clock, transport=transport) as c,
        env.service.subscribe() as events,
        c.lock("a.md", timeout=30),
    ):
        env.clock.advance(30 * RENEW_FRACTION)
        await until_event(events, "renewed", "a.md")  # retried on a new session; this body ran on
        assert (await c.status("a.md"))["locked"] is True
    assert not await held(env, "a.md")
