"""Names one disk stores as one file are one node: both Unicode forms everywhere, case where the disk ignores it.

The rule (docs/locks.md#names, docs/files.md#names): every node id is normalised to NFC where it
enters, so both Unicode forms of a name are one node on every disk. A workspace whose folder's file
system ignores case (probed once, never assumed from the OS) answers a file call that spells an
existing name with other case with INVALID_ARGUMENT naming the spelling to use. Linux file systems
here are case-sensitive, so the probe's answer is set directly where a test needs the other one.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from mcp_locks import LockError
from mcp_locks.core.claims import Claim, ClaimIndex
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.files import FileTable
from mcp_locks.core.names import check_node_id
from mcp_locks.core.records import Staged
from mcp_locks.core.table import LockTable
from mcp_locks.engine.disk import WorkspaceDisk
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .helpers import until_event

pytestmark = pytest.mark.anyio

COMPOSED = "caf\u00e9/r\u00e9sum\u00e9.md"  # é as one code point (NFC)
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)  # e + combining acute, as macOS writes names


@dataclass
class Bound:
    """A service whose workspace ``proj`` is bound to ``root``."""

    svc: LockService
    root: Path

    def on_disk(self) -> list[str]:
        """Every regular file under the root but the state folder, as the disk spells it."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            if ".mcp-locks" in dirnames:
                dirnames.remove(".mcp-locks")
            out += [str(Path(dirpath, f).relative_to(self.root)) for f in filenames]
        return sorted(out)


@asynccontextmanager
async def bound_service(root: Path, case_insensitive: bool | None = None) -> AsyncIterator[LockService]:
    """A running service whose workspace ``proj`` is bound to ``root``; the case probe's answer given, or probed."""
    store = MemoryStore()
    await store.create_workspace("proj", None, 0.0, root=str(root))
    async with LockService(store, clock=ManualClock()) as svc:
        if case_insensitive is not None:
            # What the probe would answer on APFS, NTFS or a case-folding ext4 folder.
            svc.disk("proj").case_insensitive = case_insensitive
        yield svc


@pytest.fixture
async def bound(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Bound]:
    root = tmp_path / "project"
    (root / "Docs").mkdir(parents=True)
    (root / "README.md").write_text("hello")
    (root / "Docs" / "Guide.md").write_text("guide")
    async with bound_service(root, getattr(request, "param", True)) as svc:
        yield Bound(svc, root)


async def refusal(call: Awaitable[object]) -> LockError:
    with pytest.raises(LockError) as e:
        await call
    return e.value


# ---------------------------------------------------------------------- Unicode forms


def test_a_decomposed_node_id_enters_in_its_composed_form() -> None:
    assert check_node_id(DECOMPOSED) == COMPOSED
    assert check_node_id(COMPOSED) == COMPOSED


async def test_a_lock_on_one_unicode_form_holds_the_other_and_answers_the_composed_form(tmp_path: Path) -> None:
    async with LockService(MemoryStore(), clock=ManualClock(), files_dir=tmp_path) as svc:
        grant = await svc.lock(None, DECOMPOSED, "write", agent="alice")
        assert grant.node_id == COMPOSED
        e = await refusal(svc.lock(None, COMPOSED, "write", agent="bob"))
        assert e.code == "LOCKED"
        assert (await svc.status(None, DECOMPOSED)).holders[0].lock_id == grant.lock_id


async def test_a_file_written_under_one_unicode_form_is_the_same_file_under_the_other(tmp_path: Path) -> None:
    async with LockService(MemoryStore(), clock=ManualClock(), files_dir=tmp_path) as svc:
        assert (await svc.files.write(None, DECOMPOSED, b"v1", if_version=0)).file.node_id == COMPOSED
        e = await refusal(svc.files.write(None, COMPOSED, b"v1 again", if_version=0))
        assert e.code == "VERSION_MISMATCH"
        got = await svc.files.read(None, COMPOSED)
        assert (got.content, got.file.version) == ("v1", 1)
        assert [f.node_id for f in (await svc.files.list(None)).files] == [COMPOSED]


@pytest.mark.parametrize("bound", [False], indirect=True)
async def test_a_file_a_mac_named_decomposed_in_a_bound_folder_is_one_node_under_its_composed_id(
    bound: Bound,
) -> None:
    nfd = bound.root / DECOMPOSED
    nfd.parent.mkdir()
    nfd.write_text("from a mac")
    s = bound.svc
    listed = [f.node_id for f in (await s.files.list("proj")).files]
    assert listed == ["Docs/Guide.md", "README.md", COMPOSED]
    for spelling in (COMPOSED, DECOMPOSED):
        got = await s.files.read("proj", spelling)
        assert (got.content, got.file.node_id, got.file.version) == ("from a mac", COMPOSED, 1)
    await s.files.write("proj", COMPOSED, b"edited", if_version=1)
    assert nfd.read_bytes() == b"edited"  # the mac's file, under its own name: no second file beside it
    assert bound.on_disk() == ["Docs/Guide.md", "README.md", DECOMPOSED]
    await s.files.delete("proj", DECOMPOSED, if_version=2)
    assert bound.on_disk() == ["Docs/Guide.md", "README.md"]


# ---------------------------------------------------------------------- the case probe


def test_the_case_probe_finds_this_test_folder_case_sensitive_and_leaves_nothing_behind(tmp_path: Path) -> None:
    disk = WorkspaceDisk(tmp_path / "ws", bound=False)
    try:
        assert disk.case_insensitive is False
        assert os.listdir(tmp_path / "ws" / ".mcp-locks" / "staging") == []
    finally:
        disk.close()


# ---------------------------------------------------------------------- a case-insensitive folder


@pytest.mark.parametrize(
    ("node", "existing"),
    [("readme.md", "README.md"), ("docs/Guide.md", "Docs/Guide.md"), ("DOCS/guide.MD", "Docs/Guide.md")],
)
async def test_a_file_call_spelling_an_existing_name_with_other_case_is_refused_naming_the_spelling_to_use(
    bound: Bound, node: str, existing: str
) -> None:
    s = bound.svc
    for call in (
        lambda: s.files.read("proj", node),
        lambda: s.files.info("proj", node),
        lambda: s.files.write("proj", node, b"other case", if_version=1),
        lambda: s.files.write("proj", node, b"other case", if_version=0),
        lambda: s.files.delete("proj", node, if_version=1),
    ):
        e = await refusal(call())
        assert e.code == "INVALID_ARGUMENT"
        assert e.details["existing"] == existing
        assert existing in e.hint
    assert bound.on_disk() == ["Docs/Guide.md", "README.md"]
    assert (bound.root / "README.md").read_text() == "hello"


async def test_a_new_file_in_a_folder_spelled_with_other_case_is_refused_naming_the_folders_spelling(
    bound: Bound,
) -> None:
    e = await refusal(bound.svc.files.write("proj", "docs/new.md", b"x", if_version=0))
    assert e.details["existing"] == "Docs/new.md"
    assert (await bound.svc.files.write("proj", "Docs/new.md", b"x", if_version=0)).created


async def test_a_write_under_another_case_cannot_slip_past_a_lock_on_the_file(bound: Bound) -> None:
    s = bound.svc
    grant = await s.lock("proj", "README.md", "write", agent="alice")
    e = await refusal(s.files.write("proj", "readme.md", b"bob's", if_version=1, agent="bob"))
    assert e.code == "INVALID_ARGUMENT"
    assert (await s.files.write("proj", "README.md", b"alice's", token=grant.token, agent="alice")).file.version == 2
    assert (bound.root / "README.md").read_text() == "alice's"


async def test_a_file_created_by_one_agent_cannot_be_created_again_under_another_case(bound: Bound) -> None:
    s = bound.svc
    assert (await s.files.write("proj", "Notes.md", b"first", if_version=0)).created
    e = await refusal(s.files.write("proj", "notes.md", b"second", if_version=0))
    assert e.details["existing"] == "Notes.md"
    assert (bound.root / "Notes.md").read_text() == "first"


async def test_an_upload_completed_under_another_case_is_refused_and_kept(bound: Bound) -> None:
    s = bound.svc
    up = await s.files.create_upload("proj")
    await s.files.put_chunk("proj", up.upload_id, 0, b"big")
    sha = hashlib.sha256(b"big").hexdigest()
    e = await refusal(s.files.complete_upload("proj", up.upload_id, "readme.MD", sha, if_version=1))
    assert e.details["existing"] == "README.md"
    assert (await s.files.upload_status("proj", up.upload_id)).received == [0]


async def test_the_exact_spelling_works_as_ever_in_a_case_insensitive_folder(bound: Bound) -> None:
    s = bound.svc
    assert (await s.files.read("proj", "README.md")).content == "hello"
    assert (await s.files.write("proj", "Docs/Guide.md", b"new", if_version=1)).file.version == 2
    assert [f.node_id for f in (await s.files.list("proj")).files] == ["Docs/Guide.md", "README.md"]


@pytest.mark.parametrize("bound", [False], indirect=True)
async def test_a_case_sensitive_folder_keeps_names_differing_by_case_as_two_files(bound: Bound) -> None:
    assert (await bound.svc.files.write("proj", "readme.md", b"lower", if_version=0)).created
    assert bound.on_disk() == ["Docs/Guide.md", "README.md", "readme.md"]


# ---------------------------------------------------------------------- listings


async def test_listings_running_at_once_each_see_every_file_of_the_folder_once(tmp_path: Path) -> None:
    # Many files in the root: a listing reads it in several batches, so listings in worker threads at
    # the same time overlap (they shared one descriptor, and with it the folder's read position).
    root = tmp_path / "project"
    root.mkdir()
    names = sorted(f"f{i:04d}.txt" for i in range(1500))
    for n in names:
        (root / n).write_bytes(b"x")
    async with bound_service(root) as svc:

        async def page(into: list[list[str]]) -> None:
            into.append([f.node_id for f in (await svc.files.list("proj", limit=1000)).files])

        for _ in range(5):
            pages: list[list[str]] = []
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(page, pages)
            assert pages == [names[:1000]] * 4


# ---------------------------------------------------------------------- claims on a case-insensitive disk


def test_a_claim_index_that_folds_case_finds_a_claim_naming_the_same_node_with_other_case() -> None:
    index: ClaimIndex[str, Claim] = ClaimIndex(fold=str.casefold)
    index.add("k1", Claim("Src/App.py", "write", "node"))
    assert index.other_spelling("src/app.py") == "Src/App.py"
    assert index.other_spelling("SRC/new.py") == "Src/new.py"  # the folder above is claimed as 'Src'
    assert index.other_spelling("SRC") == "Src"  # a tree claim on the folder would cover the file
    assert index.other_spelling("Src/App.py") is None  # the same spelling is the same node: no conflict of names
    assert index.other_spelling("lib/app.py") is None


def test_a_folded_spelling_is_forgotten_when_its_last_claim_goes() -> None:
    index: ClaimIndex[str, Claim] = ClaimIndex(fold=str.casefold)
    index.add("k1", Claim("Docs/a.md", "read", "node"))
    index.add("k2", Claim("Docs/b.md", "read", "node"))
    index.remove("k1", "Docs/a.md")
    assert index.other_spelling("docs/a.md") == "Docs/a.md"  # 'Docs' is still claimed below
    index.remove("k2", "Docs/b.md")
    assert index.other_spelling("docs/a.md") is None


def test_a_claim_index_without_fold_keeps_names_differing_by_case_apart() -> None:
    index: ClaimIndex[str, Claim] = ClaimIndex()
    index.add("k1", Claim("README.md", "write", "node"))
    assert index.other_spelling("readme.md") is None
    assert not index.conflicts(Claim("readme.md", "write", "node"))


async def test_a_decomposed_prefix_lists_the_locks_held_on_composed_ids(service: LockService) -> None:
    await service.lock(None, "caf\u00e9/menu.md")
    page = await service.list_locks(None, prefix="cafe\u0301/")
    assert [le.node_id for le in page.locks] == ["caf\u00e9/menu.md"]


# ---------------------------------------------------------------------- case: the locks


async def test_a_lock_spelling_a_held_node_with_other_case_is_refused_naming_the_spelling(bound: Bound) -> None:
    await bound.svc.lock("proj", "notes/Plan.md", "write", agent="alice")  # a new file: not on disk yet
    e = await refusal(bound.svc.lock("proj", "Notes/plan.md", "write", agent="bob"))
    assert e.code == "INVALID_ARGUMENT"
    assert e.details["existing"] == "notes/Plan.md"


async def test_a_lock_spelling_a_node_others_wait_for_with_other_case_is_refused(bound: Bound) -> None:
    await bound.svc.lock("proj", "dir", "write", depth="tree", agent="alice")  # holds the folder, not plan.md
    async with bound.svc.subscribe() as events, anyio.create_task_group() as tg:
        tg.start_soon(lambda: bound.svc.lock("proj", "dir/plan.md", "write", agent="bob", wait=30))
        await until_event(events, "queued", "dir/plan.md")
        e = await refusal(bound.svc.lock("proj", "dir/PLAN.md", "read", agent="carol"))
        tg.cancel_scope.cancel()
    assert (e.code, e.details["existing"]) == ("INVALID_ARGUMENT", "dir/plan.md")


async def test_one_call_locking_a_node_twice_under_two_cases_is_refused(bound: Bound) -> None:
    e = await refusal(bound.svc.lock_many("proj", [{"node_id": "x.md"}, {"node_id": "X.md"}], agent="alice"))
    assert (e.code, e.details["existing"]) == ("INVALID_ARGUMENT", "x.md")


@pytest.mark.parametrize("bound", [False], indirect=True)
async def test_a_case_sensitive_folder_locks_names_differing_by_case_apart(bound: Bound) -> None:
    await bound.svc.lock("proj", "plan.md", "write", agent="alice")
    await bound.svc.lock("proj", "PLAN.md", "write", agent="bob")


def test_two_new_files_differing_by_case_in_one_batch_cannot_both_be_written() -> None:
    table = LockTable("w", case_insensitive=True)
    files = FileTable([], lambda n: None, case_insensitive=True)  # neither is on disk yet
    kw = {"owner": "alice", "as_key": None, "by": "alice", "token": None, "if_version": 0}
    files.write(table, 1.0, "docs/a.md", Staged("s1", 1, "x"), **kw)  # type: ignore[arg-type]
    with pytest.raises(LockError) as twin:
        files.write(table, 1.0, "Docs/A.md", Staged("s2", 1, "y"), **kw)  # type: ignore[arg-type]
    assert (twin.value.code, twin.value.details["existing"]) == ("INVALID_ARGUMENT", "docs/a.md")
