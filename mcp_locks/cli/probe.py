"""Opening a store once before a command relies on it, so a bad data dir or database is a message, not a traceback."""

from __future__ import annotations

import click

from mcp_locks.settings import Settings

__all__ = ["check_postgres", "check_store", "without_password"]


def without_password(url: str) -> str:
    """A database URL fit to print."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def check_postgres(url: str) -> None:
    """Connect once before listening, so an unreachable database is a clear message, not a traceback."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as e:
        raise click.ClickException(f"cannot reach PostgreSQL at {without_password(url)}: {e}") from None


def check_store(settings: Settings) -> None:
    """Open the SQLite database once before listening, so a bad data dir is a clear message, not a traceback."""
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
