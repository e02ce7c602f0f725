"""A revoked key's REST event stream sends what was committed before the revocation was heard, then ends.

Revoking a key breaks its locks (``broken``, reason "key revoked") and ends its event stream; a holder that
follows its leases on that stream must hear the break, with its reason, before the end. And an event
committed once the server has heard of the revocation never goes out to the revoked key, however long its
stream takes to read the key again. A real server on loopback, real clients.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcp_locks import LockBroken
from mcp_locks.client import Lease, LockClient
from mcp_locks.core.keys import Identity, KeyRecord, parse_key_id
from mcp_locks.engine.lock_service import KEY_REVOKED
from mcp_locks.faces.app import REVOKED_ELSEWHERE

from .helpers import STEP
from .servers import KeyedServer, keyed_server
from .test_lease_push import LONG_LEASE, SaysWhenChecked, lose

pytestmark = pytest.mark.anyio

#: Locks the revoked key holds: their breaks commit together, more than a stream sends in one go.
HELD = 50

HOW = ["through this server", "by another process"]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[KeyedServer]:
    async with keyed_server(tmp_path) as server:
        yield server


def key_id(env: KeyedServer) -> str:
    kid = parse_key_id(env.key)
    assert kid is not None
    return kid


async def alice(env: KeyedServer) -> Identity:
    """The agent key's identity, to take locks as that key."""
    rec = await env.service.store.get_key(key_id(env))
    assert rec is not None
    return Identity(rec.key_id, rec.agent, rec.role, rec.workspaces)


async def revoke(env: KeyedServer, how: str) -> None:
    """Revoke the agent key: through the admin API, or straight in the store (``mcp-locks keys revoke``)."""
    if how == "by another process":  # this server hears of it only through the store's key version
        await env.service.store.revoke_key(key_id(env), env.service.clock.now())
        return
    async with httpx.AsyncClient(timeout=STEP) as http:
        r = await http.delete(
            f"{env.url}/v1/admin/keys/{key_id(env)}", headers={"Authorization": f"Bearer {env.admin}"}
        )
        assert r.status_code == 200, r.text


@asynccontextmanager
async def live_stream(env: KeyedServer) -> AsyncIterator[AsyncIterator[str]]:
    """The agent key's event stream of ``default``, past its first look at the key; yields its lines to come.

    An event committed after it opened has come through: the stream is subscribed and found the key fine.
    """
    async with (
        httpx.AsyncClient(timeout=STEP) as http,
        http.stream(
            "GET", f"{env.url}/v1/workspaces/default/events", headers={"Authorization": f"Bearer {env.key}"}
        ) as r,
    ):
        assert r.status_code == 200
        lines = r.aiter_lines()  # one reader for the whole stream
        await env.service.lock("default", "before.md", "read", agent="other")
        with anyio.fail_after(STEP):
            async for line in lines:
                if line.startswith("data:") and json.loads(line[5:])["kind"] == "granted":  # its last event
                    break
        yield lines


async def read_while(lines: AsyncIterator[str], act: Callable[[], Awaitable[object]]) -> list[dict[str, Any]]:
    """Do ``act`` while reading ``lines`` to the stream's end; the events read.

    Bounded by STEP only: what reaches the stream is the subject here; that it ends within a second of
    the revocation is tests/test_connections.py's.
    """
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async for line in lines:
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await act()
    return events


@pytest.mark.parametrize("how", HOW)
async def test_a_revoked_key_is_sent_the_breaks_of_its_locks_before_its_stream_ends(env: KeyedServer, how: str) -> None:
    caller = await alice(env)
    held = {(await env.service.lock("default", f"held/{i}.md", caller=caller)).lock_id for i in range(HELD)}
    async with live_stream(env) as lines:
        events = await read_while(lines, lambda: revoke(env, how))
    broken = [ev for ev in events if ev["kind"] == "broken"]
    assert {ev["lock_id"] for ev in broken} == held, events
    by = "root" if how == "through this server" else REVOKED_ELSEWHERE  # the admin, when this server knows them
    assert {(ev["reason"], ev["by"]) for ev in broken} == {(KEY_REVOKED, by)}


@pytest.mark.parametrize("how", HOW)
async def test_an_event_committed_once_the_server_heard_of_the_revocation_never_reaches_the_revoked_key(
    env: KeyedServer, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Every read of the revoked key waits until the event below is committed: the stream's look at its key
    # cannot end it first, so only holding what follows the revocation keeps the event from going out.
    store, revoked_id = env.service.store, key_id(env)
    committed = anyio.Event()
    read_key = store.get_key

    async def get_key(kid: str) -> KeyRecord | None:
        rec = await read_key(kid)
        if kid == revoked_id and rec is not None and rec.revoked_at is not None:
            await committed.wait()
        return rec

    monkeypatch.setattr(store, "get_key", get_key)
    async with live_stream(env) as lines:
        heard = env.service.access_changed  # set when this server hears of the revocation (taken before it)

        async def revoke_then_commit() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(revoke, env, how)  # through the API, it answers once it has read the key back
                await heard.wait()
                await env.service.lock("default", "after.md", agent="other")
                committed.set()

        events = await read_while(lines, revoke_then_commit)
    assert [ev["node_id"] for ev in events] == [], events


async def test_a_holder_following_its_lease_on_the_rest_stream_hears_it_was_broken_because_its_key_was_revoked(
    env: KeyedServer,
) -> None:
    caller = await alice(env)
    for i in range(HELD):  # older locks of the key: their breaks go out first, the holder's comes last
        await env.service.lock("default", f"held/{i}.md", caller=caller)
    transport = SaysWhenChecked()  # the stream is live and the lease checked once: only the stream can tell

    async def revoke_once_followed(lease: Lease) -> None:
        await transport.checked.wait()
        await revoke(env, "through this server")

    with anyio.fail_after(STEP):
        async with LockClient(env.url, env.key, transport=transport) as c:
            lost = await lose(c, "a.md", revoke_once_followed, timeout=LONG_LEASE)
    assert isinstance(lost.cause, LockBroken), lost.cause  # not UNAUTHENTICATED: the break came before the end
    assert lost.cause.details["reason"] == KEY_REVOKED
