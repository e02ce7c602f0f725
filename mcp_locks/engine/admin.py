"""Administration of keys and workspaces that is not a lock question: issuing keys, and the first admin key.

Shared by the admin API, ``mcp-locks keys create`` and the server's start.
"""

from __future__ import annotations

import logging
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

__all__ = ["BOOTSTRAP_AGENT", "ENV_AGENT", "bootstrap_admin_key", "issue_key", "no_live_key", "update_key_workspaces"]

log = logging.getLogger("mcp_locks.service")

#: The agent of the admin key a first start writes to ``<data-dir>/admin.key``.
BOOTSTRAP_AGENT = "admin"
#: The agent of the admin key registered from ``MCP_LOCKS_ADMIN_KEY``.
ENV_AGENT = "admin-env"


async def issue_key(store: Store, agent: object, workspaces: object, role: object, now: float) -> tuple[str, KeyRecord]:
    """Check a key request, store the new key's record, and return the key (to show once) with it.

    Shared by the admin API and ``mcp-locks keys create``: every workspace must exist,
    and an agent key needs at least one.
    """
    name = check_agent_name(agent)
    live = await _live_key_of(store, name)
    if live is not None:
        raise _has_live_key(name, live)
    if role not in ("agent", "admin"):
        raise InvalidArgument("role must be 'agent' or 'admin'.", details={"field": "role"})
    wss = _workspace_ids(workspaces, "workspaces")
    if role == "agent" and not wss:
        raise _no_workspace_left("an agent key needs at least one workspace.", "workspaces")
    await _check_exist(store, wss)
    key, record = new_key(name, wss, "admin" if role == "admin" else "agent", now)
    try:
        await store.put_key(record)
    except AlreadyExists as e:
        if e.details.get("field") != "agent":
            raise
        # Another creation for this agent (here or on another server) stored its key first: the store holds the rule.
        raise _has_live_key(name, await _live_key_of(store, name)) from None
    return key, record


async def _live_key_of(store: Store, agent: str) -> KeyRecord | None:
    """The agent's live key, if it has one."""
    return next((r for r in await store.list_keys() if r.agent == agent and r.revoked_at is None), None)


def _has_live_key(agent: str, live: KeyRecord | None) -> AlreadyExists:
    """ALREADY_EXISTS for a second live key for ``agent`` (``live``: its key, unless it was revoked meanwhile)."""
    # One live key per agent: the agent name then names one key, for ownership, retries and deadlocks.
    if live is None:
        return AlreadyExists(
            f"agent '{agent}' already had a live key a moment ago.",
            hint="List the keys ({op:list_keys}) and try again.",
            details={"field": "agent"},
        )
    return AlreadyExists(
        f"agent '{agent}' already has a live key ({live.key_id}).",
        hint=f"To replace it, revoke it first ({{op:revoke_key}} {live.key_id}); locks taken with it"
        " stay its own until they are released by an admin or expire.",
        details={"field": "agent", "key_id": live.key_id},
    )


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

    Servers started together on one database write one admin key between them: the store
    keeps one live key per agent, so the second to store its key is refused and removes its file.
    """
    if env_key:
        await _register_env_key(store, env_key, now)
        return None
    if await _has_live_admin(store):
        return None
    key, record = new_key(BOOTSTRAP_AGENT, (), "admin", now)
    path = _write_new_key_file(key, data_dir if persistent else None)
    try:
        await store.put_key(record)
    except AlreadyExists:
        os.unlink(path)  # a key nobody can use: no file may look like one
        if await _has_live_admin(store):
            log.info("another server wrote the admin key (it started at the same moment)")
        else:
            live = await _live_key_of(store, BOOTSTRAP_AGENT)
            log.warning(
                "no admin key was written: agent '%s' already has a live agent key (%s). Revoke it"
                " (mcp-locks keys revoke KEY_ID) and restart, or set MCP_LOCKS_ADMIN_KEY.",
                BOOTSTRAP_AGENT,
                live.key_id if live is not None else "revoked meanwhile",
            )
        return None
    return path


async def _has_live_admin(store: Store) -> bool:
    """Whether any live key has the admin role."""
    return any(r.role == "admin" and r.revoked_at is None for r in await store.list_keys())


async def _register_env_key(store: Store, env_key: str, now: float) -> None:
    """Register ``MCP_LOCKS_ADMIN_KEY`` as agent ``admin-env`` unless it is stored (ValueError if it cannot be)."""
    kid = parse_key_id(env_key)
    if kid is None:
        raise ValueError("MCP_LOCKS_ADMIN_KEY is not an mcp-locks key (mlk_<12 hex>_<43 chars>).")
    existing = await store.get_key(kid)
    if existing is None:
        existing = await _store_env_key(store, env_key, kid, now)
    if existing is not None and verify_key(env_key, existing) is None:
        raise ValueError("MCP_LOCKS_ADMIN_KEY has the id of a stored key but not its secret (or it was revoked).")


async def _store_env_key(store: Store, env_key: str, kid: str, now: float) -> KeyRecord | None:
    """Store the environment's admin key; returns the record if another server stored it meanwhile.

    The environment names the admin key: when it names a new one, the admin key it named before is
    revoked (one live key per agent), and the change is logged.
    """
    for _ in range(3):  # bounded: each round stores it, finds it, or retires the key named before
        try:
            await store.put_key(record_for(env_key, ENV_AGENT, (), "admin", now))
            return None
        except AlreadyExists:
            existing = await store.get_key(kid)
            if existing is not None:
                return existing  # another server, started at the same moment, stored it first
        old = await _live_key_of(store, ENV_AGENT)
        if old is not None and old.role != "admin":
            log.error(
                "MCP_LOCKS_ADMIN_KEY was not registered: agent '%s' has a live agent key (%s). Revoke it"
                " (mcp-locks keys revoke KEY_ID) and restart.",
                ENV_AGENT,
                old.key_id,
            )
            return None
        if old is not None and await store.revoke_key(old.key_id, now):
            log.warning(
                "MCP_LOCKS_ADMIN_KEY names a new key: the admin key it named before (%s) is revoked", old.key_id
            )
    log.error("MCP_LOCKS_ADMIN_KEY was not registered (other servers kept changing agent '%s'): restart.", ENV_AGENT)
    return None


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
