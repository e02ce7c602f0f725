"""``mcp-locks hook HOST``: the command a host runs before each tool call (and at a session's end).

It imports click and :mod:`mcp_locks.hooks` only; the REST client is loaded only for a call that writes files
in a project (see :mod:`mcp_locks.hooks.run`), so a hook on every tool call stays cheap.
"""

from __future__ import annotations

import sys

import click

from mcp_locks.hooks.payload import HOSTS, MAX_INPUT
from mcp_locks.hooks.run import run_hook

__all__ = ["hook"]


@click.command()
@click.argument("host", type=click.Choice(HOSTS))
def hook(host: str) -> None:
    """Answer HOST's hook input on stdin: lock the files the tool call writes, or refuse the call.

    Install it as a PreToolUse hook (Cursor: preToolUse; Gemini CLI: BeforeTool) for the host's edit tools,
    and as its SessionEnd hook to release the session's locks. Settings come from .mcp-locks.toml in the
    project root, MCP_LOCKS_URL and MCP_LOCKS_KEY. Details: docs/hooks.md.

    Example: mcp-locks hook claude-code < payload.json
    """
    data = sys.stdin.buffer.read(MAX_INPUT + 1)
    text = data[:MAX_INPUT].decode("utf-8", errors="replace")  # cut short, it is no JSON: refused as unreadable
    reply = run_hook(host, text)
    if reply.stderr:
        click.echo(reply.stderr, err=True)
    click.echo(reply.stdout)
    sys.exit(reply.exit_code)
