"""The audit log, the live event feed, webhooks, metrics and JSON logs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from anyio import wait_all_tasks_blocked
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_locks import InvalidArgument, NotFound
from mcp_locks.core.clock import Clock, ManualClock
from mcp_locks.core.models import AuditEvent
from mcp_locks.core.records import AuditQuery, Delivery, Event, Settle, event_dict
from mcp_locks.engine.lock_service import LockService, ServiceLimits
from mcp_locks.observe.logging import JsonFormatter, RedactSecrets, RequestId, request_id
from mcp_locks.observe.observability import PRUNE_EVERY, ObserveLimits
from mcp_locks.observe.webhooks import WebhookLimits, retry_delay
from mcp_locks.stores.base import MemoryStore, Store
from mcp_locks.stores.sqlite import SqliteStore

from .faces import Env, Face
from .helpers import STEP, until_event
from .servers import serve_app

pytestmark = pytest.mark.anyio

PRIVATE_OK = ServiceLimits(observe=ObserveLimits(webhooks=WebhookLimits(allow_private=True)))


# ---------------------------------------------------------------------- the audit log


async def test_a_lock_and_its_release_are_logged_with_who_waited_and_held_how_long(
    service: LockService, clock: ManualClock
) -> None:
    g = await service.lock("default", "a.md", "write", agent="builder")
    clock.advance(2.5)
    await service.unlock("default", g.token, "a.md")
    page = await service.observe.audit_log("default")
    kinds = [e.kind for e in page.events]
    assert kinds == ["released", "granted", "requested"]  # newest first
    released, granted, requested = page.events
    assert (released.held_ms, released.lock_id, released.fence) == (2500, g.lock_id, g.fence)
    assert (granted.waited_ms, granted.mode, granted.agent) == (0, "write", "builder")
    assert (requested.node_id, requested.lock_id) == ("a.md", None)
    assert [e.seq for e in page.events] == [3, 2, 1]
    assert g.token not in page.model_dump_json()


async def test_a_denied_request_is_logged_with_its_code(service: LockService) -> None:
    await service.lock("default", "a.md", "write", agent="x")
    with pytest.raises(Exception, match="locked"):
        await service.lock("default", "a.md", "read", agent="y", wait=0)
    newest = (await service.observe.audit_log("default", limit=1)).events[0]
    assert (newest.kind, newest.code, newest.node_id) == ("denied", "LOCKED", "a.md")


async def test_a_queued_request_is_logged_when_it_queues_and_with_its_wait_when_granted(
    service: LockService, clock: ManualClock
) -> None:
    g = await service.lock("default", "a.md", "write", agent="first")
    async with service.subscribe() as events, anyio.create_task_group() as tg:
        tg.start_soon(lambda: service.lock("default", "a.md", "write", agent="second", wait=60))
        await until_event(events, "queued")
        clock.advance(1.5)
        await service.unlock("default", g.token, "a.md")
    events = (await service.observe.audit_log("default", agent="second")).events
    assert [e.kind for e in events] == ["granted", "queued", "requested"]
    assert events[0].waited_ms == 1500


async def test_renewals_upgrades_breaks_and_expiries_are_logged(service: LockService, clock: ManualClock) -> None:
    g = await service.lock("default", "a.md", "read", agent="x", timeout=10)
    await service.renew("default", g.token, 30)
    up = await service.lock("default", "a.md", "write", agent="x", token=g.token)
    await service.force_unlock("default", up.lock_id, "stuck for an hour")
    await service.lock("default", "b.md", "write", agent="y", timeout=5)
    clock.advance(6)
    await service.status("default", "b.md")  # the actor notices the deadline
    events = (await service.observe.audit_log("default")).events
    kinds = [e.kind for e in reversed(events)]
    assert kinds == ["requested", "granted", "renewed", "requested", "upgraded", "broken", "requested", "granted",
                     "expired"]  # fmt: skip
    broken = next(e for e in events if e.kind == "broken")
    assert (broken.reason, broken.mode) == ("stuck for an hour", "write")
    assert next(e for e in events if e.kind == "expired").held_ms == 5000  # ended at its deadline, not when seen


async def test_file_writes_and_deletes_are_logged_with_version_and_fence(service: LockService) -> None:
    g = await service.lock("default", "notes.md", "write", agent="w")
    await service.files.write("default", "notes.md", b"one", token=g.token)
    await service.files.write("default", "notes.md", b"two", token=g.token)
    await service.files.delete("default", "notes.md", token=g.token)
    events = (await service.observe.audit_log("default", node_id="notes.md")).events
    files = [(e.kind, e.version, e.fence) for e in events if e.kind in ("written", "deleted")]
    assert files == [("deleted", 2, g.fence), ("written", 2, g.fence), ("written", 1, g.fence)]


async def test_the_log_filters_by_node_agent_and_time_and_pages_back_with_a_cursor(
    service: LockService, clock: ManualClock
) -> None:
    for i in range(5):
        g = await service.lock("default", f"f{i}.md", "write", agent=f"a{i % 2}")
        await service.unlock("default", g.token, f"f{i}.md")
        clock.advance(10)
    obs = service.observe
    assert {e.node_id for e in (await obs.audit_log("default", node_id="f3.md")).events} == {"f3.md"}
    assert {e.agent for e in (await obs.audit_log("default", agent="a1")).events} == {"a1"}
    since = datetime.fromtimestamp(clock.now() - 15, UTC).isoformat()
    assert {e.node_id for e in (await obs.audit_log("default", since=since)).events} == {"f4.md"}
    seen: list[int] = []
    cursor = None
    for _ in range(20):
        page = await obs.audit_log("default", limit=4, cursor=cursor)
        seen += [e.seq for e in page.events]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(range(15, 0, -1))


@pytest.mark.parametrize(
    ("arg", "value"),
    [("cursor", "nope"), ("since", "yesterday"), ("since", "2026-11-28T10:00:00"), ("limit", 0), ("agent", "")],
)
async def test_bad_audit_arguments_get_invalid_argument(service: LockService, arg: str, value: object) -> None:
    with pytest.raises(InvalidArgument) as e:
        await service.observe.audit_log("default", **{arg: value})
    assert e.value.details["field"] == arg


async def test_the_log_survives_a_restart_and_its_seq_never_repeats(tmp_path: Path, clock: ManualClock) -> None:
    async with LockService(SqliteStore(tmp_path / "l.db"), clock=clock) as s:
        g = await s.lock("default", "a.md", "write")
        await s.unlock("default", g.token, "a.md")
    async with LockService(SqliteStore(tmp_path / "l.db"), clock=clock) as s:
        await s.lock("default", "b.md", "write")
        events = (await s.observe.audit_log("default")).events
    assert [e.seq for e in events] == [5, 4, 3, 2, 1]
    assert [e.node_id for e in events[:2]] == ["b.md", "b.md"]


async def test_seq_does_not_repeat_when_an_idle_actor_reloads_without_an_audit_log(clock: ManualClock) -> None:
    limits = ServiceLimits(idle_timeout=1, observe=ObserveLimits(audit=False))
    async with LockService(MemoryStore(), clock=clock, limits=limits) as s, s.subscribe() as events:
        await s.lock("default", "a.md", "read")
        first = [ev.seq for _, ev in [await events.receive(), await events.receive()]]
        clock.advance(5)  # the actor goes idle and stops; the next call loads a new one
        await wait_all_tasks_blocked()
        assert s.active_actors == 0
        await s.lock("default", "b.md", "read")
        again = [ev.seq for _, ev in [await events.receive(), await events.receive()]]
        assert (await s.observe.audit_log("default")).events == []  # nothing logged
    base = int(clock.now() * 1000) - 5000  # without a log, seqs start from the first load's time in ms
    assert (first, again) == ([base + 1, base + 2], [base + 3, base + 4])


async def test_seq_keeps_growing_across_restarts_without_an_audit_log(tmp_path: Path, clock: ManualClock) -> None:
    limits = ServiceLimits(observe=ObserveLimits(audit=False))
    seqs = []
    for _ in range(2):
        async with LockService(SqliteStore(tmp_path / "l.db"), clock=clock, limits=limits) as s, s.subscribe() as ev:
            await s.lock("default", "a.md", "read")
            seqs.append((await ev.receive())[1].seq)
        clock.advance(1)
    assert seqs[1] > seqs[0]


async def test_pruning_keeps_the_newest_entry_so_seq_never_restarts(tmp_path: Path, clock: ManualClock) -> None:
    async with LockService(SqliteStore(tmp_path / "l.db"), clock=clock) as s:
        await s.lock("default", "a.md", "read")
        clock.advance(60 * 86_400)
        await s.status("default", "a.md")  # its lease ended long ago: expired (seq 3)
        await s.store.prune_audit(clock.now())  # everything is older than that: all but the newest go
    async with LockService(SqliteStore(tmp_path / "l.db"), clock=clock) as s:
        await s.lock("default", "b.md", "read")
        seqs = [e.seq for e in (await s.observe.audit_log("default")).events]
    assert seqs == [5, 4, 3]  # 3 stayed, and the count went on from it


async def test_entries_older_than_the_retention_are_pruned_and_newer_ones_kept(
    store: Store, clock: ManualClock
) -> None:
    async with LockService(store, clock=clock) as s:
        old = await s.lock("default", "old.md", "write")
        await s.unlock("default", old.token)  # its last event is 40 days old (a segment goes when its newest does)
        clock.advance(40 * 86_400)
        await s.lock("default", "new.md", "write")
        passes = s.observe.prune_passes
        clock.advance(PRUNE_EVERY)  # the hourly sweep runs (30 days is the default retention)
        with anyio.fail_after(STEP):
            while s.observe.prune_passes == passes:
                await s.observe.pruned.wait()
        left = await store.audit(AuditQuery("default"))
    assert {e.node_id for e in left} == {"new.md"}


async def test_get_audit_log_answers_on_every_face(face: Face) -> None:
    env = face.env
    g = (await face(env.alice, "lock", node_id="r.md", mode="write")).ok
    await face(env.alice, "unlock", node_id="r.md", token=g["token"])
    page = (await face(env.bob, "get_audit_log", node_id="r.md", limit=10)).ok
    assert [e["kind"] for e in page["events"]] == ["released", "granted", "requested"]
    assert page["events"][0]["agent"] == "alice"
    assert g["token"] not in json.dumps(page)
    denied = await face(env.carol, "get_audit_log", workspace_id="default")
    assert denied.code == "FORBIDDEN"


# ---------------------------------------------------------------------- the live event stream


async def _read_sse(lines: AsyncIterator[str], n: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The next ``n`` events of an open event stream as (id, event, data).

    ``lines`` is the stream's one line reader (``r.aiter_lines()``, taken once and kept while the stream
    is open): a partly read ``aiter_lines()`` that is dropped is finalised by the garbage collector,
    and closing it closes the connection, so the server would see the client leave.
    """
    out: list[tuple[str, str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    with anyio.fail_after(STEP):
        async for line in lines:
            if line.startswith(":"):
                continue
            if line == "":
                if "data" in fields:
                    out.append((fields["id"], fields["event"], json.loads(fields["data"])))
                    if len(out) == n:
                        return out
                fields = {}
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    raise AssertionError("stream ended")


async def test_the_event_stream_sends_committed_events_and_resumes_after_last_event_id(env: Env) -> None:
    url = f"{env.url}/v1/workspaces/default/events"
    auth = {"Authorization": f"Bearer {env.bob}"}
    async with httpx.AsyncClient(timeout=STEP) as http:
        async with http.stream("GET", url, headers=auth) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            await env.service.lock("team", "other.md", "write")  # another workspace: not on this stream
            g = await env.service.lock("default", "s.md", "write", agent="x")
            got = await _read_sse(r.aiter_lines(), 2)
        assert [(e, d["kind"], d["node_id"]) for _, e, d in got] == [
            ("requested", "requested", "s.md"),
            ("granted", "granted", "s.md"),
        ]
        assert got[1][0] == str(got[1][2]["seq"])
        # Events committed while nobody listened come first after a reconnect with Last-Event-ID.
        await env.service.unlock("default", g.token, "s.md")
        await env.service.lock("default", "t.md", "read")
        async with http.stream("GET", url, headers={**auth, "Last-Event-ID": got[1][0]}) as r:
            missed = await _read_sse(r.aiter_lines(), 3)
    assert [d["kind"] for _, _, d in missed] == ["released", "requested", "granted"]
    assert [int(i) for i, _, _ in missed] == list(range(int(got[1][0]) + 1, int(got[1][0]) + 4))


async def test_the_event_stream_needs_access_to_the_workspace(env: Env) -> None:
    async with httpx.AsyncClient(timeout=STEP) as http:
        r = await http.get(f"{env.url}/v1/workspaces/default/events", headers={"Authorization": f"Bearer {env.carol}"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "FORBIDDEN")
        r = await http.get(f"{env.url}/v1/workspaces/default/events")
        assert r.status_code == 401
        bad = {"Authorization": f"Bearer {env.bob}", "Last-Event-ID": "x1"}
        r = await http.get(f"{env.url}/v1/workspaces/default/events", headers=bad)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "INVALID_ARGUMENT")


async def test_the_overview_shows_held_locks_and_the_line_of_waiters(env: Env) -> None:
    s = env.service
    await s.lock("default", "a.md", "write", agent="holder")
    async with s.subscribe() as events, anyio.create_task_group() as tg:
        tg.start_soon(lambda: s.lock("default", "a.md", "read", agent="waiter", wait=60))
        await until_event(events, "queued")
        async with httpx.AsyncClient(timeout=STEP) as http:
            r = await http.get(
                f"{env.url}/v1/workspaces/default/overview", headers={"Authorization": f"Bearer {env.bob}"}
            )
        tg.cancel_scope.cancel()
    view = r.json()
    assert [(x["node_id"], x["owner"]) for x in view["locks"]] == [("a.md", "holder")]
    assert [(w["position"], w["mode"], w["owner"]) for w in view["waiters"]] == [(1, "read", "waiter")]
    assert view["truncated"] is False


# ---------------------------------------------------------------------- webhooks


@dataclass
class Receiver:
    """A loopback webhook receiver that records deliveries (and can fail or stall on purpose)."""

    url: str = ""
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail: int = 0  # answer 500 to this many deliveries first
    hold: anyio.Event | None = None  # stall every delivery until this is set
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            if self.hold is not None:
                await self.hold.wait()
            if self.fail > 0:
                self.fail -= 1
                return Response(status_code=500)
            self.got.append((dict(request.headers), body))
            self.arrived.set()
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    async def until(self, n: int) -> None:
        with anyio.fail_after(STEP):
            while len(self.got) < n:
                self.arrived = anyio.Event()
                await self.arrived.wait()


@asynccontextmanager
async def receiver(**kw: Any) -> AsyncIterator[Receiver]:
    rec = Receiver(**kw)
    async with serve_app(rec.app()) as url:
        rec.url = f"{url}/hook"
        yield rec


async def test_a_webhook_gets_each_event_signed_by_the_standard_webhooks_scheme(tmp_path: Path) -> None:
    # A real clock: the receiver's check compares webhook-timestamp with its own time.
    async with receiver() as rec, LockService(SqliteStore(tmp_path / "l.db"), clock=Clock(), limits=PRIVATE_OK) as s:
        hook = await s.observe.create_webhook("default", rec.url, ["lock.granted", "lock.released"])
        g = await s.lock("default", "a.md", "write", agent="x")
        await s.unlock("default", g.token, "a.md")
        await rec.until(2)
    payloads = [Webhook(hook.secret).verify(body, headers) for headers, body in rec.got]
    assert sorted(p["type"] for p in payloads) == ["lock.granted", "lock.released"]
    granted = next(p for p in payloads if p["type"] == "lock.granted")
    data = granted["data"]
    assert (data["lock_id"], data["event_id"]) == (g.lock_id, f"default:{data['seq']}")
    assert g.token not in json.dumps(payloads)
    assert len({h["webhook-id"] for h, _ in rec.got}) == 2


async def test_a_server_on_sqlite_delivers_from_a_worker_process_of_its_own(tmp_path: Path) -> None:
    limits = ServiceLimits(observe=ObserveLimits(webhooks=WebhookLimits(allow_private=True, worker=True)))
    async with receiver() as rec, LockService(SqliteStore(tmp_path / "l.db"), clock=Clock(), limits=limits) as s:
        hook = await s.observe.create_webhook("default", rec.url, ["lock.granted"])  # starts the worker
        with anyio.fail_after(STEP * 3):  # a new Python process has to start
            await s.observe.worker_ready.wait()
        await s.lock("default", "a.md", "write")
        await rec.until(1)
        assert s.observe.dispatcher.backlog == 0  # the in-process dispatcher never ran
        counted = 'mcp_locks_webhook_deliveries_total{outcome="delivered"} 1.0'
        with anyio.fail_after(STEP):
            while counted not in s.observe.metrics.render().decode():  # noqa: ASYNC110 - a report through a pipe
                await anyio.sleep(0.01)
    assert Webhook(hook.secret).verify(rec.got[0][1], rec.got[0][0])["data"]["node_id"] == "a.md"


async def test_a_killed_delivery_worker_is_restarted_and_delivers_what_was_logged_meanwhile(tmp_path: Path) -> None:
    limits = ServiceLimits(observe=ObserveLimits(webhooks=WebhookLimits(allow_private=True, worker=True)))
    async with receiver() as rec, LockService(SqliteStore(tmp_path / "l.db"), clock=Clock(), limits=limits) as s:
        await s.observe.create_webhook("default", rec.url, ["lock.granted"])
        with anyio.fail_after(STEP * 3):
            await s.observe.worker_ready.wait()
        pid = s.observe.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await s.lock("default", "while-down.md", "write")  # logged while no worker runs
        with anyio.fail_after(STEP * 3):  # the server notices, waits a moment, starts a new one
            while s.observe.worker_pid in (None, pid) or not s.observe.worker_ready.is_set():  # noqa: ASYNC110
                await anyio.sleep(0.05)  # another process's start: nothing here to wait on
        await rec.until(1)
    assert json.loads(rec.got[0][1])["data"]["node_id"] == "while-down.md"


async def test_a_failed_delivery_is_retried_with_the_same_id_until_it_arrives(clock: ManualClock) -> None:
    async with receiver(fail=2) as rec, LockService(MemoryStore(), clock=clock, limits=PRIVATE_OK) as s:
        await s.observe.create_webhook("default", rec.url, ["lock.granted"])
        await s.lock("default", "a.md", "write")
        for attempts in (1, 2):
            due = await _outbox_after(s, attempts)  # the failure is recorded with the time of its retry
            assert due.last_error == "HTTP 500"
            clock.advance(due.next_at - clock.now())
        await rec.until(1)
    assert (rec.fail, len(rec.got)) == (0, 1)


async def _outbox_after(s: LockService, attempts: int) -> Delivery:
    """The first outbox message once its ``attempts``-th delivery failed and was recorded."""
    with anyio.fail_after(STEP):
        while True:
            settled = s.observe.dispatcher.settled
            due = await s.store.due_deliveries(s.clock.now() + 1e6, 1, frozenset())
            if due and due[0].attempts >= attempts:
                return due[0]
            await settled.wait()


async def test_outcomes_that_could_not_be_written_are_written_later_and_no_retry_is_lost(
    clock: ManualClock,
) -> None:
    async with receiver(fail=1) as rec, LockService(MemoryStore(), clock=clock, limits=PRIVATE_OK) as s:
        dispatcher = s.observe.dispatcher
        real, failures = dispatcher.record, [OSError("disk full")]

        async def flaky(settle: Settle) -> None:
            if failures:
                raise failures.pop()
            await real(settle)

        dispatcher.record = flaky
        await s.observe.create_webhook("default", rec.url, ["lock.granted"])
        await s.lock("default", "a.md", "write")
        due = await _outbox_after(s, 1)  # the failed first attempt reached the retry table after all
        clock.advance(due.next_at - clock.now())
        await rec.until(1)
    assert failures == []


async def test_deliveries_left_in_the_outbox_are_sent_after_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "l.db"
    async with receiver(hold=anyio.Event()) as rec:
        async with LockService(SqliteStore(db), clock=clock, limits=PRIVATE_OK) as s:
            await s.observe.create_webhook("default", rec.url, ["lock.granted"])
            await s.lock("default", "a.md", "write")
            await s.lock("default", "b.md", "write")
        assert rec.got == []  # the receiver stalled; the server stopped first
        assert rec.hold is not None
        rec.hold.set()
        async with LockService(SqliteStore(db), clock=clock, limits=PRIVATE_OK) as s:
            await rec.until(2)
    nodes = sorted(json.loads(body)["data"]["node_id"] for _, body in rec.got)
    assert nodes[-2:] == ["a.md", "b.md"]


async def test_a_stalled_receiver_holds_up_neither_locks_nor_other_receivers(clock: ManualClock) -> None:
    stall = anyio.Event()
    async with (
        receiver(hold=stall) as slow,
        receiver() as fast,
        LockService(MemoryStore(), clock=clock, limits=PRIVATE_OK) as s,
    ):
        await s.observe.create_webhook("default", slow.url, ["lock.granted"])
        await s.observe.create_webhook("default", fast.url, ["lock.granted"])
        with anyio.fail_after(STEP):
            for i in range(20):
                await s.lock("default", f"f{i}.md", "write")
        await fast.until(20)
        assert slow.got == []
        stall.set()
        await slow.until(20)


async def test_webhooks_to_private_addresses_are_refused_unless_allowed(clock: ManualClock) -> None:
    async with LockService(MemoryStore(), clock=clock) as s:
        private = ("127.0.0.1:9", "10.1.2.3", "[::1]", "169.254.169.254", "[::ffff:127.0.0.1]", "[2002:7f00:1::]",
                   "[64:ff9b::a00:1]")  # fmt: skip
        for url in (f"http://{host}/x" for host in private):
            with pytest.raises(InvalidArgument, match="private"):
                await s.observe.create_webhook("default", url, ["lock.granted"])
        bad = ("ftp://example.com/x", "http://user:pw@example.com/x", "/relative", "https://example.com:99999/x")
        for url in bad:
            with pytest.raises(InvalidArgument):
                await s.observe.create_webhook("default", url, ["lock.granted"])
        made = await s.observe.create_webhook("default", "https://hooks.support.example.com/x", ["lock.granted"])
        assert made.url == "https://hooks.support.example.com/x"  # a host name with 'port' in it is fine
        with pytest.raises(InvalidArgument, match="unknown event type"):
            await s.observe.create_webhook("default", "https://example.com/x", ["lock.eaten"])


async def test_webhooks_are_refused_when_the_audit_log_is_off(clock: ManualClock) -> None:
    limits = ServiceLimits(observe=ObserveLimits(audit=False))
    async with LockService(MemoryStore(), clock=clock, limits=limits) as s:
        with pytest.raises(InvalidArgument, match="audit log"):
            await s.observe.create_webhook("default", "https://example.com/h", ["lock.granted"])


async def test_a_new_webhook_gets_only_the_events_logged_after_it_was_made(clock: ManualClock) -> None:
    async with receiver() as rec, LockService(MemoryStore(), clock=clock, limits=PRIVATE_OK) as s:
        await s.lock("default", "before.md", "write")
        await s.observe.create_webhook("default", rec.url, ["lock.granted"])
        await s.lock("default", "after.md", "write")
        await rec.until(1)
        await s.lock("default", "later.md", "write")
        await rec.until(2)
    nodes = [json.loads(body)["data"]["node_id"] for _, body in rec.got]
    assert nodes == ["after.md", "later.md"]


async def test_a_host_name_that_resolves_to_loopback_is_refused_at_delivery(clock: ManualClock) -> None:
    async with receiver() as rec, LockService(MemoryStore(), clock=clock) as s:
        port = rec.url.split(":")[2].split("/")[0]
        await s.observe.create_webhook("default", f"http://localhost:{port}/hook", ["lock.granted"])
        await s.lock("default", "a.md", "write")
        due = await _outbox_after(s, 1)
        assert "private address" in (due.last_error or "")
        assert rec.got == []


async def test_webhooks_are_managed_by_admins_over_rest(env: Env) -> None:
    hooks = f"{env.url}/v1/workspaces/default/webhooks"
    admin = {"Authorization": f"Bearer {env.admin}"}
    async with httpx.AsyncClient(timeout=STEP) as http:
        r = await http.post(hooks, json={"url": "https://example.com/h", "events": ["lock.granted"]},
                            headers={"Authorization": f"Bearer {env.bob}"})  # fmt: skip
        assert (r.status_code, r.json()["error"]["code"]) == (403, "FORBIDDEN")
        r = await http.post(hooks, json={"url": "https://example.com/h", "events": ["lock.granted"]}, headers=admin)
        assert r.status_code == 201
        assert r.json()["secret"].startswith("whsec_")
        wid = r.json()["webhook_id"]
        listed = (await http.get(hooks, headers=admin)).json()["webhooks"]
        assert [h["webhook_id"] for h in listed] == [wid]
        assert "secret" not in listed[0]
        assert (await http.delete(f"{hooks}/{wid}", headers=admin)).status_code == 200
        assert (await http.get(hooks, headers=admin)).json()["webhooks"] == []
        r = await http.delete(f"{hooks}/{wid}", headers=admin)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND")


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    limits = WebhookLimits(first_delay=5, max_delay=3600)
    mid: Callable[[], float] = lambda: 0.5  # noqa: E731 - no jitter
    assert [retry_delay(n, limits, mid) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert retry_delay(40, limits, mid) == 3600
    assert 4 <= retry_delay(1, limits) <= 6


# ---------------------------------------------------------------------- metrics and logs


async def test_metrics_count_grants_releases_denials_and_show_held_locks(env: Env) -> None:
    s = env.service
    g = await s.lock("default", "m.md", "write")
    await s.lock("default", "n.md", "write")
    with pytest.raises(Exception, match="locked"):
        await s.lock("default", "m.md", "write", agent="other")
    await s.unlock("default", g.token, "m.md")
    async with httpx.AsyncClient(timeout=STEP) as http:
        assert (await http.get(f"{env.url}/metrics", headers={"Authorization": f"Bearer {env.bob}"})).status_code == 403
        r = await http.get(f"{env.url}/metrics", headers={"Authorization": f"Bearer {env.admin}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in (
        "mcp_locks_grants_total 2.0",
        "mcp_locks_releases_total 1.0",
        'mcp_locks_denials_total{code="LOCKED"} 1.0',
        'mcp_locks_held_locks{workspace="default"} 1.0',
        'mcp_locks_waiters{workspace="default"} 0.0',
        "mcp_locks_webhook_backlog 0.0",
        "mcp_locks_hold_seconds_count 1.0",
        "mcp_locks_wait_seconds_count 2.0",
    ):
        assert line in text, line
    assert "mcp_locks_store_commit_seconds_count" in text
    assert "mcp_locks_actor_mailbox_depth" in text


async def test_json_logs_carry_the_request_id_and_never_a_secret(tmp_path: Path) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    from mcp_locks.observe.logging import _WithRequestId

    handler.addFilter(_WithRequestId())
    logger = logging.getLogger("mcp_locks.test")
    logger.addHandler(handler)

    async def page(request: Request) -> Response:
        logger.warning("saw key mlk_0123456789ab_%s", "s" * 43)
        return Response("ok")

    app = Starlette(routes=[Route("/", page)], middleware=[Middleware(RequestId)])
    try:
        async with serve_app(app) as url, httpx.AsyncClient() as http:
            r = await http.get(url, headers={"X-Request-Id": "req-42"})
            r2 = await http.get(url, headers={"X-Request-Id": "bad id;drop"})
    finally:
        logger.removeHandler(handler)
    assert r.headers["x-request-id"] == "req-42"
    assert len(r2.headers["x-request-id"]) == 16
    first = json.loads(lines[0])
    assert first["request_id"] == "req-42"
    assert first["level"] == "warning"
    assert "s" * 43 not in lines[0]
    assert "mlk_0123456789ab_<redacted>" in first["message"]
    assert request_id.get() is None


@pytest.mark.parametrize("at", [1_800_000_000.0, 1_800_000_000.123456])
def test_the_webhook_payload_has_exactly_the_audit_events_fields(at: float) -> None:
    ev = Event("broken", at, "a.md", "x", "lk_1", "write", "node", 3, None, None, 1500, None, "root", "stuck", seq=7)
    assert event_dict("default", ev) == AuditEvent.of("default", ev).model_dump(mode="json")


@pytest.mark.parametrize("where", ["server", "data-dir"])
async def test_an_open_event_stream_ends_when_its_key_is_revoked(
    env: Env, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import mcp_locks.faces.rest.event_stream

    # A revocation made elsewhere (the CLI, on the data dir) is seen at the next periodic look at the
    # key: real time is the subject, so the period (15 s by default) is shortened here.
    monkeypatch.setattr(mcp_locks.faces.rest.event_stream, "RECHECK_ACCESS", 0.05)
    bob = next(r for r in await env.service.list_keys() if r.agent == "bob")

    async def revoke() -> None:
        if where == "server":
            await env.service.revoke_key(bob.key_id)
        else:
            await env.service.store.revoke_key(bob.key_id, env.clock.now())

    async with httpx.AsyncClient(timeout=STEP) as http:
        url = f"{env.url}/v1/workspaces/default/events"
        data: list[str] = []
        async with http.stream("GET", url, headers={"Authorization": f"Bearer {env.bob}"}) as r:
            await env.service.lock("default", "before.md", "read")
            with anyio.fail_after(STEP):
                async for line in r.aiter_lines():  # ends when the server ends the stream
                    if line.startswith("data:"):
                        data.append(line)
                        if len(data) == 1:
                            await revoke()
                            if where == "data-dir":
                                await anyio.sleep(0.2)  # past the shortened period
                            await env.service.lock("default", "after.md", "read")
    assert data
    assert all("before.md" in line for line in data)  # nothing after the revocation reached bob


async def test_a_key_may_hold_only_so_many_event_streams_and_a_closed_one_frees_its_place(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mcp_locks.faces.rest.event_stream

    monkeypatch.setattr(mcp_locks.faces.rest.event_stream, "MAX_STREAMS_PER_KEY", 2)
    url = f"{env.url}/v1/workspaces/default/events"
    auth = {"Authorization": f"Bearer {env.bob}"}
    before = len(env.service.hub._subscribers)
    async with httpx.AsyncClient(timeout=STEP) as http, contextlib.AsyncExitStack() as stack:
        readers = []
        for _ in range(2):
            r = await stack.enter_async_context(http.stream("GET", url, headers=auth))
            assert r.status_code == 200
            readers.append(r.aiter_lines())  # one reader per stream, kept: see _read_sse
        await env.service.lock("default", "x.md", "read")  # both streams are running (and counted) now
        for lines in readers:
            await _read_sse(lines, 2)  # requested, granted
        over = await http.get(url, headers=auth)
        assert (over.status_code, over.json()["error"]["code"]) == (429, "LIMIT_EXCEEDED")
        other = await http.get(
            f"{env.url}/v1/workspaces/default/audit", headers={"Authorization": f"Bearer {env.alice}"}
        )
        assert other.status_code == 200
        await env.service.lock("default", "y.md", "read")  # and both are still open after the refusal
        for lines in readers:
            assert [d["node_id"] for _, _, d in await _read_sse(lines, 1)] == ["y.md"]
    with anyio.fail_after(STEP):  # the server notices the clients left: their places and subscriptions are freed
        while len(env.service.hub._subscribers) > before:  # noqa: ASYNC110 - nothing to wait on but the count
            await anyio.sleep(0.01)


async def test_two_deletes_of_one_webhook_at_once_one_deletes_and_the_other_is_not_found(
    clock: ManualClock,
) -> None:
    async with LockService(MemoryStore(), clock=clock) as s:
        hook = await s.observe.create_webhook("default", "https://example.com/h", ["lock.granted"])
        real = s.store.delete_webhook

        async def slow_delete(webhook_id: str) -> Any:
            await anyio.lowlevel.checkpoint()  # as a networked store would: the other delete runs meanwhile
            return await real(webhook_id)

        s.store.delete_webhook = slow_delete  # type: ignore[method-assign]
        results: list[str] = []

        async def delete() -> None:
            try:
                results.append((await s.observe.delete_webhook("default", hook.webhook_id)).webhook_id)
            except NotFound as e:
                results.append(e.code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(delete)
            tg.start_soon(delete)
        assert sorted(results) == sorted([hook.webhook_id, "NOT_FOUND"])
        assert (await s.observe.list_webhooks("default")).webhooks == []
