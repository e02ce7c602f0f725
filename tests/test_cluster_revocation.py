"""A key revoked (or changed) through one server of a PostgreSQL cluster ends its streams on the others at once.

Two servers on one fresh schema, each a real app on a loopback port with its own ``PostgresStore`` (its
own server id, pool and listener), in this process so that keys are on: tests/test_cluster.py starts
real processes, without keys. The key is revoked through server A; the event stream is open on server B.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest
import uvicorn
from starlette.types import ASGIApp

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import Clock
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.postgres import APP_PREFIX, PostgresStore

from .pg import PG_URL, pg_schema
from .servers import _QuietServer, free_socket

pytestmark = pytest.mark.anyio

STEP = 10  # upper bound on any one wait that is not the subject of a test
#: Seconds within which a stream on server B must end once server A revoked its key. The rule is "within
#: one second"; the notification itself arrives in milliseconds, so 2 s leaves room for a loaded CI machine
#: while staying far below the streams' periodic re-check (RECHECK_ACCESS, 15 s), the only other way they
#: would end: a stream that ends in time was told, it did not look by chance.
WITHIN = 2.0


@dataclass
class Server:
    url: str
    service: LockService


@pytest.fixture
async def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Server, Server]]:
    """Servers A and B on one fresh schema, keys required, each with a data dir of its own.

    Each server also polls the store's key version (every KEYS_POLL s), the fallback for a change it was
    not told of; here that poll is put far out of reach, so only the database's notification can tell B.
    """
    monkeypatch.setattr("mcp_locks.faces.app.KEYS_POLL", 3600.0)
    with pg_schema() as schema:
        async with AsyncExitStack() as stack:
            out = []
            for name in ("a", "b"):
                service = LockService(PostgresStore(PG_URL, schema=schema), clock=Clock())
                settings = Settings(store=PG_URL, pg_schema=schema, data_dir=tmp_path / name)
                out.append(Server(await stack.enter_async_context(_serve(build_app(settings, service))), service))
            await _listening(out[1].service)
            yield out[0], out[1]


@asynccontextmanager
async def _serve(app: ASGIApp) -> AsyncIterator[str]:
    """:func:`tests.servers.serve_app`, but stopped gracefully: its force-exit skips the app's lifespan shutdown,
    and here that shutdown (which closes the store) must run before the schema is dropped."""
    sock = free_socket()
    server = _QuietServer(uvicorn.Config(app, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(STEP):
            await server.up.wait()
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
    sock.close()


async def _listening(service: LockService) -> None:
    """Until the server's notification connection listens (its own state, seen in pg_stat_activity).

    Starting to listen counts as a change of access (anything may have changed unseen): once it has
    happened, the only thing that can wake B's streams is the revocation under test.
    """
    store = service.store
    assert isinstance(store, PostgresStore)
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        with anyio.fail_after(STEP):
            while True:
                cur = await conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN %%'",
                    (APP_PREFIX + store.server_id,),
                )
                if await cur.fetchone() is not None:
                    return
                await anyio.sleep(0.01)  # another connection's state: nothing to await


async def _change_and_read_to_the_end(
    lines: AsyncIterator[str], b: Server, workspace: str, change: Callable[[], Awaitable[object]]
) -> None:
    """Make ``change`` (through A); once B has heard of it, commit an event there and read the stream to its
    end, all within :data:`WITHIN`."""
    changed = b.service.access_changed  # set when B hears of the change (taken before it is made)

    async def read() -> None:
        async for _ in lines:
            pass

    with anyio.fail_after(WITHIN):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await change()
            await changed.wait()
            # An event to deliver: a stream that looks at its key only when it wakes ends here at the latest.
            await b.service.lock(workspace, "after.md", "read", agent="other")


async def _first_event(lines: AsyncIterator[str], b: Server, workspace: str) -> None:
    """Commit an event on B and read it from the stream: the stream is live and has looked at its key."""
    await b.service.lock(workspace, "before.md", "read", agent="other")
    with anyio.fail_after(STEP):
        async for line in lines:
            if line.startswith("data:"):
                assert "before.md" in line
                return
    raise AssertionError("the stream ended before its first event")


async def _stream_on_b_ends_at_once(
    b: Server, key: str, workspace: str, change: Callable[[], Awaitable[object]]
) -> None:
    """Open B's event stream of ``workspace`` with ``key`` and read its first event; then make ``change``
    (through A) and return once the stream has ended, within :data:`WITHIN`: that is the promise."""
    async with httpx.AsyncClient(timeout=STEP) as http:
        auth = {"Authorization": f"Bearer {key}"}
        async with http.stream("GET", f"{b.url}/v1/workspaces/{workspace}/events", headers=auth) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()  # one reader for the whole stream
            await _first_event(lines, b, workspace)
            # B sends nothing committed after it heard of the change; an event committed on A after the change
            # but before B heard of it may still go out from B, so what was read is not asserted.
            await _change_and_read_to_the_end(lines, b, workspace, change)


async def test_a_key_revoked_on_one_server_ends_its_event_stream_on_another_at_once(
    servers: tuple[Server, Server],
) -> None:
    a, b = servers
    key, record = await a.service.create_key("alice", ["default"])
    await _stream_on_b_ends_at_once(b, key, "default", lambda: a.service.revoke_key(record.key_id))


async def test_a_workspace_taken_from_a_key_on_one_server_ends_its_stream_of_that_workspace_on_another(
    servers: tuple[Server, Server],
) -> None:
    a, b = servers
    await a.service.create_workspace("team")
    key, record = await a.service.create_key("alice", ["default", "team"])
    await _stream_on_b_ends_at_once(
        b, key, "team", lambda: a.service.update_key(record.key_id, remove_workspaces=["team"])
    )
