"""One live key per agent, held by the store itself: concurrent creations, servers starting together, old databases.

Memory and SQLite calls never suspend, so two callers in one process cannot interleave on their own; the
tests make every caller look at the keys before any of them stores one (a barrier in ``list_keys`` /
``get_key``), which is what two processes, or two servers on one PostgreSQL database, do by chance.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from mcp_locks.core.errors import AlreadyExists, LockError
from mcp_locks.core.keys import KeyRecord, new_key, verify_key
from mcp_locks.engine.admin import bootstrap_admin_key
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import Store
from mcp_locks.stores.postgres import PostgresStore
from mcp_locks.stores.sqlite import SqliteStore

from .pg import PG_URL, pg_schema

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0
STEP = 10  # upper bound on any one wait
#: Key creations started at once for one agent.
CREATIONS = 12


def look_first(stores: list[Any], method: str, callers: int) -> None:
    """Make ``method`` of each store return only once ``callers`` calls have read (the race window, held open)."""
    looked = 0
    everyone = anyio.Event()
    for store in stores:
        real = getattr(store, method)

        async def wait_for_the_others(*args: Any, real: Any = real) -> Any:
            nonlocal looked
            got = await real(*args)
            looked += 1
            if looked >= callers:
                everyone.set()
            with anyio.fail_after(STEP):
                await everyone.wait()
            return got

        setattr(store, method, wait_for_the_others)


# ---------------------------------------------------------------------- the rule, in every store


async def test_a_store_refuses_a_second_live_key_for_one_agent_and_takes_one_once_the_first_is_revoked(
    store: Store,
) -> None:
    await store.open()
    try:
        _, first = new_key("alice", ("default",), "agent", T0)
        _, second = new_key("alice", ("default",), "agent", T0 + 1)
        await store.put_key(first)
        with pytest.raises(AlreadyExists) as refused:
            await store.put_key(second)
        assert refused.value.details["field"] == "agent"
        assert [r.key_id for r in await store.list_keys()] == [first.key_id]
        assert await store.revoke_key(first.key_id, T0 + 2)
        await store.put_key(second)  # a revoked key does not count
        assert [r.key_id for r in await store.list_keys() if r.revoked_at is None] == [second.key_id]
    finally:
        await store.close()


async def test_many_key_creations_for_one_agent_at_once_make_one_key_and_refuse_the_rest_clearly(
    service: LockService,
) -> None:
    look_first([service.store], "list_keys", CREATIONS)
    made: list[KeyRecord] = []
    refused: list[LockError] = []

    async def create() -> None:
        try:
            made.append((await service.create_key("alice", ["default"]))[1])
        except LockError as e:
            refused.append(e)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            for _ in range(CREATIONS):
                tg.start_soon(create)
    assert len(made) == 1
    assert len(refused) == CREATIONS - 1
    for e in refused:  # the error an agent with a live key gets anyway, naming the key to revoke
        assert isinstance(e, AlreadyExists)
        assert e.message == f"agent 'alice' already has a live key ({made[0].key_id})."
        assert e.details == {"field": "agent", "key_id": made[0].key_id}
        assert "{op:revoke_key}" in e.hint
    assert [r.key_id for r in await service.store.list_keys() if r.agent == "alice"] == [made[0].key_id]


# ---------------------------------------------------------------------- servers starting together


@pytest.fixture(params=["sqlite", "postgresql"])
def same_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Make store after store on one database, as servers (or a server and a CLI command) sharing it would."""
    if request.param == "sqlite":
        yield lambda: SqliteStore(tmp_path / "locks.db", checkpoint=False)
    else:
        with pg_schema() as schema:
            yield lambda: PostgresStore(PG_URL, schema=schema, db_clock=False)


async def opened(stack: AsyncExitStack, make: Callable[[], Store]) -> Store:
    store = make()
    await store.open()
    stack.push_async_callback(store.close)
    return store


async def files_in(*dirs: Path) -> list[str]:
    """Every file in ``dirs`` (a missing one holds none), sorted."""
    found = [str(f) for d in dirs if await anyio.Path(d).exists() async for f in anyio.Path(d).iterdir()]
    return sorted(found)


async def test_two_servers_starting_together_on_one_database_write_one_admin_key(
    same_db: Callable[[], Store], tmp_path: Path
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    async with AsyncExitStack() as stack:
        stores = [await opened(stack, same_db) for _ in dirs]
        look_first(stores, "list_keys", len(stores))  # both see no admin key before either stores one
        paths: list[str | None] = [None, None]

        async def start(i: int) -> None:
            paths[i] = await bootstrap_admin_key(stores[i], dirs[i], None, T0)

        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                for i in range(len(dirs)):
                    tg.start_soon(start, i)
        written = [p for p in paths if p is not None]
        assert len(written) == 1
        assert await files_in(*dirs) == written  # no stray key file
        admins = [r for r in await stores[0].list_keys() if r.role == "admin" and r.revoked_at is None]
        assert len(admins) == 1
        assert verify_key((await anyio.Path(written[0]).read_text()).strip(), admins[0]) is not None


async def test_two_servers_given_one_admin_key_in_the_environment_both_start_and_store_it_once(
    same_db: Callable[[], Store], tmp_path: Path
) -> None:
    key, record = new_key("ignored", (), "admin", T0)
    async with AsyncExitStack() as stack:
        stores = [await opened(stack, same_db) for _ in range(2)]
        look_first(stores, "get_key", len(stores))  # both find it missing before either stores it
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                for i, store in enumerate(stores):
                    tg.start_soon(bootstrap_admin_key, store, tmp_path / str(i), key, T0)
        assert [(r.key_id, r.agent) for r in await stores[0].list_keys()] == [(record.key_id, "admin-env")]
    assert await files_in(tmp_path / "0", tmp_path / "1") == []  # an environment key writes no file


async def test_a_new_admin_key_in_the_environment_replaces_the_one_it_named_before(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_key, old = new_key("ignored", (), "admin", T0)
    new, record = new_key("ignored", (), "admin", T0)
    await store.open()
    try:
        await bootstrap_admin_key(store, tmp_path, old_key, T0)
        with caplog.at_level(logging.WARNING):
            await bootstrap_admin_key(store, tmp_path, new, T0 + 1)  # the operator changed MCP_LOCKS_ADMIN_KEY
        live = [r for r in await store.list_keys() if r.revoked_at is None]
        assert [(r.key_id, r.agent, r.role) for r in live] == [(record.key_id, "admin-env", "admin")]
        assert verify_key(new, live[0]) is not None
        assert f"the admin key it named before ({old.key_id}) is revoked" in caplog.text
    finally:
        await store.close()


# ---------------------------------------------------------------------- databases from before the rule


async def _drop_the_index(store: Store) -> None:
    """Make the database look as it did before the rule (no unique index on live keys)."""
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        db.execute("DROP INDEX IF EXISTS keys_live_agent")
        db.commit()
        db.close()
    else:
        assert isinstance(store, PostgresStore)
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(f"DROP INDEX IF EXISTS {store.schema}.keys_live_agent")


async def test_a_database_from_before_the_rule_gets_it_on_start(same_db: Callable[[], Store]) -> None:
    async with AsyncExitStack() as stack:
        await _drop_the_index(await opened(stack, same_db))
    async with AsyncExitStack() as stack:
        store = await opened(stack, same_db)
        await store.put_key(new_key("alice", ("default",), "agent", T0)[1])
        with pytest.raises(AlreadyExists):
            await store.put_key(new_key("alice", ("default",), "agent", T0 + 1)[1])


async def test_a_database_already_holding_two_live_keys_for_one_agent_starts_and_names_the_keys_to_revoke(
    same_db: Callable[[], Store], caplog: pytest.LogCaptureFixture
) -> None:
    old, new = new_key("alice", ("default",), "agent", T0)[1], new_key("alice", ("default",), "agent", T0 + 1)[1]
    async with AsyncExitStack() as stack:
        store = await opened(stack, same_db)
        await _drop_the_index(store)
        await store.put_key(old)
        await store.put_key(new)  # possible before the rule
    with caplog.at_level(logging.WARNING):
        async with AsyncExitStack() as stack:
            store = await opened(stack, same_db)  # starts: both keys keep working until an admin picks one
            assert {r.key_id for r in await store.list_keys() if r.revoked_at is None} == {old.key_id, new.key_id}
            await store.revoke_key(old.key_id, T0 + 2)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "agent 'alice' has 2 live keys" in said
    assert old.key_id in said
    assert new.key_id in said
    assert "keys revoke" in said
    async with AsyncExitStack() as stack:  # once one is revoked, the next start makes the rule hold
        store = await opened(stack, same_db)
        with pytest.raises(AlreadyExists):
            await store.put_key(new_key("alice", ("default",), "agent", T0 + 3)[1])
