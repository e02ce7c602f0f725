"""mcp_locks.client against a real server on a manual clock: holding, renewing, losing, retrying."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx2 as httpx  # the client's HTTP stack: its transports are httpx2's
import pytest
import stamina

from mcp_locks import LockBroken, Locked, Settings, build_app
from mcp_locks.client import LeaseLost, LockClient, SyncLockClient
from mcp_locks.client.rest import RENEW_FRACTION
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .helpers import STEP, until_event
from .servers import KeyedServer, keyed_server, serve_in_thread

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    stamina.set_testing(True, attempts=3)  # retries happen at once
    yield
    stamina.set_testing(False)


Env = KeyedServer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with keyed_server(tmp_path) as server:
        yield server


async def held(env: Env, node: str) -> bool:
    return (await env.service.status(None, node)).locked


async def test_a_lock_is_held_for_the_block_and_released_after(env: Env) -> None:
    async with LockClient(env.url, env.key, clock=env.clock) as c:
        async with c.lock("reports/q3.md", timeout=60) as lease:
            assert lease.fence >= 1
            assert "token" not in repr(lease)
            assert await held(env, "reports/q3.md")
        assert not await held(env, "reports/q3.md")


async def test_the_lock_is_released_when_the_body_fails(env: Env) -> None:
    async with LockClient(env.url, env.key, clock=env.clock) as c:
        with pytest.raises(ZeroDivisionError):
            async with c.lock("a.md"):
                _ = 1 / 0
    assert not await held(env, "a.md")


async def test_a_held_lease_is_renewed_in_the_background_past_its_first_deadline(env: Env) -> None:
    async with (
        LockClient(env.url, env.key, clock=env.clock) as c,
        env.service.subscribe() as events,
        c.lock("a.md", timeout=30) as lease,
    ):
        first_deadline = lease.expires_at
        env.clock.advance(30 * RENEW_FRACTION)
        await until_event(events, "renewed", "a.md")
        env.clock.advance(30 * RENEW_FRACTION)
        await until_event(events, "renewed", "a.md")
        env.clock.advance(30 * RENEW_FRACTION + 1)  # past the first deadline
        status = await c.status("a.md", lease=lease)
        assert status["yours"]["held"] is True
        assert lease.expires_at > first_deadline


async def test_a_broken_lease_stops_the_body_with_lease_lost(env: Env) -> None:
    reached = anyio.Event()

    async def work(c: LockClient) -> None:
        async with c.lock("a.md", timeout=30) as lease:
            await env.service.force_unlock(None, lease.lock_id, "agent looked stuck")
            env.clock.advance(30 * RENEW_FRACTION)  # the next renewal finds it broken
            await anyio.sleep_forever()  # a body still working: cancelled when the lease is lost
            reached.set()

    with anyio.fail_after(STEP):
        async with LockClient(env.url, env.key, clock=env.clock) as c:
            with pytest.raises(LeaseLost) as lost:
                await work(c)
    assert isinstance(lost.value.cause, LockBroken)
    assert "agent looked stuck" in str(lost.value)
    assert not reached.is_set()


async def test_a_refusal_raises_the_coded_error_and_is_not_retried(env: Env) -> None:
    sent: list[str] = []

    class Counting(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.method)
            return await super().handle_async_request(request)

    await env.service.lock(None, "a.md", agent="bob")
    async with LockClient(env.url, env.key, clock=env.clock, transport=Counting()) as c:
        with pytest.raises(Locked) as refused:
            await c.acquire("a.md")
    assert refused.value.details["holders"][0]["owner"] == "bob"
    assert sent == ["POST"]


async def test_a_lost_answer_is_retried_and_gives_one_grant(env: Env) -> None:
    class LosesFirstAnswer(httpx.AsyncHTTPTransport):
        lost = False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if request.method == "POST" and not self.lost:
                self.lost = True  # the server granted it; the client never hears
                await response.aclose()
                raise httpx.ReadError("connection reset", request=request)
            return response

    async with LockClient(env.url, env.key, clock=env.clock, transport=LosesFirstAnswer()) as c:
        lease = await c.acquire("a.md")
    page = await env.service.list_locks(None)
    assert [x.lock_id for x in page.locks] == [lease.lock_id]  # one lock, the one the retry was given


async def test_an_unreachable_server_is_unavailable_after_the_retries() -> None:
    from mcp_locks import Unavailable

    from .servers import free_socket

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with LockClient(f"http://127.0.0.1:{port}", "k", attempts=3) as c:
        with pytest.raises(Unavailable, match="did not answer"):
            await c.acquire("a.md")


def test_the_sync_client_locks_and_releases_for_scripts(tmp_path: Path) -> None:
    service = LockService(MemoryStore())
    app = build_app(Settings(store="memory", data_dir=tmp_path, insecure_no_auth=True), service)
    with serve_in_thread(app) as url, SyncLockClient(url, None) as c:
        with c.lock("a.md", timeout=60) as lease:
            assert c.status("a.md")["holders"][0]["lock_id"] == lease.lock_id
        assert c.status("a.md")["locked"] is False


async def test_a_refused_renewal_that_may_pass_is_retried_and_the_lease_kept(env: Env) -> None:
    class BusyOnce(httpx.AsyncHTTPTransport):
        refused = False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/renew") and not self.refused:
                self.refused = True
                body = b'{"error": {"code": "RATE_LIMITED", "message": "slow down", "details": {"retry_after": 1}}}'
                return httpx.Response(429, content=body, headers={"content-type": "application/json"})
            return await super().handle_async_request(request)

    transport = BusyOnce()
    async with (
        LockClient(env.url, env.key, clock=env.clock, transport=transport) as c,
        env.service.subscribe() as events,
        c.lock("a.md", timeout=30) as lease,
    ):
        env.clock.advance(30 * RENEW_FRACTION)  # the renewal is refused once ...
        with anyio.fail_after(STEP):
            while not transport.refused:
                await anyio.lowlevel.checkpoint()  # (only until the client has sent it; no time passes)
        env.clock.advance(1)  # ... and retried after retry_after
        await until_event(events, "renewed", "a.md")
        assert lease.lost is None


async def test_a_server_that_stops_answering_loses_the_lease_by_the_clients_own_clock(env: Env) -> None:
    hung = anyio.Event()

    class Hangs(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/renew"):
                hung.set()
                await anyio.sleep_forever()
            return await super().handle_async_request(request)

    async def work(c: LockClient) -> None:
        # The shortest lease the server allows: the stuck renewal is given up after the rest of it
        # (about 0.7 s of real time, the only real wait here), then the client's clock says it is over.
        async with c.lock("a.md", timeout=1):
            env.clock.advance(RENEW_FRACTION)
            await hung.wait()
            env.clock.advance(1)
            await anyio.sleep_forever()

    with anyio.fail_after(STEP):
        async with LockClient(env.url, env.key, clock=env.clock, transport=Hangs()) as c:
            with pytest.raises(LeaseLost) as lost:
                await work(c)
    assert lost.value.cause.code == "LOCK_EXPIRED"


async def test_a_node_id_a_client_would_rewrite_is_refused_before_sending(env: Env) -> None:
    from mcp_locks import InvalidArgument

    async with LockClient(env.url, env.key, clock=env.clock) as c:
        with pytest.raises(InvalidArgument, match=r"'\.' or '\.\.'"):
            await c.acquire("a/../b")
    assert (await env.service.list_locks(None)).locks == []


async def test_releasing_twice_is_not_an_error(env: Env) -> None:
    async with LockClient(env.url, env.key, clock=env.clock) as c:
        lease = await c.acquire("a.md")
        await c.release(lease)
        await c.release(lease)
    assert not await held(env, "a.md")


async def test_lock_outside_async_with_takes_nothing(env: Env) -> None:
    c = LockClient(env.url, env.key, clock=env.clock)
    with pytest.raises(RuntimeError, match="async context manager"):
        async with c.lock("a.md"):
            pass
    assert not await held(env, "a.md")


async def test_a_refusal_leaves_the_client_block_as_itself_not_in_a_group(env: Env) -> None:
    await env.service.lock(None, "a.md", agent="bob")
    with pytest.raises(Locked):
        async with LockClient(env.url, env.key, clock=env.clock) as c:
            await c.acquire("a.md")


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": "LOCKED", "message": "held by bob", "hint": "Wait.", "details": {"holders": []}}},
        {"code": "LOCKED", "message": "held by bob", "hint": "Wait.", "details": {"holders": []}},
    ],
)
def test_an_error_body_or_its_inner_dict_decodes_to_its_coded_error(body: dict[str, object]) -> None:
    from mcp_locks.client.errors import decode_error

    err = decode_error(body)
    assert isinstance(err, Locked)
    assert (err.message, err.hint, err.details) == ("held by bob", "Wait.", {"holders": []})


def test_an_unknown_code_decodes_to_internal_with_the_servers_words() -> None:
    from mcp_locks import Internal
    from mcp_locks.client.errors import decode_error

    err = decode_error({"error": {"code": "FROM_THE_FUTURE", "message": "new", "hint": None}})
    assert type(err) is Internal
    assert (err.message, err.hint, err.details) == ("new", "", {})


@pytest.mark.parametrize(
    "body",
    [None, "oops", [], {}, {"error": "oops"}, {"error": {"code": "LOCKED"}}, {"error": {"code": 1, "message": "m"}}],
)
def test_anything_that_is_not_an_error_body_decodes_to_none(body: object) -> None:
    from mcp_locks.client.errors import decode_error

    assert decode_error(body) is None


async def test_a_refusal_without_an_error_body_is_internal_and_names_the_status(env: Env) -> None:
    from mcp_locks import Internal

    class Teapot(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(418, content=b"<html>a proxy's page</html>", headers={"content-type": "text/html"})

    async with LockClient(env.url, env.key, clock=env.clock, transport=Teapot()) as c:
        with pytest.raises(Internal, match="answered 418 without an error body"):
            await c.acquire("a.md")


def test_a_client_of_a_plain_http_server_loads_no_trust_store_and_still_verifies() -> None:
    import ssl

    from mcp_locks.client.rest import _verify_for

    plain = _verify_for("http://127.0.0.1:8765")
    assert isinstance(plain, ssl.SSLContext)
    assert (plain.verify_mode, plain.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert plain.cert_store_stats()["x509_ca"] == 0  # any TLS it were to open would fail, never pass unchecked
    assert _verify_for("HTTPS://locks.example.com") is True


async def test_agent_names_a_session_below_the_keys_agent_and_sessions_exclude_each_other(env: Env) -> None:
    async with LockClient(env.url, env.key, clock=env.clock) as c:
        one = await c.acquire("a.md", agent="s1")
        (two, three) = await c.acquire_many([("b.md", "write"), ("c.md", "read")], agent="s2")
        with pytest.raises(Locked) as refused:
            await c.acquire("a.md", agent="s2")  # the same key, another session
        assert refused.value.details["holders"][0]["owner"] == "alice/s1"
        async with c.lock("d.md", agent="s3") as held_d, c.lock_many([("e.md", "write")], agent="s4") as (held_e,):
            owners = {lk.node_id: lk.owner for lk in (await env.service.list_locks(None)).locks}
            assert owners == {"a.md": "alice/s1", "b.md": "alice/s2", "c.md": "alice/s2", "d.md": "alice/s3",
                              "e.md": "alice/s4"}  # fmt: skip
            assert (held_d.node_id, held_e.node_id) == ("d.md", "e.md")
        for lease in (one, two, three):
            await c.release(lease)
    assert (await env.service.list_locks(None)).locks == []


async def test_unlock_many_releases_leases_and_tokens_each_on_its_own(env: Env) -> None:
    async with LockClient(env.url, env.key, clock=env.clock) as c:
        leases = await c.acquire_many([(f"f{i}.md", "write") for i in range(3)])
        gone = await c.acquire("gone.md")
        await c.release(gone)
        outcomes = await c.unlock_many([leases[0], gone, leases[1].token, leases[2]])
    assert [(o["index"], o["released"]) for o in outcomes] == [(0, True), (1, False), (2, True), (3, True)]
    assert outcomes[1]["error_code"] == "LOCK_NOT_FOUND"
    assert [o.get("node_id") for o in outcomes] == ["f0.md", None, "f1.md", "f2.md"]
    assert (await env.service.list_locks(None)).locks == []


async def test_unlock_many_sends_at_most_a_hundred_tokens_per_call(env: Env) -> None:
    async with LockClient(env.url, env.key, clock=env.clock) as c:
        leases = [
            lease for i in range(3) for lease in await c.acquire_many([(f"d{i}/{j}", "write") for j in range(50)])
        ]
        outcomes = await c.unlock_many(leases)
    assert [o["index"] for o in outcomes] == list(range(150))
    assert all(o["released"] for o in outcomes)
    assert (await env.service.list_locks(None)).locks == []
