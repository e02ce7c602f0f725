"""How records map to rows, shared by the SQL stores (SQLite and PostgreSQL); no I/O."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mcp_locks.core.keys import KeyRecord
from mcp_locks.core.records import AuditQuery, Event, Lease, RequestRecord, WebhookRecord

__all__ = [
    "AUDIT_COLS",
    "LEASE_COLS",
    "OUTBOX_COLS",
    "WEBHOOK_COLS",
    "WS_COLS",
    "audit_insert",
    "audit_select",
    "event_from",
    "key_from",
    "key_row",
    "request_row",
    "webhook_from",
    "webhook_row",
]

LEASE_COLS = (
    "lock_id, token, node_id, mode, depth, owner, note, fence, acquired_at, expires_at, timeout, waited_ms, request_id,"
    " label, key_id"
)
assert Lease._fields == tuple(LEASE_COLS.replace(" ", "").split(","))  # so a row is (workspace_id, *lease)
AUDIT_COLS = (
    "seq, at, kind, node_id, agent, label, lock_id, mode, depth, fence, waiter_id, waited_ms, held_ms, code, by,"
    " reason, version"
)
OUTBOX_COLS = "delivery_id, webhook_id, event_type, payload, created_at, attempts, next_at, last_error"
WS_COLS = "workspace_id, description, created_at, root"
WEBHOOK_COLS = "webhook_id, workspace_id, url, events, secret, created_at, cursor"

assert Event._fields == (
    "kind", "at", "node_id", "owner", "lock_id", "mode", "depth", "fence", "waiter_id", "waited_ms", "held_ms",
    "code", "by", "reason", "label", "version", "seq",
)  # fmt: skip


def audit_insert(ph: str) -> str:
    """The audit INSERT with placeholder ``ph``.

    Its columns are in :class:`Event`'s order, so a row is ``(workspace_id, *event)``.
    """
    return (
        "INSERT INTO audit (workspace_id, kind, at, node_id, agent, lock_id, mode, depth, fence, waiter_id,"
        f" waited_ms, held_ms, code, by, reason, label, version, seq) VALUES ({','.join([ph] * 18)})"
    )


def audit_select(query: AuditQuery, ph: str, any_of: str) -> tuple[str, list[Any]]:
    """The SELECT for ``query`` and its arguments.

    ``any_of`` tests for one of a list of kinds, with ``{}`` for the kinds' placeholders: SQLite's
    ``kind IN ({})``, PostgreSQL's ``kind = ANY({})``.
    """
    where = [f"workspace_id={ph}"]
    args: list[Any] = [query.workspace_id]
    for cond, value in (
        (f"node_id={ph}", query.node_id),
        (f"agent={ph}", query.agent),
        (f"at>={ph}", query.since),
        (f"seq<{ph}", query.before_seq),
        (f"seq>{ph}", query.after_seq),
    ):
        if value is not None:
            where.append(cond)
            args.append(value)
    if query.kinds is not None:
        if "ANY" in any_of:
            where.append(any_of.format(ph))
            args.append(list(query.kinds))
        else:
            where.append(any_of.format(",".join([ph] * len(query.kinds))))
            args.extend(query.kinds)
    order = "ASC" if query.after_seq is not None else "DESC"
    sql = f"SELECT {AUDIT_COLS} FROM audit WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT {ph}"
    return sql, [*args, query.limit]


def event_from(row: Sequence[Any]) -> Event:
    """An event from a row of :data:`AUDIT_COLS`."""
    seq, at, kind, node, agent, label, lock_id, mode, depth, fence, wid, waited, held, code, by, reason, ver = row
    return Event(kind, at, node, agent, lock_id, mode, depth, fence, wid, waited, held, code, by, reason, label, ver,
                 seq)  # fmt: skip


def key_row(r: KeyRecord) -> tuple[Any, ...]:
    """A key record as a row of the ``keys`` table."""
    return (r.key_id, r.agent, json.dumps(list(r.workspaces)), r.role, r.created_at, r.digest, r.revoked_at)


def key_from(row: Sequence[Any]) -> KeyRecord:
    """A key record from a row of the ``keys`` table."""
    key_id, agent, workspaces, role, created_at, digest, revoked_at = row
    return KeyRecord(key_id, agent, tuple(json.loads(workspaces)), role, created_at, bytes(digest), revoked_at)


def request_row(workspace_id: str, r: RequestRecord) -> tuple[Any, ...]:
    """A request id's result as a row of the ``requests`` table (its leases as JSON arrays)."""
    les = json.dumps([list(le) for le in r.leases])
    return (workspace_id, r.owner, r.request_id, r.fingerprint, les, r.created_at)


def webhook_row(r: WebhookRecord) -> tuple[Any, ...]:
    """A webhook as a row of :data:`WEBHOOK_COLS`."""
    return (r.webhook_id, r.workspace_id, r.url, json.dumps(list(r.events)), r.secret, r.created_at, r.cursor)


def webhook_from(row: Sequence[Any]) -> WebhookRecord:
    """A webhook from a row of :data:`WEBHOOK_COLS`."""
    i, ws, url, events, secret, at, cursor = row
    return WebhookRecord(i, ws, url, tuple(json.loads(events)), secret, at, cursor)
