"""The file store: the lock rules enforced on writes and reads, atomic writes, safe paths, uploads, crash recovery."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from mcp_locks import LockError
from mcp_locks.core.claims import Claim
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.files import FileTable
from mcp_locks.core.records import FileMeta, PutFile
from mcp_locks.core.table import LockTable
from mcp_locks.engine.file_service import FileLimits
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore, Store
from mcp_locks.stores.sqlite import SqliteStore

from .faces import Face

pytestmark = pytest.mark.anyio


@pytest.fixture
async def svc(store: Store, clock: ManualClock, tmp_path: Path) -> AsyncIterator[LockService]:
    async with LockService(store, clock=clock, files_dir=tmp_path / "files") as s:
        yield s


def files_root(svc: LockService, ws: str = "default") -> Path:
    return svc.disk(ws).root


async def code_of(call: object) -> LockError:
    with pytest.raises(LockError) as e:
        await call  # type: ignore[misc]
    return e.value


# ---------------------------------------------------------------------- the rules


async def test_a_write_with_neither_token_nor_version_is_refused_and_names_both_safe_ways(svc: LockService) -> None:
    e = await code_of(svc.files.write(None, "a.md", b"x", agent="alice"))
    assert e.code == "INVALID_ARGUMENT"
    assert "token" in e.hint
    assert "if_version" in e.hint
    assert not (files_root(svc) / "a.md").exists()


async def test_if_version_zero_creates_and_refuses_when_the_file_exists(svc: LockService) -> None:
    first = await svc.files.write(None, "a.md", b"one", if_version=0, agent="alice")
    assert first.created
    assert first.file.version == 1
    e = await code_of(svc.files.write(None, "a.md", b"two", if_version=0, agent="bob"))
    assert e.code == "VERSION_MISMATCH"
    assert e.details["current_version"] == 1
    assert (files_root(svc) / "a.md").read_bytes() == b"one"


async def test_an_optimistic_write_over_a_stale_version_is_refused_and_the_file_is_unchanged(
    svc: LockService,
) -> None:
    await svc.files.write(None, "a.md", b"v1", if_version=0, agent="alice")
    await svc.files.write(None, "a.md", b"v2 by bob", if_version=1, agent="bob")
    e = await code_of(svc.files.write(None, "a.md", b"v2 by alice", if_version=1, agent="alice"))
    assert e.code == "VERSION_MISMATCH"
    assert "version 2" in e.message
    assert "bob" in e.message
    assert (files_root(svc) / "a.md").read_bytes() == b"v2 by bob"


@pytest.mark.parametrize(
    ("locked", "mode", "depth"),
    [("a/b.md", "write", "node"), ("a/b.md", "read", "node"), ("a", "read", "tree"), ("a", "write", "tree")],
)
async def test_a_write_is_locked_while_another_agent_holds_any_lock_covering_the_file(
    svc: LockService, locked: str, mode: str, depth: str
) -> None:
    await svc.lock(None, locked, mode, depth=depth, agent="bob")
    e = await code_of(svc.files.write(None, "a/b.md", b"x", if_version=0, agent="alice"))
    assert e.code == "LOCKED"
    assert e.details["holders"] == ["bob"]
    assert not (files_root(svc) / "a/b.md").exists()


async def test_the_lock_holder_writes_with_its_token_and_the_file_records_the_fence(svc: LockService) -> None:
    g = await svc.lock(None, "a.md", "write", agent="alice")
    w = await svc.files.write(None, "a.md", b"mine", token=g.token, agent="alice")
    assert (w.file.version, w.file.fence, w.file.modified_by) == (1, g.fence, "alice")
    assert w.file.sha256 == hashlib.sha256(b"mine").hexdigest()


async def test_a_tree_write_lock_lets_its_holder_write_files_below_it(svc: LockService) -> None:
    g = await svc.lock(None, "docs", "write", depth="tree", agent="alice")
    w = await svc.files.write(None, "docs/x/y.md", b"deep", token=g.token, agent="alice")
    assert w.file.fence == g.fence
    assert (files_root(svc) / "docs/x/y.md").read_bytes() == b"deep"


async def test_a_writer_whose_lease_expired_is_refused_and_the_newer_content_stays(
    svc: LockService, clock: ManualClock
) -> None:
    late = await svc.lock(None, "a.md", "write", timeout=10, agent="alice")
    clock.advance(11)  # alice is paused past her lease
    bob = await svc.lock(None, "a.md", "write", agent="bob")
    await svc.files.write(None, "a.md", b"bob's", token=bob.token, agent="bob")
    e = await code_of(svc.files.write(None, "a.md", b"alice's late write", token=late.token, agent="alice"))
    assert e.code == "LOCK_EXPIRED"
    assert (files_root(svc) / "a.md").read_bytes() == b"bob's"


async def test_a_broken_lock_cannot_write(svc: LockService) -> None:
    g = await svc.lock(None, "a.md", "write", agent="alice")
    await svc.force_unlock(None, g.lock_id, "stuck")
    e = await code_of(svc.files.write(None, "a.md", b"x", token=g.token, agent="alice"))
    assert e.code == "LOCK_BROKEN"
    assert "stuck" in e.message


async def test_a_read_lock_token_cannot_write_and_says_how_to_upgrade(svc: LockService) -> None:
    g = await svc.lock(None, "a.md", "read", agent="alice")
    e = await code_of(svc.files.write(None, "a.md", b"x", token=g.token, agent="alice"))
    assert e.code == "INVALID_ARGUMENT"
    assert "upgrade" in e.hint.lower()


async def test_a_token_for_another_node_cannot_write(svc: LockService) -> None:
    g = await svc.lock(None, "b.md", "write", agent="alice")
    e = await code_of(svc.files.write(None, "a.md", b"x", token=g.token, agent="alice"))
    assert e.code == "INVALID_ARGUMENT"
    assert "does not cover" in e.message


def test_a_lock_whose_fence_is_older_than_the_files_last_write_is_stale() -> None:
    # Within one table a live write lock always has the newest fence; the check guards stores shared by
    # several servers and restored data, so the rule is tested on the table itself.
    table = LockTable("w")
    granted = table.acquire(0.0, [Claim("a.md", "write", "node")], owner="alice", timeout=60)
    lease = granted.leases[0]  # type: ignore[union-attr]
    files = FileTable([FileMeta("a.md", 3, 1, None, 0.0, "bob", lease.fence + 5)], lambda n: None)
    with pytest.raises(LockError) as e:
        files.check_change(table, 1.0, "a.md", owner="alice", as_key=None, token=lease.token, if_version=None)
    assert e.value.code == "STALE_FENCE"
    assert e.value.details == {"node_id": "a.md", "file_fence": lease.fence + 5, "your_fence": lease.fence}


def test_later_steps_of_a_batch_see_a_write_that_is_not_on_disk_yet() -> None:
    from mcp_locks.core.records import OnDisk, Staged

    table = LockTable("w")
    old = FileMeta("a.md", 1, 3, None, 0.0, "bob", 0, mtime_ns=1)
    files = FileTable([old], lambda n: OnDisk("file", 3, 0.0, 1))  # the disk keeps showing version 1
    files.write(table, 1.0, "a.md", Staged("s1", 5, "x", 2), owner="alice", as_key=None, by="alice", token=None,
                if_version=1)  # fmt: skip
    current = files.current("a.md")
    assert current is not None
    assert current.version == 2
    assert files.unapplied("a.md") is not None
    assert files.unapplied("a.md").staged == "s1"
    with pytest.raises(LockError) as e:
        files.write(table, 1.0, "a.md", Staged("s2", 5, "y", 3), owner="carol", as_key=None, by="carol", token=None,
                    if_version=1)  # fmt: skip
    assert e.value.code == "VERSION_MISMATCH"
    assert [op.staged for op in files.take_ops()] == ["s1"]
    assert files.unapplied("a.md") is None


async def test_many_files_of_one_folder_written_together_all_land(svc: LockService) -> None:
    # One actor batch moves them all in and fsyncs their folder once.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(lambda i=i: svc.files.write(None, f"d/f{i}.md", str(i).encode(), if_version=0))
    assert sorted(p.name for p in (files_root(svc) / "d").iterdir()) == sorted(f"f{i}.md" for i in range(12))
    assert all((files_root(svc) / "d" / f"f{i}.md").read_text() == str(i) for i in range(12))


async def test_concurrent_optimistic_increments_lose_nothing(svc: LockService) -> None:
    # Many read-then-write calls land in the same actor batches: each must see the writes before it.
    await svc.files.write(None, "n.txt", b"0", if_version=0)

    async def agent(name: str) -> None:
        done = 0
        for _ in range(500):
            got = await svc.files.read(None, "n.txt")
            try:
                await svc.files.write(None, "n.txt", str(int(got.content) + 1).encode(),
                                      if_version=got.file.version, agent=name)  # fmt: skip
            except LockError as e:
                if e.code != "VERSION_MISMATCH":
                    raise
                continue
            done += 1
            if done == 15:
                return
        raise AssertionError(f"{name} never got through")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(agent, f"agent-{i}")
    assert (await svc.files.read(None, "n.txt")).content == "120"


async def test_reads_are_locked_only_while_another_agent_writes(svc: LockService) -> None:
    await svc.files.write(None, "a.md", b"text", if_version=0, agent="alice")
    reader = await svc.lock(None, "a.md", "read", agent="bob")
    assert (await svc.files.read(None, "a.md")).content == "text"  # shared readers do not block reads
    await svc.unlock(None, reader.token)
    writer = await svc.lock(None, "a.md", "write", agent="bob")
    e = await code_of(svc.files.read(None, "a.md"))
    assert e.code == "LOCKED"
    mine = await svc.files.read(None, "a.md", token=writer.token)  # the writer reads its own file
    assert mine.content == "text"
    assert mine.file.version == 1


async def test_a_read_with_a_dead_token_says_the_lock_ended(svc: LockService, clock: ManualClock) -> None:
    await svc.files.write(None, "a.md", b"text", if_version=0)
    g = await svc.lock(None, "a.md", "read", timeout=5)
    clock.advance(6)
    assert (await code_of(svc.files.read(None, "a.md", token=g.token))).code == "LOCK_EXPIRED"


async def test_versions_continue_across_a_delete_so_an_old_version_never_matches_a_new_file(
    svc: LockService,
) -> None:
    await svc.files.write(None, "a.md", b"1", if_version=0)
    await svc.files.write(None, "a.md", b"2", if_version=1)
    gone = await svc.files.delete(None, "a.md", if_version=2)
    assert gone.deleted
    assert gone.file.version == 2
    assert not (files_root(svc) / "a.md").exists()
    assert (await code_of(svc.files.read(None, "a.md"))).code == "NOT_FOUND"
    assert (await code_of(svc.files.write(None, "a.md", b"x", if_version=1))).code == "VERSION_MISMATCH"
    again = await svc.files.write(None, "a.md", b"new", if_version=0)
    assert again.created
    assert again.file.version == 3


async def test_deleting_a_missing_file_is_not_found(svc: LockService) -> None:
    assert (await code_of(svc.files.delete(None, "nope.md", if_version=1))).code == "NOT_FOUND"


async def test_file_info_says_whether_you_may_read_and_write(svc: LockService) -> None:
    await svc.files.write(None, "a.md", b"x", if_version=0)
    free = await svc.files.info(None, "a.md", agent="alice")
    assert (free.exists, free.may_read, free.may_write) == (True, True, True)
    assert free.file is not None
    assert free.file.version == 1
    assert "if_version=1" in free.advice
    await svc.lock(None, "a.md", "read", agent="bob")
    shared = await svc.files.info(None, "a.md", agent="alice")
    assert (shared.may_read, shared.may_write, shared.lock.locked) == (True, False, True)
    own = await svc.files.info(None, "a.md", agent="bob")
    assert own.may_write  # bob's own lock does not stop bob
    missing = await svc.files.info(None, "new.md", agent="alice")
    assert not missing.exists
    assert missing.file is None
    assert "if_version=0" in missing.advice


# ---------------------------------------------------------------------- reading and listing


async def test_binary_content_is_read_as_base64_and_text_as_text(svc: LockService) -> None:
    await svc.files.write(None, "img.bin", bytes(range(256)), if_version=0)
    got = await svc.files.read(None, "img.bin")
    assert got.encoding == "base64"
    assert got.eof
    await svc.files.write(None, "t.md", "héllo".encode(), if_version=0)
    assert (await svc.files.read(None, "t.md")).content == "héllo"


async def test_a_long_file_is_read_in_pages_without_splitting_a_character(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    limits = FileLimits(max_read=7)
    async with LockService(store, clock=clock, files_dir=tmp_path, file_limits=limits) as s:
        text = "abcdeé" * 5  # é is two bytes: a 7-byte page would cut one
        await s.files.write(None, "t.md", text.encode(), if_version=0)
        pages, offset = [], 0
        for _ in range(20):
            page = await s.files.read(None, "t.md", offset=offset)
            assert page.encoding == "utf-8"
            pages.append(page.content)
            if page.next_offset is None:
                break
            offset = page.next_offset
        assert "".join(pages) == text


@pytest.mark.parametrize("offset", [5, 2**62, 2**63 - 1, 2**63, 10**40])
async def test_a_read_from_any_offset_past_the_end_is_empty_and_at_the_end(svc: LockService, offset: int) -> None:
    # os.pread refuses offsets past 2**63 (and ones whose end would pass it): such a read once was INTERNAL.
    await svc.files.write(None, "t.md", b"hello", if_version=0)
    page = await svc.files.read(None, "t.md", offset=offset)
    assert (page.content, page.length, page.eof, page.next_offset) == ("", 0, True, None)


async def test_list_files_pages_in_path_order_and_hides_the_state_folder(svc: LockService) -> None:
    names = ["b.md", "a/z.md", "a.md", "a/b/c.md", "c/d.md"]
    for n in names:
        await svc.files.write(None, n, n.encode(), if_version=0)
    seen, cursor = [], None
    for _ in range(10):
        page = await svc.files.list(None, cursor=cursor, limit=2)
        seen += [f.node_id for f in page.files]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(names)
    only_a = await svc.files.list(None, prefix="a/")
    assert [f.node_id for f in only_a.files] == ["a/b/c.md", "a/z.md"]
    assert (files_root(svc) / ".mcp-locks").is_dir()


async def test_a_garbled_cursor_is_an_invalid_argument(svc: LockService) -> None:
    assert (await code_of(svc.files.list(None, cursor="@@@"))).code == "INVALID_ARGUMENT"


# ---------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "bad",
    ["../etc/passwd", "/etc/passwd", "a/../../b", "a\x00b", ".mcp-locks/staging/x", "a//b", "x" * 256, ""],
)
async def test_hostile_paths_are_refused_with_a_clear_error(svc: LockService, bad: str) -> None:
    e = await code_of(svc.files.write(None, bad, b"x", if_version=0))
    assert e.code == "INVALID_ARGUMENT"
    assert e.details["field"] == "node_id"
    assert (await code_of(svc.files.read(None, bad))).code == "INVALID_ARGUMENT"


async def bound(tmp_path: Path, clock: ManualClock) -> tuple[LockService, Path, Path]:
    root, outside = tmp_path / "project", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "readme.md").write_text("hello")
    (root / "escape").symlink_to(outside)
    (root / "link.txt").symlink_to(outside / "secret.txt")
    store = MemoryStore()
    await store.create_workspace("proj", None, clock.now(), root=str(root))
    return LockService(store, clock=clock), root, outside


async def test_a_bound_folder_serves_its_existing_files_as_untracked_version_one(
    tmp_path: Path, clock: ManualClock
) -> None:
    s, root, _ = await bound(tmp_path, clock)
    async with s:
        got = await s.files.read("proj", "readme.md")
        assert got.content == "hello"
        assert got.file.version == 1
        assert not got.file.tracked
        w = await s.files.write("proj", "readme.md", b"edited", if_version=1)
        assert w.file.version == 2
        assert w.file.tracked
        assert (root / "readme.md").read_text() == "edited"


async def test_an_edit_made_outside_mcp_locks_counts_as_a_new_version(tmp_path: Path, clock: ManualClock) -> None:
    s, root, _ = await bound(tmp_path, clock)
    async with s:
        w = await s.files.write("proj", "readme.md", b"agent's", if_version=1)
        assert w.file.version == 2
        (root / "readme.md").write_text("a human's edit")  # an editor, outside mcp-locks
        e = await code_of(s.files.write("proj", "readme.md", b"agent's second", if_version=2))
        assert e.code == "VERSION_MISMATCH"
        assert e.details["current_version"] == 3
        got = await s.files.read("proj", "readme.md")
        assert (got.content, got.file.version, got.file.tracked) == ("a human's edit", 3, False)
        assert (await s.files.write("proj", "readme.md", b"merged", if_version=3)).file.version == 4


async def test_symbolic_links_in_a_bound_folder_are_never_followed(tmp_path: Path, clock: ManualClock) -> None:
    s, _, outside = await bound(tmp_path, clock)
    async with s:
        for node in ("escape/secret.txt", "link.txt"):
            assert (await code_of(s.files.read("proj", node))).code == "INVALID_ARGUMENT"
        e = await code_of(s.files.write("proj", "escape/new.txt", b"x", if_version=0))
        assert e.code == "INVALID_ARGUMENT"
        assert "symbolic link" in e.message
        e = await code_of(s.files.write("proj", "link.txt", b"x", if_version=1))
        assert e.code == "INVALID_ARGUMENT"
        listed = [f.node_id for f in (await s.files.list("proj")).files]
        assert listed == ["readme.md"]
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"


async def test_a_full_disk_while_staging_is_a_coded_error_for_that_write_only(
    svc: LockService, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = svc.disk("default")

    def full(chunks: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk, "stage", full)
    e = await code_of(svc.files.write(None, "a.md", b"x", if_version=0))
    assert e.code == "UNAVAILABLE"
    assert "No space left on device" in e.message
    assert "'a.md'" in e.message
    assert (await svc.lock(None, "a.md", "write")).fence >= 1  # nothing else noticed


async def test_oversize_content_is_refused_and_leaves_nothing_staged(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    async with LockService(store, clock=clock, files_dir=tmp_path, file_limits=FileLimits(max_file_size=10)) as s:

        async def body() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"12345"

        for content in (b"x" * 11, body()):
            e = await code_of(s.files.write(None, "big.bin", content, if_version=0))
            assert e.code == "PAYLOAD_TOO_LARGE"
            assert e.details["limit"] == 10
        assert os.listdir(tmp_path / "default" / ".mcp-locks" / "staging") == []
        assert not (tmp_path / "default" / "big.bin").exists()


# ---------------------------------------------------------------------- uploads


async def test_an_upload_takes_chunks_in_any_order_and_commits_them_as_one_write(svc: LockService) -> None:
    up = await svc.files.create_upload(None, "big.bin")
    parts = [b"a" * 100, b"b" * 100, b"c" * 7]
    for i in (2, 0, 1):
        await svc.files.put_chunk(None, up.upload_id, i, parts[i])
    status = await svc.files.upload_status(None, up.upload_id)
    assert status.received == [0, 1, 2]
    assert status.size == 207
    whole = b"".join(parts)
    w = await svc.files.complete_upload(None, up.upload_id, "big.bin", hashlib.sha256(whole).hexdigest(), if_version=0)
    assert w.created
    assert w.file.size == 207
    assert (files_root(svc) / "big.bin").read_bytes() == whole
    assert (await code_of(svc.files.upload_status(None, up.upload_id))).code == "NOT_FOUND"  # it ended


async def test_a_refused_completion_keeps_the_upload_for_another_try(svc: LockService) -> None:
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"data")
    sha = hashlib.sha256(b"data").hexdigest()
    wrong = await code_of(svc.files.complete_upload(None, up.upload_id, "f.bin", "0" * 64, if_version=0))
    assert wrong.code == "INVALID_ARGUMENT"
    assert wrong.details["got"] == sha
    g = await svc.lock(None, "f.bin", "write", agent="bob")
    assert (await code_of(svc.files.complete_upload(None, up.upload_id, "f.bin", sha, if_version=0))).code == "LOCKED"
    await svc.unlock(None, g.token)
    assert (await svc.files.complete_upload(None, up.upload_id, "f.bin", sha, if_version=0)).created


async def test_an_upload_with_a_gap_is_refused_naming_the_missing_chunks(svc: LockService) -> None:
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"a")
    await svc.files.put_chunk(None, up.upload_id, 3, b"d")
    e = await code_of(svc.files.complete_upload(None, up.upload_id, "f", "0" * 64, if_version=0))
    assert e.code == "INVALID_ARGUMENT"
    assert e.details["missing"] == [1, 2]


async def test_an_unfinished_upload_expires(svc: LockService, clock: ManualClock) -> None:
    up = await svc.files.create_upload(None)
    await svc.files.put_chunk(None, up.upload_id, 0, b"a")
    clock.advance(svc.files.limits.upload_ttl + 1)
    e = await code_of(svc.files.put_chunk(None, up.upload_id, 1, b"b"))
    assert e.code == "NOT_FOUND"
    assert "expired" in e.message
    assert os.listdir(files_root(svc) / ".mcp-locks" / "uploads") == []


async def test_an_expired_upload_is_swept_when_another_starts(svc: LockService, clock: ManualClock) -> None:
    old = await svc.files.create_upload(None)
    clock.advance(svc.files.limits.upload_ttl + 1)
    await svc.files.create_upload(None)
    assert old.upload_id not in os.listdir(files_root(svc) / ".mcp-locks" / "uploads")


# ---------------------------------------------------------------------- crashes


async def test_a_write_committed_but_not_yet_renamed_is_finished_on_restart(tmp_path: Path, clock: ManualClock) -> None:
    db, files = tmp_path / "locks.db", tmp_path / "files"
    async with LockService(SqliteStore(db), clock=clock, files_dir=files) as s:
        await s.files.write(None, "a.md", b"old", if_version=0)
        staged = s.disk("default").stage([b"new"])
    # As if the process died right after committing version 2, before moving its content in.
    store = SqliteStore(db)
    await store.open()
    meta = FileMeta("a.md", 2, 3, staged.sha256, clock.now(), "alice", 0, pending=staged.name)
    await store.commit("default", [PutFile(meta)])
    await store.close()
    assert (files / "default" / "a.md").read_bytes() == b"old"
    long_ago = time.time() - 3 * 3600  # older than the orphan sweep's age: it must still not be swept
    os.utime(files / "default" / ".mcp-locks" / "staging" / staged.name, (long_ago, long_ago))
    async with LockService(SqliteStore(db), clock=clock, files_dir=files) as s:
        assert (await s.files.write(None, "b.md", b"first request", if_version=0)).created
        got = await s.files.read(None, "a.md")
        assert (got.content, got.file.version) == ("new", 2)
    assert os.listdir(files / "default" / ".mcp-locks" / "staging") == []


async def test_a_change_the_disk_refuses_answers_unavailable_and_the_next_batch_finishes_it(
    svc: LockService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await svc.files.write(None, "a.md", b"one", if_version=0)
    g = await svc.lock(None, "other.md", "write", agent="bob")
    disk = svc.disk("default")
    real = disk.apply
    calls = 0

    def flaky(ops: object) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(28, "No space left on device")
        return real(ops)  # type: ignore[arg-type]

    monkeypatch.setattr(disk, "apply", flaky)
    e = await code_of(svc.files.write(None, "a.md", b"two", if_version=1))
    assert e.code == "UNAVAILABLE"
    assert "file_info" in e.hint
    # Committed: the new version is what everyone sees (read from its staged file until it is in place).
    got = await svc.files.read(None, "a.md")
    assert (got.content, got.file.version) == ("two", 2)
    assert (files_root(svc) / "a.md").read_bytes() == b"two"  # that read's batch put it in place
    assert (await svc.status(None, "other.md")).holders[0].lock_id == g.lock_id  # the locks never noticed


def test_a_file_and_a_path_below_it_in_one_batch_cannot_both_be_written() -> None:
    from mcp_locks.core.records import Staged

    table = LockTable("w")
    files = FileTable([], lambda n: None)  # nothing on disk yet
    kw = {"owner": "alice", "as_key": None, "by": "alice", "token": None, "if_version": 0}
    files.write(table, 1.0, "a", Staged("s1", 1, "x"), **kw)  # type: ignore[arg-type]
    with pytest.raises(LockError) as below:
        files.write(table, 1.0, "a/b", Staged("s2", 1, "y"), **kw)  # type: ignore[arg-type]
    assert below.value.code == "INVALID_ARGUMENT"
    assert "'a' is a file" in below.value.message
    other = FileTable([], lambda n: None)
    other.write(table, 1.0, "c/d", Staged("s3", 1, "x"), **kw)  # type: ignore[arg-type]
    with pytest.raises(LockError) as above:
        other.write(table, 1.0, "c", Staged("s4", 1, "y"), **kw)  # type: ignore[arg-type]
    assert above.value.code == "INVALID_ARGUMENT"
    assert "folder" in above.value.message


async def test_racing_writes_of_a_file_and_a_path_below_it_leave_the_workspace_working(svc: LockService) -> None:
    outcomes: list[str] = []

    async def write(node: str) -> None:
        try:
            await svc.files.write(None, node, b"x", if_version=0)
            outcomes.append("ok")
        except LockError as e:
            outcomes.append(e.code)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write, "a")
            tg.start_soon(write, "a/b")
    assert sorted(outcomes) == ["INVALID_ARGUMENT", "ok"]
    g = await svc.lock(None, "z.md", "write")  # the locks never noticed
    assert (await svc.files.write(None, "z.md", b"z", token=g.token)).created


async def test_an_unreadable_folder_fails_only_the_call_that_needs_it(svc: LockService) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every folder: permissions cannot be denied to it")
    await svc.files.write(None, "closed/x.md", b"x", if_version=0)
    (files_root(svc) / "closed").chmod(0)
    try:
        e = await code_of(svc.files.read(None, "closed/x.md"))
        assert e.code == "INVALID_ARGUMENT"
        assert "permission denied" in e.message
        assert (await svc.files.write(None, "open.md", b"fine", if_version=0)).created
    finally:
        (files_root(svc) / "closed").chmod(0o755)


async def test_a_state_folder_replaced_by_a_link_stops_file_writes_not_locks(
    tmp_path: Path, clock: ManualClock
) -> None:
    s, root, outside = await bound(tmp_path, clock)
    (root / ".mcp-locks").symlink_to(outside)
    async with s:
        e = await code_of(s.files.write("proj", "new.md", b"x", if_version=0))
        assert e.code == "UNAVAILABLE"
        assert str(outside) not in e.message  # no server path reaches a client
        assert (await s.files.read("proj", "readme.md")).content == "hello"
        assert (await s.lock("proj", "readme.md", "write")).fence >= 1
    assert sorted(os.listdir(outside)) == ["secret.txt"]


async def test_an_outside_edit_of_the_same_size_is_still_noticed(tmp_path: Path, clock: ManualClock) -> None:
    s, root, _ = await bound(tmp_path, clock)
    async with s:
        await s.files.write("proj", "readme.md", b"AAAA", if_version=1)
        path = root / "readme.md"
        path.write_bytes(b"BBBB")  # same size: only the mtime tells
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        e = await code_of(s.files.write("proj", "readme.md", b"CCCC", if_version=2))
        assert e.code == "VERSION_MISMATCH"


async def test_uploads_started_at_the_same_time_all_survive(svc: LockService, clock: ManualClock) -> None:
    ids: list[str] = []

    async def start() -> None:
        ids.append((await svc.files.create_upload(None)).upload_id)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(start)
    for uid in ids:
        assert (await svc.files.upload_status(None, uid)).received == []


# ---------------------------------------------------------------------- every face


async def test_a_file_round_trips_with_versions_on_every_face(face: Face) -> None:
    env = face.env
    w = (await face(env.alice, "write_file", node_id="notes/a.md", content="v1", if_version=0)).ok
    assert w["file"]["version"] == 1
    assert w["created"]
    r = (await face(env.bob, "read_file", node_id="notes/a.md")).ok
    assert r["content"] == "v1"
    assert r["file"]["version"] == 1
    w2 = (await face(env.bob, "write_file", node_id="notes/a.md", content="v2", if_version=1)).ok
    assert w2["file"]["version"] == 2
    assert not w2["created"]
    stale = await face(env.alice, "write_file", node_id="notes/a.md", content="v2?", if_version=1)
    assert stale.code == "VERSION_MISMATCH"
    assert stale.details is not None
    assert stale.details["current_version"] == 2
    listed = (await face(env.alice, "list_files", prefix="notes/")).ok
    assert [f["node_id"] for f in listed["files"]] == ["notes/a.md"]


async def test_the_lock_flow_guards_files_on_every_face(face: Face) -> None:
    env = face.env
    g = (await face(env.alice, "lock", node_id="r.md", mode="write", timeout=60)).ok
    assert (await face(env.bob, "write_file", node_id="r.md", content="x", if_version=0)).code == "LOCKED"
    assert (await face(env.bob, "read_file", node_id="r.md")).code == "LOCKED"  # the lock is checked first
    w = (await face(env.alice, "write_file", node_id="r.md", content="alice", token=g["token"])).ok
    assert w["file"]["fence"] == g["fence"]
    info = (await face(env.bob, "file_info", node_id="r.md")).ok
    assert not info["may_write"]
    assert info["lock"]["holders"][0]["owner"] == "alice"
    assert (await face(env.bob, "read_file", node_id="r.md")).code == "LOCKED"
    stolen = await face(env.bob, "write_file", node_id="r.md", content="bob", token=g["token"])
    assert stolen.code in ("FORBIDDEN", "LOCKED")  # a token works only with the key that took it
    assert (await face(env.alice, "unlock", node_id="r.md", token=g["token"])).ok
    assert (await face(env.bob, "read_file", node_id="r.md")).ok["content"] == "alice"
    assert (await face(env.bob, "delete_file", node_id="r.md", if_version=1)).ok["deleted"]


async def test_a_key_that_does_not_reach_the_workspace_cannot_touch_its_files(face: Face) -> None:
    env = face.env
    assert (await face(env.carol, "read_file", node_id="a.md", workspace_id="default")).code == "FORBIDDEN"
    out = await face(env.carol, "write_file", node_id="a.md", workspace_id="default", content="x", if_version=0)
    assert out.code == "FORBIDDEN"
