"""A workspace's folder on disk: safe path walks, staged atomic writes, crash recovery, listing.

Every method here is blocking I/O; the service calls them in worker threads
(the actor calls only the cheap ``probe`` and ``open_read`` inline).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat
import threading
import time
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from mcp_locks.core.errors import InvalidArgument, LockError, NotFound, Unavailable
from mcp_locks.core.files import STATE_DIR
from mcp_locks.core.records import FileMeta, FileOp, OnDisk, Staged

__all__ = ["StagingFile", "WorkspaceDisk", "os_error"]

log = logging.getLogger("mcp_locks.disk")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Staged files older than this, that no committed record names, are leftovers of writes that never committed.
ORPHAN_AGE = 3600.0


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def _refused(node_id: str, segment: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"'{node_id}' cannot be used: '{segment}' {why}.",
        hint="Paths are walked inside the workspace's folder only; symbolic links are never followed.",
        details={"field": "node_id", "node_id": node_id, "segment": segment},
    )


def _nfc(name: str) -> str:
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def _other_case(node_id: str, existing: str) -> InvalidArgument:
    return InvalidArgument(
        f"'{node_id}' is spelled with other case than '{existing}', which exists: this workspace's folder"
        " ignores case, so both would be one file.",
        hint=f"Use '{existing}', as the folder spells it ({{op:list_files}} shows it).",
        details={"field": "node_id", "node_id": node_id, "existing": existing},
    )


class StagingFile:
    """Content being written under the state folder; :meth:`finish` fsyncs it and returns what was staged."""

    def __init__(self, dir_fd: int, name: str) -> None:
        self._dir_fd = dir_fd
        self.name = name
        self._fd: int | None = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
        )
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> Staged:
        """Make the content durable (fsync) and close it."""
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            # The file system stamps mtimes from a coarse clock (a few ms): two versions of one size written
            # within one tick would look alike. A precise stamp tells every version apart (and a later outside
            # edit, and, with several servers, a copy that is out of date); it is kept across the rename.
            stamp = time.time_ns()
            os.utime(fd, ns=(stamp, stamp))
            os.fsync(fd)
            mtime_ns = os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
        return Staged(self.name, self.size, self._hash.hexdigest(), mtime_ns)

    def discard(self) -> None:
        """Remove the staged content (a write that will not be committed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name, dir_fd=self._dir_fd)


class WorkspaceDisk:
    """One workspace's folder: the data dir's ``files/<workspace>`` or a bound project folder.

    Every path is walked one segment at a time from an open descriptor of the
    root with ``O_NOFOLLOW``: a node id cannot name anything outside the root,
    and neither can a symbolic link planted inside a bound folder. Writes are
    staged under ``<root>/.mcp-locks/staging`` (same file system, so the
    final rename is atomic), fsynced, and moved into place only after their
    metadata is committed; then the folder is fsynced. A reader therefore sees
    the old file or the new one, never part of one, and after a crash the
    store's pending record says which staged file still has to be moved.
    """

    def __init__(self, root: Path, *, bound: bool, case_insensitive: bool | None = None) -> None:
        self.root = root
        self.bound = bound
        # None until probed (on first use); tests set it to play a case-insensitive disk on Linux.
        self._case_insensitive = case_insensitive
        self._root_fd: int | None = None
        self._state_fds: dict[str, int] = {}
        self._lock = threading.RLock()  # descriptors are opened lazily, from worker threads too
        #: Set by :meth:`close`: the folder is never opened again through this object (its workspace was
        #: deleted, or the server stops), so a late caller cannot re-create a deleted workspace's folder.
        self._closed: str | None = None

    # ------------------------------------------------------------------ descriptors

    def _root(self) -> int:
        if self._root_fd is None:
            with self._lock:
                if self._closed is not None:
                    raise self._closed_error()
                if self._root_fd is None:
                    try:
                        if not self.bound:
                            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
                        self._root_fd = os.open(self.root, _DIR_FLAGS)
                    except OSError as e:
                        log.error("cannot open workspace folder %s: %s", self.root, e)
                        raise Unavailable(
                            f"the workspace's folder cannot be opened ({e.strerror}).",  # no server path to clients
                            hint="Ask the server's admin to check that the folder exists and is readable.",
                        ) from None
        return self._root_fd

    def state_dir(self, sub: str) -> int:
        """A descriptor of ``<root>/.mcp-locks/<sub>``, created if need be (never through a link)."""
        fd = self._state_fds.get(sub)
        if fd is None:
            with self._lock:
                fd = self._state_fds.get(sub)
                if fd is None:
                    opened = self._open_state(sub, create=True)
                    assert opened is not None  # created if missing
                    fd = self._state_fds[sub] = opened
        return fd

    def _open_state(self, sub: str, create: bool) -> int | None:
        cur = self._root()
        try:
            for seg in (STATE_DIR, sub):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(seg, 0o700, dir_fd=cur)
                try:
                    nxt = os.open(seg, _DIR_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if create:
                        raise
                    return None
                except OSError as e:
                    raise Unavailable(
                        f"the workspace's state folder '{STATE_DIR}/{sub}' is unusable ({e.strerror}).",
                        hint="Ask the server's admin: it must be a real folder, not a link or a file.",
                    ) from None
                self._close(cur)
                cur = nxt
        except BaseException:
            self._close(cur)
            raise
        return cur

    def close(self, *, deleted: bool = False) -> None:
        """Close every descriptor, for good: later calls get NOT_FOUND (``deleted``) or UNAVAILABLE.

        The caller makes sure no worker thread still uses them (see ``WorkspaceRegistry.end_file_work``).
        """
        with self._lock:
            self._closed = "deleted" if deleted else "stopped"
            for fd in self._state_fds.values():
                os.close(fd)
            self._state_fds.clear()
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None

    def _closed_error(self) -> LockError:
        if self._closed == "deleted":
            return NotFound(
                "this workspace was deleted.", hint="Use another workspace, or create it again ({op:create_workspace})."
            )
        return Unavailable("the server is stopping.", hint="Retry against the restarted server.")

    # ------------------------------------------------------------------ names

    @property
    def case_insensitive(self) -> bool:
        """Whether the folder's file system holds names that differ only by case as one file (probed once)."""
        if self._case_insensitive is None:
            with self._lock:
                if self._case_insensitive is None:
                    self._case_insensitive = self._probe_case()
        return self._case_insensitive

    @case_insensitive.setter
    def case_insensitive(self, value: bool) -> None:
        self._case_insensitive = value

    def _probe_case(self) -> bool:
        """Create a lower-case name in the staging folder and ask for its upper-case twin: never assumed by OS."""
        try:
            staging = self.state_dir("staging")
            name = "case-probe-" + secrets.token_hex(8)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o600, dir_fd=staging))
            try:
                os.stat(name.upper(), dir_fd=staging, follow_symlinks=False)
            except FileNotFoundError:
                return False
            finally:
                os.unlink(name, dir_fd=staging)
            return True
        except (OSError, LockError) as e:  # a folder mcp-locks may not write to: only reads; take the usual case
            log.warning("cannot tell whether %s ignores case (%s): taken as case-sensitive", self.root, e)
            return False

    def _spelled(self, dir_fd: int, parts: list[str], i: int, strict: bool) -> str:
        """The name under which the folder ``dir_fd`` holds segment ``i`` of a node id (the id's own if none).

        Node ids are NFC; a name written decomposed (on a Mac) is found under its composed id. On a
        case-insensitive disk one file answers to every case of its name: with ``strict``, an id that
        spells an existing name with other case is refused, naming the existing spelling.
        """
        seg = parts[i]
        insensitive = self.case_insensitive
        if not insensitive:
            if seg.isascii():
                return seg
            try:
                os.stat(seg, dir_fd=dir_fd, follow_symlinks=False)
                return seg
            except OSError:
                pass  # not under its composed spelling: look for a decomposed one
        folded = seg.casefold()
        other: str | None = None
        # A descriptor of its own: one shared by threads listing at once shares its read position too.
        own = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
        try:
            with os.scandir(own) as it:
                for e in it:
                    name = _nfc(e.name)
                    if name == seg:
                        return e.name
                    if insensitive and other is None and name.casefold() == folded:
                        other = e.name
        finally:
            os.close(own)
        if other is None:
            return seg
        if strict:
            raise _other_case("/".join(parts), self._existing(parts))
        return other

    def _existing(self, parts: list[str]) -> str:
        """How the disk spells a node id, as far as it exists (the rest as given): the refusal names it."""
        out: list[str] = []
        cur = os.open(".", _DIR_FLAGS, dir_fd=self._root())
        try:
            for i in range(len(parts)):
                name = self._spelled(cur, parts, i, strict=False)
                out.append(_nfc(name))
                if i < len(parts) - 1:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=cur)
                    os.close(cur)
                    cur = nxt
        except OSError:
            pass  # a folder that is not there (or not a folder): the rest as given
        finally:
            os.close(cur)
        return "/".join(out + parts[len(out) :])

    def _parent(
        self, node_id: str, create: bool, strict: bool = False
    ) -> tuple[int | None, str, list[tuple[int, str]]]:
        """A descriptor of the folder holding ``node_id`` (None if it does not exist) and the last segment.

        With ``create``, missing folders are made; they are returned as (parent fd, name) to fsync.
        Each segment is the name the disk holds it under (see :meth:`_spelled`; ``strict`` refuses an
        existing name spelled with other case). The caller closes the descriptor unless it is the root's.
        """
        parts = node_id.split("/")
        cur = self._root()
        made: list[tuple[int, str]] = []
        try:
            for i, seg in enumerate(parts[:-1]):
                try:
                    nxt = os.open(self._spelled(cur, parts, i, strict), _DIR_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        self._close(cur)
                        return None, parts[-1], []
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(seg, 0o755, dir_fd=cur)
                    nxt = os.open(seg, _DIR_FLAGS, dir_fd=cur)
                    made.append((os.dup(cur), seg))
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        # ENOTDIR: a file; ELOOP: a symbolic link (O_NOFOLLOW).
                        why = "is a symbolic link" if self._is_link(cur, seg) else "is a file, not a folder"
                        raise _refused(node_id, "/".join(parts[: i + 1]), why) from None
                    raise os_error(node_id, e) from None
                self._close(cur)
                cur = nxt
            try:
                name = self._spelled(cur, parts, len(parts) - 1, strict)
            except OSError as e:
                raise os_error(node_id, e) from None
        except BaseException:
            self._close(cur)
            for fd, _ in made:
                os.close(fd)
            raise
        return cur, name, made

    @staticmethod
    def _is_link(dir_fd: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _close(self, fd: int | None) -> None:
        if fd is not None and fd != self._root_fd:
            os.close(fd)

    # ------------------------------------------------------------------ reading

    def probe(self, node_id: str) -> OnDisk | None:
        """What is at ``node_id`` (never following a link), or None."""
        pfd, name, _ = self._parent(node_id, create=False, strict=True)
        if pfd is None:
            return None
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise os_error(node_id, e) from None
        finally:
            self._close(pfd)
        return OnDisk(_kind(st.st_mode), st.st_size, st.st_mtime, st.st_mtime_ns)

    def open_read(self, node_id: str) -> int:
        """An open descriptor of the regular file at ``node_id`` (NOT_FOUND if none); the caller closes it."""
        pfd, name, _ = self._parent(node_id, create=False, strict=True)
        if pfd is None:
            raise NotFound(f"there is no file '{node_id}'.", details={"node_id": node_id})
        try:
            # O_NONBLOCK: opening a FIFO someone planted must not hang the server.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        except FileNotFoundError:
            raise NotFound(f"there is no file '{node_id}'.", details={"node_id": node_id}) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _refused(node_id, node_id, "is a symbolic link") from None
            raise os_error(node_id, e) from None
        finally:
            self._close(pfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _refused(node_id, node_id, "is not a regular file")
        return fd

    def open_staged(self, name: str) -> int:
        """An open descriptor of a staged file (content committed in this batch, not yet moved into place)."""
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.state_dir("staging"))

    def walk(self, prefix: str, after: str | None, limit: int, max_scan: int = 100_000) -> tuple[list[str], str | None]:
        """Regular files whose node id starts with ``prefix``, in node id order, after ``after``.

        Returns up to ``limit`` ids and the cursor to continue from (None at the end). Links are not
        followed, the state folder is skipped, and at most ``max_scan`` entries are read per call.
        Names are listed in NFC, as node ids are (a name a Mac wrote decomposed is listed composed).
        """
        prefix = _nfc(prefix)
        out: list[str] = []
        scanned = 0
        last_seen: str | None = None

        def visit(fd: int, base: str) -> bool:  # False: stop
            nonlocal scanned, last_seen
            with os.scandir(fd) as it:
                entries = [(_nfc(e.name) + ("/" if e.is_dir(follow_symlinks=False) else ""), e) for e in it]
            # Sorting "name/" for folders gives exactly the order of the node ids below them.
            for key, e in sorted(entries, key=lambda x: x[0]):
                if not base and e.name == STATE_DIR:
                    continue
                path = base + key
                scanned += 1
                if scanned > max_scan:
                    return False
                if key.endswith("/"):
                    if not (path.startswith(prefix) or prefix.startswith(path)):
                        continue
                    if after is not None and path < after and not after.startswith(path):
                        continue  # everything below sorts before the cursor
                    try:
                        sub = os.open(e.name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        if not visit(sub, path):
                            return False
                    finally:
                        os.close(sub)
                elif e.is_file(follow_symlinks=False) and path.startswith(prefix):
                    if (after is not None and path <= after) or path == last_seen:
                        continue  # before the cursor, or both Unicode forms of one name side by side
                    if len(out) == limit:
                        return False
                    out.append(path)
                    last_seen = path
            return True

        # A descriptor of the root of its own: listings run in several threads at once, and descriptors
        # duplicated from one share its read position (each listing then missed or repeated files).
        top = os.open(".", _DIR_FLAGS, dir_fd=self._root())
        try:
            done = visit(top, "")
        finally:
            os.close(top)
        return out, (None if done else last_seen or after)

    # ------------------------------------------------------------------ staging

    def staging(self) -> StagingFile:
        """A new staged file to write content into."""
        return StagingFile(self.state_dir("staging"), secrets.token_hex(16))

    def stage(self, chunks: Iterable[bytes]) -> Staged:
        """Write ``chunks`` to a new staged file and fsync it."""
        f = self.staging()
        try:
            for c in chunks:
                f.write(c)
            return f.finish()
        except BaseException:
            f.discard()
            raise

    def set_mtime(self, name: str, mtime_ns: int) -> None:
        """Give a staged file the modification time its record names (a copy made from the database)."""
        os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=self.state_dir("staging"), follow_symlinks=False)

    def marker(self) -> str:
        """An empty staged file whose existence says "this delete is still to be done on disk"."""
        return self.stage(()).name

    def discard(self, name: str) -> None:
        """Remove a staged file that will not be committed."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.state_dir("staging"))

    # ------------------------------------------------------------------ applying

    def apply(self, ops: Sequence[FileOp]) -> list[int]:
        """Move committed content into place (or unlink), then fsync every folder that changed, once each.

        Each op stands alone: the indexes of the ops that failed are returned (their staged files
        stay, so a later :meth:`recover` retries them), and the others are applied and synced.
        """
        staging = self.state_dir("staging")
        to_sync: dict[tuple[int, int], int] = {}
        failed: list[int] = []

        def keep(fd: int) -> None:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in to_sync:
                os.close(fd)
            else:
                to_sync[(st.st_dev, st.st_ino)] = fd

        try:
            for i, op in enumerate(ops):
                try:
                    pfd, name, made = self._parent(op.node_id, create=not op.delete)
                    for fd, _ in made:
                        keep(fd)
                    if pfd is None:  # a delete whose folder is gone already
                        self.discard(op.staged)
                        continue
                    try:
                        if op.delete:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(name, dir_fd=pfd)
                        else:
                            os.rename(op.staged, name, src_dir_fd=staging, dst_dir_fd=pfd)
                    finally:
                        keep(os.dup(pfd) if pfd == self._root_fd else pfd)  # after use: keep() may close it
                except (OSError, LockError) as e:
                    log.error("could not put '%s' in place: %s", op.node_id, e)
                    failed.append(i)
            for fd in to_sync.values():
                os.fsync(fd)
            # Delete markers go only once the unlinks are durable: until then they say "still to do".
            for i, op in enumerate(ops):
                if op.delete and i not in failed:
                    self.discard(op.staged)
        finally:
            for fd in to_sync.values():
                os.close(fd)
        return failed

    def recover(self, records: Iterable[FileMeta]) -> int:
        """Redo the disk changes of committed records whose staged file is still there; returns how many.

        Never raises for one file: what cannot be applied now is logged and left for the next load.
        """
        staging = self._open_state("staging", create=False)
        if staging is None:
            return 0
        try:
            ops: list[FileOp] = []
            for m in records:
                if m.pending is None:
                    continue
                try:
                    os.stat(m.pending, dir_fd=staging, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # applied before the crash
                ops.append(FileOp(m.node_id, m.pending, m.deleted))
        finally:
            os.close(staging)
        failed = self.apply(ops) if ops else []
        return len(ops) - len(failed)

    def sweep(self, keep: set[str], older_than: float = ORPHAN_AGE) -> int:
        """Remove staged files that no record names and that are older than ``older_than`` seconds.

        They are writes that never committed (younger ones may be writes in flight).
        """
        staging = self._open_state("staging", create=False)
        if staging is None:
            return 0
        cutoff = time.time() - older_than
        gone = 0
        try:
            with os.scandir(staging) as it:
                for e in it:
                    with contextlib.suppress(FileNotFoundError):
                        if e.name not in keep and e.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(e.name, dir_fd=staging)
                            gone += 1
        finally:
            os.close(staging)
        return gone


def os_error(node_id: str, e: OSError) -> LockError:
    """An OS refusal on one path, for that call alone (never a server path or a traceback)."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return InvalidArgument(
            f"the server may not read or write '{node_id}' (permission denied).",
            hint="Ask the server's admin to fix the folder's permissions, or use another path.",
            details={"field": "node_id", "node_id": node_id},
        )
    if e.errno == errno.ENAMETOOLONG:
        return InvalidArgument(f"'{node_id}' is too long for the file system.", details={"field": "node_id"})
    log.error("file system error on %s: %s", node_id, e)
    return Unavailable(f"the file system failed on '{node_id}' ({e.strerror}).", hint="Retry later.")
