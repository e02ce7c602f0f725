"""``mcp-locks connect HOST``: give an agent a key and tell its MCP host where the server is.

It prints the host's exact entry (or command), or with ``--write`` merges it into the host's config file.
Only click and the host table are imported at the top: ``mcp-locks --help`` loads this module.
"""

from __future__ import annotations

from pathlib import Path

import click

from mcp_locks.cli.connect_hosts import HOSTS, KEY_ENV, SERVER_NAME, Conn, Host, Target, launcher

__all__ = ["connect"]

_DEFAULT_URL = "http://127.0.0.1:8765"
#: Stands in for the key while the config file is checked, before a key is made.
_PLACEHOLDER_KEY = "mlk_000000000000_" + "0" * 43


def _server_url(url: str) -> str:
    """The server's base URL from ``--url`` (an MCP endpoint given by mistake is cut back to its base)."""
    base = url.strip().rstrip("/")
    if base.endswith(("/mcp", "/sse")):
        base = base[:-4]
    if not base.startswith(("http://", "https://")) or len(base) <= len("https://"):
        raise click.BadParameter(f"'{url}' is not an http:// or https:// URL.", param_hint="--url")
    return base


def _check_writable(host: Host, url: str) -> None:
    """Refuse before any key is made if the host's config file cannot take the entry (it does not parse...)."""
    from mcp_locks.cli.connect_files import load, merged

    target = host.target(Conn(url, _PLACEHOLDER_KEY, launcher()))
    merged(load(target), target)


def _the_key(agent: str | None, workspaces: tuple[str, ...], url: str, given: str | None, data_dir: Path | None) -> str:
    if given is not None:
        return given
    if not agent:
        raise click.UsageError("--agent NAME is needed to make a key (or give one with --key or --key-file).")
    from mcp_locks.cli.connect_key import make_key

    try:
        return make_key(agent, list(workspaces) or ["default"], url, data_dir)
    except click.ClickException as e:
        if not e.message.startswith("ALREADY_EXISTS"):  # the code is stable: say how to connect with the live key
            raise
        raise click.ClickException(f"{e.message} Or connect with that key: --key KEY or --key-file FILE.") from None


def _write(host: Host, target: Target) -> None:
    from mcp_locks.cli.connect_files import load, merged, snippet, write_private

    try:
        written = write_private(target.path, merged(load(target), target))
    except click.ClickException:
        click.echo(snippet(target), nl=False)  # the new key is shown once: never lose it to a failed write
        raise
    holds = "; it holds the agent's key, so only you may read it" if target.key_in_file else ""
    click.echo(f"wrote the {host.label} entry for server '{SERVER_NAME}' to {written} (mode 0600{holds})", err=True)
    if target.key_in_file and not target.path.is_absolute():
        click.echo(f"keep {target.path} out of version control (add it to .gitignore)", err=True)


def _show(host: Host, conn: Conn, target: Target) -> None:
    from mcp_locks.cli.connect_files import snippet

    if host.command is not None:
        click.echo(f"Run this (or use --write to put it in {target.path}):", err=True)
        click.echo(host.command(conn))
        return
    click.echo(f"Add this to {target.path} (or use --write to merge it in):", err=True)
    click.echo(snippet(target), nl=False)


@click.command()
@click.argument("host", type=click.Choice(list(HOSTS)), metavar="HOST")
@click.option("--agent", default=None, help="The agent's name: a key is made for it (unless --key is given).")
@click.option(
    "--workspace", "workspaces", multiple=True, help="A workspace the new key reaches (repeatable) [default: default]."
)
@click.option(
    "--write", is_flag=True, help="Merge the entry into the host's config file (mode 0600) instead of printing it."
)
@click.option(
    "--url", envvar="MCP_LOCKS_URL", default=_DEFAULT_URL, show_default=True, help="The server [env MCP_LOCKS_URL]."
)
@click.option("--key", default=None, help="Use this key instead of making one.")
@click.option(
    "--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Use the key in this file."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The server's data directory: its admin.key, or its keys when no server runs [env MCP_LOCKS_DATA_DIR]."
    " Without it, used only when --url is this machine (a loopback address).",
)
def connect(
    host: str,
    agent: str | None,
    workspaces: tuple[str, ...],
    write: bool,
    url: str,
    key: str | None,
    key_file: Path | None,
    data_dir: Path | None,
) -> None:
    """Connect an MCP host to mcp-locks: make the agent's key and print (or --write) the host's config entry.

    HOST is claude-code, claude-desktop, cursor, vscode, codex or gemini. The key is made through the
    running server's admin API (with MCP_LOCKS_ADMIN_KEY or the data dir's admin.key), or in the data dir
    when no server runs; the data dir is used only for a loopback --url or an explicit --data-dir (another
    host needs MCP_LOCKS_ADMIN_KEY, or --key). Project hosts' files (.mcp.json, .cursor/, .vscode/,
    .gemini/) are in the current directory; Claude Desktop's and Codex's are your user's. Running it again
    with --write updates the entry.

    Example: mcp-locks connect claude-code --agent alice --workspace default --write
    """
    from mcp_locks.cli.connect_key import given_key

    the_host, base, given = HOSTS[host], _server_url(url), given_key(key, key_file)
    if write:
        _check_writable(the_host, base)
    conn = Conn(base, _the_key(agent, workspaces, base, given, data_dir), launcher())
    target = the_host.target(conn)
    if write:
        _write(the_host, target)
    else:
        _show(the_host, conn, target)
    if not target.key_in_file:
        click.echo(f"Then set {KEY_ENV} where {the_host.label} starts (your shell profile, say):", err=True)
        click.echo(f"export {KEY_ENV}={conn.key}")
    if the_host.after:
        click.echo(the_host.after, err=True)
