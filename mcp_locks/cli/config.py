"""The server commands' settings: from the flags given, then MCP_LOCKS_*, then the config file, then the defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mcp_locks.settings import Settings, default_data_dir, load_settings

__all__ = ["data_dir_option", "settings_from"]


def settings_from(**flags: Any) -> Settings:
    """Settings from the flags given (``None``: not given), then MCP_LOCKS_*, then ``--config``, then the defaults.

    A bad value (or a missing config file) is a clear message.
    """
    ctx = click.get_current_context(silent=True)
    config = ctx.find_root().params.get("config") if ctx is not None else None
    try:
        return load_settings(config, **{k: v for k, v in flags.items() if v is not None})
    except ValueError as e:  # pydantic's ValidationError: names the setting and the rule
        raise click.ClickException(str(e)) from None


#: ``--data-dir`` for the commands that work on a server's data directory.
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"The server's data directory [default: {default_data_dir()}; env MCP_LOCKS_DATA_DIR].",
)
