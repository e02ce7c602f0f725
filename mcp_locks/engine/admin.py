"""Administration of keys and workspaces that is not a lock question: issuing keys, and the first admin key.

Shared by the admin API, ``mcp-locks keys create`` and the server's start.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mcp_locks.core.errors import AlreadyExists, InvalidArgument, NotFound
from mcp_locks.core.keys import KeyRecord, new_key, parse_key_id, record_for, verify_key
from mcp_locks.core.names import check_agent_name, check_workspace_id
from mcp_locks.engine.arguments import MAX_ITEMS
from mcp_locks.observe.logging import redact
from mcp_locks.stores.base import Store

__all__ = ["bootstrap_admin_key", "issue_key", "no_live_key", "update_key_workspaces"]


async def issue_key(store: Store, agent: object, workspaces: object, role: object, now: float) -> tuple[str, KeyRecord]:
    """Check a key request, store the new key's record, and return the key (to show once) with it.

    Shared by the admin API and ``mcp-locks keys create``: every workspace must exist,
    and an agent key needs at least one.
    """
    name = check_agent_name(agent)
    live = next((r for r in await store.list_keys() if r.agent == name and r.revoked_at is None), None)
    if live is not None:
        # One live key per agent: the agent name then names one key, for ownership, retries and deadlocks.
        raise AlreadyExists(
            f"agent '{name}' already has a live key ({live.key_id}).",
            hint=f"To replace it, revoke it first ({{op:revoke_key}} {live.key_id}); locks taken with it"
            " stay its own until they are released by an admin or expire.",
            details={"field": "agent", "key_id": live.key_id},
        )
    if role not in ("agent", "admin"):
        raise InvalidArgument("role must be 'agent' or 'admin'.", details={"field": "role"})
    wss = _workspace_ids(workspaces, "workspaces")
    if role == "agent" and not wss:
        raise _no_workspace_left("an agent key needs at least one workspace.", "workspaces")
    await _check_exist(store, wss)
    key, record = new_key(name, wss, "admin" if role == "admin" else "agent", now)
    await store.put_key(record)
    return key, record


async def update_key_workspaces(store: Store, key_id: object, add: object, remove: object) -> KeyRecord:
    """Give a live agent key more workspaces and take some away; returns its new record.

    Shared by the admin API and ``mcp-locks keys update``. Added workspaces must exist; a removed one
    the key does not reach is no change; the key keeps at least one. The store's key version moves, so
    the next request with the key is checked against its new workspaces.
    """
    record = await _live_key(store, key_id)
    added, removed = _workspace_ids(add, "add_workspaces"), _workspace_ids(remove, "remove_workspaces")
    if not added and not removed:
        raise InvalidArgument(
            "nothing to change: name a workspace to add or to remove.", details={"field": "add_workspaces"}
        )
    both = next((w for w in added if w in removed), None)
    if both is not None:
        raise InvalidArgument(f"workspace '{both}' is both added and removed.", details={"field": "remove_workspaces"})
    if record.role == "admin":
        raise InvalidArgument(
            "an admin key reaches every workspace: it has none to add or remove.", details={"field": "key_id"}
        )
    await _check_exist(store, added)
    wss = tuple(w for w in dict.fromkeys((*record.workspaces, *added)) if w not in removed)
    if len(wss) > MAX_ITEMS:
        raise InvalidArgument(f"a key reaches at most {MAX_ITEMS} workspaces.", details={"field": "add_workspaces"})
    if not wss:
        raise _no_workspace_left(
            f"key {record.key_id} (agent '{record.agent}') would reach no workspace: an agent key keeps at least one.",
            "remove_workspaces",
        )
    if wss != record.workspaces and not await store.set_key_workspaces(record.key_id, wss):
        raise no_live_key(record.key_id)  # revoked meanwhile
    return record._replace(workspaces=wss)


def _workspace_ids(workspaces: object, field: str) -> tuple[str, ...]:
    """Checked, de-duplicated workspace ids from a request's list (INVALID_ARGUMENT naming ``field``)."""
    if not isinstance(workspaces, Sequence) or isinstance(workspaces, str):
        raise InvalidArgument(f"{field} must be a list of workspace ids.", details={"field": field})
    if len(workspaces) > MAX_ITEMS:
        raise InvalidArgument(f"a key reaches at most {MAX_ITEMS} workspaces.", details={"field": field})
    return tuple(dict.fromkeys(check_workspace_id(w, field) for w in workspaces if w is not None))


async def _check_exist(store: Store, workspaces: Sequence[str]) -> None:
    """NOT_FOUND for the first of ``workspaces`` that does not exist."""
    for w in workspaces:
        if await store.get_workspace(w) is None:
            raise NotFound(
                f"workspace '{w}' does not exist.",
                hint=f"Create it first ({{op:create_workspace}} {w}).",
                details={"workspace_id": w},
            )


def _no_workspace_left(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(
        message,
        hint="List the workspaces the agent may use; admin keys reach every workspace.",
        details={"field": field},
    )


async def _live_key(store: Store, key_id: object) -> KeyRecord:
    """The record of the live key ``key_id`` names, or NOT_FOUND."""
    kid = key_id if isinstance(key_id, str) and len(key_id) <= 64 else ""
    record = await store.get_key(kid) if kid else None
    if record is None or record.revoked_at is not None:
        raise no_live_key(kid)
    return record


def no_live_key(key_id: str) -> NotFound:
    """NOT_FOUND for a key id that names no live key (the id redacted: it may be a whole pasted key)."""
    shown = redact(key_id)
    return NotFound(
        f"no live key has the id '{shown}'.",
        hint="List the keys ({op:list_keys}) for their ids.",
        details={"key_id": shown},
    )


async def bootstrap_admin_key(
    store: Store, data_dir: Path, env_key: str | None, now: float, *, persistent: bool = True
) -> str | None:
    """Make sure an admin can get in; returns the path where a new admin key was written, if one was.

    With ``MCP_LOCKS_ADMIN_KEY`` set, that key is registered (once) as the admin key
    ``admin-env`` and no file is written. Otherwise, when the store holds no live admin
    key, a new one is written to ``<data-dir>/admin.key`` (mode 0600), or to
    ``admin-2.key``, ``admin-3.key``... if that file exists: an existing key file is
    never replaced. A memory store (``persistent=False``) gets a temporary file instead,
    so a throwaway server never touches a real server's data dir.
    """
    if env_key:
        kid = parse_key_id(env_key)
        if kid is None:
            raise ValueError("MCP_LOCKS_ADMIN_KEY is not an mcp-locks key (mlk_<12 hex>_<43 chars>).")
        existing = await store.get_key(kid)
        if existing is None:
            await store.put_key(record_for(env_key, "admin-env", (), "admin", now))
        elif verify_key(env_key, existing) is None:
            raise ValueError("MCP_LOCKS_ADMIN_KEY has the id of a stored key but not its secret (or it was revoked).")
        return None
    if any(r.role == "admin" and r.revoked_at is None for r in await store.list_keys()):
        return None
    key, record = new_key("admin", (), "admin", now)
    path = _write_new_key_file(key, data_dir if persistent else None)
    await store.put_key(record)
    return path


def _write_new_key_file(key: str, data_dir: Path | None) -> str:
    """Write ``key`` to a new 0600 file (never over an existing one) and return its path."""
    if data_dir is None:
        fd, name = tempfile.mkstemp(prefix="mcp-locks-admin-", suffix=".key")
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return name
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    tmp = data_dir / f".admin.key.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        for n in range(1, 1000):
            path = data_dir / ("admin.key" if n == 1 else f"admin-{n}.key")
            try:
                os.link(tmp, path)  # fails if the name is taken: an existing key file is never replaced
            except FileExistsError:
                continue
            return str(path)
        raise RuntimeError(f"too many admin key files in {data_dir}")
    finally:
        os.unlink(tmp)
