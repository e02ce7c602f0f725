"""Resumable uploads under races and crashes: one upload commits at most once (even across a crash at any
point of its completion), revoked keys' uploads go, and deleting a workspace ends the file work in flight on
it with NOT_FOUND (never an OSError or a 500)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcp_locks import LockError
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.keys import parse_key_id
from mcp_locks.engine.disk import WorkspaceDisk
from mcp_locks.engine.lock_service import LockService
from mcp_locks.engine.uploads import Upload
from mcp_locks.stores.base import Store
from mcp_locks.stores.postgres import PostgresStore
from mcp_locks.stores.sqlite import SqliteStore

from .faces import Env
from .helpers import STEP
from .pg import PG_URL, pg_schema

pytestmark = pytest.mark.anyio

#: Calls racing to complete one upload: enough that, before the fix, several always got through.
RACERS = 20
#: The issue's bound: a revoked key's unfinished uploads are dropped within one second of the revocation.
REVOCATION_BOUND = 1.0


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def state(root: Path, sub: str) -> list[str]:
    folder = root / ".mcp-locks" / sub
    return sorted(os.listdir(folder)) if folder.exists() else []


async def started_upload(http: httpx.AsyncClient, key: str, parts: list[bytes]) -> tuple[str, str]:
    """An upload with all its chunks sent: (upload_id, sha256 of the whole)."""
    uid = (await http.post("/uploads", headers=auth(key))).json()["upload_id"]
    for i, part in enumerate(parts):
        r = await http.put(f"/uploads/{uid}/chunks/{i}", content=part, headers=auth(key))
        assert r.status_code == 200, r.text
    return uid, hashlib.sha256(b"".join(parts)).hexdigest()


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=RACERS + 5)
    async with httpx.AsyncClient(base_url=f"{env.url}/v1/workspaces/default", timeout=30, limits=limits) as h:
        yield h


async def race(http: httpx.AsyncClient, uid: str, bodies: list[dict[str, object]], key: str) -> list[httpx.Response]:
    """Send every completion of ``uid`` at once."""
    out: list[httpx.Response] = []

    async def one(body: dict[str, object]) -> None:
        out.append(await http.post(f"/uploads/{uid}/complete", json=body, headers=auth(key)))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            for body in bodies:
                tg.start_soon(one, body)
    return out


def one_winner(answers: list[httpx.Response]) -> httpx.Response:
    """The one 200 among ``answers``; every other is a 404 saying what the winner wrote."""
    assert all(r.status_code < 500 for r in answers), [r.text for r in answers if r.status_code >= 500]
    won = [r for r in answers if r.status_code == 200]
    assert len(won) == 1, [r.text for r in answers]
    version = won[0].json()["file"]["version"]
    for r in answers:
        if r is not won[0]:
            assert r.status_code == 404, r.text
            err = r.json()["error"]
            assert (err["code"], err["details"]["completed"]) == ("NOT_FOUND", True)
            assert (err["details"]["node_id"], err["details"]["version"]) == (won[0].json()["file"]["node_id"], version)
    return won[0]


async def test_concurrent_completes_of_one_upload_to_one_file_write_it_once(env: Env, http: httpx.AsyncClient) -> None:
    # Under a write lock, every racer passes the file rule: only the upload can stop a second write.
    parts = [b"a" * 70_000, b"b" * 70_000, b"c" * 5]
    uid, sha = await started_upload(http, env.alice, parts)
    grant = (await http.post("/nodes/big.bin/lock", json={"mode": "write"}, headers=auth(env.alice))).json()
    body = {"node_id": "big.bin", "sha256": sha, "token": grant["token"]}
    won = one_winner(await race(http, uid, [body] * RACERS, env.alice))
    assert won.json()["file"]["version"] == 1
    read = await http.get("/files/big.bin", headers=auth(env.alice))
    assert (read.headers["x-version"], read.content) == ("1", b"".join(parts))
    root = env.service.disk("default").root
    assert state(root, "staging") == []
    assert sorted(os.listdir(root / ".mcp-locks" / "uploads" / uid)) == ["done.json", "info.json"]  # no chunk left


async def test_concurrent_completes_naming_different_files_commit_to_one_of_them(
    env: Env, http: httpx.AsyncClient
) -> None:
    uid, sha = await started_upload(http, env.alice, [b"x" * 1000])
    bodies: list[dict[str, object]] = [{"node_id": f"f{i}.bin", "sha256": sha, "if_version": 0} for i in range(RACERS)]
    won = one_winner(await race(http, uid, bodies, env.alice))
    listed = (await http.get("/files", headers=auth(env.alice))).json()["files"]
    assert [f["node_id"] for f in listed] == [won.json()["file"]["node_id"]]
    assert state(env.service.disk("default").root, "staging") == []


async def test_a_completion_retried_after_it_committed_is_told_what_was_written_and_writes_nothing(
    env: Env, http: httpx.AsyncClient
) -> None:
    uid, sha = await started_upload(http, env.alice, [b"once"])
    body = {"node_id": "r.bin", "sha256": sha, "if_version": 0}
    first = await http.post(f"/uploads/{uid}/complete", json=body, headers=auth(env.alice))
    assert first.status_code == 200
    again = await http.post(f"/uploads/{uid}/complete", json={**body, "if_version": 1}, headers=auth(env.alice))
    assert again.status_code == 404
    assert again.json()["error"]["details"] == {
        "upload_id": uid, "completed": True, "node_id": "r.bin", "version": 1, "etag": first.json()["file"]["etag"],
    }  # fmt: skip
    assert (await http.get("/files/r.bin", headers=auth(env.alice))).headers["x-version"] == "1"


# ---------------------------------------------------------------------- crashes


class Crash(Exception):
    """The server dying where a test injects it: nothing after that point runs."""


def reopened(store: Store) -> Store:
    """The same data as a restarted server opens it (a memory store outlives its server here: the same object)."""
    if isinstance(store, SqliteStore):
        return SqliteStore(store.path)
    if isinstance(store, PostgresStore):
        return PostgresStore(PG_URL, schema=store.schema, db_clock=False)
    return store


@asynccontextmanager
async def server(store: Store, tmp_path: Path) -> AsyncIterator[LockService]:
    """A server on ``store`` and the data dir under ``tmp_path`` (the same one each time: a restart)."""
    async with LockService(store, clock=ManualClock(), files_dir=tmp_path / "files") as s:
        yield s


async def sent_under_lock(s: LockService) -> tuple[str, str, str]:
    """An upload of b"once" with its chunk sent, and alice's write lock on crash.bin: (upload_id, sha256, token).

    Under the lock a second write of the upload passes the file rule: only the upload can stop it.
    """
    up = await s.files.create_upload(None)
    await s.files.put_chunk(None, up.upload_id, 0, b"once")
    grant = await s.lock(None, "crash.bin", "write", agent="alice")
    return up.upload_id, hashlib.sha256(b"once").hexdigest(), grant.token


def crash(*args: Any) -> None:
    raise Crash


async def refused(call: object) -> LockError:
    with pytest.raises(LockError) as e:
        await call  # type: ignore[misc]
    return e.value


async def crashed_after_its_commit(store: Store, tmp_path: Path) -> tuple[str, str, str]:
    """An upload whose completion died once its file was committed and in place, before its done record."""
    async with server(store, tmp_path) as s:
        uid, sha, token = await sent_under_lock(s)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(Upload, "finish", crash)
            with pytest.raises(Crash):
                await s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice")
    return uid, sha, token


async def test_a_completion_retried_after_a_crash_between_its_commit_and_its_done_record_writes_nothing(
    store: Store, tmp_path: Path
) -> None:
    uid, sha, token = await crashed_after_its_commit(store, tmp_path)
    async with server(reopened(store), tmp_path) as s:
        e = await refused(s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice"))
        assert (e.code, e.details["completed"], e.details["node_id"], e.details["version"]) == (
            "NOT_FOUND", True, "crash.bin", 1,
        )  # fmt: skip
        assert (await s.files.info(None, "crash.bin")).file.version == 1  # type: ignore[union-attr]
        assert (await s.files.read(None, "crash.bin", token)).content == "once"


async def test_a_completion_whose_file_could_not_be_put_in_place_is_not_written_again_by_a_retry(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server(store, tmp_path) as s:
        uid, sha, token = await sent_under_lock(s)
        with monkeypatch.context() as m:
            m.setattr(WorkspaceDisk, "apply", crash)  # committed, then the rename fails: the next step redoes it
            e = await refused(s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice"))
            assert e.code == "UNAVAILABLE", e
        again = await refused(s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice"))
        assert (again.code, again.details["completed"], again.details["version"]) == ("NOT_FOUND", True, 1)
        assert (await s.files.info(None, "crash.bin")).file.version == 1  # type: ignore[union-attr]


async def test_a_completion_cut_short_before_its_commit_is_made_by_a_retry_after_the_restart(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = Upload.mark

    def record_then_crash(up: Upload, marker: dict[str, Any]) -> None:
        record(up, marker)
        raise Crash  # the commit it records never happens

    def died(*args: Any) -> None:
        raise OSError("the process died")  # so the marker it cleans up after a failure stays, as after a crash

    async with server(store, tmp_path) as s:
        uid, sha, token = await sent_under_lock(s)
        with monkeypatch.context() as m:
            m.setattr(Upload, "mark", record_then_crash)
            m.setattr(Upload, "unmark", died)
            with pytest.raises(Crash):
                await s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice")
        assert "commit.json" in os.listdir(s.disk("default").root / ".mcp-locks" / "uploads" / uid)
    async with server(reopened(store), tmp_path) as s:
        assert (await s.files.upload_status(None, uid)).received == [0]  # still open: nothing was written
        done = await s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice")
        assert (done.file.version, done.created) == (1, True)
        assert state(s.disk("default").root, "staging") == []  # the content joined before the crash is gone


async def test_a_completion_cut_short_after_its_commit_and_the_file_changed_since_is_not_written_again(
    store: Store, tmp_path: Path
) -> None:
    uid, sha, token = await crashed_after_its_commit(store, tmp_path)
    async with server(reopened(store), tmp_path) as s:
        await s.files.write(None, "crash.bin", b"newer", token=token, agent="alice")  # version 2
        e = await refused(s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice"))
        assert (e.code, e.http_status) == ("NOT_FOUND", 404)
        assert e.details == {"upload_id": uid, "completed": None, "node_id": "crash.bin", "version": None, "etag": None}
        assert "{op:read_file}" in e.hint
        assert (await s.files.read(None, "crash.bin", token)).content == "newer"
        again = await refused(s.files.upload_status(None, uid))
        assert again.details["completed"] is None  # told so every time, and its chunks are gone
        assert sorted(os.listdir(s.disk("default").root / ".mcp-locks" / "uploads" / uid)) == ["done.json", "info.json"]


async def test_a_completion_whose_commit_the_store_refused_is_made_by_a_retry(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server(store, tmp_path) as s:
        uid, sha, token = await sent_under_lock(s)
        commit = store.commit

        async def refuse_once(*args: Any, **kwargs: Any) -> None:
            monkeypatch.setattr(store, "commit", commit)
            raise OSError("the database went away")

        monkeypatch.setattr(store, "commit", refuse_once)
        e = await refused(s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice"))
        assert e.code == "UNAVAILABLE", e
        assert sorted(os.listdir(s.disk("default").root / ".mcp-locks" / "uploads" / uid)) == ["0", "info.json"]
        assert state(s.disk("default").root, "staging") == []
        done = await s.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice")
        assert done.file.version == 1


async def test_a_completion_in_flight_on_another_server_sharing_the_folder_is_not_taken_for_one_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = Upload.mark
    marked, go = anyio.Event(), anyio.Event()

    def record_then_wait(up: Upload, marker: dict[str, Any]) -> None:
        record(up, marker)
        anyio.from_thread.run_sync(marked.set)
        anyio.from_thread.run(go.wait)  # server a is between its record and its commit

    written: list[int] = []
    with pg_schema() as schema:

        def shared() -> PostgresStore:  # a cluster keeping its files in one folder (--pg-files folder)
            return PostgresStore(PG_URL, schema=schema, files="folder", db_clock=False)

        async with server(shared(), tmp_path) as a, server(shared(), tmp_path) as b:
            uid, sha, token = await sent_under_lock(a)

            async def complete() -> None:
                done = await a.files.complete_upload(None, uid, "crash.bin", sha, token=token, agent="alice")
                written.append(done.file.version)

            monkeypatch.setattr(Upload, "mark", record_then_wait)
            with anyio.fail_after(STEP):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(complete)
                    await marked.wait()
                    try:
                        e = await refused(b.files.upload_status(None, uid))
                    finally:
                        go.set()  # a's completion is shielded: it must go on for the test to end
                    assert (e.code, e.details) == ("UNAVAILABLE", {"upload_id": uid})
            assert written == [1]  # what b saw was left alone
            after = await refused(b.files.upload_status(None, uid))
            assert (after.code, after.details["completed"], after.details["version"]) == ("NOT_FOUND", True, 1)


# ---------------------------------------------------------------------- revoked keys


async def test_a_revoked_keys_unfinished_uploads_are_dropped_within_a_second(env: Env, http: httpx.AsyncClient) -> None:
    uid, _ = await started_upload(http, env.alice, [b"p" * 5000, b"q" * 5000])
    kept, _ = await started_upload(http, env.bob, [b"bob's"])
    uploads = env.service.disk("default").root / ".mcp-locks" / "uploads"
    assert {uid, kept} <= set(os.listdir(uploads))
    key_id = parse_key_id(env.alice)
    assert key_id is not None
    await env.service.revoke_key(key_id)
    # Real time is the subject here: the drop runs in the background, so look until the bound passes.
    with anyio.fail_after(REVOCATION_BOUND):
        while uid in os.listdir(uploads):  # noqa: ASYNC110 - a folder on disk: no event to wait on
            await anyio.sleep(0.02)
    assert os.listdir(uploads) == [kept]  # bob's upload stays, and nothing of alice's is left
    assert (await http.get(f"/uploads/{uid}", headers=auth(env.alice))).status_code == 401


# ---------------------------------------------------------------------- deleting a workspace


@pytest.fixture
async def svc(store: Store, clock: ManualClock, tmp_path: Path) -> AsyncIterator[LockService]:
    async with LockService(store, clock=clock, files_dir=tmp_path / "files") as s:
        await s.create_workspace("team")
        yield s


class Held:
    """A request body that sends one piece, says so, then waits (forever, unless released)."""

    def __init__(self) -> None:
        self.sent_one = anyio.Event()
        self.release = anyio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first piece "
        self.sent_one.set()
        await self.release.wait()
        yield b"and the rest"


async def deleted_while(svc: LockService, body: Held, call: object) -> LockError | None:
    """Run ``call`` (a coroutine streaming ``body``), delete 'team' once a piece arrived; the call's error."""
    out: list[LockError | None] = []

    async def run() -> None:
        try:
            await call  # type: ignore[misc]
            out.append(None)
        except LockError as e:
            out.append(e)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await body.sent_one.wait()
            await svc.delete_workspace("team")
            body.release.set()  # before the fix the call then went on, into a deleted workspace
    return out[0]


async def test_deleting_a_workspace_ends_a_streaming_write_with_not_found(svc: LockService) -> None:
    root = svc.disk("team").root
    body = Held()
    e = await deleted_while(svc, body, svc.files.write("team", "w.bin", body, if_version=0, agent="alice"))
    assert e is not None
    assert e.code == "NOT_FOUND", e
    assert not root.exists()  # nothing re-created the deleted workspace's folder
    assert "team" not in svc.registry.actors


async def test_deleting_a_workspace_ends_a_streaming_upload_chunk_with_not_found(svc: LockService) -> None:
    up = await svc.files.create_upload("team")
    root = svc.disk("team").root
    body = Held()
    e = await deleted_while(svc, body, svc.files.put_chunk("team", up.upload_id, 0, body))
    assert e is not None
    assert e.code == "NOT_FOUND", e
    assert not root.exists()


async def drain(pieces: AsyncIterator[bytes]) -> None:
    async for _ in pieces:
        pass


async def test_deleting_a_workspace_cuts_a_download_in_flight_short_without_a_server_error(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(32 << 20)  # far more than the socket buffers hold, so the server is still sending
    base = f"{env.url}/v1/workspaces/team"
    async with httpx.AsyncClient(base_url=base, timeout=STEP) as http:
        r = await http.put("/files/big.bin", content=data, headers={**auth(env.alice), "If-None-Match": "*"})
        assert r.status_code == 201
        caplog.set_level(logging.ERROR)
        with anyio.fail_after(STEP):
            async with http.stream("GET", "/files/big.bin", headers=auth(env.alice)) as resp:
                assert resp.status_code == 200
                pieces = resp.aiter_raw()
                await pieces.__anext__()
                gone = await http.delete(f"{env.url}/v1/workspaces/team", headers=auth(env.admin))
                assert gone.status_code == 200, gone.text
                with pytest.raises(httpx.RemoteProtocolError):  # closed short of its Content-Length
                    await drain(pieces)
        after = await http.get("/files/big.bin", headers=auth(env.admin))
        assert (after.status_code, after.json()["error"]["code"]) == (404, "NOT_FOUND")
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
