"""Revoking a key ends what it has in the lock tables, and a lock belongs to the key that took it.

The engine is given identities directly (as a face does once a key checked out), so a request that was
authenticated before its key was revoked, or two keys of one agent, can be made to meet the rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from mcp_locks import LockBroken, Locked, Unauthenticated
from mcp_locks.core.clock import Clock, ManualClock
from mcp_locks.core.keys import Identity, parse_key_id
from mcp_locks.core.models import LockGrant
from mcp_locks.engine.lock_service import KEY_REVOKED, LockService
from mcp_locks.stores.postgres import PostgresStore

from .faces import Face
from .helpers import STEP, Events, until_event
from .pg import PG_URL, pg_schema

pytestmark = pytest.mark.anyio


@pytest.fixture
async def events(service: LockService) -> AsyncIterator[Events]:
    async with service.subscribe() as stream:
        yield stream


async def key_of(
    service: LockService, agent: str, role: str = "agent", workspaces: tuple[str, ...] = ("default",)
) -> Identity:
    """A new key's identity, as the faces make it from a verified key."""
    _, rec = await service.create_key(agent, list(workspaces) if role == "agent" else [], role)
    return Identity(rec.key_id, rec.agent, rec.role, rec.workspaces)


# ---------------------------------------------------------------------- waiting requests


async def test_a_request_waiting_in_line_is_answered_unauthenticated_when_its_key_is_revoked(
    service: LockService, events: Events
) -> None:
    root, bob = await key_of(service, "root", "admin"), await key_of(service, "bob")
    await service.lock(None, "doc.md", agent="alice")
    errors: list[Exception] = []

    async def bob_waits() -> None:
        with pytest.raises(Unauthenticated) as e:
            await service.lock(None, "doc.md", wait=600, caller=bob)
        errors.append(e.value)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bob_waits)
            await until_event(events, "queued", "doc.md")
            await service.revoke_key(bob.key_id, caller=root)
    assert "revoked" in str(errors[0])
    assert errors[0].hint
    left = await until_event(events, "left", "doc.md", owner="bob")
    assert left.code == "UNAUTHENTICATED"


async def test_a_revoked_keys_request_is_not_granted_when_the_lock_it_waited_for_frees(
    service: LockService, events: Events
) -> None:
    root, bob = await key_of(service, "root", "admin"), await key_of(service, "bob")
    holder = await service.lock(None, "doc.md", agent="alice")

    async def bob_waits() -> None:
        with pytest.raises(Unauthenticated):
            await service.lock(None, "doc.md", wait=600, caller=bob)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bob_waits)
            await until_event(events, "queued", "doc.md")
            await service.revoke_key(bob.key_id, caller=root)
            await service.unlock(None, holder.token)
    status = await service.status(None, "doc.md")
    assert (status.holders, status.waiters) == ([], [])


async def test_a_request_authenticated_before_its_key_was_revoked_is_refused_after(service: LockService) -> None:
    root, bob = await key_of(service, "root", "admin"), await key_of(service, "bob")
    await service.revoke_key(bob.key_id, caller=root)
    # ``bob`` is what the face made of the key before the revocation (a slow body, a request in flight).
    with pytest.raises(Unauthenticated):
        await service.lock(None, "doc.md", caller=bob)
    assert (await service.list_locks()).locks == []


# ---------------------------------------------------------------------- held locks


async def test_a_revoked_keys_locks_are_broken_by_the_admin_with_the_reason_key_revoked(
    service: LockService, events: Events
) -> None:
    root, bob = await key_of(service, "root", "admin"), await key_of(service, "bob")
    grant = await service.lock(None, "doc.md", caller=bob)
    await service.revoke_key(bob.key_id, caller=root)
    broken = await until_event(events, "broken", "doc.md")
    assert (broken.lock_id, broken.owner, broken.by, broken.reason) == (grant.lock_id, "bob", "root", KEY_REVOKED)
    assert (await service.list_locks()).locks == []


async def test_a_revoked_keys_token_then_answers_lock_broken_with_who_and_why(service: LockService) -> None:
    root, bob = await key_of(service, "root", "admin"), await key_of(service, "bob")
    grant = await service.lock(None, "doc.md", caller=bob)
    await service.revoke_key(bob.key_id, caller=root)
    new_bob = await key_of(service, "bob")  # bob's replacement key presents the old token
    with pytest.raises(LockBroken) as e:
        await service.renew(None, grant.token, caller=new_bob)
    assert (e.value.details["broken_by"], e.value.details["reason"]) == ("root", KEY_REVOKED)
    with pytest.raises(LockBroken):
        await service.unlock(None, grant.token, caller=new_bob)


async def test_the_request_waiting_behind_a_revoked_keys_lock_is_granted(service: LockService, events: Events) -> None:
    root, bob, carol = (
        await key_of(service, "root", "admin"),
        await key_of(service, "bob"),
        await key_of(service, "carol"),
    )
    await service.lock(None, "doc.md", caller=bob)
    got: list[LockGrant] = []

    async def carol_waits() -> None:
        got.append(await service.lock(None, "doc.md", wait=600, caller=carol))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(carol_waits)
            await until_event(events, "queued", "doc.md")
            await service.revoke_key(bob.key_id, caller=root)
    assert got[0].owner == "carol"


async def test_a_revoked_keys_locks_end_in_a_workspace_whose_actor_was_evicted(
    service: LockService, clock: ManualClock
) -> None:
    await service.create_workspace("team")
    root, bob = await key_of(service, "root", "admin"), await key_of(service, "bob", workspaces=("team",))
    await service.lock("team", "doc.md", timeout=3600, caller=bob)
    stopped = anyio.Event()
    told = service.registry.on_actor_stopped

    def on_stopped(ws: str, held: int | None) -> None:
        told(ws, held)
        if not service.registry.actors:
            stopped.set()

    service.registry.on_actor_stopped = on_stopped
    with anyio.fail_after(STEP):
        clock.advance(service.limits.idle_timeout)  # idle that long, the actor stops; its lease is in the store
        await stopped.wait()
    await service.revoke_key(bob.key_id, caller=root)
    assert (await service.list_locks("team")).locks == []


# ---------------------------------------------------------------------- over the faces


async def test_a_waiting_lock_call_is_answered_unauthenticated_at_once_when_its_key_is_revoked(face: Face) -> None:
    env = face.env
    kid = parse_key_id(env.bob)
    assert kid is not None
    holder = (await face(env.alice, "lock", node_id="doc.md")).ok
    assert (await face(env.bob, "status", node_id="doc.md")).ok  # bob's session opens here, not in his task
    answers: list[Any] = []

    async def bob_waits() -> None:
        answers.append(await face(env.bob, "lock", node_id="doc.md", wait=600))

    async with env.service.subscribe() as events:
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                tg.start_soon(bob_waits)
                await until_event(events, "queued", "doc.md")
                await env.service.revoke_key(kid)
    assert answers[0].code == "UNAUTHENTICATED"
    assert "revoked" in answers[0].message
    assert (await face(env.alice, "unlock", node_id="doc.md", token=holder["token"])).ok


# ---------------------------------------------------------------------- a cluster on PostgreSQL


@pytest.fixture
async def pair() -> AsyncIterator[tuple[LockService, LockService]]:
    """Two servers on a fresh schema, on the database's clock."""
    with pg_schema() as schema:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(LockService(PostgresStore(PG_URL, schema=schema), clock=Clock()))
            b = await stack.enter_async_context(LockService(PostgresStore(PG_URL, schema=schema), clock=Clock()))
            yield a, b


async def test_revoking_a_key_on_one_server_answers_its_waiter_on_another_and_ends_its_locks_there(
    pair: tuple[LockService, LockService],
) -> None:
    a, b = pair
    root, bob = await key_of(a, "root", "admin"), await key_of(a, "bob")
    await b.lock("default", "held.md", timeout=60, caller=bob)
    await a.lock("default", "doc.md", timeout=60, agent="alice")
    errors: list[Exception] = []

    async def bob_waits_on_b() -> None:
        with pytest.raises(Unauthenticated) as e:
            await b.lock("default", "doc.md", timeout=60, wait=STEP * 2, caller=bob)
        errors.append(e.value)

    async with b.subscribe() as events:
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as tg:
                tg.start_soon(bob_waits_on_b)
                await until_event(events, "queued", "doc.md")  # in the shared line: a's step will see it
                await a.revoke_key(bob.key_id, caller=root)
    assert errors
    assert [le.node_id for le in (await b.list_locks("default")).locks] == ["doc.md"]


# ---------------------------------------------------------------------- whose lock a file write is under


async def two_keys_of_alice(service: LockService) -> tuple[Identity, Identity]:
    """Two live keys of one agent (as an old key and its replacement would be, were the old one not revoked)."""
    first = await key_of(service, "alice")
    return first, first._replace(key_id="0" * 12)


async def test_a_write_without_a_token_is_refused_while_another_key_of_the_agent_write_locks_the_file(
    service: LockService,
) -> None:
    old, new = await two_keys_of_alice(service)
    await service.lock(None, "a.txt", caller=old)
    with pytest.raises(Locked, match="another key of yours"):
        await service.files.write(None, "a.txt", b"mine", if_version=0, caller=new)


async def test_a_read_without_a_token_is_refused_while_another_key_of_the_agent_write_locks_the_file(
    service: LockService,
) -> None:
    old, new = await two_keys_of_alice(service)
    await service.files.write(None, "a.txt", b"v1", if_version=0, caller=old)
    await service.lock(None, "a.txt", caller=old)
    with pytest.raises(Locked):
        await service.files.read(None, "a.txt", caller=new)


async def test_file_info_tells_another_key_of_the_agent_it_may_neither_read_nor_write_a_file_write_locked(
    service: LockService,
) -> None:
    old, new = await two_keys_of_alice(service)
    await service.files.write(None, "a.txt", b"v1", if_version=0, caller=old)
    await service.lock(None, "a.txt", caller=old)
    info = await service.files.info(None, "a.txt", caller=new)
    assert (info.may_read, info.may_write) == (False, False)  # the rule write and read apply, said in advance
