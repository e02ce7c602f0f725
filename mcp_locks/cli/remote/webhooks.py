"""``mcp-locks webhooks``: send a workspace's events to URLs (admin key)."""

from __future__ import annotations

from typing import Any

import click

from mcp_locks.cli.remote.common import client_options, session
from mcp_locks.core.records import WEBHOOK_EVENTS

__all__ = ["webhooks"]


def _line(hook: dict[str, Any]) -> str:
    return f"{hook['webhook_id']}\t{hook['url']}\t{','.join(hook['events'])}"


@click.group()
def webhooks() -> None:
    """Send a workspace's events to URLs (admin key)."""


@webhooks.command(name="create")
@client_options
@click.argument("url_to")
@click.option("--event", "events", multiple=True, required=True, type=click.Choice(list(WEBHOOK_EVENTS)),
              help="An event type to send (repeatable).")  # fmt: skip
def webhooks_create(url: str, key: str | None, workspace_id: str, url_to: str, events: tuple[str, ...]) -> None:
    """POST the workspace's EVENTS to URL_TO, signed (Standard Webhooks); prints the id and the secret once.

    Example: mcp-locks webhooks create https://hooks.example.com/locks --event lock.granted --event lock.expired
    """
    hook = session(url, key, workspace_id, lambda c: c.create_webhook(url_to, events))
    click.echo(_line(hook))
    click.echo(f"secret: {hook['secret']}  (shown only now: verify webhook-signature with it)")


@webhooks.command(name="list")
@client_options
def webhooks_list(url: str, key: str | None, workspace_id: str) -> None:
    """Print the workspace's webhooks, one per line."""
    for hook in session(url, key, workspace_id, lambda c: c.list_webhooks()):
        click.echo(_line(hook))


@webhooks.command(name="delete")
@client_options
@click.argument("webhook_id")
def webhooks_delete(url: str, key: str | None, workspace_id: str, webhook_id: str) -> None:
    """Stop sending to WEBHOOK_ID (its undelivered messages are dropped)."""
    hook = session(url, key, workspace_id, lambda c: c.delete_webhook(webhook_id))
    click.echo(f"deleted {hook['webhook_id']}")
