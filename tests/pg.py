"""PostgreSQL for tests: a fresh schema per store, dropped afterwards.

The database is ``$MCP_LOCKS_TEST_PG`` (default: the trust-auth server every session and CI run here has).
Locally a missing server skips these tests with the reason; under CI it fails them: they must run there.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_URL = os.environ.get("MCP_LOCKS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_reachable() -> str | None:
    """None if the test database answers, else why not."""
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as e:
        return f"PostgreSQL at {PG_URL} is not reachable: {e}"
    return None


def need_pg() -> None:
    """Skip (fail under CI) when the test database is not there."""
    why = pg_reachable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why + " (CI must run the PostgreSQL tests)")
        pytest.skip(why)


@contextmanager
def pg_schema() -> Iterator[str]:
    """A new empty schema's name; the schema and everything in it is dropped on exit."""
    import psycopg

    need_pg()
    name = "t_" + secrets.token_hex(6)
    try:
        yield name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
