"""Per-workspace quotas (bytes and files): every write path refuses with QUOTA_EXCEEDED and leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from mcp_locks import LockError, Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.engine.file_service import FileLimits
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore, Store
from mcp_locks.stores.sqlite import SqliteStore

from .helpers import STEP
from .servers import serve_app

pytestmark = pytest.mark.anyio

QUOTA_BYTES = 100
QUOTA_FILES = 3


@pytest.fixture
async def svc(store: Store, clock: ManualClock, tmp_path: Path) -> AsyncIterator[LockService]:
    limits = FileLimits(chunk_size=1024, quota_bytes=QUOTA_BYTES, quota_files=QUOTA_FILES)
    async with LockService(store, clock=clock, files_dir=tmp_path / "files", file_limits=limits) as s:
        yield s


async def refusal(call: object) -> LockError:
    with pytest.raises(LockError) as e:
        await call  # type: ignore[misc]
    return e.value


def staged(svc: LockService) -> list[str]:
    folder = svc.disk("default").root / ".mcp-locks" / "staging"
    return os.listdir(folder) if folder.exists() else []


def assert_over(e: LockError, limit: str, quota: int, used: int, needed: int) -> None:
    assert e.code == "QUOTA_EXCEEDED", e
    assert e.http_status == 413
    assert e.details == {"limit": limit, "quota": quota, "used": used, "needed": needed}
    assert f"--quota-{limit}" in e.hint
    assert "{op:delete_file}" in e.hint


async def test_a_write_over_the_byte_quota_is_refused_and_leaves_nothing(svc: LockService) -> None:
    await svc.files.write(None, "a.bin", b"x" * 60, if_version=0, agent="alice")
    e = await refusal(svc.files.write(None, "b.bin", b"y" * 41, if_version=0, agent="alice"))
    assert_over(e, "bytes", QUOTA_BYTES, 60, 41)
    assert not (svc.disk("default").root / "b.bin").exists()
    assert staged(svc) == []
    assert (await svc.files.write(None, "b.bin", b"y" * 40, if_version=0, agent="alice")).created  # just fits


async def test_a_streamed_write_over_the_byte_quota_stops_and_leaves_nothing(svc: LockService) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(1000):  # far more than the quota: the stream is cut off, not read to its end
            yield b"z" * 50

    e = await refusal(svc.files.write(None, "s.bin", pieces(), if_version=0, agent="alice"))
    assert e.code == "QUOTA_EXCEEDED"
    assert e.details["used"] == 0
    assert staged(svc) == []


async def test_a_new_file_over_the_file_quota_is_refused(svc: LockService) -> None:
    for i in range(QUOTA_FILES):
        await svc.files.write(None, f"f{i}", b"1", if_version=0, agent="alice")
    e = await refusal(svc.files.write(None, "one-more", b"", if_version=0, agent="alice"))
    assert_over(e, "files", QUOTA_FILES, QUOTA_FILES, 1)
    assert staged(svc) == []
    # Overwriting an existing file adds no file; deleting one gives its place back.
    assert (await svc.files.write(None, "f0", b"22", if_version=1, agent="alice")).file.version == 2
    await svc.files.delete(None, "f1", if_version=1, agent="alice")
    assert (await svc.files.write(None, "one-more", b"", if_version=0, agent="alice")).created


async def test_a_delete_is_never_refused_by_the_quota(svc: LockService) -> None:
    for i in range(QUOTA_FILES):
        await svc.files.write(None, f"f{i}", b"1", if_version=0, agent="alice")
    assert (await refusal(svc.files.delete(None, "missing", if_version=1, agent="alice"))).code == "NOT_FOUND"
    assert (await svc.files.delete(None, "f0", if_version=1, agent="alice")).deleted


async def test_an_overwrite_counts_only_the_difference(svc: LockService) -> None:
    await svc.files.write(None, "a.bin", b"x" * 90, if_version=0, agent="alice")
    assert (await svc.files.write(None, "a.bin", b"x" * 100, if_version=1, agent="alice")).file.size == 100
    e = await refusal(svc.files.write(None, "a.bin", b"x" * 101, if_version=2, agent="alice"))
    assert_over(e, "bytes", QUOTA_BYTES, 100, 1)
    await svc.files.write(None, "a.bin", b"x" * 10, if_version=2, agent="alice")  # shrinking gives room back
    assert (await svc.files.write(None, "b.bin", b"y" * 90, if_version=0, agent="alice")).created


async def test_a_refusal_by_the_lock_rules_is_reported_before_the_quota(svc: LockService) -> None:
    await svc.files.write(None, "a.bin", b"x" * 60, if_version=0, agent="alice")
    await svc.lock(None, "a.bin", "write", agent="bob")
    e = await refusal(svc.files.write(None, "a.bin", b"x" * 200, if_version=1, agent="alice"))
    assert e.code == "LOCKED"


async def test_racing_writes_never_take_the_workspace_over_its_quota(svc: LockService) -> None:
    results: list[str] = []

    async def write(i: int) -> None:
        try:
            await svc.files.write(None, f"r{i}", b"r" * 30, if_version=0, agent="alice")
            results.append("ok")
        except LockError as e:
            results.append(e.code)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(write, i)
    assert sorted(results) == ["QUOTA_EXCEEDED"] * 7 + ["ok"] * 3  # 3 x 30 bytes fit in 100, a 4th does not
    assert staged(svc) == []


async def test_an_upload_completion_over_the_quota_is_refused_and_keeps_the_upload(svc: LockService) -> None:
    await svc.files.write(None, "a.bin", b"x" * 80, if_version=0, agent="alice")
    up = await svc.files.create_upload(None, "a.bin")
    await svc.files.put_chunk(None, up.upload_id, 0, b"u" * 95)  # fits as a.bin's next version (80 given back)
    sha = hashlib.sha256(b"u" * 95).hexdigest()
    e = await refusal(svc.files.complete_upload(None, up.upload_id, "big.bin", sha, if_version=0))  # a new file
    assert_over(e, "bytes", QUOTA_BYTES, 95, 80)  # 80 + 95 after, against 80 + the 15 its chunks held
    assert staged(svc) == []
    assert not (svc.disk("default").root / "big.bin").exists()
    assert (await svc.files.upload_status(None, up.upload_id)).received == [0]
    await svc.files.delete(None, "a.bin", if_version=1, agent="alice")  # make room, then complete again
    assert (await svc.files.complete_upload(None, up.upload_id, "big.bin", sha, if_version=0)).created


async def test_a_chunk_that_takes_an_upload_past_the_room_left_is_refused_and_not_kept(svc: LockService) -> None:
    await svc.files.write(None, "a.bin", b"x" * 60, if_version=0, agent="alice")
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"u" * 30)
    e = await refusal(svc.files.put_chunk(None, up.upload_id, 1, b"u" * 11))
    assert_over(e, "bytes", QUOTA_BYTES, 90, 11)  # the upload's first chunk counts as used
    assert (await svc.files.upload_status(None, up.upload_id)).received == [0]
    assert staged(svc) == []


async def test_a_chunk_of_an_upload_named_for_a_file_may_use_the_room_that_file_gives_back(
    svc: LockService,
) -> None:
    await svc.files.write(None, "a.bin", b"x" * 80, if_version=0, agent="alice")
    up = await svc.files.create_upload(None, "a.bin")
    await svc.files.put_chunk(None, up.upload_id, 0, b"n" * 95)  # replaces 80 of the 80 used: 95 fits
    sha = hashlib.sha256(b"n" * 95).hexdigest()
    assert (await svc.files.complete_upload(None, up.upload_id, "a.bin", sha, if_version=1)).file.size == 95


def upload_folder(svc: LockService, upload_id: str) -> list[str]:
    return sorted(os.listdir(svc.disk("default").root / ".mcp-locks" / "uploads" / upload_id))


async def test_chunks_of_parallel_uploads_together_cannot_pass_the_room_left(svc: LockService) -> None:
    await svc.files.write(None, "a.bin", b"x" * 40, if_version=0, agent="alice")
    first, second = await svc.files.create_upload(None), await svc.files.create_upload(None)
    await svc.files.put_chunk(None, first.upload_id, 0, b"u" * 40)
    e = await refusal(svc.files.put_chunk(None, second.upload_id, 0, b"v" * 21))
    assert_over(e, "bytes", QUOTA_BYTES, 80, 21)
    assert staged(svc) == []
    assert upload_folder(svc, second.upload_id) == ["info.json"]  # nothing of the refused chunk
    assert (await svc.files.put_chunk(None, second.upload_id, 0, b"v" * 20)).received == [0]  # just fits


async def test_racing_chunks_of_parallel_uploads_never_take_the_workspace_over_its_quota(svc: LockService) -> None:
    ups = [await svc.files.create_upload(None) for _ in range(10)]
    results: list[str] = []

    async def send(upload_id: str) -> None:
        try:
            await svc.files.put_chunk(None, upload_id, 0, b"r" * 30)
            results.append("ok")
        except LockError as e:
            results.append(e.code)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            for up in ups:
                tg.start_soon(send, up.upload_id)
    assert sorted(results) == ["QUOTA_EXCEEDED"] * 7 + ["ok"] * 3  # 3 x 30 bytes fit in 100, a 4th does not
    assert staged(svc) == []
    assert sum(len(upload_folder(svc, up.upload_id)) - 1 for up in ups) == 3  # chunks kept beside each info.json


async def test_a_write_cannot_take_the_room_an_unfinished_uploads_chunks_hold(svc: LockService) -> None:
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"u" * 60)
    e = await refusal(svc.files.write(None, "a.bin", b"x" * 41, if_version=0, agent="alice"))
    assert_over(e, "bytes", QUOTA_BYTES, 60, 41)
    assert "unfinished uploads" in e.message
    assert staged(svc) == []
    assert (await svc.files.write(None, "a.bin", b"x" * 40, if_version=0, agent="alice")).created


async def test_a_chunk_sent_again_counts_once(svc: LockService) -> None:
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"u" * 60)
    assert (await svc.files.put_chunk(None, up.upload_id, 0, b"w" * 90)).size == 90  # replaces the 60
    e = await refusal(svc.files.write(None, "a.bin", b"x" * 11, if_version=0, agent="alice"))
    assert_over(e, "bytes", QUOTA_BYTES, 90, 11)


async def test_uploads_named_for_one_file_share_the_room_it_gives_back(svc: LockService) -> None:
    await svc.files.write(None, "a.bin", b"x" * 80, if_version=0, agent="alice")
    first, second = await svc.files.create_upload(None, "a.bin"), await svc.files.create_upload(None, "a.bin")
    await svc.files.put_chunk(None, first.upload_id, 0, b"u" * 95)  # 80 of it is room a.bin gives back
    e = await refusal(svc.files.put_chunk(None, second.upload_id, 0, b"v" * 95))
    assert_over(e, "bytes", QUOTA_BYTES, 95, 95)  # a.bin's room was given once, to the first
    assert staged(svc) == []


async def test_an_aborted_upload_gives_its_room_back(svc: LockService) -> None:
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"u" * 60)
    await svc.files.abort_upload(None, up.upload_id)
    assert (await svc.files.write(None, "a.bin", b"x" * 100, if_version=0, agent="alice")).created


async def test_an_expired_upload_gives_its_room_back(svc: LockService, clock: ManualClock) -> None:
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"u" * 60)
    clock.advance(svc.files.limits.upload_ttl)
    assert (await svc.files.write(None, "a.bin", b"x" * 100, if_version=0, agent="alice")).created


async def test_a_completed_upload_counts_only_as_its_file(svc: LockService) -> None:
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"u" * 60)
    sha = hashlib.sha256(b"u" * 60).hexdigest()
    await svc.files.complete_upload(None, up.upload_id, "u.bin", sha, if_version=0)
    assert (await svc.files.write(None, "a.bin", b"x" * 40, if_version=0, agent="alice")).created


async def test_an_upload_for_a_new_file_is_refused_at_once_when_the_file_quota_is_used_up(svc: LockService) -> None:
    for i in range(QUOTA_FILES):
        await svc.files.write(None, f"f{i}", b"1", if_version=0, agent="alice")
    e = await refusal(svc.files.create_upload(None, "new.bin"))
    assert_over(e, "files", QUOTA_FILES, QUOTA_FILES, 1)
    uploads = svc.disk("default").root / ".mcp-locks" / "uploads"
    assert not uploads.exists() or os.listdir(uploads) == []


async def _file_of_70_bytes(s: LockService) -> None:
    await s.files.write(None, "a.bin", b"x" * 70, if_version=0, agent="alice")


async def _chunk_of_70_bytes(s: LockService) -> None:
    up = await s.files.create_upload(None)
    await s.files.put_chunk(None, up.upload_id, 0, b"u" * 70)


@pytest.mark.parametrize(
    "hold", [_file_of_70_bytes, _chunk_of_70_bytes], ids=["a file's bytes", "an unfinished upload's chunk"]
)
async def test_the_room_taken_is_counted_again_after_a_restart(
    tmp_path: Path, hold: Callable[[LockService], Awaitable[None]]
) -> None:
    limits = FileLimits(quota_bytes=QUOTA_BYTES)
    for attempt in range(2):
        store = SqliteStore(tmp_path / "locks.db")
        async with LockService(store, clock=ManualClock(), files_dir=tmp_path / "files", file_limits=limits) as s:
            if attempt == 0:
                await hold(s)
            else:
                e = await refusal(s.files.write(None, "b.bin", b"y" * 31, if_version=0, agent="alice"))
                assert_over(e, "bytes", QUOTA_BYTES, 70, 31)


# ---------------------------------------------------------------------- over REST


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(store="memory", data_dir=tmp_path, insecure_no_auth=True, quota_bytes=QUOTA_BYTES,
                        quota_files=QUOTA_FILES)  # fmt: skip
    async with (
        serve_app(build_app(settings)) as url,  # the service built from the settings, as `mcp-locks serve` does
        httpx.AsyncClient(base_url=f"{url}/v1/workspaces/default", timeout=STEP) as h,
    ):
        yield h


async def test_a_rest_put_over_the_quota_set_in_the_settings_is_a_413_quota_exceeded(http: httpx.AsyncClient) -> None:
    async def pieces() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"p" * 10

    for body in (b"p" * (QUOTA_BYTES + 1), pieces()):
        r = await http.put("/files/big.bin", content=body, headers={"If-None-Match": "*"})
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "QUOTA_EXCEEDED"
        assert (err["details"]["limit"], err["details"]["quota"], err["details"]["used"]) == ("bytes", QUOTA_BYTES, 0)
        assert "--quota-bytes" in err["hint"]
    assert (await http.get("/files/big.bin")).status_code == 404


async def test_a_rest_upload_chunk_over_the_quota_is_refused_and_its_chunks_hold_their_room(
    http: httpx.AsyncClient,
) -> None:
    uid = (await http.post("/uploads", json={})).json()["upload_id"]
    assert (await http.put(f"/uploads/{uid}/chunks/0", content=b"c" * 60)).status_code == 200
    r = await http.put(f"/uploads/{uid}/chunks/1", content=b"c" * 41)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "QUOTA_EXCEEDED")
    assert (await http.get(f"/uploads/{uid}")).json()["received"] == [0]
    put = await http.put("/files/a.bin", content=b"a" * 50, headers={"If-None-Match": "*"})
    assert (put.status_code, put.json()["error"]["code"]) == (413, "QUOTA_EXCEEDED")  # the chunk holds its room
    sha = hashlib.sha256(b"c" * 60).hexdigest()
    done = await http.post(f"/uploads/{uid}/complete", json={"node_id": "u.bin", "sha256": sha, "if_version": 0})
    assert done.status_code == 200, done.text
    assert (await http.put("/files/a.bin", content=b"a" * 40, headers={"If-None-Match": "*"})).status_code == 201


@pytest.mark.parametrize(
    "info",
    [b'{"owner": "alice"}', b"[1, 2]", b'{"owner": "a", "key_id": null, "expires_at": "x"}'],
    ids=["a field missing", "not an object", "a time that is no number"],
)
async def test_an_upload_folder_with_an_unreadable_record_holds_no_room_and_fails_no_write(
    tmp_path: Path, info: bytes
) -> None:
    # Counting the uploads' room reads every upload folder: one broken by hand must not fail every write.
    limits = FileLimits(quota_bytes=QUOTA_BYTES)
    async with LockService(MemoryStore(), clock=ManualClock(), files_dir=tmp_path / "files", file_limits=limits) as s:
        up = await s.files.create_upload(None)
        await s.files.put_chunk(None, up.upload_id, 0, b"u" * 70)
        (s.disk("default").root / ".mcp-locks" / "uploads" / up.upload_id / "info.json").write_bytes(info)
    async with LockService(MemoryStore(), clock=ManualClock(), files_dir=tmp_path / "files", file_limits=limits) as s:
        written = await s.files.write(None, "b.bin", b"y" * 90, if_version=0, agent="alice")
        assert written.file.size == 90
