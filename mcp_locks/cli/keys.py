"""``mcp-locks keys``: create, list and revoke the per-agent API keys of a server's data directory."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mcp_locks.cli.admin import with_store
from mcp_locks.cli.config import data_dir_option
from mcp_locks.engine.admin import issue_key
from mcp_locks.stores.base import Store

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Create, list and revoke per-agent API keys in a server's data directory.

    Keys are shown once, at creation; only a digest is stored. A running server on the same
    data dir sees new keys and revocations at once.

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

    async def action(store: Store) -> None:
        key, record = await issue_key(store, agent, list(workspace_ids), role, time.time())
        click.echo(key)
        click.echo(f"key {record.key_id} for {record.agent} ({role}); shown once, keep it secret", err=True)

    with_store(data_dir, action)


@keys.command("list")
@data_dir_option
def keys_list(data_dir: Path | None) -> None:
    """List keys (ids, agents, roles, workspaces; never the keys).

    Example: mcp-locks keys list
    """

    async def action(store: Store) -> None:
        for r in await store.list_keys():
            state = "revoked" if r.revoked_at is not None else "active"
            reach = "*" if r.role == "admin" else ",".join(r.workspaces) or "-"  # "-": reaches none
            click.echo(f"{r.key_id}\t{r.agent}\t{r.role}\t{reach}\t{state}")

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
