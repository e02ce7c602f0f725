"""``mcp-locks stdio``: MCP on stdin/stdout, bridged to a running server or with the engine in this process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import click

from mcp_locks.cli.config import settings_from
from mcp_locks.cli.datadir import claim_data_dir
from mcp_locks.cli.probe import check_store
from mcp_locks.core.version import package_version
from mcp_locks.faces.stdio import KeyRefused, NoServer, run_bridge, run_embedded
from mcp_locks.observe.logging import configure_logging

__all__ = ["stdio"]


@click.command()
@click.option("--url", envvar="MCP_LOCKS_URL", default="http://127.0.0.1:8765", show_default=True,
              help="The server to bridge to [env MCP_LOCKS_URL].")  # fmt: skip
@click.option("--key", envvar="MCP_LOCKS_KEY", default=None, help="This agent's API key [env MCP_LOCKS_KEY].")
@click.option("--embedded", is_flag=True, help="Run the engine in this process instead (one client only).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --embedded: where locks are kept [env MCP_LOCKS_DATA_DIR].",
)
def stdio(url: str, key: str | None, embedded: bool, data_dir: Path | None) -> None:
    """Speak MCP on stdin/stdout, for clients that launch a command (Claude Desktop-style configs).

    By default it bridges to a running server, so every agent on the machine shares one
    lock table; with --embedded it runs the engine itself for a single client.

    Example: mcp-locks stdio --url http://127.0.0.1:8765 --key mlk_...
    """
    configure_logging("warning")  # stdout is the protocol: logs go to stderr, and only what matters
    if not embedded:
        try:
            anyio.run(run_bridge, url, key, package_version())
        except KeyRefused as e:
            # One line that starts with the code, as a host shows it in its server log.
            click.echo(str(e), err=True)
            sys.exit(1)
        except NoServer as e:
            raise click.ClickException(str(e)) from None
        return
    settings = settings_from(data_dir=data_dir)
    check_store(settings)
    claim = claim_data_dir(settings.data_dir)
    try:
        from mcp_locks.faces.app import build_service  # the engine and its store: only for --embedded

        anyio.run(run_embedded, build_service(settings), package_version())
    finally:
        os.close(claim)
