"""Running an admin command's action on a server's store, beside (or without) the running server."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import click

from mcp_locks.cli.config import settings_from
from mcp_locks.cli.probe import check_postgres
from mcp_locks.cli.words import CLI_WORDS
from mcp_locks.core.errors import LockError
from mcp_locks.settings import Settings
from mcp_locks.stores.base import Store
from mcp_locks.stores.sqlite import SqliteStore

__all__ = ["with_store"]


def _open_store(settings: Settings) -> Store:
    if settings.postgres:
        from mcp_locks.stores.postgres import PostgresStore

        check_postgres(settings.store)
        return PostgresStore(settings.store, schema=settings.pg_schema, files=settings.pg_files)
    if not settings.db_path.exists():
        raise click.ClickException(
            f"no lock database at {settings.db_path}. Start the server once (mcp-locks serve), or pass --data-dir."
        )
    return SqliteStore(settings.db_path, sync=settings.sync)


def with_store(data_dir: Path | None, action: Callable[[Store], Awaitable[None]]) -> None:
    """Run ``action`` on the store of a data dir, or on the PostgreSQL database ``MCP_LOCKS_STORE`` names.

    A running server sees the result. Refusals and database errors are messages, not tracebacks.
    """
    settings = settings_from(data_dir=data_dir)
    store = _open_store(settings)

    async def run() -> None:
        await store.open()
        try:
            await action(store)
        finally:
            await store.close()

    try:
        anyio.run(run)
    except LockError as e:
        raise click.ClickException(e.text(CLI_WORDS)) from None
    except (OSError, sqlite3.Error) as e:
        raise click.ClickException(f"cannot use the lock database {settings.db_path}: {e}.") from None
    except Exception as e:  # psycopg's errors, when the store is PostgreSQL
        if not settings.postgres:
            raise
        raise click.ClickException(f"cannot use the lock database: {e}.") from None
