"""Lease loss is pushed, not discovered: a guarded block hears of its lock's end within a second.

The server runs on a manual clock and the clients on their own (real) one, with leases far longer than
a test: no renewal is ever due here, so only the pushed event (REST's event stream, MCP's resource
updates) can stop a block.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest

from mcp_locks import LockBroken, LockExpired, LockNotFound, Settings, Unauthenticated, build_app
from mcp_locks.cli.remote.exec import EXIT_LOST
from mcp_locks.client import Lease, LeaseLost, LockClient, McpLockClient, SyncLockClient
from mcp_locks.core.keys import parse_key_id
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .helpers import STEP
from .servers import KeyedServer, keyed_server, serve_in_thread

#: Issue 20's promise: a holder learns within one second that its lock was broken, expired or revoked.
PUSH_REACH = 1.0
#: A lease no renewal of which can fall in a test (the first would come 200 s in): only a push can tell.
LONG_LEASE = 600.0
#: The lease that expires: the server's manual clock is moved past it at once, while on the client's real
#: clock its first renewal is 10 s away (a third of it), ten times PUSH_REACH, so renewal cannot be what tells.
EXPIRING_LEASE = 30.0

KINDS = ["rest", "mcp", "mcp-legacy"]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[KeyedServer]:
    async with keyed_server(tmp_path) as server:
        yield server


def client_of(kind: str, env: KeyedServer, **options: Any) -> LockClient:
    """A client of ``kind`` on its own real clock (not the server's manual one)."""
    if kind == "rest":
        return LockClient(env.url, env.key, **options)
    return McpLockClient(env.url, env.key, mode="legacy" if kind == "mcp-legacy" else "auto", **options)


async def hang() -> None:
    """A body still working: only a pushed loss ends it within PUSH_REACH (else TimeoutError, not LeaseLost)."""
    with anyio.fail_after(PUSH_REACH):
        await anyio.sleep_forever()


async def lose(c: LockClient, node_id: str, act: Callable[[Lease], Awaitable[object]], **options: Any) -> LeaseLost:
    """Hold ``node_id`` for a block that does ``act`` to its lease and then works on; return how the block ended."""

    async def block() -> None:
        async with c.lock(node_id, **options) as lease:
            await act(lease)
            await hang()

    with pytest.raises(LeaseLost) as lost:
        await block()
    return lost.value


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The face a client speaks: each test that takes it runs once over every one of :data:`KINDS`."""
    return str(request.param)


#: ``await lose_on_face(act, timeout=..., **client_options)``: see :func:`lose_on_face`.
LoseOnFace = Callable[..., Awaitable[LeaseLost]]


@pytest.fixture
def lose_on_face(env: KeyedServer, kind: str) -> LoseOnFace:
    """Hold ``a.md`` from a fresh client of ``kind`` for a block that does ``act`` to its lease (see :func:`lose`);
    all within STEP, with the client closed before the ``LeaseLost`` it ended with is returned."""

    async def run(
        act: Callable[[Lease], Awaitable[object]], *, timeout: float = LONG_LEASE, **client_options: Any
    ) -> LeaseLost:
        with anyio.fail_after(STEP):
            async with client_of(kind, env, **client_options) as c:
                return await lose(c, "a.md", act, timeout=timeout)

    return run


@pytest.mark.anyio
async def test_a_force_unlock_cancels_the_guarded_block_with_lease_lost_within_a_second(
    env: KeyedServer, lose_on_face: LoseOnFace
) -> None:
    def force_unlock(lease: Lease) -> Awaitable[object]:
        return env.service.force_unlock(None, lease.lock_id, "agent looked stuck")

    lost = await lose_on_face(force_unlock)
    assert isinstance(lost.cause, LockBroken)
    assert "agent looked stuck" in str(lost)
    assert lost.lease.lost is lost.cause


class SaysWhenChecked(httpx2.AsyncHTTPTransport):
    """Sets ``checked`` once the server has answered a lock status call (the push checks a lease so once its
    stream is live: from then on only the stream can tell the block)."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = anyio.Event()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        if request.headers.get("lock-token") or b'"check_lock_status"' in request.content:
            body = await response.aread()  # the whole answer, the tool's result included
            headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-encoding"]
            response = httpx2.Response(response.status_code, headers=headers, content=body)
            self.checked.set()
        return response


@pytest.mark.anyio
async def test_a_break_after_the_stream_is_live_is_pushed_by_the_stream(
    env: KeyedServer, lose_on_face: LoseOnFace
) -> None:
    transport = SaysWhenChecked()

    async def force_unlock_later(lease: Lease) -> None:
        await transport.checked.wait()
        await env.service.force_unlock(None, lease.lock_id, "agent looked stuck")

    lost = await lose_on_face(force_unlock_later, transport=transport)
    assert isinstance(lost.cause, LockBroken)


@pytest.mark.anyio
async def test_an_expiry_is_pushed_to_the_guarded_block_too(env: KeyedServer, lose_on_face: LoseOnFace) -> None:
    async def expire(lease: Lease) -> None:
        env.clock.advance(EXPIRING_LEASE + 1)  # the server's clock: the lease ends now

    lost = await lose_on_face(expire, timeout=EXPIRING_LEASE)
    assert isinstance(lost.cause, LockExpired)


@pytest.mark.anyio
async def test_a_release_by_another_holder_of_the_token_cancels_the_guarded_block(
    env: KeyedServer, lose_on_face: LoseOnFace
) -> None:
    async def release_elsewhere(lease: Lease) -> None:
        await env.service.unlock(None, lease.token)  # someone else with the token (and the key) let it go

    lost = await lose_on_face(release_elsewhere)
    assert isinstance(lost.cause, LockNotFound)


@pytest.mark.anyio
async def test_revoking_the_key_cancels_the_guarded_block_within_a_second(
    env: KeyedServer, lose_on_face: LoseOnFace
) -> None:
    async def revoke(lease: Lease) -> None:
        await env.service.revoke_key(parse_key_id(env.key))

    lost = await lose_on_face(revoke)
    # Its locks are broken ("key revoked"). The client's own look at its lease, refused the revoked key, may
    # tell it first (test_revoked_stream holds the REST stream to sending the break before it ends).
    assert isinstance(lost.cause, LockBroken | Unauthenticated), lost.cause


@pytest.mark.anyio
async def test_breaking_one_reader_leaves_another_clients_read_lock_on_that_node_alone(
    env: KeyedServer, kind: str
) -> None:
    def force_unlock(lease: Lease) -> Awaitable[object]:
        return env.service.force_unlock(None, lease.lock_id, "stuck")

    with anyio.fail_after(STEP):
        async with (
            client_of(kind, env) as one,
            client_of(kind, env) as other,
            other.lock("a.md", mode="read", timeout=LONG_LEASE, agent="s2") as kept,
        ):
            await lose(one, "a.md", force_unlock, mode="read", timeout=LONG_LEASE, agent="s1")
            # A second break, after the first, that `other` does hear: by then it has heard the first.
            await lose(other, "b.md", force_unlock, timeout=LONG_LEASE)
            assert kept.lost is None
            assert (await other.status("a.md", lease=kept))["yours"]["held"] is True  # and its block runs on


@pytest.mark.anyio
async def test_a_break_while_the_event_stream_is_down_is_found_when_it_reconnects(env: KeyedServer) -> None:
    broken = anyio.Event()

    class DropsFirstStream(httpx2.AsyncHTTPTransport):
        dropped = False

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            if request.url.path.endswith("/events") and not self.dropped:
                self.dropped = True
                await broken.wait()  # the server never saw this stream: its event for the break is missed
                raise httpx2.ReadError("connection reset", request=request)
            return await super().handle_async_request(request)

    async def force_unlock(lease: Lease) -> None:
        await env.service.force_unlock(None, lease.lock_id, "stuck")
        broken.set()

    with anyio.fail_after(STEP):
        async with LockClient(env.url, env.key, transport=DropsFirstStream()) as c:
            lost = await lose(c, "a.md", force_unlock, timeout=LONG_LEASE)
    assert isinstance(lost.cause, LockBroken)


@pytest.mark.anyio
async def test_a_server_without_the_event_stream_leaves_renewal_to_notice_and_says_so(
    env: KeyedServer, caplog: pytest.LogCaptureFixture
) -> None:
    class NoEvents(httpx2.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            if request.url.path.endswith("/events"):
                body = {"error": {"code": "NOT_FOUND", "message": "no such route"}}
                return httpx2.Response(404, json=body)
            return await super().handle_async_request(request)

    async def work(c: LockClient) -> None:
        async with c.lock("a.md", timeout=30) as lease:
            await env.service.force_unlock(None, lease.lock_id, "stuck")
            env.clock.advance(10)  # the client shares the server's clock here: its renewal is due
            await anyio.sleep_forever()

    caplog.set_level(logging.DEBUG, logger="mcp_locks.client")
    with anyio.fail_after(STEP):
        async with LockClient(env.url, env.key, clock=env.clock, transport=NoEvents()) as c:
            with pytest.raises(LeaseLost) as lost:
                await work(c)
    assert isinstance(lost.value.cause, LockBroken)
    assert "no lease-loss stream for 'default' (NOT_FOUND); renewal only" in caplog.text


# ---------------------------------------------------------------------- in other threads and processes


@dataclass
class Threaded:
    """A real server in a thread of its own (on the real clock), with an agent key and an admin key."""

    url: str
    key: str
    admin: str

    def force_unlock(self, node_id: str, reason: str) -> None:
        """Break the lock on ``node_id`` over REST, as an admin would."""
        admin = {"Authorization": f"Bearer {self.admin}"}
        locks = httpx.get(f"{self.url}/v1/workspaces/default/locks", headers=admin).json()["locks"]
        (lock_id,) = [lk["lock_id"] for lk in locks if lk["node_id"] == node_id]
        r = httpx.post(
            f"{self.url}/v1/workspaces/default/locks/{lock_id}/force-unlock", json={"reason": reason}, headers=admin
        )
        assert r.status_code == 200, r.text


@pytest.fixture
def threaded(tmp_path: Path) -> Iterator[Threaded]:
    service = LockService(MemoryStore())
    with serve_in_thread(build_app(Settings(store="memory", data_dir=tmp_path), service)) as url:
        key, _ = anyio.run(lambda: service.create_key("script", ["default"]))
        admin, _ = anyio.run(lambda: service.create_key("root", [], "admin"))
        yield Threaded(url, key, admin)


def until(done: object, within: float) -> bool:
    """Poll ``done()`` until true or ``within`` seconds pass: no event crosses a thread or process boundary here."""
    deadline = time.monotonic() + within
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    return bool(done())  # type: ignore[operator]


def test_the_sync_client_marks_the_lease_lost_within_a_second_and_its_exit_raises_lease_lost(
    threaded: Threaded,
) -> None:
    def work(c: SyncLockClient) -> None:
        with c.lock("a.md", timeout=LONG_LEASE) as lease:
            threaded.force_unlock("a.md", "agent looked stuck")
            # A blocking body cannot be interrupted: it sees lease.lost between steps (docs/client.md).
            assert until(lambda: lease.lost is not None, PUSH_REACH)

    with SyncLockClient(threaded.url, threaded.key) as c, pytest.raises(LeaseLost) as lost:
        work(c)
    assert isinstance(lost.value.cause, LockBroken)


@pytest.mark.slow
def test_exec_signals_its_command_within_a_second_of_a_force_unlock_and_exits_76(
    threaded: Threaded, tmp_path: Path
) -> None:
    started, signalled = tmp_path / "started", tmp_path / "signalled"
    child = (
        "import signal, sys, time;"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(signalled)!r}, 'w').close(), sys.exit(0)));"
        f"open({str(started)!r}, 'w').close();"
        "time.sleep(120)"
    )
    command = [sys.executable, "-m", "mcp_locks", "exec", "--lock", "job.lock", "--timeout", str(LONG_LEASE), "--",
               sys.executable, "-c", child]  # fmt: skip
    envvars = {**os.environ, "MCP_LOCKS_URL": threaded.url, "MCP_LOCKS_KEY": threaded.key}
    with subprocess.Popen(command, env=envvars, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert until(started.exists, 30)
            threaded.force_unlock("job.lock", "agent looked stuck")
            assert until(signalled.exists, PUSH_REACH)  # the same SIGTERM as on any lost lease
            _, stderr = proc.communicate(timeout=30)
            assert proc.returncode == EXIT_LOST
            assert "LOCK_BROKEN" in stderr
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
