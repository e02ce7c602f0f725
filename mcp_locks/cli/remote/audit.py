"""``mcp-locks audit tail``: a workspace's event log, oldest first, and live with ``-f``."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from mcp_locks.cli.remote.common import client_options, session
from mcp_locks.client.rest import LockClient

__all__ = ["audit", "format_event"]


def format_event(ev: dict[str, Any]) -> str:
    """One log line for an event: time, seq, kind, node, agent, then what else it says."""
    agent = ev["agent"] + (f" ({ev['label']})" if ev.get("label") else "")
    extra = [
        f"{k}={ev[k]}"
        for k in ("mode", "fence", "version", "waited_ms", "held_ms", "code", "by", "reason", "lock_id")
        if ev.get(k) is not None
    ]
    return f"{ev['at']}  #{ev['seq']:<6} {ev['kind']:<10} {ev['node_id']}  {agent}  {' '.join(extra)}".rstrip()


async def _tail(c: LockClient, lines: int, node_id: str | None, agent: str | None, follow: bool) -> None:
    page = await c.audit_log(node_id=node_id, agent=agent, limit=lines)
    events = list(reversed(page["events"]))
    for ev in events:
        click.echo(format_event(ev))
    if not follow:
        return
    last = max((ev["seq"] for ev in events), default=None)
    if last is None:  # an empty (or filtered-out) log: follow from its current end
        newest = await c.audit_log(limit=1)
        last = newest["events"][0]["seq"] if newest["events"] else 0
    async for ev in c.events(after=last):
        if (node_id is None or ev["node_id"] == node_id) and (agent is None or ev["agent"] == agent):
            click.echo(format_event(ev))


@click.group()
def audit() -> None:
    """Read a workspace's event log."""


@audit.command(name="tail")
@client_options
@click.option("-n", "lines", type=click.IntRange(1, 1000), default=20, show_default=True, help="Events to show.")
@click.option("--node", "node_id", default=None, help="Only this node's events.")
@click.option("--agent", default=None, help="Only this agent's events.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen (Ctrl-C to stop).")
def audit_tail(
    url: str, key: str | None, workspace_id: str, lines: int, node_id: str | None, agent: str | None, follow: bool
) -> None:
    """Print the last events of the log, oldest first; with -f, follow it live.

    Example: mcp-locks audit tail -f --node reports/q3.md
    """
    with contextlib.suppress(KeyboardInterrupt):
        session(url, key, workspace_id, lambda c: _tail(c, lines, node_id, agent, follow))
