"""The embedded default store: one SQLite database in WAL mode in the data directory."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel

from mcp_locks.core.errors import AlreadyExists
from mcp_locks.core.keys import KeyRecord
from mcp_locks.core.records import (
    AuditQuery,
    Delivery,
    Ended,
    Event,
    FileMeta,
    Lease,
    RequestRecord,
    Settle,
    Snapshot,
    StoreChange,
    WebhookRecord,
    WorkspaceRecord,
)
from mcp_locks.stores.base import key_taken, several_live_keys, workspace_in_use, workspace_not_found
from mcp_locks.stores.folding import fold_changes
from mcp_locks.stores.rows import (
    LEASE_COLS,
    OUTBOX_COLS,
    WEBHOOK_COLS,
    WS_COLS,
    count_unread,
    key_from,
    key_row,
    request_row,
    segment_row,
    segment_select,
    select_events,
    webhook_from,
    webhook_row,
)

__all__ = ["SqliteStore"]

log = logging.getLogger("mcp_locks.sqlite")
T = TypeVar("T")

SCHEMA_VERSION = 5
#: Page cache of the writer connection, KiB.
CACHE_KIB = 65_536
#: Most unread log events counted per webhook for the backlog gauge.
MAX_COUNTED = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workspaces (
    workspace_id TEXT PRIMARY KEY,
    description TEXT,
    created_at REAL NOT NULL,
    fence_last INTEGER NOT NULL DEFAULT 0,
    fence_reserved INTEGER NOT NULL DEFAULT 0,
    root TEXT
);
CREATE TABLE IF NOT EXISTS locks (
    workspace_id TEXT NOT NULL,
    lock_id TEXT NOT NULL,
    token TEXT NOT NULL,
    node_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    depth TEXT NOT NULL,
    owner TEXT NOT NULL,
    note TEXT,
    fence INTEGER NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    timeout REAL NOT NULL,
    waited_ms INTEGER NOT NULL,
    request_id TEXT,
    label TEXT,
    key_id TEXT,
    -- A rowid table: rows are wide (the token), and appending them is cheaper than
    -- inserting into a clustered (WITHOUT ROWID) b-tree, measured at ~30% of the commit.
    -- An ended lock stays as a row with ended_at set (one UPDATE, no delete + insert),
    -- so its token still gets "expired at ..." / "already released" until pruned.
    ended_at REAL,
    end_reason TEXT,
    end_by TEXT,
    end_why TEXT,
    PRIMARY KEY (workspace_id, lock_id)
);
CREATE INDEX IF NOT EXISTS locks_ended ON locks (workspace_id, ended_at) WHERE ended_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    workspaces TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL,
    digest BLOB NOT NULL,
    revoked_at REAL
);
-- Deleted workspaces keep their fence reservation, so a re-created one continues above it.
CREATE TABLE IF NOT EXISTS retired (workspace_id TEXT PRIMARY KEY, fence_reserved INTEGER NOT NULL);
-- File metadata. A deleted file stays as a tombstone (deleted=1) so versions never repeat.
-- pending names staged content (or a delete marker) that may still have to be moved into place.
CREATE TABLE IF NOT EXISTS files (
    workspace_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    modified_at REAL NOT NULL,
    modified_by TEXT,
    fence INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    pending TEXT,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, node_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    workspace_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    leases TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (workspace_id, owner, request_id)
) WITHOUT ROWID;
-- The event log (schema 5): one segment per committed batch, its events in JSON by column
-- (stores/rows.py), append-only, pruned by age. seq counts per workspace.
CREATE TABLE IF NOT EXISTS audit_log (
    workspace_id TEXT NOT NULL,
    seq_first INTEGER NOT NULL,
    seq_last INTEGER NOT NULL,
    last_at REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (workspace_id, seq_first)
) WITHOUT ROWID;
-- No secondary index: each would cost a page write on every commit. Queries walk the
-- workspace's log backwards on a reader connection in a thread (never on the lock path),
-- and pruning finds its cut by binary search on seq, which grows with time.
CREATE TABLE IF NOT EXISTS webhooks (
    webhook_id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at REAL NOT NULL,
    -- The last seq of its workspace's log it has dealt with (delivered, or in the outbox for a retry).
    cursor INTEGER NOT NULL DEFAULT 0
);
-- The webhook outbox holds only retries: a first attempt is read from the audit log (each
-- webhook tails it from its cursor), and one that fails is written here by the dispatcher,
-- until delivered (then deleted) or given up (dead=1).
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    next_at REAL NOT NULL,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
-- Written only by the dispatcher (never in a lock commit), so indexes cost the lock path nothing.
CREATE UNIQUE INDEX IF NOT EXISTS outbox_id ON outbox (delivery_id);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (dead, webhook_id, next_at);
"""
#: At most one live key per agent, held by the database (two creations at once never both succeed).
#: Made on every open rather than in _SCHEMA: a database holding two live keys for one agent still opens.
_LIVE_KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS keys_live_agent ON keys (agent) WHERE revoked_at IS NULL"
#: Columns added after schema 1, by table, with their types: added in place when an older database is opened.
_ADDED_COLUMNS = {
    "locks": {"label": "TEXT", "key_id": "TEXT", "end_by": "TEXT", "end_why": "TEXT"},
    "workspaces": {"root": "TEXT"},
}
_SEGMENT_INSERT = "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?)"
#: Schema 4 kept one row per event in `audit`: each becomes a segment of one event when the database is opened.
_AUDIT_FROM_SCHEMA_4 = (
    "INSERT INTO audit_log SELECT workspace_id, seq, seq, at, json_array(1, kind, at, node_id, agent,"
    " lock_id, mode, depth, fence, waiter_id, waited_ms, held_ms, code, by, reason, label, version) FROM audit"
)
#: A new lease's row, or a renewed / changed lease's row updated in place. (INSERT OR REPLACE deleted
#: the row and appended a new one: at a million rows a renewal cost 24 µs p50 / 105 µs mean that way,
#: 17 / 66 µs in place.) The end columns are cleared as a replaced row's were.
_PUT_LEASE = (
    f"INSERT INTO locks (workspace_id, {LEASE_COLS}) VALUES ({','.join('?' * 16)})"
    " ON CONFLICT (workspace_id, lock_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in Lease._fields[1:])
    + ", ended_at = NULL, end_reason = NULL, end_by = NULL, end_why = NULL"
)
_lease_from = partial(tuple.__new__, Lease)  # a row of LEASE_COLS as a Lease, without a Python-level call


class SqliteStore:
    """SQLite in WAL mode; every batch is one transaction on one connection.

    ``sync="normal"`` (default) makes each commit survive a crash of the
    process (kill -9 included) without an fsync per commit; after a power
    loss the last few commits may be lost, but fences still never go back
    because each fence block is reserved with an fsync (``synchronous=FULL``)
    before any fence in it is handed out. ``sync="full"`` fsyncs every commit.

    Calls run on the event loop's thread: a WAL commit without fsync takes
    microseconds, far less than handing it to a worker thread would.
    """

    shared = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: Literal["normal", "full"] = "normal",
        max_ended: int = 100_000,
        checkpoint: bool = True,
    ) -> None:
        self.path = Path(path)
        #: Run the WAL checkpointer (the server does; a helper process on the same file does not).
        self.checkpoint = checkpoint
        self.sync = sync
        self.max_ended = max_ended
        self._db: sqlite3.Connection | None = None
        self._cold: set[str] = set()
        self._fence_last: dict[str, int] = {}
        self._key_writes = 0  # bumped on every key change made here (other processes show in data_version)
        self._checkpointer: threading.Thread | None = None
        # Reads that may take long (the audit log) run in threads on their own connection.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._checkpoint_stop = threading.Event()

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection."""
        if self._db is None:
            raise RuntimeError("SqliteStore is not open")
        return self._db

    async def open(self) -> None:
        """Open (creating with mode 0600) and migrate the database."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.sync.upper()}")
        db.execute("PRAGMA busy_timeout=5000")
        # Checkpoints (which fsync) run on a thread of their own, not inside a commit on the event loop.
        db.execute("PRAGMA wal_autocheckpoint=0")
        # Up to 64 MiB of page cache (the default is 2 MiB): a batch of 100,000 expiries and grants
        # touches ~50 MiB of pages, and with the default it commits ~15% slower (bench/scale.py).
        # Small commits never fill it; the memory is taken only as pages are used.
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        try:
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        if self.checkpoint:
            self._start_checkpointer()
        self._cold = {r[0] for r in db.execute("SELECT workspace_id FROM workspaces")}

    def _migrate(self, db: sqlite3.Connection) -> None:
        # One write transaction: a CLI command opening an old database while the server
        # starts waits for it (busy_timeout) and then sees the migrated schema.
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer mcp-locks (schema {row[0]})")
            elif int(row[0]) < SCHEMA_VERSION:
                for table, cols in _ADDED_COLUMNS.items():
                    have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                    for col, kind in cols.items():
                        if col not in have:
                            db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
                if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit'").fetchone():
                    db.execute(_AUDIT_FROM_SCHEMA_4)
                    db.execute("DROP TABLE audit")
                db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            self._index_live_keys(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _index_live_keys(self, db: sqlite3.Connection) -> None:
        """Make the one-live-key-per-agent index; if keys from before it break the rule, say which and go on."""
        try:
            db.execute(_LIVE_KEY_INDEX)
        except sqlite3.IntegrityError:  # only this statement is undone: the migration goes on
            rows = db.execute(
                "SELECT agent, group_concat(key_id, ', ') FROM keys WHERE revoked_at IS NULL"
                " GROUP BY agent HAVING count(*) > 1 ORDER BY agent"
            ).fetchall()
            for agent, key_ids in rows:
                log.warning(several_live_keys(agent, key_ids.split(", ")))

    def _start_checkpointer(self, interval: float = 1.0) -> None:
        stop = self._checkpoint_stop = threading.Event()
        path = self.path

        def run() -> None:
            conn = sqlite3.connect(path, check_same_thread=False)
            try:
                while not stop.wait(interval):
                    try:
                        # PASSIVE never blocks the writer; it copies what it can.
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error as e:  # pragma: no cover - retried next tick
                        log.warning("WAL checkpoint failed: %s", e)
            finally:
                conn.close()

        self._checkpointer = threading.Thread(target=run, name="mcp-locks-checkpoint", daemon=True)
        self._checkpointer.start()

    async def close(self) -> None:
        """Stop the checkpointer and close the connection (which checkpoints the WAL)."""
        if self._checkpointer is not None:
            self._checkpoint_stop.set()
            self._checkpointer.join()
            self._checkpointer = None
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        if self._db is not None:
            self._db.close()
            self._db = None

    async def create_workspace(
        self, workspace_id: str, description: str | None, now: float, root: str | None = None
    ) -> WorkspaceRecord:
        """Create a workspace (its files in ``root`` if given) or raise ALREADY_EXISTS."""
        try:
            self.db.execute(
                "INSERT INTO workspaces (workspace_id, description, created_at, root, fence_last, fence_reserved)"
                " SELECT ?, ?, ?, ?, coalesce(max(fence_reserved), 0), coalesce(max(fence_reserved), 0)"
                " FROM retired WHERE workspace_id=?",
                (workspace_id, description, now, root, workspace_id),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"workspace '{workspace_id}' already exists.", hint="Use it as it is, or pick another id."
            ) from None
        return WorkspaceRecord(workspace_id, description, now, root)

    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        """The workspace, or None."""
        row = self.db.execute(f"SELECT {WS_COLS} FROM workspaces WHERE workspace_id=?", (workspace_id,)).fetchone()
        return WorkspaceRecord(*row) if row else None

    async def list_workspaces(self) -> list[WorkspaceRecord]:
        """Every workspace, by id."""
        rows = self.db.execute(f"SELECT {WS_COLS} FROM workspaces ORDER BY workspace_id")
        return [WorkspaceRecord(*r) for r in rows]

    async def load(self, workspace_id: str) -> Snapshot:
        """Read the workspace's state."""
        db = self.db
        leases = list(map(_lease_from, db.execute(self._live_query(workspace_id), (workspace_id,))))
        ended = [
            Ended(*row)
            for row in db.execute(
                "SELECT lock_id, token, node_id, owner, end_reason, ended_at, end_by, end_why FROM locks"
                " WHERE workspace_id=? AND ended_at IS NOT NULL ORDER BY ended_at DESC LIMIT ?",
                (workspace_id, self.max_ended),
            )
        ]
        requests = [
            RequestRecord(owner, rid, fp, tuple(Lease(*x) for x in json.loads(les)), created)
            for owner, rid, fp, les, created in db.execute(
                "SELECT owner, request_id, fingerprint, leases, created_at FROM requests WHERE workspace_id=?",
                (workspace_id,),
            )
        ]
        files = [
            FileMeta(node, version, size, sha, at, by, fence, bool(deleted), pending, True, mtime_ns)
            for node, version, size, sha, at, by, fence, deleted, pending, mtime_ns in db.execute(
                "SELECT node_id, version, size, sha256, modified_at, modified_by, fence, deleted, pending, mtime_ns"
                " FROM files WHERE workspace_id=?",
                (workspace_id,),
            )
        ]
        fence_last, reserved = db.execute(
            "SELECT fence_last, fence_reserved FROM workspaces WHERE workspace_id=?", (workspace_id,)
        ).fetchone()
        if workspace_id in self._cold:
            # After a (re)start a fence above the last committed one may have been handed out
            # before a power loss: restart above the durable reservation instead.
            self._cold.discard(workspace_id)
            fence_last = max(fence_last, reserved)
            self._fence_last[workspace_id] = fence_last  # later loads in this process start from here
        else:
            fence_last = max(fence_last, self._fence_last.get(workspace_id, 0))
        last = db.execute(
            "SELECT seq_last FROM audit_log WHERE workspace_id=? ORDER BY seq_first DESC LIMIT 1", (workspace_id,)
        ).fetchone()
        seq = last[0] if last else 0
        return Snapshot(leases, ended, requests, fence_last + 1, reserved, files, seq)

    def _live_query(self, workspace_id: str) -> str:
        """How to read a workspace's held locks: the plan SQLite picks by itself is the slowest one.

        Through the primary key it visits rows in lock-id order, a random page each (3.6 s
        for a million). A workspace that owns most rows is read by scanning the table in
        its own order instead (1.7 s); a small one by collecting its rowids from the key,
        then reading them in rowid order.
        """
        db = self.db
        (mine,) = db.execute("SELECT count(*) FROM locks WHERE workspace_id=?", (workspace_id,)).fetchone()
        (top,) = db.execute("SELECT coalesce(max(rowid), 0) FROM locks").fetchone()
        if 2 * mine >= top:
            return f"SELECT {LEASE_COLS} FROM locks NOT INDEXED WHERE workspace_id=? AND ended_at IS NULL"
        return (
            f"SELECT {LEASE_COLS} FROM locks WHERE rowid IN (SELECT rowid FROM locks WHERE workspace_id=?)"
            " AND ended_at IS NULL"
        )

    async def commit(self, workspace_id: str, changes: Sequence[StoreChange]) -> None:
        """Apply a batch as one transaction (fsynced when it reserves fences).

        Written inline on the event loop, without an await (so nothing can cancel it
        half-way): a WAL commit without fsync takes tens of microseconds, less than a
        hop to a worker thread (measured: writing large batches on a thread lowered
        throughput by ~10%, bench/engine.py).
        """
        self._commit(workspace_id, changes)

    def _commit(self, workspace_id: str, changes: Sequence[StoreChange]) -> None:
        f = fold_changes(changes)
        ws, fence_last, reserve = workspace_id, f.fence_last, f.reserve
        db = self.db
        durable = reserve and self.sync != "full"
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if f.puts:
                    db.executemany(_PUT_LEASE, [(ws, *le) for le in f.puts.values()])
                if f.ends:
                    db.executemany(
                        "UPDATE locks SET ended_at=?, end_reason=?, end_by=?, end_why=?"
                        " WHERE workspace_id=? AND lock_id=?",
                        [(e.at, e.reason, e.by, e.why, ws, e.lock_id) for e in f.ends.values()],
                    )
                if f.requests:
                    db.executemany(
                        "DELETE FROM requests WHERE workspace_id=? AND owner=? AND request_id=?",
                        [(ws, o, r) for (o, r), rec in f.requests.items() if rec is None],
                    )
                    db.executemany(
                        "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?)",
                        [request_row(ws, rec) for rec in f.requests.values() if rec is not None],
                    )
                if f.files:
                    db.executemany(
                        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(ws, *m[:7], int(m.deleted), m.pending, m.mtime_ns) for m in f.files.values()],
                    )
                if f.segments:
                    db.executemany(_SEGMENT_INSERT, [segment_row(ws, seg) for seg in f.segments])
                if f.prune is not None:
                    db.execute(
                        "DELETE FROM locks WHERE workspace_id=? AND ended_at IS NOT NULL AND ended_at<?",
                        (ws, f.prune.ended_before),
                    )
                    db.execute(
                        "DELETE FROM requests WHERE workspace_id=? AND created_at<?",
                        (ws, f.prune.requests_before),
                    )
                if reserve:
                    # Only reservations touch the workspace row; within one process the last
                    # fence is kept in memory (self._fence_last), after a restart the reservation rules.
                    db.execute(
                        "UPDATE workspaces SET fence_last=max(fence_last, ?), fence_reserved=max(fence_reserved, ?)"
                        " WHERE workspace_id=?",
                        (fence_last, reserve, workspace_id),
                    )
                db.execute("COMMIT")
                if fence_last > self._fence_last.get(workspace_id, 0):
                    self._fence_last[workspace_id] = fence_last
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            if durable:
                db.execute("PRAGMA synchronous=NORMAL")

    async def deadlines(self) -> dict[str, float]:
        """Earliest expiry per workspace."""
        # A scan in table order: through the primary key (SQLite's own choice) it is 5x slower.
        rows = self.db.execute(
            "SELECT workspace_id, min(expires_at) FROM locks NOT INDEXED WHERE ended_at IS NULL GROUP BY workspace_id"
        )
        return {ws: t for ws, t in rows}

    async def keys_version(self) -> object:
        """Changes when this store changed a key, or another connection (a CLI command) committed anything."""
        (other,) = self.db.execute("PRAGMA data_version").fetchone()
        return (other, self._key_writes)

    async def put_key(self, record: KeyRecord) -> None:
        """Store a new key record (only its digest: never the key); ALREADY_EXISTS if its agent has a live key."""
        self._key_writes += 1
        try:
            self.db.execute("INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?)", key_row(record))
        except sqlite3.IntegrityError as e:
            field = "key_id" if "keys.key_id" in str(e) else "agent"
            raise key_taken(record, field) from None

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key record, or None."""
        row = self.db.execute("SELECT * FROM keys WHERE key_id=?", (key_id,)).fetchone()
        return key_from(row) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""
        return [key_from(r) for r in self.db.execute("SELECT * FROM keys ORDER BY created_at, key_id")]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark a key revoked; False if there is no such (unrevoked) key."""
        cur = self.db.execute("UPDATE keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL", (now, key_id))
        self._key_writes += 1
        return cur.rowcount == 1

    async def set_key_workspaces(self, key_id: str, workspaces: tuple[str, ...]) -> bool:
        """Replace the workspaces a live key reaches; False if there is no such (unrevoked) key."""
        cur = self.db.execute(
            "UPDATE keys SET workspaces=? WHERE key_id=? AND revoked_at IS NULL", (json.dumps(list(workspaces)), key_id)
        )
        self._key_writes += 1
        return cur.rowcount == 1

    async def delete_workspace(self, workspace_id: str, now: float) -> None:
        """Delete a workspace holding no live lock (its ended locks and request ids too) and take it off every key."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM workspaces WHERE workspace_id=?", (workspace_id,)).fetchone() is None:
                raise workspace_not_found(workspace_id)
            (live,) = db.execute(
                "SELECT count(*) FROM locks WHERE workspace_id=? AND ended_at IS NULL AND expires_at>?",
                (workspace_id, now),
            ).fetchone()
            if live:
                raise workspace_in_use(workspace_id, live)
            db.execute(
                "INSERT OR REPLACE INTO retired"
                " SELECT workspace_id, fence_reserved FROM workspaces WHERE workspace_id=?",
                (workspace_id,),
            )
            db.execute(
                "DELETE FROM outbox WHERE webhook_id IN (SELECT webhook_id FROM webhooks WHERE workspace_id=?)",
                (workspace_id,),
            )
            for table in ("locks", "requests", "files", "webhooks", "workspaces"):
                db.execute(f"DELETE FROM {table} WHERE workspace_id=?", (workspace_id,))
            for key_id, wss in db.execute("SELECT key_id, workspaces FROM keys").fetchall():
                listed = json.loads(wss)
                if workspace_id in listed:
                    kept = [w for w in listed if w != workspace_id]
                    db.execute("UPDATE keys SET workspaces=? WHERE key_id=?", (json.dumps(kept), key_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._fence_last.pop(workspace_id, None)
        self._cold.discard(workspace_id)
        self._key_writes += 1

    # ------------------------------------------------------------------ audit log and webhooks

    async def audit(self, query: AuditQuery) -> list[Event]:
        """Matching events, newest first (oldest first with ``after_seq``).

        Read on a connection of its own in a worker thread: a filter that matches little walks far
        back through the log, and that walk must never hold up the event loop's lock commits.
        """
        sql, args = segment_select(query, "?")
        return await self._read(lambda db: select_events(db.execute(sql, args), query))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the reader connection in a worker thread (WAL: it never blocks the writer)."""

        def run() -> T:
            with self._reader_lock:
                if self._reader is None:
                    self._reader = sqlite3.connect(self.path, check_same_thread=False)
                    self._reader.execute("PRAGMA query_only=1")
                return fn(self._reader)

        return await anyio.to_thread.run_sync(run)

    async def prune_audit(self, before: float) -> int:
        """Drop log entries and settled deliveries older than ``before``, a few thousand rows per transaction."""
        db = self.db
        dropped = 0
        # Deleted workspaces keep their log (until pruned); they are all in `retired`.
        for (ws,) in db.execute(
            "SELECT workspace_id FROM workspaces UNION SELECT workspace_id FROM retired"
        ).fetchall():
            cut = self._audit_cut(ws, before)
            while cut is not None:
                # Small transactions on the event loop, yielding in between (lock commits go first).
                batch = db.execute(
                    "SELECT seq_first, seq_last FROM audit_log WHERE workspace_id=? AND seq_first<=?"
                    " ORDER BY seq_first LIMIT 5000",
                    (ws, cut),
                ).fetchall()
                if batch:
                    db.execute("DELETE FROM audit_log WHERE workspace_id=? AND seq_first<=?", (ws, batch[-1][0]))
                    dropped += sum(last - first + 1 for first, last in batch)
                if len(batch) < 5000:
                    break
                await anyio.lowlevel.checkpoint()  # let lock commits in between batches
        db.execute("DELETE FROM outbox WHERE dead=1 AND created_at<?", (before,))
        return dropped

    def _audit_cut(self, ws: str, before: float) -> int | None:
        """The first seq of the newest segment of ``ws`` that ended before ``before``.

        A binary search: seq grows with time.
        """
        db = self.db
        (lo,) = db.execute("SELECT min(seq_first) FROM audit_log WHERE workspace_id=?", (ws,)).fetchone()
        (hi,) = db.execute("SELECT max(seq_first) FROM audit_log WHERE workspace_id=?", (ws,)).fetchone()
        if lo is None:
            return None
        hi -= 1  # the newest segment always stays: the next seq continues from it, even after a restart
        cut = None
        while lo <= hi:
            mid = (lo + hi) // 2
            row = db.execute(
                "SELECT seq_first, last_at FROM audit_log WHERE workspace_id=? AND seq_first>=?"
                " ORDER BY seq_first LIMIT 1",
                (ws, mid),
            ).fetchone()
            if row is None or row[0] > hi or row[1] >= before:  # seq_first skips numbers: stay below the newest
                hi = mid - 1
            else:
                cut, lo = row[0], row[0] + 1
        return cut

    async def put_webhook(self, record: WebhookRecord) -> None:
        """Register a webhook."""
        self.db.execute("INSERT INTO webhooks VALUES (?, ?, ?, ?, ?, ?, ?)", webhook_row(record))

    async def list_webhooks(self) -> list[WebhookRecord]:
        """Every webhook, oldest first."""
        rows = self.db.execute(f"SELECT {WEBHOOK_COLS} FROM webhooks ORDER BY created_at, webhook_id")
        return [webhook_from(r) for r in rows]

    async def delete_webhook(self, webhook_id: str) -> WebhookRecord | None:
        """Remove a webhook and its undelivered messages."""
        rec = next((h for h in await self.list_webhooks() if h.webhook_id == webhook_id), None)
        if rec is None:
            return None
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM outbox WHERE webhook_id=?", (webhook_id,))
            db.execute("DELETE FROM webhooks WHERE webhook_id=?", (webhook_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return rec

    async def due_deliveries(
        self, now: float, limit: int, skip: frozenset[str], webhook_ids: frozenset[str] | None = None
    ) -> list[Delivery]:
        """Due retries, oldest first (only of ``webhook_ids`` if given: those with a free slot)."""
        where = "dead=0 AND next_at<=?"
        args: list[Any] = [now]
        if webhook_ids is not None:
            where += f" AND webhook_id IN ({','.join('?' * len(webhook_ids))})"
            args.extend(webhook_ids)
        rows = self.db.execute(
            f"SELECT {OUTBOX_COLS}, id FROM outbox WHERE {where} ORDER BY next_at LIMIT ?",
            (*args, limit + len(skip)),
        )
        return [d for d in (Delivery(*r) for r in rows) if d.delivery_id not in skip][:limit]

    async def settle_deliveries(self, settle: Settle) -> None:
        """Record outcomes and cursors in one transaction (not fsynced: a lost one is delivered again)."""
        db = self.db
        fresh = [(d, 0) for d in settle.retry if not d.row] + [(d, 1) for d in settle.dead if not d.row]
        known = [(d, 0) for d in settle.retry if d.row] + [(d, 1) for d in settle.dead if d.row]
        db.execute("BEGIN IMMEDIATE")
        try:
            # By delivery_id: a first attempt that succeeded after a restart may already have a retry row.
            db.executemany("DELETE FROM outbox WHERE delivery_id=?", [(d.delivery_id,) for d in settle.done])
            db.executemany(
                f"INSERT OR IGNORE INTO outbox ({OUTBOX_COLS}, dead) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"
                " WHERE EXISTS (SELECT 1 FROM webhooks WHERE webhook_id=?)",
                [(*d[:8], dead, d.webhook_id) for d, dead in fresh],
            )
            db.executemany(
                "UPDATE outbox SET attempts=?, next_at=?, last_error=?, dead=? WHERE id=?",
                [(d.attempts, d.next_at, d.last_error, dead, d.row) for d, dead in known],
            )
            db.executemany(
                "UPDATE webhooks SET cursor=? WHERE webhook_id=? AND cursor<?",
                [(seq, webhook_id, seq) for webhook_id, seq in settle.cursors],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def delivery_worker_args(self) -> list[str]:
        """The database file: a delivery process tails its log on a read connection of its own (WAL)."""
        return [str(self.path)]

    async def delivery_backlog(self) -> tuple[int, float | None]:
        """Waiting messages (retries, and matching events after each webhook's cursor) and the next retry.

        Counted on the reader connection in a thread: it walks the log, and must not hold up lock commits.
        """
        hooks = await self.list_webhooks()

        def count(db: sqlite3.Connection) -> tuple[int, float | None]:
            n, nxt = db.execute("SELECT count(*), min(next_at) FROM outbox WHERE dead=0").fetchone()
            for h in hooks:
                sql, args = segment_select(AuditQuery(h.workspace_id, after_seq=h.cursor), "?")
                n += count_unread(db.execute(sql, args), h.cursor, h.kinds, MAX_COUNTED)
            return n, nxt

        return await self._read(count)
