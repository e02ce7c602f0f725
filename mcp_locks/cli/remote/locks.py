"""``mcp-locks status`` and ``mcp-locks locks``: who holds what, as a script reads it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from mcp_locks.cli.remote.common import client_options, session
from mcp_locks.client.rest import LockClient

__all__ = ["locks_", "status"]

#: Pages of held locks ``locks`` reads at most (10 million locks at 1,000 a page).
MAX_PAGES = 10_000


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%H:%M:%SZ")


def _row(lock: dict[str, Any], what: str) -> str:
    label = f" ({lock['label']})" if lock.get("label") else ""
    return (
        f"{what}: {lock['owner']}{label} {lock['mode']}/{lock['depth']} until {_when(lock['expires_at'])}"
        f" fence {lock['fence']} {lock['lock_id']}"
    )


@click.command()
@client_options
@click.argument("node_id")
def status(url: str, key: str | None, workspace_id: str, node_id: str) -> None:
    """Print who holds NODE_ID, until when, and who waits.

    Example: mcp-locks status reports/q3.md
    """
    st = session(url, key, workspace_id, lambda c: c.status(node_id))
    click.echo(f"{st['node_id']}: {'locked (' + st['mode'] + ')' if st['locked'] else 'free'}")
    for kind in ("holders", "covering"):
        for h in st[kind]:
            click.echo("  " + _row(h, "held" if kind == "holders" else "tree above"))
    for w in st["waiters"]:
        label = f" ({w['label']})" if w.get("label") else ""
        click.echo(f"  waiting #{w['position']}: {w['owner']}{label} {w['mode']} since {_when(w['waiting_since'])}")
    if st["locks_below"]:
        click.echo(f"  {st['locks_below']} lock(s) below")


async def _all_locks(c: LockClient, prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await c.list_locks(prefix, cursor=cursor)
        out += page["locks"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    return out


@click.command(name="locks")
@client_options
@click.argument("prefix", default="")
def locks_(url: str, key: str | None, workspace_id: str, prefix: str) -> None:
    """Print the held locks (under PREFIX), one per line.

    Example: mcp-locks locks reports/
    """
    for lock in session(url, key, workspace_id, lambda c: _all_locks(c, prefix)):
        click.echo(f"{lock['node_id']}\t" + _row(lock, "held"))
