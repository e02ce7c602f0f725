"""The ``mcp-locks`` command line: the root group and where each command lives.

A host hook may run one ``mcp-locks`` process per edit, so starting one must stay cheap: this module imports
only click, and each command's module is imported when that command runs. Server commands (``serve``,
``stdio``, ``keys``, ``workspaces``) load the settings, stores and app; client commands (``exec``,
``status``, ``locks``, ``audit``, ``webhooks``) load only the REST client (``mcp_locks.cli.remote``).
"""

from __future__ import annotations

from pathlib import Path

import click

from mcp_locks.cli.lazy import LazyGroup

__all__ = ["COMMANDS", "main"]

#: Each command of ``mcp-locks`` and the ``module:attribute`` it is imported from when it runs.
COMMANDS = {
    "serve": "mcp_locks.cli.serve:serve",
    "stdio": "mcp_locks.cli.stdio:stdio",
    "workspaces": "mcp_locks.cli.workspaces:workspaces",
    "keys": "mcp_locks.cli.keys:keys",
    "connect": "mcp_locks.cli.connect:connect",
    "exec": "mcp_locks.cli.remote.exec:exec_",
    "status": "mcp_locks.cli.remote.locks:status",
    "locks": "mcp_locks.cli.remote.locks:locks_",
    "audit": "mcp_locks.cli.remote.audit:audit",
    "webhooks": "mcp_locks.cli.remote.webhooks:webhooks",
    "hook": "mcp_locks.cli.hook:hook",
    "hooks": "mcp_locks.cli.hooks_admin:hooks",
    "git-guard": "mcp_locks.cli.hooks_admin:git_guard",
}


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from mcp_locks.core.version import package_version  # reads the installed metadata only when asked for

    click.echo(f"mcp-locks, version {package_version()}")
    ctx.exit()


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A TOML file of settings (their names as keys); flags and MCP_LOCKS_* override it [env MCP_LOCKS_CONFIG].",
)
def main(config: Path | None) -> None:
    """Secure file locks for teams of AI agents, served over MCP.

    Example: mcp-locks serve --port 8765
    """
