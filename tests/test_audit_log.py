"""The event log as segments (one per committed step): reads, filters and upgrades of older databases."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from mcp_locks.core.clock import ManualClock
from mcp_locks.core.records import AuditQuery, Event
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import Store
from mcp_locks.stores.postgres import PostgresStore
from mcp_locks.stores.sqlite import SqliteStore
from tests.pg import PG_URL, pg_schema

pytestmark = pytest.mark.anyio

#: When the old events happened: recent, so the retention sweep at start keeps them.
T0 = ManualClock().now() - 60
#: The events the old (row per event) tables held, in Event's field order, as both stores wrote them.
OLD_EVENTS = [
    Event("granted", T0, "a.md", "alice", "l1", "write", "node", 1, None, 0, None, None, None, None, "A", 7, 1),
    Event("released", T0 + 1, "a.md", "alice", "l1", "write", "node", 1, None, None, 9, None, None, None, "A", None, 2),
    Event("broken", T0 + 2, "b.md", "bob", "l2", "read", "tree", 2, None, None, 5, None, "admin", "why", None, None, 3),
]  # fmt: skip
#: The old table, as schema 4 (SQLite) and schema 1 (PostgreSQL) created it.
OLD_AUDIT = """CREATE TABLE audit (workspace_id TEXT NOT NULL, seq BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL, node_id TEXT NOT NULL, agent TEXT NOT NULL, label TEXT, lock_id TEXT, mode TEXT, depth TEXT,
    fence BIGINT, waiter_id BIGINT, waited_ms BIGINT, held_ms BIGINT, code TEXT, by TEXT, reason TEXT,
    version BIGINT, PRIMARY KEY (workspace_id, seq))"""
OLD_ROW = (
    "INSERT INTO audit (workspace_id, kind, at, node_id, agent, lock_id, mode, depth, fence, waiter_id, waited_ms,"
    " held_ms, code, by, reason, label, version, seq) VALUES ({})"
)


@pytest.fixture
async def log(store: Store, clock: ManualClock) -> AsyncIterator[list[Event]]:
    """Six steps of several events each, then the whole log, newest first (the store stays open)."""
    async with LockService(store, clock=clock) as s:
        for step in range(3):
            leases = await s.lock_many("default", [{"node_id": f"d{step}/{i}.md"} for i in range(4)])
            clock.advance(1)
            await s.unlock_many("default", [le.token for le in leases.locks])
        yield await store.audit(AuditQuery("default", limit=1000))


async def test_a_log_of_many_steps_reads_back_in_order_and_whole(log: list[Event]) -> None:
    seqs = [e.seq for e in log]
    assert seqs == list(range(len(log), 0, -1))  # newest first, every seq once, none missing
    assert {e.kind for e in log} >= {"granted", "released"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (dict(before_seq=6, limit=3), lambda log: [e for e in log if e.seq < 6][:3]),
        (dict(after_seq=3, limit=4), lambda log: sorted((e for e in log if e.seq > 3), key=lambda e: e.seq)[:4]),
        (dict(node_id="d1/2.md"), lambda log: [e for e in log if e.node_id == "d1/2.md"]),
        (dict(kinds=("released",), limit=5), lambda log: [e for e in log if e.kind == "released"][:5]),
        (dict(since=1.5), lambda log: [e for e in log if e.at >= 1.5]),
    ],
    ids=["before_seq inside a segment", "after_seq inside a segment", "node", "kinds and limit", "since"],
)
async def test_filters_cut_through_segments_as_they_cut_through_single_events(
    store: Store, log: list[Event], query: dict[str, object], expected: object
) -> None:
    got = await store.audit(AuditQuery("default", **query))  # type: ignore[arg-type]
    assert got == expected(log)  # type: ignore[operator]
    assert got  # each filter matches something in this log


async def test_a_sqlite_log_written_a_row_per_event_is_read_whole_after_the_upgrade(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "locks.db")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '4')")
    db.execute(OLD_AUDIT)
    db.executemany(OLD_ROW.format(",".join("?" * 18)), [("default", *ev) for ev in OLD_EVENTS])
    db.commit()
    db.close()
    store = SqliteStore(tmp_path / "locks.db")
    async with LockService(store, clock=ManualClock()) as s:
        assert await store.audit(AuditQuery("default")) == OLD_EVENTS[::-1]
        await s.lock("default", "c.md")
        new = await store.audit(AuditQuery("default", after_seq=3))
    assert new[0].seq == 4  # the count goes on from the old log
    assert {e.node_id for e in new} == {"c.md"}


async def test_a_postgresql_log_written_a_row_per_event_is_read_whole_after_the_upgrade() -> None:
    with pg_schema() as schema:
        first = PostgresStore(PG_URL, schema=schema, db_clock=False)
        await first.open()  # today's schema; then made to look like schema 1 with its old table
        await first.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {schema}")
            conn.execute("DROP TABLE audit_log")
            conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
            conn.execute(OLD_AUDIT)
            with conn.cursor() as cur:
                cur.executemany(OLD_ROW.format(",".join(["%s"] * 18)), [("default", *ev) for ev in OLD_EVENTS])
        store = PostgresStore(PG_URL, schema=schema, db_clock=False)
        await store.open()
        try:
            assert await store.audit(AuditQuery("default")) == OLD_EVENTS[::-1]
        finally:
            await store.close()
