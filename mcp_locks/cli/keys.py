"""``mcp-locks keys``: create, list, update and revoke the per-agent API keys of a server's data directory."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mcp_locks.cli.admin import with_store
from mcp_locks.cli.config import data_dir_option
from mcp_locks.core.keys import KeyRecord
from mcp_locks.engine.admin import issue_key, update_key_workspaces
from mcp_locks.stores.base import Store

__all__ = ["create_in_data_dir", "keys"]


def create_in_data_dir(data_dir: Path | None, agent: str, workspace_ids: list[str], role: str) -> tuple[str, KeyRecord]:
    """Create a key in the store of ``data_dir`` (or MCP_LOCKS_STORE's database): the key (show it once), its record.

    Shared by ``keys create`` and ``mcp-locks connect``; refusals are one-line errors with their code.
    """
    made: list[tuple[str, KeyRecord]] = []

    async def action(store: Store) -> None:
        made.append(await issue_key(store, agent, workspace_ids, role, time.time()))

    with_store(data_dir, action)
    return made[0]


@click.group()
def keys() -> None:
    """Create, list, update and revoke per-agent API keys in a server's data directory.

    Keys are shown once, at creation; only a digest is stored. A running server on the same
    data dir sees new keys, changed workspaces and revocations at once.

    Example: mcp-locks keys create --agent alice --workspace default
    """


@keys.command("create")
@click.option("--agent", required=True, help="The agent's name: the owner of every lock taken with this key.")
@click.option("--workspace", "workspace_ids", multiple=True, help="A workspace the key reaches (repeatable).")
@click.option("--role", type=click.Choice(["agent", "admin"]), default="agent", show_default=True)
@data_dir_option
def keys_create(agent: str, workspace_ids: tuple[str, ...], role: str, data_dir: Path | None) -> None:
    """Create a key and print it once (store it now: it cannot be shown again).

    Example: mcp-locks keys create --agent alice --workspace default --workspace team-a
    """
    key, record = create_in_data_dir(data_dir, agent, list(workspace_ids), role)
    click.echo(key)
    click.echo(f"key {record.key_id} for {record.agent} ({role}); shown once, keep it secret", err=True)


@keys.command("list")
@click.option("--all", "show_all", is_flag=True, help="Show revoked keys too.")
@data_dir_option
def keys_list(show_all: bool, data_dir: Path | None) -> None:
    """List the live keys (ids, agents, roles, workspaces; never the keys); --all adds the revoked ones.

    Example: mcp-locks keys list --all
    """

    async def action(store: Store) -> None:
        for r in await store.list_keys():
            if r.revoked_at is not None and not show_all:
                continue
            state = "revoked" if r.revoked_at is not None else "active"
            reach = "*" if r.role == "admin" else ",".join(r.workspaces) or "-"  # "-": reaches none
            click.echo(f"{r.key_id}\t{r.agent}\t{r.role}\t{reach}\t{state}")

    with_store(data_dir, action)


@keys.command("update")
@click.argument("key_id")
@click.option("--add-workspace", "added", multiple=True, help="A workspace the key reaches from now on (repeatable).")
@click.option("--remove-workspace", "removed", multiple=True, help="A workspace the key loses (repeatable).")
@data_dir_option
def keys_update(key_id: str, added: tuple[str, ...], removed: tuple[str, ...], data_dir: Path | None) -> None:
    """Give a live agent key more workspaces or take some away, without revoking it.

    Added workspaces must exist; the key keeps at least one. A running server on the same data dir
    checks the key's next request against its new workspaces.

    Example: mcp-locks keys update 3f9a1c0b7d2e --add-workspace team-b --remove-workspace team-a
    """

    async def action(store: Store) -> None:
        r = await update_key_workspaces(store, key_id, list(added), list(removed))
        click.echo(f"key {r.key_id} ({r.agent}) reaches {','.join(r.workspaces)}")

    with_store(data_dir, action)


@keys.command("revoke")
@click.argument("key_id")
@data_dir_option
def keys_revoke(key_id: str, data_dir: Path | None) -> None:
    """Revoke a key: it stops working at once.

    Example: mcp-locks keys revoke 3f9a1c0b7d2e
    """

    async def action(store: Store) -> None:
        if not await store.revoke_key(key_id, time.time()):
            raise click.ClickException(f"no active key '{key_id[:32]}'. See: mcp-locks keys list")
        click.echo(f"revoked {key_id}")

    with_store(data_dir, action)
