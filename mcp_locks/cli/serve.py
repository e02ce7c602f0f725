"""``mcp-locks serve``: the server, on one socket, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import click
import uvicorn

from mcp_locks.cli.config import settings_from
from mcp_locks.cli.connect_hosts import HOSTS
from mcp_locks.cli.datadir import claim_data_dir
from mcp_locks.cli.probe import check_postgres, check_store, without_password
from mcp_locks.cli.runtime import tune_gc
from mcp_locks.core.version import package_version
from mcp_locks.faces.app import STARTUP_ERROR, build_app
from mcp_locks.faces.auth import is_loopback
from mcp_locks.observe.logging import configure_logging
from mcp_locks.settings import Settings, default_data_dir

__all__ = ["serve"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}. Pick another --port.") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: Any) -> None:
        super().__init__(config)
        self.state = state  # the app's: where its lifespan leaves a reason not to serve

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if getattr(self.state, STARTUP_ERROR, None):
            self.should_exit = True  # the lifespan found it must not serve; _run says why

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises a caught SIGTERM after shutting down; a requested stop is a clean exit (status 0).
        self._captured_signals.clear()


def _base_url(host: str, port: int) -> str:
    """The URL a client on this machine uses: a wildcard address is reached through loopback."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _next_step(settings: Settings, base: str) -> str:
    """The command that connects a first agent to this server (flags only where they differ from its defaults)."""
    step = "mcp-locks connect claude-code --agent NAME"
    if base != "http://127.0.0.1:8765":
        step += f" --url {base}"
    if settings.store == "sqlite" and settings.data_dir != default_data_dir():
        step += f" --data-dir {settings.data_dir}"  # where it finds the admin key, or the keys when it is stopped
    return f"Next: {step}  (hosts: {', '.join(HOSTS)})"


def _announce(settings: Settings, sock: socket.socket) -> None:
    """Say on stderr where the server listens, where its data goes, how clients authenticate and what to do next.

    Never a key: stderr often ends up in logs.
    """
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    base = _base_url(host, port)
    where = {"sqlite": f"{settings.db_path}", "memory": "memory (nothing is kept after exit)"}.get(
        settings.store, f"PostgreSQL {without_password(settings.store)}, files in {settings.files_dir}"
    )
    click.echo(f"mcp-locks {package_version()} listening on http://{shown}:{port}/mcp", err=True)
    click.echo(f"  MCP:       {base}/mcp  (legacy SSE: {base}/sse)", err=True)
    click.echo(f"  REST:      {base}/v1  (OpenAPI: {base}/v1/openapi.json)", err=True)
    click.echo(f"  dashboard: {base}/", err=True)
    click.echo(f"data: {where}", err=True)
    if settings.insecure_no_auth:
        click.echo("WARNING: no authentication (--insecure-no-auth): any local process can take or break locks",
                   err=True)  # fmt: skip
    elif settings.admin_key:
        click.echo("auth: API keys required; the admin key is MCP_LOCKS_ADMIN_KEY", err=True)
    else:
        click.echo(
            f"auth: API keys required; the first start writes an admin key to {settings.data_dir / 'admin.key'}"
            " (the log names the file if it writes one)",
            err=True,
        )
    click.echo(_next_step(settings, base), err=True)


def _run(settings: Settings, sock: socket.socket) -> None:
    """Build the app and serve it on ``sock`` until told to stop."""
    app = build_app(settings)
    tune_gc()
    config = uvicorn.Config(
        app,
        log_level="warning",
        log_config=None,  # uvicorn's records go through our handler, which redacts secrets
        access_log=False,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    _Server(config, app.state).run(sockets=[sock])
    if error := getattr(app.state, STARTUP_ERROR, None):
        raise click.ClickException(error)


@click.command()
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1; env MCP_LOCKS_HOST].")
@click.option("--port", type=int, default=None, help="Port (0 = any free port) [default: 8765; env MCP_LOCKS_PORT].")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where locks are kept [default: {default_data_dir()}; env MCP_LOCKS_DATA_DIR].",
)
@click.option(
    "--store",
    metavar="sqlite|memory|postgresql://...",
    default=None,
    help="sqlite (durable, default), memory (forgets everything on exit), or a PostgreSQL URL: several servers on"
    " one database act as one (see --pg-files for where file content goes).",
)
@click.option(
    "--pg-files",
    type=click.Choice(["database", "folder"]),
    default=None,
    help="With a PostgreSQL store: file content in the database (default; each server's --data-dir holds its own"
    " copy) or only in --data-dir, which every server must then share.",
)
@click.option(
    "--sync",
    type=click.Choice(["normal", "full"]),
    default=None,
    help="normal: commits survive a crash of the server; full: also a power loss (slower).",
)
@click.option("--max-timeout", type=float, default=None, help="Longest lease a client may ask for, in seconds.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    default=None,
    help="Serve without API keys: for local experiments only; refused unless --host is a loopback address.",
)
@click.option("--rate-limit", default=None, help="Per-key request limit, e.g. '100/second' [default: none].")
@click.option("--max-body", type=int, default=None, help="Largest request body in bytes [default: 1 MiB].")
@click.option("--max-file-size", type=int, default=None, help="Largest file the file store takes [default: 1 GiB].")
@click.option("--chunk-size", type=int, default=None, help="Largest upload chunk in bytes [default: 16 MiB].")
@click.option("--upload-ttl", type=float, default=None, help="Seconds before an unfinished upload is dropped.")
@click.option(
    "--quota-bytes",
    type=int,
    default=None,
    help="Most bytes of files per workspace, unfinished uploads' chunks included [default: none].",
)
@click.option("--quota-files", type=int, default=None, help="Most files per workspace [default: none].")
@click.option(
    "--max-sessions-per-key", type=int, default=None, help="Most MCP sessions one key holds open [default: 32]."
)
@click.option(
    "--max-listens-per-key", type=int, default=None, help="Most MCP listen streams one key holds open [default: 16]."
)
@click.option("--audit/--no-audit", default=None, help="Keep the audit log of every event [default: on].")
@click.option("--audit-days", type=float, default=None, help="Days audit entries are kept [default: 30].")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="Log lines as text or JSON.")
@click.option("--metrics-public", is_flag=True, default=None, help="Serve /metrics without a key (default: admin key).")
@click.option(
    "--webhooks-allow-private",
    is_flag=True,
    default=None,
    help="Allow webhook receivers on loopback/private addresses [env MCP_LOCKS_WEBHOOKS_ALLOW_PRIVATE=1].",
)
def serve(**flags: Any) -> None:
    """Serve MCP at /mcp, REST under /v1, the dashboard at /, /metrics and /healthz until Ctrl-C or SIGTERM.

    Example: mcp-locks serve --host 127.0.0.1 --port 8765 --data-dir ./locks-data
    """
    settings = settings_from(**flags)
    if settings.insecure_no_auth and not is_loopback(settings.host):
        raise click.ClickException(
            f"--insecure-no-auth is refused on {settings.host}: anyone who can reach it could take or break every"
            " lock. Bind to 127.0.0.1, or use API keys."
        )
    configure_logging(settings.log_level, settings.log_format)
    claim: int | None = None
    if settings.store == "sqlite":
        check_store(settings)
        claim = claim_data_dir(settings.data_dir)  # held until the server stops (or the process dies)
    elif settings.postgres:
        check_postgres(settings.store)  # several servers share the database: there is no folder to claim
    try:
        sock = _bind(settings.host, settings.port)
        _announce(settings, sock)
        _run(settings, sock)
    finally:
        if claim is not None:
            os.close(claim)
    click.echo("mcp-locks stopped", err=True)
