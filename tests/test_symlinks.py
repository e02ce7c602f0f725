"""A bound folder with symbolic links planted inside pointing out of it: nothing outside the root is ever touched.

The folder is laid out as a cloned repository or a hostile agent could leave it: a link to a file
outside, a link to a folder outside, a relative link to the parent, a link back to the root, and two
kinds of link loops. Reads, writes, deletes, listings and uploads (and a link swapped in after a lock
was taken, or between the rule check and the rename) must all stay inside the root; every refusal is
a coded error that names no server path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mcp_locks import LockError, Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.records import FileOp
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore

from .servers import serve_app

pytestmark = pytest.mark.anyio

SECRET = "content from outside the root"
#: Node ids that lead through a planted link (to a file, a folder, the parent, the root, a loop).
THROUGH_LINKS = [
    "link.txt",
    "escape/secret.txt",
    "escape/new.txt",
    "up/outside/secret.txt",
    "up/new.txt",
    "self/readme.md",
    "loop",
    "loop/x",
    "ping/x",
]
#: Dot segments and absolute-looking ids: refused before any disk work.
DOTTED = ["../outside/secret.txt", "/etc/passwd", "//etc/passwd", "docs/../../outside/secret.txt", "./readme.md"]


@dataclass
class Planted:
    """A service whose workspace ``proj`` is bound to ``root``; ``outside`` holds what must stay untouched."""

    svc: LockService
    root: Path
    outside: Path
    tmp: Path

    def outside_state(self) -> dict[str, tuple[str, bytes, int]]:
        """Everything under the test's folder but the root: kind, content (or link target), mtime (ns)."""
        out: dict[str, tuple[str, bytes, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.tmp, followlinks=False):
            here = Path(dirpath)
            if here == self.tmp:
                dirnames.remove(self.root.name)
            for name in dirnames + filenames:
                p = here / name
                st = p.lstat()
                if p.is_symlink():
                    out[str(p)] = ("link", os.readlink(p).encode(), st.st_mtime_ns)
                elif p.is_dir():
                    out[str(p)] = ("dir", b"", st.st_mtime_ns)
                else:
                    out[str(p)] = ("file", p.read_bytes(), st.st_mtime_ns)
        return out

    def swap_docs_for_a_link(self) -> None:
        """Move ``docs`` aside to ``docs.real``; a link to ``outside`` (an a.md there too) takes its place."""
        (self.root / "docs").rename(self.root / "docs.real")
        (self.root / "docs").symlink_to(self.outside)

    def swap_readme_for_a_link(self) -> None:
        """Put a link to the secret outside in the place of the file ``readme.md``."""
        (self.root / "readme.md").unlink()
        (self.root / "readme.md").symlink_to(self.outside / "secret.txt")


@pytest.fixture
async def planted(tmp_path: Path) -> AsyncIterator[Planted]:
    clock = ManualClock()
    root, outside = tmp_path / "project", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "a.md").write_text("outside a")
    (outside / "big.bin").write_text("outside big")
    (root / "readme.md").write_text("hello")
    (root / "docs").mkdir()
    (root / "docs" / "a.md").write_text("a")
    (root / "link.txt").symlink_to(outside / "secret.txt")  # a file outside
    (root / "escape").symlink_to(outside)  # a folder outside
    (root / "up").symlink_to("..")  # relative, to the root's parent
    (root / "self").symlink_to(root)  # back to the root: a cycle for a listing that followed links
    (root / "loop").symlink_to("loop")  # a link to itself
    (root / "ping").symlink_to("pong")  # two links to each other
    (root / "pong").symlink_to("ping")
    store = MemoryStore()
    await store.create_workspace("proj", None, clock.now(), root=str(root))
    async with LockService(store, clock=clock) as svc:
        yield Planted(svc, root, outside, tmp_path)


#: ``swap_before_the_rename(swap)``: see :func:`swap_before_the_rename`.
SwapBeforeTheRename = Callable[[Callable[[], None]], None]


@pytest.fixture
def swap_before_the_rename(planted: Planted, monkeypatch: pytest.MonkeyPatch) -> SwapBeforeTheRename:
    """Arrange for ``swap`` to run once, when the disk first puts content in place: the race after the rule
    check and before the rename."""

    def arrange(swap: Callable[[], None]) -> None:
        disk = planted.svc.disk("proj")
        real = disk.apply
        swaps = [swap]

        def swap_then_apply(ops: Sequence[FileOp]) -> list[int]:
            while swaps:
                swaps.pop()()
            return real(ops)

        monkeypatch.setattr(disk, "apply", swap_then_apply)

    return arrange


async def refusal(call: Awaitable[object]) -> LockError:
    """The coded error ``call`` ends with; it names no server path."""
    with pytest.raises(LockError) as e:
        await call
    assert "/tmp" not in e.value.message + e.value.hint
    return e.value


# ---------------------------------------------------------------------- through planted links


@pytest.mark.parametrize("node", THROUGH_LINKS)
async def test_reading_through_a_planted_link_is_refused_and_reads_nothing_outside(planted: Planted, node: str) -> None:
    s = planted.svc
    e = await refusal(s.files.read("proj", node))
    assert e.code in ("INVALID_ARGUMENT", "NOT_FOUND")
    assert SECRET not in e.message
    assert (await refusal(s.files.info("proj", node))).code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("node", THROUGH_LINKS)
async def test_writing_through_a_planted_link_is_refused_and_changes_nothing_outside(
    planted: Planted, node: str
) -> None:
    s, before = planted.svc, planted.outside_state()
    for version in (0, 1):
        assert (await refusal(s.files.write("proj", node, b"pwned", if_version=version))).code == "INVALID_ARGUMENT"
    grant = await s.lock("proj", node, "write")  # the locks never look at the disk
    assert (await refusal(s.files.write("proj", node, b"pwned", token=grant.token))).code == "INVALID_ARGUMENT"
    assert planted.outside_state() == before


@pytest.mark.parametrize("node", ["link.txt", "escape/secret.txt", "up/outside/secret.txt", "loop", "ping/x"])
async def test_deleting_through_a_planted_link_is_refused_and_removes_nothing_outside(
    planted: Planted, node: str
) -> None:
    s, before = planted.svc, planted.outside_state()
    e = await refusal(s.files.delete("proj", node, if_version=1))
    assert e.code in ("INVALID_ARGUMENT", "NOT_FOUND")
    grant = await s.lock("proj", node, "write")
    e = await refusal(s.files.delete("proj", node, token=grant.token))
    assert e.code in ("INVALID_ARGUMENT", "NOT_FOUND")
    assert planted.outside_state() == before


@pytest.mark.parametrize("prefix", ["", "escape/", "up/", "self/", "loop", "ping/"])
async def test_a_listing_shows_only_the_roots_own_files_and_never_follows_a_link(planted: Planted, prefix: str) -> None:
    listed = [f.node_id for f in (await planted.svc.files.list("proj", prefix=prefix)).files]
    assert listed == (["docs/a.md", "readme.md"] if prefix == "" else [])


@pytest.mark.parametrize("node", ["link.txt", "escape/big.bin", "up/outside/big.bin", "self/big.bin", "loop/big.bin"])
async def test_an_upload_completed_through_a_planted_link_is_refused_and_stays_for_another_try(
    planted: Planted, node: str
) -> None:
    s, before = planted.svc, planted.outside_state()
    up = await s.files.create_upload("proj")
    await s.files.put_chunk("proj", up.upload_id, 0, b"pwned")
    sha = hashlib.sha256(b"pwned").hexdigest()
    e = await refusal(s.files.complete_upload("proj", up.upload_id, node, sha, if_version=0))
    assert e.code == "INVALID_ARGUMENT"
    assert (await s.files.upload_status("proj", up.upload_id)).received == [0]
    assert planted.outside_state() == before


async def test_an_uploads_folder_planted_as_a_link_stops_uploads_and_nothing_lands_outside(planted: Planted) -> None:
    (planted.root / ".mcp-locks").mkdir()
    (planted.root / ".mcp-locks" / "uploads").symlink_to(planted.outside)
    before = planted.outside_state()
    e = await refusal(planted.svc.files.create_upload("proj"))
    assert e.code == "UNAVAILABLE"
    assert planted.outside_state() == before


# ---------------------------------------------------------------------- dot segments and absolute ids


@pytest.mark.parametrize("node", DOTTED)
async def test_dot_segments_and_absolute_ids_are_refused_by_every_file_call(planted: Planted, node: str) -> None:
    s, before = planted.svc, planted.outside_state()
    calls: Sequence[Callable[[], Awaitable[object]]] = (
        lambda: s.files.read("proj", node),
        lambda: s.files.info("proj", node),
        lambda: s.files.write("proj", node, b"pwned", if_version=0),
        lambda: s.files.delete("proj", node, if_version=1),
        lambda: s.files.create_upload("proj", node),
        lambda: s.lock("proj", node, "write"),
    )
    for call in calls:
        e = await refusal(call())
        assert (e.code, e.details["field"]) == ("INVALID_ARGUMENT", "node_id")
    assert planted.outside_state() == before


async def test_a_backslash_is_part_of_one_file_name_inside_the_root(planted: Planted) -> None:
    before = planted.outside_state()
    node = "..\\outside\\secret.txt"
    await planted.svc.files.write("proj", node, b"inside", if_version=0)
    assert (planted.root / node).read_bytes() == b"inside"
    assert planted.outside_state() == before


@pytest.mark.parametrize("path", ["%2e%2e/outside/secret.txt", "%2Fetc%2Fpasswd", "docs/%2e%2e/%2e%2e/outside/a.md"])
async def test_encoded_dot_segments_and_slashes_over_rest_are_refused(
    planted: Planted, path: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = Settings(store="memory", data_dir=tmp_path_factory.mktemp("data"), insecure_no_auth=True)
    store = MemoryStore()  # a server of its own on the same folder: the app's lifespan runs its service
    await store.create_workspace("proj", None, 0.0, root=str(planted.root))
    service = LockService(store, clock=ManualClock())
    before = planted.outside_state()
    async with serve_app(build_app(settings, service)) as url, httpx.AsyncClient(base_url=url) as h:
        files = "/v1/workspaces/proj/files/"
        for r in (
            await h.get(files + path),
            await h.put(files + path, content=b"pwned", headers={"If-None-Match": "*"}),
            await h.delete(files + path, headers={"If-Match": "*"}),
        ):
            assert r.status_code in (404, 422), r.text
            assert SECRET not in r.text
            assert str(planted.tmp) not in r.text
    assert planted.outside_state() == before


# ---------------------------------------------------------------------- links swapped in later


async def test_a_folder_swapped_for_a_link_after_a_lock_was_taken_is_never_followed(planted: Planted) -> None:
    s = planted.svc
    grant = await s.lock("proj", "docs", "write", depth="tree")
    assert (await s.files.read("proj", "docs/a.md", token=grant.token)).content == "a"
    planted.swap_docs_for_a_link()
    before = planted.outside_state()
    for call in (
        lambda: s.files.read("proj", "docs/a.md", token=grant.token),
        lambda: s.files.write("proj", "docs/a.md", b"pwned", token=grant.token),
        lambda: s.files.write("proj", "docs/new.md", b"pwned", token=grant.token),
        lambda: s.files.delete("proj", "docs/a.md", token=grant.token),
    ):
        e = await refusal(call())
        assert e.code == "INVALID_ARGUMENT"
        assert "symbolic link" in e.message
    assert planted.outside_state() == before


async def test_a_file_swapped_for_a_link_after_a_lock_was_taken_is_never_followed(planted: Planted) -> None:
    s = planted.svc
    grant = await s.lock("proj", "readme.md", "write")
    planted.swap_readme_for_a_link()
    before = planted.outside_state()
    for call in (
        lambda: s.files.read("proj", "readme.md", token=grant.token),
        lambda: s.files.write("proj", "readme.md", b"pwned", token=grant.token),
        lambda: s.files.delete("proj", "readme.md", token=grant.token),
    ):
        assert (await refusal(call())).code == "INVALID_ARGUMENT"
    assert planted.outside_state() == before


async def test_a_folder_swapped_for_a_link_between_the_check_and_the_rename_gets_nothing(
    planted: Planted, swap_before_the_rename: SwapBeforeTheRename
) -> None:
    s, root = planted.svc, planted.root
    swap_before_the_rename(planted.swap_docs_for_a_link)
    before = planted.outside_state()
    e = await refusal(s.files.write("proj", "docs/a.md", b"pwned", if_version=1))
    assert e.code == "UNAVAILABLE"  # committed, not put in place: the caller is told to check file_info
    assert planted.outside_state() == before
    assert (root / "docs.real" / "a.md").read_text() == "a"


async def test_a_file_swapped_for_a_link_between_the_check_and_the_rename_replaces_only_the_link(
    planted: Planted, swap_before_the_rename: SwapBeforeTheRename
) -> None:
    s, root = planted.svc, planted.root
    swap_before_the_rename(planted.swap_readme_for_a_link)
    before = planted.outside_state()
    await s.files.write("proj", "readme.md", b"mine", if_version=1)
    assert not (root / "readme.md").is_symlink()
    assert (root / "readme.md").read_bytes() == b"mine"
    assert planted.outside_state() == before


async def test_a_bound_folder_swapped_for_a_link_after_it_was_opened_keeps_writing_into_the_folder_it_opened(
    planted: Planted,
) -> None:
    s, root = planted.svc, planted.root
    assert (await s.files.read("proj", "readme.md")).content == "hello"  # opened
    moved = root.with_name("project.moved")
    root.rename(moved)
    root.symlink_to(planted.outside)
    planted.root = moved  # what outside_state() leaves out: the folder that was opened
    before = {k: v for k, v in planted.outside_state().items() if k != str(root)}
    await s.files.write("proj", "new.md", b"inside", if_version=0)
    assert (moved / "new.md").read_bytes() == b"inside"
    assert {k: v for k, v in planted.outside_state().items() if k != str(root)} == before
