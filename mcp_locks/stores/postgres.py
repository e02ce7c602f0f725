"""The shared store: several ``mcp-locks serve`` processes on one PostgreSQL database act as one server."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import Any, Literal

import anyio
import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool

from mcp_locks.core.claims import Claim
from mcp_locks.core.errors import ERROR_TABLE, AlreadyExists, InvalidArgument, LockError, NotFound, Unavailable
from mcp_locks.core.keys import KeyRecord
from mcp_locks.core.records import (
    AuditQuery,
    Begun,
    Delivery,
    Ended,
    Event,
    FileMeta,
    Granted,
    Lease,
    PutContent,
    RequestRecord,
    Settle,
    Snapshot,
    StoreChange,
    WaiterRecord,
    WebhookRecord,
    WorkspaceRecord,
)
from mcp_locks.stores.base import key_taken, several_live_keys, workspace_in_use, workspace_not_found
from mcp_locks.stores.folding import Folded, fold_changes
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

__all__ = ["PostgresStore"]

log = logging.getLogger("mcp_locks.postgres")

SCHEMA_VERSION = 2
#: Segments of the event log read per round trip while answering an audit query.
_SEGMENT_PAGE = 500
#: Most unread log events counted per webhook for the backlog gauge.
MAX_COUNTED = 100_000
#: Seconds a step waits for a connection, or for another server to let go of a workspace, before it
#: answers UNAVAILABLE: a server cut off from the database (or stuck behind a frozen peer) says so, it never guesses.
STORE_TIMEOUT = 5.0
#: Seconds PostgreSQL lets a step's transaction sit idle before it ends the session (a frozen server lets go).
IDLE_IN_STEP = 30.0
#: Connections per server process.
POOL_SIZE = 16
#: Bytes per row of file content (well below bytea's 1 GB limit, and small enough to stream).
CONTENT_CHUNK = 1 << 20
#: Seconds between attempts to get the notification connection back.
RELISTEN_AFTER = 0.5
#: Seconds between a standby server's attempts to take a cluster-wide role (webhook delivery), and between
#: the holder's checks that it still has it.
LEADER_RETRY = 2.0
#: Every server names its connections ``mcp-locks:<server id>``: a server whose connections are all gone is
#: dead, and its waiters leave the line with it.
APP_PREFIX = "mcp-locks:"
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,40}")
#: The workspace part of a notification that a key was revoked or changed (no workspace id is empty): the
#: other servers' open streams check their keys again at once (docs/cluster.md). A server of an older
#: version takes it for a workspace it does not run, and ignores it.
_KEYS_CHANGED = ""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cluster (id INTEGER PRIMARY KEY, keys_version BIGINT NOT NULL);
INSERT INTO cluster VALUES (1, 0) ON CONFLICT DO NOTHING;
-- version counts the workspace's commits: a server whose last seen version differs catches up first.
CREATE TABLE IF NOT EXISTS workspaces (
    workspace_id TEXT PRIMARY KEY,
    description TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    root TEXT,
    fence_last BIGINT NOT NULL DEFAULT 0,
    fence_reserved BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0,
    next_waiter BIGINT NOT NULL DEFAULT 1,
    event_seq BIGINT NOT NULL DEFAULT 0
);
-- ver: the workspace version that wrote the row, so a server catching up reads only what is new.
CREATE TABLE IF NOT EXISTS locks (
    workspace_id TEXT NOT NULL,
    lock_id TEXT NOT NULL,
    token TEXT NOT NULL,
    node_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    depth TEXT NOT NULL,
    owner TEXT NOT NULL,
    note TEXT,
    fence BIGINT NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    timeout DOUBLE PRECISION NOT NULL,
    waited_ms BIGINT NOT NULL,
    request_id TEXT,
    label TEXT,
    key_id TEXT,
    ended_at DOUBLE PRECISION,
    end_reason TEXT,
    end_by TEXT,
    end_why TEXT,
    ver BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, lock_id)
);
CREATE INDEX IF NOT EXISTS locks_live ON locks (workspace_id) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS locks_ended ON locks (workspace_id, ver) WHERE ended_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    workspaces TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    digest BYTEA NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS retired (workspace_id TEXT PRIMARY KEY, fence_reserved BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    workspace_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT,
    modified_at DOUBLE PRECISION NOT NULL,
    modified_by TEXT,
    fence BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL,
    pending TEXT,
    mtime_ns BIGINT NOT NULL DEFAULT 0,
    ver BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, node_id)
);
CREATE INDEX IF NOT EXISTS files_ver ON files (workspace_id, ver);
CREATE TABLE IF NOT EXISTS requests (
    workspace_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    leases TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    dropped BOOLEAN NOT NULL DEFAULT false,
    ver BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, owner, request_id)
);
CREATE INDEX IF NOT EXISTS requests_ver ON requests (workspace_id, ver);
-- The event log (schema 2): one segment per committed step, its events in JSON by column
-- (stores/rows.py). Schema 1 kept a row per event in `audit`, which opening converts.
CREATE TABLE IF NOT EXISTS audit_log (
    workspace_id TEXT NOT NULL,
    seq_first BIGINT NOT NULL,
    seq_last BIGINT NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (workspace_id, seq_first)
);
CREATE TABLE IF NOT EXISTS webhooks (
    webhook_id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    cursor BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL,
    next_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    dead BOOLEAN NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_id ON outbox (delivery_id);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (dead, webhook_id, next_at);
-- The global line: every server's waiters, served in waiter_id order whichever server holds them.
CREATE TABLE IF NOT EXISTS waiters (
    workspace_id TEXT NOT NULL,
    waiter_id BIGINT NOT NULL,
    server_id TEXT NOT NULL,
    record JSONB NOT NULL,
    PRIMARY KEY (workspace_id, waiter_id)
);
-- File content (files=database): the current version of each file, in chunks, written in the same
-- transaction as its metadata.
CREATE TABLE IF NOT EXISTS contents (
    workspace_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (workspace_id, node_id, chunk)
);
-- What one server decided for another server's waiter (granted, timed out...), until that server answers it.
CREATE TABLE IF NOT EXISTS outcomes (
    workspace_id TEXT NOT NULL,
    waiter_id BIGINT NOT NULL,
    server_id TEXT NOT NULL,
    outcome JSONB NOT NULL,
    PRIMARY KEY (workspace_id, waiter_id)
)
"""
#: At most one live key per agent, held by the database: two creations at once, on one server or two, never
#: both succeed. Made on every start rather than in _SCHEMA: a database holding two live keys for one agent
#: (from before the rule) still starts, and says which to revoke.
_LIVE_KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS keys_live_agent ON keys (agent) WHERE revoked_at IS NULL"
_PUT_LEASE = (
    f"INSERT INTO locks (workspace_id, ver, {LEASE_COLS}) VALUES ({','.join(['%s'] * 17)})"
    " ON CONFLICT (workspace_id, lock_id) DO UPDATE SET ver = excluded.ver, "
    + ", ".join(f"{c} = excluded.{c}" for c in Lease._fields[1:])
    + ", ended_at = NULL, end_reason = NULL, end_by = NULL, end_why = NULL"
)
_SEGMENT_INSERT = "INSERT INTO audit_log VALUES (%s, %s, %s, %s, %s)"
_AUDIT_FROM_SCHEMA_1 = (
    "INSERT INTO audit_log SELECT workspace_id, seq, seq, at, json_build_array(1, kind, at, node_id, agent, lock_id,"
    " mode, depth, fence, waiter_id, waited_ms, held_ms, code, by, reason, label, version)::text FROM audit"
)
_FILE_COLS = "node_id, version, size, sha256, modified_at, modified_by, fence, deleted, pending, mtime_ns"
_STATE = """
SELECT version, extract(epoch FROM clock_timestamp())::float8,
       EXISTS (SELECT 1 FROM waiters w WHERE w.workspace_id = %(ws)s AND w.server_id <> %(me)s)
FROM workspaces WHERE workspace_id = %(ws)s
"""
# Waiters of servers with no connection left: they left with their server (and so do its undelivered outcomes).
_PURGE = f"""
WITH w AS (
    DELETE FROM waiters WHERE workspace_id = %(ws)s AND server_id <> %(me)s AND NOT EXISTS
        (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = '{APP_PREFIX}' || waiters.server_id)
    RETURNING 1
), o AS (
    DELETE FROM outcomes WHERE workspace_id = %(ws)s AND server_id <> %(me)s AND NOT EXISTS
        (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = '{APP_PREFIX}' || outcomes.server_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM o)
"""


def _outcome_json(outcome: Granted | LockError) -> str:
    if isinstance(outcome, Granted):
        return json.dumps({"leases": [list(le) for le in outcome.leases], "replayed": outcome.replayed})
    # The hint keeps its {op:} markers: the server that answers the waiter renders it for its face.
    o = outcome
    return json.dumps({"error": {"code": o.code, "message": o.message, "hint": o.hint, "details": o.details}})


def _outcome_from(doc: dict[str, Any]) -> Granted | LockError:
    if "leases" in doc:
        return Granted(tuple(Lease(*le) for le in doc["leases"]), bool(doc["replayed"]))
    err = doc["error"]
    cls = ERROR_TABLE.get(err["code"], Unavailable)
    return cls(err["message"], hint=err["hint"], details=err["details"])


def _waiter_json(r: WaiterRecord) -> str:
    return json.dumps([*r[:2], [list(c) for c in r.items], *r[3:]])


def _waiter_from(doc: list[Any]) -> WaiterRecord:
    return WaiterRecord(doc[0], doc[1], tuple(Claim(*c) for c in doc[2]), *doc[3:])


#: What losing the database looks like (a pooled connection closed by a restart is an InterfaceError): not
#: the errors a caller handles itself (a unique violation), which pass through.
_LOST = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError, OSError)


def _unavailable(e: Exception) -> Unavailable:
    return Unavailable(
        f"the lock database cannot be reached ({type(e).__name__}).",
        hint="Retry in a few seconds; nothing acknowledged before is lost.",
    )


class PostgresStore:
    """PostgreSQL, shared by any number of server processes; PostgreSQL keeps them consistent.

    Each actor step takes its workspace with a session advisory lock (one
    writer per workspace across the cluster), opens a transaction, catches up
    if another server committed since (the workspace's ``version``), and
    commits its changes with a ``NOTIFY`` that wakes the other servers'
    waiters; the lock is let go only after the step's files are in place.
    Leases are stamped with the database's clock (``clock_timestamp()``)
    unless ``db_clock`` is off (tests with a manual clock). Fences are kept in
    the workspace row, written in the same transaction as the grants, so they
    never go backwards whichever server hands them out.

    The line is global: waiters are rows, served in id order by whichever
    server commits the change that frees them; the server whose caller waits
    answers it on the notification (or within :data:`~mcp_locks.engine.actor.POLL_INTERVAL`).
    A server whose connections are all gone (it died) loses its waiters;
    its clients' locks end by lease. A server that cannot reach the database
    answers UNAVAILABLE.

    File metadata and versions live here, and a write's fence check commits in
    the same transaction as its metadata. With ``files="database"`` (the
    default) the content is written here in that transaction too (chunks of
    :data:`CONTENT_CHUNK` bytes), and each server's own folder holds a copy
    that it brings up to date as it catches up, before anyone reads it. With
    ``files="folder"`` the content lives only in the data directory, which all
    servers must then share (one host, or a shared mount).
    """

    shared = True

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        files: Literal["database", "folder"] = "database",
        db_clock: bool = True,
        max_ended: int = 100_000,
        pool_size: int = POOL_SIZE,
        timeout: float = STORE_TIMEOUT,
    ) -> None:
        if schema is not None and not _IDENT.fullmatch(schema):
            raise ValueError(f"schema {schema!r}: use lower-case letters, digits and _")
        self.dsn = dsn
        self.schema = schema or "public"
        #: File content in the database (each server's folder is its own copy) or in one shared folder.
        self.content = files == "database"
        self.db_clock = db_clock
        self.max_ended = max_ended
        self.timeout = timeout
        #: This process's name in the cluster (fresh on every start: a restarted server is a new one).
        self.server_id = secrets.token_hex(8)
        self.channel = f"mcp_locks_{self.schema}"
        ms = int(timeout * 1000)
        options = f"-c lock_timeout={ms} -c idle_in_transaction_session_timeout={int(IDLE_IN_STEP * 1000)}"
        if schema is not None:
            options += f" -c search_path={schema}"
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": APP_PREFIX + self.server_id,
            "options": options,
            "connect_timeout": max(1, int(timeout)),
        }
        self._pool = AsyncConnectionPool(
            dsn, kwargs=self._kwargs, min_size=1, max_size=pool_size, open=False, timeout=timeout, name="mcp-locks"
        )
        # workspace -> (its step's connection, the version it began on, whether the commit must move it on)
        self._held: dict[str, tuple[psycopg.AsyncConnection[Any], int, bool]] = {}
        self._known: dict[str, int] = {}  # the last version of each workspace this process has caught up to

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the schema (one server at a time) and open the pool."""
        async with self._own_connection() as conn:
            if self.schema != "public":
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"migrate/{self.schema}",))
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        await conn.execute(statement.encode())
                cur = await conn.execute("SELECT value FROM meta WHERE key='schema_version'")
                row = await cur.fetchone()
                if row is None:
                    await conn.execute("INSERT INTO meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),))
                elif int(row[0]) > SCHEMA_VERSION:
                    raise RuntimeError(f"the database was written by a newer mcp-locks (schema {row[0]})")
                elif int(row[0]) < SCHEMA_VERSION:
                    cur = await conn.execute("SELECT to_regclass('audit') IS NOT NULL")
                    if (await cur.fetchone() or (False,))[0]:
                        await conn.execute(_AUDIT_FROM_SCHEMA_1)
                        await conn.execute("DROP TABLE audit")
                    await conn.execute("UPDATE meta SET value=%s WHERE key='schema_version'", (str(SCHEMA_VERSION),))
                await self._index_live_keys(conn)
        await self._pool.open(wait=True, timeout=self.timeout)

    @staticmethod
    async def _index_live_keys(conn: psycopg.AsyncConnection[Any]) -> None:
        """Make the one-live-key-per-agent index; if keys from before it break the rule, say which and go on."""
        try:
            async with conn.transaction():  # a savepoint: a failed index leaves the rest of the migration whole
                await conn.execute(_LIVE_KEY_INDEX)
        except psycopg.errors.UniqueViolation:
            cur = await conn.execute(
                "SELECT agent, array_agg(key_id ORDER BY created_at, key_id) FROM keys WHERE revoked_at IS NULL"
                " GROUP BY agent HAVING count(*) > 1 ORDER BY agent"
            )
            for agent, key_ids in await cur.fetchall():
                log.warning(several_live_keys(agent, list(key_ids)))

    async def close(self) -> None:
        """Take this server's waiters out of every line (so others need not wait for it to be noticed), then close."""
        with anyio.CancelScope(shield=True):
            try:
                async with self._pool.connection(timeout=self.timeout) as conn:
                    cur = await conn.execute(
                        "SELECT DISTINCT workspace_id FROM waiters WHERE server_id=%s", (self.server_id,)
                    )
                    for (ws,) in await cur.fetchall():
                        async with conn.transaction():  # as a step would: holding the workspace
                            await conn.execute(
                                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self._key(ws),)
                            )
                            await conn.execute(
                                "DELETE FROM waiters WHERE workspace_id=%s AND server_id=%s", (ws, self.server_id)
                            )
                            await conn.execute(
                                "UPDATE workspaces SET version = version + 1 WHERE workspace_id=%s", (ws,)
                            )
                            await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"{ws}\t{self.server_id}"))
            except (psycopg.Error, TimeoutError) as e:
                log.warning("could not take this server's waiters out of line: %s", e)
            await self._pool.close()

    async def watch(self, poke: Callable[[str | None], None]) -> None:
        """Call ``poke(workspace_id)`` when another server commits to it; ``poke(None)``: anything may have changed.

        ``poke(None)`` also when another server revoked a key or changed its workspaces, so that this
        server's open streams check their keys again at once rather than at their next periodic check.
        """
        while True:
            try:
                async with self._own_connection() as conn:
                    await conn.execute(f"LISTEN {self.channel}")
                    poke(None)  # what was sent while we were not listening is lost: look at everything
                    async for n in conn.notifies():
                        ws, _, server = n.payload.partition("\t")
                        if server != self.server_id:
                            poke(ws if ws != _KEYS_CHANGED else None)  # a key changed: anything may look again
            except (psycopg.Error, OSError) as e:
                log.warning("lost the notification connection (%s); reconnecting", e)
            await anyio.sleep(RELISTEN_AFTER)

    async def lead(self, role: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run until cancelled: whenever this server is the cluster's one holder of ``role``, run ``work``.

        The role is a session advisory lock on a connection of its own: if this server dies or loses
        the database, the lock goes with the session, and another server takes the role within
        :data:`LEADER_RETRY` seconds; ``work`` here is cancelled as soon as the connection is found gone.
        """
        key = f"lead/{self.schema}/{role}"
        while True:
            try:
                async with self._own_connection() as conn:
                    while True:
                        cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,))
                        row = await cur.fetchone()
                        if row and row[0]:
                            break
                        await anyio.sleep(LEADER_RETRY)
                    log.info("this server now runs %s for the cluster", role)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(work)
                        while True:  # still ours? (the session holds the role)
                            await anyio.sleep(LEADER_RETRY)
                            await conn.execute("SELECT 1")
            except* (psycopg.Error, OSError, LockError) as lost:
                # except*: a ping failing inside the task group, or ``work`` told UNAVAILABLE by this store while
                # the database restarts, arrives wrapped in an ExceptionGroup. Let through, it ended the server's
                # lifespan and closed the pool: every call then answered UNAVAILABLE until a restart (found by
                # the torture's database restarts).
                log.warning("lost the connection that holds %s (%s); trying again", role, lost.exceptions[0])
            except* Exception:  # a bug in the role's work: said, and the role taken up again, the server kept
                log.exception("%s failed; trying again", role)
            await anyio.sleep(LEADER_RETRY)

    # ------------------------------------------------------------------ workspaces

    async def create_workspace(
        self, workspace_id: str, description: str | None, now: float, root: str | None = None
    ) -> WorkspaceRecord:
        """Create a workspace (continuing the fences of a deleted one of that name) or raise ALREADY_EXISTS."""
        try:
            async with self._conn() as conn:
                await conn.execute(
                    "INSERT INTO workspaces (workspace_id, description, created_at, root, fence_last, fence_reserved)"
                    " SELECT %s, %s, %s, %s, coalesce(max(fence_reserved), 0), coalesce(max(fence_reserved), 0)"
                    " FROM retired WHERE workspace_id=%s",
                    (workspace_id, description, now, root, workspace_id),
                )
        except psycopg.errors.UniqueViolation:
            raise AlreadyExists(
                f"workspace '{workspace_id}' already exists.", hint="Use it as it is, or pick another id."
            ) from None
        return WorkspaceRecord(workspace_id, description, now, root)

    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        """The workspace, or None."""
        rows = await self._fetch(f"SELECT {WS_COLS} FROM workspaces WHERE workspace_id=%s", (workspace_id,))
        return WorkspaceRecord(*rows[0]) if rows else None

    async def list_workspaces(self) -> list[WorkspaceRecord]:
        """Every workspace, by id."""
        return [WorkspaceRecord(*r) for r in await self._fetch(f"SELECT {WS_COLS} FROM workspaces ORDER BY 1")]

    async def delete_workspace(self, workspace_id: str, now: float) -> None:
        """Delete a workspace holding no live lock; its waiters on every server get NOT_FOUND / UNAVAILABLE."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self._key(workspace_id),))
            cur = await conn.execute("SELECT 1 FROM workspaces WHERE workspace_id=%s", (workspace_id,))
            if await cur.fetchone() is None:
                raise workspace_not_found(workspace_id)
            cur = await conn.execute(
                "SELECT count(*) FROM locks WHERE workspace_id=%s AND ended_at IS NULL AND expires_at>%s",
                (workspace_id, now),
            )
            row = await cur.fetchone()
            live = row[0] if row else 0
            if live:
                raise workspace_in_use(workspace_id, live)
            await conn.execute(
                "INSERT INTO retired SELECT workspace_id, fence_reserved FROM workspaces WHERE workspace_id=%s"
                " ON CONFLICT (workspace_id) DO UPDATE SET fence_reserved = excluded.fence_reserved",
                (workspace_id,),
            )
            await conn.execute(
                "DELETE FROM outbox WHERE webhook_id IN (SELECT webhook_id FROM webhooks WHERE workspace_id=%s)",
                (workspace_id,),
            )
            for table in ("locks", "requests", "files", "webhooks", "waiters", "outcomes", "workspaces"):
                await conn.execute(f"DELETE FROM {table} WHERE workspace_id=%s", (workspace_id,))
            cur = await conn.execute("SELECT key_id, workspaces FROM keys")
            for key_id, wss in await cur.fetchall():
                listed = json.loads(wss)
                if workspace_id in listed:
                    kept = [w for w in listed if w != workspace_id]
                    await conn.execute("UPDATE keys SET workspaces=%s WHERE key_id=%s", (json.dumps(kept), key_id))
            await conn.execute("UPDATE cluster SET keys_version = keys_version + 1")
            await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"{workspace_id}\t{self.server_id}"))
            await self._notify_keys_changed(conn)  # the workspace left every key
        self._known.pop(workspace_id, None)

    # ------------------------------------------------------------------ the actor's steps

    def _key(self, workspace_id: str) -> str:
        return f"{self.schema}/{workspace_id}"

    async def load(self, workspace_id: str) -> Snapshot:
        """The workspace's whole state, as of one moment."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snap, version, _ = await self._snapshot(conn, workspace_id, None)
        self._known[workspace_id] = version
        return snap

    async def begin(self, workspace_id: str) -> Begun:
        """Hold ``workspace_id`` across the cluster and open a transaction; catch up if another server moved it."""
        if workspace_id in self._held:
            raise RuntimeError(f"a step is already open on {workspace_id}")
        key = self._key(workspace_id)
        for attempt in (1, 2):
            conn = await self._getconn()
            try:
                # One round trip: take the workspace, open the transaction, read its version and the clock.
                async with conn.pipeline():
                    await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
                    await conn.execute("BEGIN")
                    cur = await conn.execute(_STATE, {"ws": workspace_id, "me": self.server_id})
                row = await cur.fetchone()
                break
            except psycopg.errors.LockNotAvailable:
                await self._putconn(conn, broken=True)
                raise Unavailable(
                    f"another server has held workspace '{workspace_id}' for over {self.timeout:g} s.",
                    hint="Retry in a few seconds; if it persists, a server is stuck: restart it.",
                ) from None
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                await self._putconn(conn, broken=True)
                if attempt == 2:  # the first may have been a pooled connection from before a database restart
                    raise _unavailable(e) from None
            except BaseException as e:  # cancelled, or any other failure: the connection's state is unknown
                with anyio.CancelScope(shield=True):
                    await self._putconn(conn, broken=True)
                if isinstance(e, psycopg.Error | OSError):
                    raise _unavailable(e) from None
                raise
        self._held[workspace_id] = (conn, -1, False)  # from here on, end() lets go of the workspace
        try:
            if row is None:
                raise workspace_not_found(workspace_id)
            version, now, others = row
            gone = False
            if others:  # other servers' waiters are in line: are those servers still there?
                cur = await conn.execute(_PURGE, {"ws": workspace_id, "me": self.server_id})
                purged = await cur.fetchone()
                left = purged[0] if purged else 0
                gone = left > 0
                if gone:
                    log.info("%d waiter(s) of stopped servers left the line in %s", left, workspace_id)
            known = self._known.get(workspace_id)
            snapshot = None
            outcomes: dict[int, Granted | LockError] = {}
            if known != version or gone:
                snapshot, version, outcomes = await self._snapshot(conn, workspace_id, known)
                self._known[workspace_id] = version
            # After a purge the commit moves the version on even with nothing else to write: every server catches up.
            self._held[workspace_id] = (conn, version, gone)
        except LockError:
            raise
        except (psycopg.Error, OSError) as e:
            raise _unavailable(e) from None
        return Begun(now if self.db_clock else None, snapshot, outcomes)

    async def _snapshot(
        self, conn: psycopg.AsyncConnection[Any], ws: str, since: int | None
    ) -> tuple[Snapshot, int, dict[int, Granted | LockError]]:
        """The workspace's state, its version, and what other servers decided for this server's waiters.

        With ``since``: only what changed after that version (leases and the line are always whole).
        Read in one round trip.
        """
        delta = since is not None
        after = since if since is not None else -1
        async with conn.pipeline():
            c_ws = await conn.execute(
                "SELECT version, fence_last, fence_reserved, next_waiter, event_seq FROM workspaces"
                " WHERE workspace_id=%s",
                (ws,),
            )
            c_leases = await conn.execute(
                f"SELECT {LEASE_COLS} FROM locks WHERE workspace_id=%s AND ended_at IS NULL", (ws,)
            )
            ended_cols = "SELECT lock_id, token, node_id, owner, end_reason, ended_at, end_by, end_why FROM locks"
            if delta:
                c_ended = await conn.execute(
                    f"{ended_cols} WHERE workspace_id=%s AND ended_at IS NOT NULL AND ver>%s", (ws, after)
                )
            else:
                c_ended = await conn.execute(
                    f"{ended_cols} WHERE workspace_id=%s AND ended_at IS NOT NULL ORDER BY ended_at DESC LIMIT %s",
                    (ws, self.max_ended),
                )
            c_requests = await conn.execute(
                "SELECT owner, request_id, fingerprint, leases, created_at, dropped FROM requests"
                " WHERE workspace_id=%s AND ver>%s" + ("" if delta else " AND NOT dropped"),
                (ws, after),
            )
            c_files = await conn.execute(
                f"SELECT {_FILE_COLS} FROM files WHERE workspace_id=%s AND ver>%s", (ws, after)
            )
            c_waiters = await conn.execute(
                "SELECT record, server_id FROM waiters WHERE workspace_id=%s ORDER BY waiter_id", (ws,)
            )
            c_outcomes = await conn.execute(
                "SELECT waiter_id, outcome FROM outcomes WHERE workspace_id=%s AND server_id=%s", (ws, self.server_id)
            )
        row = await c_ws.fetchone()
        if row is None:
            raise workspace_not_found(ws)
        version, fence_last, reserved, next_waiter, event_seq = row
        leases = [Lease(*r) for r in await c_leases.fetchall()]
        ended = [Ended(*r) for r in await c_ended.fetchall()]
        requests: list[RequestRecord] = []
        dropped: list[tuple[str, str]] = []
        for owner, rid, fp, les, created, gone in await c_requests.fetchall():
            if gone:
                dropped.append((owner, rid))
            else:
                requests.append(RequestRecord(owner, rid, fp, tuple(Lease(*x) for x in json.loads(les)), created))
        files = [
            FileMeta(node, version_, size, sha, at, by, fence, deleted, pending, True, mtime_ns)
            for node, version_, size, sha, at, by, fence, deleted, pending, mtime_ns in await c_files.fetchall()
        ]
        waiters: list[WaiterRecord] = []
        mine: set[int] = set()
        for doc, server in await c_waiters.fetchall():
            w = _waiter_from(doc)
            waiters.append(w)
            if server == self.server_id:
                mine.add(w.waiter_id)
        outcomes = {wid: _outcome_from(doc) for wid, doc in await c_outcomes.fetchall()}
        snap = Snapshot(
            leases, ended, requests, fence_last + 1, reserved, files, event_seq, waiters, next_waiter,
            frozenset(mine), delta, dropped,
        )  # fmt: skip
        return snap, version, outcomes

    async def commit(self, workspace_id: str, changes: Sequence[StoreChange]) -> None:
        """Write the step's changes, move the workspace's version on, notify the other servers, and commit."""
        held = self._held.get(workspace_id)
        if held is None:
            raise RuntimeError(f"commit without begin on {workspace_id}")
        conn, seen, bump = held
        with anyio.CancelScope(shield=True):  # a shutdown never leaves a step's outcome unknown
            try:
                await self._write(conn, workspace_id, seen, bump, changes)
            except LockError:
                raise
            except (psycopg.Error, OSError) as e:
                raise _unavailable(e) from None

    async def _write(
        self, conn: psycopg.AsyncConnection[Any], ws: str, seen: int, bump: bool, changes: Sequence[StoreChange]
    ) -> None:
        if not changes and not bump:
            await conn.execute("COMMIT")  # nothing changed: nobody needs to catch up
            return
        async with conn.pipeline():  # every write in one round trip, the commit in a second
            cur = await self._write_changes(conn, ws, seen, changes)
        if cur.rowcount != 1:  # cannot happen while the advisory lock is held; never commit over another server
            raise Unavailable(f"workspace '{ws}' moved under this step.", hint="Retry the call.")
        await conn.execute("COMMIT")
        self._known[ws] = seen + 1

    async def _write_changes(
        self, conn: psycopg.AsyncConnection[Any], ws: str, seen: int, changes: Sequence[StoreChange]
    ) -> psycopg.AsyncCursor[Any]:
        """Queue the batch's writes on the step's pipeline, in an order that keeps each write's rows there."""
        ver = seen + 1
        f = fold_changes(changes)
        if f.outcomes or f.taken or f.waiters:
            await self._write_line(conn, ws, f)
        await self._write_locks(conn, ws, ver, f)
        if f.files or f.contents:
            await self._write_files(conn, ws, ver, f)
        if f.segments:
            await conn.cursor().executemany(_SEGMENT_INSERT, [segment_row(ws, seg) for seg in f.segments])
        if f.prune is not None:
            await conn.execute(
                "DELETE FROM locks WHERE workspace_id=%s AND ended_at IS NOT NULL AND ended_at<%s",
                (ws, f.prune.ended_before),
            )
            await conn.execute(
                "DELETE FROM requests WHERE workspace_id=%s AND created_at<%s", (ws, f.prune.requests_before)
            )
        cur = await conn.execute(
            "UPDATE workspaces SET version=%s, fence_last=greatest(fence_last, %s),"
            " fence_reserved=greatest(fence_reserved, %s), next_waiter=greatest(next_waiter, %s),"
            " event_seq=greatest(event_seq, %s) WHERE workspace_id=%s AND version=%s",
            (ver, f.fence_last, f.reserve, f.next_waiter, f.event_seq, ws, seen),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"{ws}\t{self.server_id}"))
        return cur

    async def _write_line(self, conn: psycopg.AsyncConnection[Any], ws: str, f: Folded) -> None:
        """The waiting line: outcomes for other servers' waiters, outcomes taken, waiters joined and left."""
        if f.outcomes:  # before the waiters' rows go: the outcome names the server that waits for it
            await conn.cursor().executemany(
                "INSERT INTO outcomes SELECT workspace_id, waiter_id, server_id, %s::jsonb FROM waiters"
                " WHERE workspace_id=%s AND waiter_id=%s ON CONFLICT DO NOTHING",
                [(_outcome_json(o.outcome), ws, o.waiter_id) for o in f.outcomes],
            )
        if f.taken:
            await conn.cursor().executemany(
                "DELETE FROM outcomes WHERE workspace_id=%s AND waiter_id=%s", [(ws, wid) for wid in f.taken]
            )
        if f.waiters:
            await conn.cursor().executemany(
                "DELETE FROM waiters WHERE workspace_id=%s AND waiter_id=%s",
                [(ws, wid) for wid, r in f.waiters.items() if r is None],
            )
            await conn.cursor().executemany(
                "INSERT INTO waiters VALUES (%s, %s, %s, %s::jsonb)",
                [(ws, wid, self.server_id, _waiter_json(r)) for wid, r in f.waiters.items() if r is not None],
            )

    @staticmethod
    async def _write_locks(conn: psycopg.AsyncConnection[Any], ws: str, ver: int, f: Folded) -> None:
        """Leases put and ended; request ids remembered, and dropped (kept, marked, for other servers to catch up)."""
        if f.puts:
            await conn.cursor().executemany(_PUT_LEASE, [(ws, ver, *le) for le in f.puts.values()])
        if f.ends:
            await conn.cursor().executemany(
                "UPDATE locks SET ended_at=%s, end_reason=%s, end_by=%s, end_why=%s, ver=%s"
                " WHERE workspace_id=%s AND lock_id=%s",
                [(e.at, e.reason, e.by, e.why, ver, ws, e.lock_id) for e in f.ends.values()],
            )
        if f.requests:
            await conn.cursor().executemany(
                "UPDATE requests SET dropped=true, ver=%s WHERE workspace_id=%s AND owner=%s AND request_id=%s",
                [(ver, ws, o, r) for (o, r), rec in f.requests.items() if rec is None],
            )
            await conn.cursor().executemany(
                "INSERT INTO requests VALUES (%s, %s, %s, %s, %s, %s, false, %s) ON CONFLICT"
                " (workspace_id, owner, request_id) DO UPDATE SET fingerprint=excluded.fingerprint,"
                " leases=excluded.leases, created_at=excluded.created_at, dropped=false, ver=excluded.ver",
                [(*request_row(ws, rec), ver) for rec in f.requests.values() if rec is not None],
            )

    async def _write_files(self, conn: psycopg.AsyncConnection[Any], ws: str, ver: int, f: Folded) -> None:
        """File records, and (when the database keeps file content) the content written or deleted."""
        if f.files:
            await conn.cursor().executemany(
                f"INSERT INTO files (workspace_id, {_FILE_COLS}, ver) VALUES ({','.join(['%s'] * 12)})"
                " ON CONFLICT (workspace_id, node_id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in [*_FILE_COLS.split(", ")[1:], "ver"]),
                [(ws, *m[:7], m.deleted, m.pending, m.mtime_ns, ver) for m in f.files.values()],
            )
        if self.content:
            clear, contents = f.content_changes()
            await conn.cursor().executemany(
                "DELETE FROM contents WHERE workspace_id=%s AND node_id=%s", [(ws, node) for node in clear]
            )
            for put in contents:
                await self._put_content(conn, ws, put)

    @staticmethod
    async def _put_content(conn: psycopg.AsyncConnection[Any], ws: str, put: PutContent) -> None:
        fd = await anyio.to_thread.run_sync(put.open)
        try:
            chunk = 0
            while True:
                data = await anyio.to_thread.run_sync(os.read, fd, CONTENT_CHUNK)
                if not data and chunk:
                    break
                await conn.execute("INSERT INTO contents VALUES (%s, %s, %s, %s)", (ws, put.node_id, chunk, data))
                chunk += 1
                if not data:  # an empty file is one empty chunk: "no rows" means "no content here"
                    break
        finally:
            os.close(fd)

    async def read_content(self, workspace_id: str, node_id: str) -> AsyncIterator[bytes]:
        """A file's committed content, a chunk at a time (on the step's connection inside a step).

        Raises NOT_FOUND if the database holds no content for it (written while files were in a folder).
        """
        held = self._held.get(workspace_id)
        async with AsyncExitStack() as stack:
            conn = held[0] if held is not None else await stack.enter_async_context(self._conn())
            chunk = 0
            while True:
                cur = await conn.execute(
                    "SELECT data FROM contents WHERE workspace_id=%s AND node_id=%s AND chunk=%s",
                    (workspace_id, node_id, chunk),
                )
                row = await cur.fetchone()
                if row is None:
                    if chunk == 0:
                        raise NotFound(f"the database holds no content for '{node_id}'.")
                    return
                yield bytes(row[0])
                chunk += 1

    async def end(self, workspace_id: str, ok: bool) -> None:
        """Roll back what was not committed and let the workspace go."""
        held = self._held.pop(workspace_id, None)
        if held is None:
            return
        conn = held[0]
        with anyio.CancelScope(shield=True):
            try:
                if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    await conn.execute("ROLLBACK")
                    self._known.pop(workspace_id, None)
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (self._key(workspace_id),))
            except (psycopg.Error, OSError):
                await self._putconn(conn, broken=True)  # closing the session lets go of the lock too
                return
            await self._putconn(conn, broken=False)

    async def deadlines(self) -> dict[str, float]:
        """Earliest expiry per workspace."""
        rows = await self._fetch(
            "SELECT workspace_id, min(expires_at) FROM locks WHERE ended_at IS NULL GROUP BY workspace_id"
        )
        return {ws: t for ws, t in rows}

    # ------------------------------------------------------------------ keys

    async def keys_version(self) -> object:
        """A cluster-wide counter moved by every key change (on any server)."""
        rows = await self._fetch("SELECT keys_version FROM cluster WHERE id=1")
        return rows[0][0] if rows else 0

    async def put_key(self, record: KeyRecord) -> None:
        """Store a new key record (only its digest); ALREADY_EXISTS if its agent has a live key (on any server)."""
        try:
            async with self._conn() as conn, conn.transaction():
                await conn.execute("INSERT INTO keys VALUES (%s, %s, %s, %s, %s, %s, %s)", key_row(record))
                await conn.execute("UPDATE cluster SET keys_version = keys_version + 1")
        except psycopg.errors.UniqueViolation as e:
            raise key_taken(record, "key_id" if e.diag.constraint_name == "keys_pkey" else "agent") from None

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key record, or None."""
        rows = await self._fetch("SELECT * FROM keys WHERE key_id=%s", (key_id,))
        return key_from(rows[0]) if rows else None

    async def list_keys(self) -> list[KeyRecord]:
        """Every key record, oldest first."""
        return [key_from(r) for r in await self._fetch("SELECT * FROM keys ORDER BY created_at, key_id")]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark a key revoked; False if there is no such unrevoked key."""
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE keys SET revoked_at=%s WHERE key_id=%s AND revoked_at IS NULL", (now, key_id)
            )
            await conn.execute("UPDATE cluster SET keys_version = keys_version + 1")
            await self._notify_keys_changed(conn)
            return cur.rowcount == 1

    async def set_key_workspaces(self, key_id: str, workspaces: tuple[str, ...]) -> bool:
        """Replace the workspaces a live key reaches; False if there is no such unrevoked key."""
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE keys SET workspaces=%s WHERE key_id=%s AND revoked_at IS NULL",
                (json.dumps(list(workspaces)), key_id),
            )
            await conn.execute("UPDATE cluster SET keys_version = keys_version + 1")
            await self._notify_keys_changed(conn)
            return cur.rowcount == 1

    async def _notify_keys_changed(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Tell the other servers, when this transaction commits, that a key was revoked or changed."""
        await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"{_KEYS_CHANGED}\t{self.server_id}"))

    # ------------------------------------------------------------------ audit log and webhooks

    async def audit(self, query: AuditQuery) -> list[Event]:
        """Matching events, newest first (oldest first with ``after_seq``), read a page of segments at a time."""
        out: list[Event] = []
        q = query
        while True:
            sql, args = segment_select(q, "%s")
            rows = await self._fetch(f"{sql} LIMIT {_SEGMENT_PAGE}", args)
            out += select_events(rows, replace(q, limit=query.limit - len(out)))
            if len(out) >= query.limit or len(rows) < _SEGMENT_PAGE:
                return out
            if q.after_seq is not None:
                q = replace(q, after_seq=rows[-1][1])
            elif q.since is not None and rows[-1][2] < q.since:
                return out  # older segments all ended before `since`
            else:
                q = replace(q, before_seq=rows[-1][0])

    async def prune_audit(self, before: float) -> int:
        """Drop log entries older than ``before`` (the newest of each workspace stays) and settled deliveries as old."""
        async with self._conn() as conn:
            cur = await conn.execute(
                "WITH gone AS (DELETE FROM audit_log a WHERE last_at < %s AND seq_first < (SELECT max(seq_first)"
                " FROM audit_log b WHERE b.workspace_id = a.workspace_id) RETURNING seq_last - seq_first + 1 AS n)"
                " SELECT coalesce(sum(n), 0) FROM gone",
                (before,),
            )
            dropped = int((await cur.fetchone() or (0,))[0])
            await conn.execute("DELETE FROM outbox WHERE dead AND created_at<%s", (before,))
        return dropped

    async def put_webhook(self, record: WebhookRecord) -> None:
        """Register a webhook."""
        async with self._conn() as conn:
            await conn.execute("INSERT INTO webhooks VALUES (%s, %s, %s, %s, %s, %s, %s)", webhook_row(record))

    async def list_webhooks(self) -> list[WebhookRecord]:
        """Every webhook, oldest first."""
        rows = await self._fetch(f"SELECT {WEBHOOK_COLS} FROM webhooks ORDER BY created_at, webhook_id")
        return [webhook_from(r) for r in rows]

    async def delete_webhook(self, webhook_id: str) -> WebhookRecord | None:
        """Remove a webhook and its undelivered messages."""
        rec = next((h for h in await self.list_webhooks() if h.webhook_id == webhook_id), None)
        if rec is None:
            return None
        async with self._conn() as conn, conn.transaction():
            await conn.execute("DELETE FROM outbox WHERE webhook_id=%s", (webhook_id,))
            await conn.execute("DELETE FROM webhooks WHERE webhook_id=%s", (webhook_id,))
        return rec

    async def due_deliveries(
        self, now: float, limit: int, skip: frozenset[str], webhook_ids: frozenset[str] | None = None
    ) -> list[Delivery]:
        """Due retries, oldest first."""
        where = "NOT dead AND next_at<=%s"
        args: list[Any] = [now]
        if webhook_ids is not None:
            where += " AND webhook_id = ANY(%s)"
            args.append(list(webhook_ids))
        rows = await self._fetch(
            f"SELECT {OUTBOX_COLS}, id FROM outbox WHERE {where} ORDER BY next_at LIMIT %s",
            (*args, limit + len(skip)),
        )
        return [d for d in (Delivery(*r) for r in rows) if d.delivery_id not in skip][:limit]

    async def settle_deliveries(self, settle: Settle) -> None:
        """Record outcomes and cursors in one transaction."""
        fresh = [(d, False) for d in settle.retry if not d.row] + [(d, True) for d in settle.dead if not d.row]
        known = [(d, False) for d in settle.retry if d.row] + [(d, True) for d in settle.dead if d.row]
        async with self._conn() as conn, conn.transaction():
            cur = conn.cursor()
            await cur.executemany("DELETE FROM outbox WHERE delivery_id=%s", [(d.delivery_id,) for d in settle.done])
            await cur.executemany(
                f"INSERT INTO outbox ({OUTBOX_COLS}, dead) SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s"
                " WHERE EXISTS (SELECT 1 FROM webhooks WHERE webhook_id=%s) ON CONFLICT DO NOTHING",
                [(*d[:8], dead, d.webhook_id) for d, dead in fresh],
            )
            await cur.executemany(
                "UPDATE outbox SET attempts=%s, next_at=%s, last_error=%s, dead=%s WHERE id=%s",
                [(d.attempts, d.next_at, d.last_error, dead, d.row) for d, dead in known],
            )
            await cur.executemany(
                "UPDATE webhooks SET cursor=%s WHERE webhook_id=%s AND cursor<%s",
                [(seq, webhook_id, seq) for webhook_id, seq in settle.cursors],
            )

    def delivery_worker_args(self) -> None:
        """None: the cluster's delivery role delivers (in whichever server holds it)."""
        return None

    async def delivery_backlog(self) -> tuple[int, float | None]:
        """Waiting messages (retries, and matching events after each webhook's cursor) and the next retry."""
        rows = await self._fetch("SELECT count(*), min(next_at) FROM outbox WHERE NOT dead")
        n, nxt = rows[0]
        for h in await self.list_webhooks():
            sql, args = segment_select(AuditQuery(h.workspace_id, after_seq=h.cursor), "%s")
            # Bounded like the count: a receiver down for a day must not make each count read the whole log.
            n += count_unread(await self._fetch(f"{sql} LIMIT {MAX_COUNTED}", args), h.cursor, h.kinds, MAX_COUNTED)
        return int(n), nxt

    # ------------------------------------------------------------------ connections

    @asynccontextmanager
    async def _own_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection outside the pool (the listener's, a role's), closed however its user ends."""
        conn = await psycopg.AsyncConnection.connect(self.dsn, **self._kwargs)
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled task must still close it
                await conn.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit; ``conn.transaction()`` for several statements).

        Losing the database (or waiting too long for a connection) is UNAVAILABLE, whatever was asked.
        """
        try:
            async with self._pool.connection(timeout=self.timeout) as conn:
                yield conn
        except _LOST as e:
            raise _unavailable(e) from None

    async def _fetch(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cur = await conn.execute(sql.encode(), tuple(args))
            return list(await cur.fetchall())

    async def _getconn(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await self._pool.getconn(timeout=self.timeout)
        except Exception as e:  # PoolTimeout: the database is unreachable, or every connection is busy
            raise _unavailable(e) from None

    async def _putconn(self, conn: psycopg.AsyncConnection[Any], *, broken: bool) -> None:
        if broken:
            await conn.close()  # the pool replaces a closed connection
        await self._pool.putconn(conn)


def check_dsn(dsn: str) -> str:
    """``dsn`` if it names PostgreSQL, else INVALID_ARGUMENT."""
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise InvalidArgument(f"{dsn!r} is not a PostgreSQL URL.", hint="Use postgresql://user@host:port/database.")
    return dsn
