"""``mcp-locks workspaces``: create, delete and list the workspaces of a server's data directory."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from mcp_locks.cli.admin import with_store
from mcp_locks.cli.config import data_dir_option, settings_from
from mcp_locks.cli.datadir import without_server
from mcp_locks.core.names import check_workspace_id
from mcp_locks.stores.base import Store

__all__ = ["workspaces"]


@click.group()
def workspaces() -> None:
    """Create and list workspaces in a server's data directory.

    Example: mcp-locks workspaces create team-a --description "the A team"
    """


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _checked_root(root: Path | None, data_dir: Path | None) -> str | None:
    """The folder to bind, resolved, once it is usable and clear of the server's data directory."""
    if root is None:
        return None
    bound = str(root.resolve())
    if not os.access(bound, os.R_OK | os.W_OK | os.X_OK):
        raise click.ClickException(f"{bound} must be readable and writable by the server.")
    data = settings_from(data_dir=data_dir).data_dir.resolve()
    if _overlaps(Path(bound), data):
        # Agents could read the lock database (every token) or write into it through the file tools.
        raise click.ClickException(f"{bound} overlaps the server's data directory {data}; bind another folder.")
    return bound


@workspaces.command("create")
@click.argument("workspace_id")
@click.option("--description", default=None, help="What the workspace is for.")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Bind the workspace to this existing project folder: its files are the workspace's files"
    " (default: a folder under the data dir).",
)
@data_dir_option
def workspaces_create(workspace_id: str, description: str | None, root: Path | None, data_dir: Path | None) -> None:
    """Create a workspace (a running server on the same data dir sees it at once).

    With --root, agents coordinate on a real project folder: reads and writes through mcp-locks obey the locks
    (edits made outside mcp-locks do not; they show as a new version). Symbolic links in it are never followed.

    Example: mcp-locks workspaces create team-a --root ~/src/project
    """
    bound = _checked_root(root, data_dir)

    async def action(store: Store) -> None:
        ws = check_workspace_id(workspace_id)
        if bound is not None:
            for other in await store.list_workspaces():
                if other.root is not None and _overlaps(Path(bound), Path(other.root)):
                    # Two lock tables over the same files would not see each other's locks.
                    raise click.ClickException(
                        f"{bound} overlaps the folder of workspace '{other.workspace_id}' ({other.root})."
                    )
        await store.create_workspace(ws, description, time.time(), root=bound)
        click.echo(f"created workspace {ws}" + (f" on {bound}" if bound else ""))

    with_store(data_dir, action)


@workspaces.command("delete")
@click.argument("workspace_id")
@data_dir_option
def workspaces_delete(workspace_id: str, data_dir: Path | None) -> None:
    """Delete a workspace that holds no live lock; keys lose access to it.

    With a server running on the data dir, use its API instead
    (DELETE /v1/workspaces/WORKSPACE_ID with an admin key).

    Example: mcp-locks workspaces delete team-a
    """
    settings = settings_from(data_dir=data_dir)

    async def action(store: Store) -> None:
        ws = check_workspace_id(workspace_id)
        if ws == "default":
            raise click.ClickException("the workspace 'default' cannot be deleted.")
        await store.delete_workspace(ws, time.time())
        click.echo(f"deleted workspace {ws}")

    if settings.postgres:  # the database's own lock keeps the delete safe beside running servers
        with_store(data_dir, action)
        return
    if not settings.db_path.exists():
        with_store(data_dir, action)  # says there is no database
    instead = f"delete through it (DELETE /v1/workspaces/{workspace_id[:63]} with an admin key), or stop it first."
    with without_server(settings.data_dir, instead):
        with_store(data_dir, action)


@workspaces.command("list")
@data_dir_option
def workspaces_list(data_dir: Path | None) -> None:
    """List the workspaces.

    Example: mcp-locks workspaces list --data-dir ./locks-data
    """

    async def action(store: Store) -> None:
        for rec in await store.list_workspaces():
            created = datetime.fromtimestamp(rec.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(f"{rec.workspace_id}\t{created}\t{rec.description or ''}")

    with_store(data_dir, action)
