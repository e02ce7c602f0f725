"""A grant nobody received is given back: its caller was cancelled (or its client left) before the answer.

The order of "granted" and "cancelled" is set with events. The service tests cancel the caller from a
subscriber of the event feed: the feed hears of a batch's events just before the batch's callers are
woken (both in the same step, in that order), so the cancellation lands after the grant came back and
before its caller took it — the window a plain cancelled wait does not cover.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.models import LockGrant
from mcp_locks.core.records import PutLease, StoreChange
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .helpers import STEP, Events, until_event
from .servers import serve_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def events(service: LockService) -> AsyncIterator[Events]:
    async with service.subscribe() as stream:
        yield stream


async def cancel_on(service: LockService, kind: str, scope: anyio.CancelScope, ready: anyio.Event) -> None:
    """Cancel ``scope`` as soon as the feed shows a ``kind`` event (the batch deciding the grant committed).

    Subscribed once ``ready`` is set. The feed is handed a batch's events before the batch's callers are
    woken, so this task, parked on the feed or already scheduled, runs before the caller takes its answer.
    (Not ``wait_all_tasks_blocked``: the PostgreSQL store's LISTEN task can look unblocked to it for good.)
    """
    async with service.subscribe() as feed:
        ready.set()
        async for _, ev in feed:
            if ev.kind == kind:
                scope.cancel()
                return


async def test_a_grant_whose_caller_was_cancelled_after_it_came_back_is_released(
    service: LockService, events: Events
) -> None:
    got: list[LockGrant] = []
    scope = anyio.CancelScope()
    ready = anyio.Event()

    async def bob_locks() -> None:
        with scope:
            got.append(await service.lock(None, "doc.md", agent="bob"))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on, service, "requested", scope, ready)
            await ready.wait()
            tg.start_soon(bob_locks)
    assert got == []
    granted = await until_event(events, "granted", "doc.md", owner="bob")
    released = await until_event(events, "released", "doc.md", owner="bob")
    assert released.lock_id == granted.lock_id
    assert (await service.list_locks()).locks == []


async def test_a_waiters_grant_whose_caller_was_cancelled_after_it_came_back_is_released(
    service: LockService, events: Events
) -> None:
    holder = await service.lock(None, "doc.md", agent="alice")
    got: list[LockGrant] = []
    scope = anyio.CancelScope()
    ready = anyio.Event()

    async def bob_waits() -> None:
        with scope:
            got.append(await service.lock(None, "doc.md", agent="bob", wait=600))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bob_waits)
            await until_event(events, "queued", "doc.md")
            tg.start_soon(cancel_on, service, "released", scope, ready)
            await ready.wait()
            await service.unlock(None, holder.token)  # grants bob; the subscriber cancels him before he wakes
    assert got == []
    await until_event(events, "granted", "doc.md", owner="bob")
    await until_event(events, "released", "doc.md", owner="bob")
    assert (await service.list_locks()).locks == []


# ---------------------------------------------------------------------- over REST


class GatedStore(MemoryStore):
    """A memory store whose first commit of a new lease (once armed) waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def commit(self, workspace_id: str, changes: Sequence[StoreChange]) -> None:
        if self.armed and any(isinstance(ch, PutLease) for ch in changes):
            self.armed = False
            self.entered.set()
            await self.gate.wait()
        await super().commit(workspace_id, changes)


def disconnect_spy(app: ASGIApp, heard: anyio.Event) -> ASGIApp:
    """``app``, setting ``heard`` when it learns that a client went away."""

    async def spied(scope: Scope, receive: Receive, send: Send) -> None:
        async def listen() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                heard.set()
            return message

        await app(scope, listen, send)

    return spied


async def test_a_rest_lock_whose_client_left_before_the_answer_is_released(tmp_path: Path) -> None:
    store = GatedStore()
    service = LockService(store, clock=ManualClock())
    heard = anyio.Event()
    app = disconnect_spy(build_app(Settings(store="memory", data_dir=tmp_path), service), heard)
    async with serve_app(app) as url, service.subscribe() as events:
        key, _ = await service.create_key("alice", ["default"])
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"mode": "write", "wait": 0}).encode()
        head = (
            f"POST /v1/workspaces/default/nodes/doc.md/lock HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with anyio.fail_after(STEP):
            store.armed = True
            stream = await anyio.connect_tcp(host, int(port))
            await stream.send(head.encode() + body)
            await store.entered.wait()  # granted in the table, its commit held: no answer yet
            await stream.aclose()  # the client gives up
            await heard.wait()
            store.gate.set()
            granted = await until_event(events, "granted", "doc.md")
            released = await until_event(events, "released", "doc.md")
        assert released.lock_id == granted.lock_id
        assert (await service.list_locks()).locks == []
