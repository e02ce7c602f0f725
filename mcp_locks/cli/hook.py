"""``mcp-locks hook HOST``: the command a host runs before each tool call (and at a session's end).

The console script runs ``mcp-locks hook HOST`` without click (:mod:`mcp_locks.cli.entry`); this click
command is what ``--help`` and malformed command lines reach, and it answers a hook the same way.
"""

from __future__ import annotations

import sys

import click

from mcp_locks.cli.entry import answer_hook
from mcp_locks.hooks.payload import HOSTS

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
    sys.exit(answer_hook(host))
