"""The ``mcp-locks`` command line."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mcp_locks import __version__
from mcp_locks.cli.remote import client_commands
from mcp_locks.cli.runtime import tune_gc
from mcp_locks.core.errors import LockError
from mcp_locks.core.names import check_workspace_id
from mcp_locks.engine.admin import issue_key
from mcp_locks.faces.app import build_app
from mcp_locks.faces.auth import is_loopback
from mcp_locks.observe.logging import configure_logging
from mcp_locks.settings import Settings, default_data_dir, load_settings
from mcp_locks.stores.base import Store
from mcp_locks.stores.sqlite import SqliteStore

__all__ = ["main"]


def _settings(**flags: Any) -> Settings:
    """Settings from the flags given, then MCP_LOCKS_*, then the config file, then the defaults.

    A bad value (or a missing config file) is a clear message.
    """
    ctx = click.get_current_context(silent=True)
    config = ctx.find_root().params.get("config") if ctx is not None else None
    try:
        return load_settings(config, **{k: v for k, v in flags.items() if v is not None})
    except ValueError as e:  # pydantic's ValidationError: names the setting and the rule
        raise click.ClickException(str(e)) from None


def _without_password(url: str) -> str:
    """A database URL fit to print."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _check_postgres(url: str) -> None:
    """Connect once before listening, so an unreachable database is a clear message, not a traceback."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as e:
        raise click.ClickException(f"cannot reach PostgreSQL at {_without_password(url)}: {e}") from None


def _check_store(settings: Settings) -> None:
    """Open the database once before listening, so a bad data dir is a clear message, not a traceback."""
    import sqlite3

    import anyio

    from mcp_locks.stores.sqlite import SqliteStore

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = SqliteStore(settings.db_path, sync=settings.sync)

        async def probe() -> None:
            await store.open()
            await store.close()

        anyio.run(probe)
    except (OSError, sqlite3.Error, RuntimeError) as e:
        raise click.ClickException(
            f"cannot use the lock database {settings.db_path}: {e}. "
            "Fix its permissions, move it aside, or pass another --data-dir."
        ) from None


_SERVER_LOCK = "server.lock"


def _claim_data_dir(data_dir: Path) -> int:
    """Hold ``<data-dir>/server.lock`` for the life of this process: one server per data dir.

    Two servers on one SQLite database would each run an actor per workspace and
    grant the same lock twice; the kernel drops the claim when the process dies, kill -9 included.
    """
    import fcntl

    fd = os.open(data_dir / _SERVER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise click.ClickException(
            f"another mcp-locks server (pid {pid}) or command is using {data_dir}."
            " Stop it or let it finish, or pass another --data-dir."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


@contextlib.contextmanager
def _without_server(data_dir: Path, instead: str) -> Iterator[None]:
    """Hold the data dir's claim shared while a command changes what a server would cache.

    Refuses (with ``instead``) if a server holds it; a server starting meanwhile waits its turn.
    """
    import fcntl

    try:
        fd = os.open(data_dir / _SERVER_LOCK, os.O_RDONLY | os.O_CREAT, 0o600)
    except OSError as e:
        raise click.ClickException(f"cannot open {data_dir / _SERVER_LOCK}: {e.strerror}.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(f"a server is running on {data_dir}: {instead}") from None
        yield
    finally:
        os.close(fd)


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


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises a caught SIGTERM after shutting down; a requested stop is a clean exit (status 0).
            self._captured_signals.clear()

    return Server


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcp-locks")
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


@main.command()
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
    import uvicorn

    _Server = _server_class()
    settings = _settings(**flags)
    if settings.insecure_no_auth and not is_loopback(settings.host):
        raise click.ClickException(
            f"--insecure-no-auth is refused on {settings.host}: anyone who can reach it could take or break every"
            " lock. Bind to 127.0.0.1, or use API keys."
        )
    configure_logging(settings.log_level, settings.log_format)
    claim: int | None = None
    if settings.store == "sqlite":
        _check_store(settings)
        claim = _claim_data_dir(settings.data_dir)  # held until the server stops (or the process dies)
    elif settings.postgres:
        _check_postgres(settings.store)  # several servers share the database: there is no folder to claim
    try:
        sock = _bind(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        where = {"sqlite": f"{settings.db_path}", "memory": "memory (nothing is kept after exit)"}.get(
            settings.store, f"PostgreSQL {_without_password(settings.store)}, files in {settings.files_dir}"
        )
        click.echo(f"mcp-locks {__version__} listening on http://{shown}:{port}/mcp", err=True)
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
        _Server(config).run(sockets=[sock])
    finally:
        if claim is not None:
            os.close(claim)
    click.echo("mcp-locks stopped", err=True)


@main.command()
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
    import anyio

    from mcp_locks.faces.stdio import NoServer, run_bridge, run_embedded

    configure_logging("warning")  # stdout is the protocol: logs go to stderr, and only what matters
    if not embedded:
        try:
            anyio.run(run_bridge, url, key, __version__)
        except NoServer as e:
            raise click.ClickException(str(e)) from None
        return
    settings = _settings(data_dir=data_dir)
    _check_store(settings)
    claim = _claim_data_dir(settings.data_dir)
    try:
        from mcp_locks.faces.app import build_service

        anyio.run(run_embedded, build_service(settings), __version__)
    finally:
        os.close(claim)


_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"The server's data directory [default: {default_data_dir()}; env MCP_LOCKS_DATA_DIR].",
)


def _with_store(data_dir: Path | None, action: Callable[[Store], Awaitable[None]]) -> None:
    """Run ``action`` on the store of a data dir, or on the PostgreSQL database ``MCP_LOCKS_STORE`` names.

    A running server sees the result.
    """
    import sqlite3

    import anyio

    settings = _settings(data_dir=data_dir)
    store: Store
    if settings.postgres:
        from mcp_locks.stores.postgres import PostgresStore

        _check_postgres(settings.store)
        store = PostgresStore(settings.store, schema=settings.pg_schema, files=settings.pg_files)
    elif not settings.db_path.exists():
        raise click.ClickException(
            f"no lock database at {settings.db_path}. Start the server once (mcp-locks serve), or pass --data-dir."
        )
    else:
        store = SqliteStore(settings.db_path, sync=settings.sync)

    async def run() -> None:
        await store.open()
        try:
            await action(store)
        finally:
            await store.close()

    try:
        anyio.run(run)
    except LockError as e:
        raise click.ClickException(e.text()) from None
    except (OSError, sqlite3.Error) as e:
        raise click.ClickException(f"cannot use the lock database {settings.db_path}: {e}.") from None
    except Exception as e:  # psycopg's errors, when the store is PostgreSQL
        if not settings.postgres:
            raise
        raise click.ClickException(f"cannot use the lock database: {e}.") from None


@main.group()
def workspaces() -> None:
    """Create and list workspaces in a server's data directory.

    Example: mcp-locks workspaces create team-a --description "the A team"
    """


@workspaces.command("create")
@click.argument("workspace_id")
@click.option("--description", default=None, help="What the workspace is for.")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Bind the workspace to this existing project folder: its files are the workspace's files"
    " (default: a folder under the data dir).",
)
@_data_dir_option
def workspaces_create(workspace_id: str, description: str | None, root: Path | None, data_dir: Path | None) -> None:
    """Create a workspace (a running server on the same data dir sees it at once).

    With --root, agents coordinate on a real project folder: reads and writes through mcp-locks obey the locks
    (edits made outside mcp-locks do not; they show as a new version). Symbolic links in it are never followed.

    Example: mcp-locks workspaces create team-a --root ~/src/project
    """
    bound = str(root.resolve()) if root is not None else None
    if bound is not None and not os.access(bound, os.R_OK | os.W_OK | os.X_OK):
        raise click.ClickException(f"{bound} must be readable and writable by the server.")
    data = _settings(data_dir=data_dir).data_dir.resolve()

    def overlaps(a: Path, b: Path) -> bool:
        return a == b or a in b.parents or b in a.parents

    if bound is not None and overlaps(Path(bound), data):
        # Agents could read the lock database (every token) or write into it through the file tools.
        raise click.ClickException(f"{bound} overlaps the server's data directory {data}; bind another folder.")

    async def action(store: Store) -> None:
        ws = check_workspace_id(workspace_id)
        if bound is not None:
            for other in await store.list_workspaces():
                if other.root is not None and overlaps(Path(bound), Path(other.root)):
                    # Two lock tables over the same files would not see each other's locks.
                    raise click.ClickException(
                        f"{bound} overlaps the folder of workspace '{other.workspace_id}' ({other.root})."
                    )
        await store.create_workspace(ws, description, time.time(), root=bound)
        click.echo(f"created workspace {ws}" + (f" on {bound}" if bound else ""))

    _with_store(data_dir, action)


@workspaces.command("delete")
@click.argument("workspace_id")
@_data_dir_option
def workspaces_delete(workspace_id: str, data_dir: Path | None) -> None:
    """Delete a workspace that holds no live lock; keys lose access to it.

    With a server running on the data dir, use its API instead
    (DELETE /v1/workspaces/WORKSPACE_ID with an admin key).

    Example: mcp-locks workspaces delete team-a
    """
    settings = _settings(data_dir=data_dir)

    async def action(store: Store) -> None:
        ws = check_workspace_id(workspace_id)
        if ws == "default":
            raise click.ClickException("the workspace 'default' cannot be deleted.")
        await store.delete_workspace(ws, time.time())
        click.echo(f"deleted workspace {ws}")

    if settings.postgres:  # the database's own lock keeps the delete safe beside running servers
        _with_store(data_dir, action)
        return
    if not settings.db_path.exists():
        _with_store(data_dir, action)  # says there is no database
    instead = f"delete through it (DELETE /v1/workspaces/{workspace_id[:63]} with an admin key), or stop it first."
    with _without_server(settings.data_dir, instead):
        _with_store(data_dir, action)


@workspaces.command("list")
@_data_dir_option
def workspaces_list(data_dir: Path | None) -> None:
    """List the workspaces.

    Example: mcp-locks workspaces list --data-dir ./locks-data
    """

    async def action(store: Store) -> None:
        for rec in await store.list_workspaces():
            created = datetime.fromtimestamp(rec.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            click.echo(f"{rec.workspace_id}\t{created}\t{rec.description or ''}")

    _with_store(data_dir, action)


@main.group()
def keys() -> None:
    """Create, list and revoke per-agent API keys in a server's data directory.

    Keys are shown once, at creation; only a digest is stored. A running server on the same
    data dir sees new keys and revocations at once.

    Example: mcp-locks keys create --agent alice --workspace default
    """


@keys.command("create")
@click.option("--agent", required=True, help="The agent's name: the owner of every lock taken with this key.")
@click.option("--workspace", "workspace_ids", multiple=True, help="A workspace the key reaches (repeatable).")
@click.option("--role", type=click.Choice(["agent", "admin"]), default="agent", show_default=True)
@_data_dir_option
def keys_create(agent: str, workspace_ids: tuple[str, ...], role: str, data_dir: Path | None) -> None:
    """Create a key and print it once (store it now: it cannot be shown again).

    Example: mcp-locks keys create --agent alice --workspace default --workspace team-a
    """

    async def action(store: Store) -> None:
        key, record = await issue_key(store, agent, list(workspace_ids), role, time.time())
        click.echo(key)
        click.echo(f"key {record.key_id} for {record.agent} ({role}); shown once, keep it secret", err=True)

    _with_store(data_dir, action)


@keys.command("list")
@_data_dir_option
def keys_list(data_dir: Path | None) -> None:
    """List keys (ids, agents, roles, workspaces; never the keys).

    Example: mcp-locks keys list
    """

    async def action(store: Store) -> None:
        for r in await store.list_keys():
            state = "revoked" if r.revoked_at is not None else "active"
            reach = "*" if r.role == "admin" else ",".join(r.workspaces) or "-"  # "-": reaches none
            click.echo(f"{r.key_id}\t{r.agent}\t{r.role}\t{reach}\t{state}")

    _with_store(data_dir, action)


@keys.command("revoke")
@click.argument("key_id")
@_data_dir_option
def keys_revoke(key_id: str, data_dir: Path | None) -> None:
    """Revoke a key: it stops working at once.

    Example: mcp-locks keys revoke 3f9a1c0b7d2e
    """

    async def action(store: Store) -> None:
        if not await store.revoke_key(key_id, time.time()):
            raise click.ClickException(f"no active key '{key_id[:32]}'. See: mcp-locks keys list")
        click.echo(f"revoked {key_id}")

    _with_store(data_dir, action)


client_commands(main)
