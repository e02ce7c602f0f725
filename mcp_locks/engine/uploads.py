"""Resumable uploads on disk: each upload's folder under ``.mcp-locks/uploads``, its chunks and its records.

What touches the disk here is blocking I/O, which the file service
(:class:`~mcp_locks.engine.file_service.FileService`) calls in worker threads; :func:`settled` only
reads a workspace's file records, in an actor step. The service decides when; this module knows the
layout, and the errors that name an upload.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import time
from typing import Any

from mcp_locks.core.errors import LockError, NotFound
from mcp_locks.core.files import STATE_DIR, FileTable
from mcp_locks.core.keys import NOBODY
from mcp_locks.core.records import FileMeta, Staged
from mcp_locks.engine.disk import ORPHAN_AGE, StagingFile, WorkspaceDisk

__all__ = [
    "Upload",
    "check_upload_id",
    "claim",
    "completed",
    "has_uploads",
    "keyed",
    "no_upload",
    "settled",
]

# The service's logger: what these functions log is the file service's doing.
log = logging.getLogger("mcp_locks.files")

_UPLOAD_RE = re.compile(r"[0-9a-f]{32}")


class Upload:
    """An upload's folder under ``.mcp-locks/uploads``: ``info.json``, its chunks, then ``done.json``.

    ``commit.json``, written just before a completion's commit, names the joined content and the
    version the commit is to give the file; ``done.json``, written once it committed, says what the
    upload wrote (its chunks and ``commit.json`` are gone by then). ``commit.json`` without
    ``done.json`` is a completion cut short, settled by the next call on the upload. A completed
    upload is kept until it expires, so a late or repeated ``complete`` is told what was written
    instead of writing again. Dropping renames the folder away first (``.gone-…``), so nobody finds
    it by its id while it is emptied; a leftover of a crash is removed by the next sweep.
    """

    def __init__(
        self,
        disk: WorkspaceDisk,
        upload_id: str,
        owner: str,
        key_id: str | None,
        expires_at: float,
        node: str | None = None,
    ) -> None:
        self.disk = disk
        self.upload_id = upload_id
        self.owner = owner
        self.key_id = key_id
        self.expires_at = expires_at
        #: The file named when it was created (None if none was).
        self.node = node
        #: What it wrote, once completed: node_id, version, etag (``unsure`` if that cannot be told).
        self.done: dict[str, Any] | None = None
        #: A completion under way or cut short (``commit.json``): staged, node_id, version, sha256, size, mtime_ns.
        self.marker: dict[str, Any] | None = None

    def _fd(self) -> int | None:
        base = self.disk.state_dir("uploads")
        try:
            return os.open(self.upload_id, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=base)
        except FileNotFoundError:
            return None

    def save(self) -> None:
        """Create the upload's folder with its info in place at once (a sweep never sees it half made)."""
        base = self.disk.state_dir("uploads")
        tmp = f".new-{self.upload_id}"
        os.mkdir(tmp, 0o700, dir_fd=base)
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=base)
        try:
            info = {"owner": self.owner, "key_id": self.key_id, "expires_at": self.expires_at, "node_id": self.node}
            f = StagingFile(fd, "info.json")
            f.write(json.dumps(info).encode())
            f.finish()
        finally:
            os.close(fd)
        os.rename(tmp, self.upload_id, src_dir_fd=base, dst_dir_fd=base)

    @classmethod
    def load(cls, disk: WorkspaceDisk, upload_id: str) -> Upload | None:
        """The upload ``upload_id`` as its folder records it (None if there is none, or no readable info)."""
        up = cls(disk, upload_id, "", None, 0.0)
        fd = up._fd()
        if fd is None:
            return None
        try:
            info = _read_json(fd, "info.json")
            done = _read_json(fd, "done.json")
            marker = _read_json(fd, "commit.json") if done is None else None
        finally:
            os.close(fd)
        try:  # a hand-edited or truncated info.json is no readable info: no upload, not an INTERNAL error
            up.owner, up.key_id, up.expires_at = str(info["owner"]), info["key_id"], float(info["expires_at"])
            up.node = info.get("node_id")
        except (KeyError, TypeError, ValueError):
            return None
        up.done = done if isinstance(done, dict) else None
        up.marker = marker if isinstance(marker, dict) else None
        return up

    @classmethod
    def all(cls, disk: WorkspaceDisk) -> list[Upload]:
        """Every upload of the workspace, after removing leftovers of drops and creations cut short."""
        base = disk.state_dir("uploads")
        # A descriptor of its own: scanning the shared cached one moves its read position under other scans.
        own = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=base)
        try:
            with os.scandir(own) as it:
                names = [e.name for e in it]
        finally:
            os.close(own)
        out = []
        for name in names:
            try:
                if name.startswith(".gone-") or (name.startswith(".new-") and _older(base, name, ORPHAN_AGE)):
                    _empty_and_remove(base, name)
                elif _UPLOAD_RE.fullmatch(name):
                    up = cls.load(disk, name)
                    if up is not None:
                        out.append(up)
            except OSError as e:  # one unreadable entry must not fail every write that counts the uploads
                log.warning("skipped upload entry %s in %s: %s", name, disk.root, e)
        return out

    @classmethod
    def unfinished(cls, disk: WorkspaceDisk) -> list[Upload]:
        """Every upload of the workspace not completed yet (none if it never had uploads)."""
        if not has_uploads(disk.root):
            return []
        try:
            ups = cls.all(disk)
        except LockError as e:  # an unusable uploads folder (a link planted there) holds no upload either
            log.warning("could not count the uploads of %s: %s", disk.root, e.code)
            return []
        return [up for up in ups if up.done is None]

    def chunks(self) -> dict[int, int]:
        """Chunk number -> size, for the chunks that arrived whole."""
        fd = self._fd()
        if fd is None:
            return {}
        try:
            out: dict[int, int] = {}
            with os.scandir(fd) as it:
                for e in it:
                    if e.name.isdigit():
                        with contextlib.suppress(FileNotFoundError):
                            out[int(e.name)] = e.stat(follow_symlinks=False).st_size
            return out
        finally:
            os.close(fd)

    def adopt_chunk(self, staged: str, index: int) -> None:
        """Move a staged, fsynced chunk into the upload (replacing an earlier copy of it)."""
        fd = self._fd()
        if fd is None:
            self.disk.discard(staged)
            raise no_upload(self.upload_id)
        try:
            os.rename(staged, str(index), src_dir_fd=self.disk.state_dir("staging"), dst_dir_fd=fd)
            os.fsync(fd)
        finally:
            os.close(fd)

    def join(self, count: int) -> Staged:
        """Chunks 0..count-1 concatenated into one staged, fsynced file (hashed on the way)."""
        fd = self._fd()
        if fd is None:
            raise no_upload(self.upload_id)
        f = self.disk.staging()
        try:
            for i in range(count):
                try:
                    src = os.open(str(i), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:  # dropped meanwhile (it expired, its key was revoked)
                    raise no_upload(self.upload_id) from None
                try:
                    while piece := os.read(src, 1 << 20):
                        f.write(piece)
                finally:
                    os.close(src)
            return f.finish()
        except BaseException:
            f.discard()
            raise
        finally:
            os.close(fd)

    def _put_json(self, fd: int, name: str, data: dict[str, Any]) -> None:
        """Write ``name`` in the upload's folder at once (a temporary file renamed over it), durably."""
        tmp = f"{name}-{secrets.token_hex(4)}.tmp"
        f = StagingFile(fd, tmp)
        try:
            f.write(json.dumps(data).encode())
            f.finish()
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            f.discard()
            raise
        os.fsync(fd)

    def mark(self, marker: dict[str, Any]) -> None:
        """Record, durably, the completion about to commit (``commit.json``); OSError if it cannot be."""
        fd = self._fd()
        if fd is None:
            raise no_upload(self.upload_id)
        try:
            self._put_json(fd, "commit.json", marker)
        finally:
            os.close(fd)

    def unmark(self) -> None:
        """Forget the completion ``commit.json`` records (it did not commit), durably."""
        fd = self._fd()
        if fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink("commit.json", dir_fd=fd)
            os.fsync(fd)
        finally:
            os.close(fd)

    def finish(self, done: dict[str, Any]) -> None:
        """Mark the upload completed (``done``: what it wrote) and drop its chunks and ``commit.json``.

        If the mark cannot be made, the upload is dropped instead: a retry then finds no upload
        rather than writing the file a second time.
        """
        fd = self._fd()
        if fd is None:
            return
        try:
            self._put_json(fd, "done.json", done)
            with os.scandir(fd) as it:
                names = [e.name for e in it if e.name.isdigit() or e.name == "commit.json"]
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
        except OSError as e:
            log.error("could not mark upload %s completed (%s): dropping it", self.upload_id, e)
            self.remove()
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Drop the upload and everything in it (nothing if it is gone already)."""
        base = self.disk.state_dir("uploads")
        gone = f".gone-{self.upload_id}-{secrets.token_hex(4)}"
        try:
            os.rename(self.upload_id, gone, src_dir_fd=base, dst_dir_fd=base)
        except FileNotFoundError:
            return
        _empty_and_remove(base, gone)


def check_upload_id(upload_id: object) -> str:
    """``upload_id`` if it is one this server could have made; NOT_FOUND otherwise (nothing to look up)."""
    if not isinstance(upload_id, str) or not _UPLOAD_RE.fullmatch(upload_id):
        raise no_upload(str(upload_id)[:40])
    return upload_id


def claim(disk: WorkspaceDisk, upload_id: str) -> int | None:
    """A descriptor of the upload's folder holding its lock (flock), or None if another process holds it.

    NOT_FOUND if there is no such upload. The lock goes with the descriptor, or with the process.
    """
    try:
        fd = os.open(upload_id, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=disk.state_dir("uploads"))  # fmt: skip
    except FileNotFoundError:
        raise no_upload(upload_id) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def settled(files: FileTable, marker: dict[str, Any]) -> dict[str, Any] | None:
    """In an actor step: what the completion ``marker`` (``commit.json``) records wrote, as ``done.json`` says it.

    None if it did not commit. It committed if the file's record still names its staged content as
    pending, or is its content (the sha256 and the precise mtime it was staged with); it did not if the
    file's version is still below the one it was to get (versions only grow). Otherwise the file changed
    since, and whether this upload wrote one of those versions cannot be told: the record says so
    (``unsure``), with no version.
    """
    node, staged, version = str(marker["node_id"]), str(marker["staged"]), int(marker["version"])
    rec = files.record(node)
    ours = rec if rec is not None and rec.pending == staged else None
    if ours is not None or any(op.staged == staged for op in files.ops):
        return _wrote(marker, ours)  # committed; its file is not in place yet
    if rec is not None and not rec.deleted and (rec.sha256, rec.mtime_ns) == (marker["sha256"], marker["mtime_ns"]):
        return _wrote(marker, rec)
    try:
        cur = files.current(node)
    except LockError:  # a folder or a link there now: the record alone says how far it went
        cur = None
    newest = max(rec.version if rec is not None else 0, cur.version if cur is not None else 0)
    if newest < version:
        return None
    return {"node_id": node, "version": None, "etag": None, "unsure": True}


def _wrote(marker: dict[str, Any], rec: FileMeta | None) -> dict[str, Any]:
    """The ``done.json`` of a completion that committed (``rec``: the file's record, if it is still its own)."""
    node = str(marker["node_id"])
    meta = rec or FileMeta(node, int(marker["version"]), int(marker["size"]), str(marker["sha256"]), 0.0, None, 0)
    return {"node_id": node, "version": meta.version, "etag": meta.etag}


def keyed(up: Upload) -> bool:
    """Whether a key started the upload (not the local caller of a server without keys)."""
    return bool(up.key_id) and up.key_id != NOBODY.key_id


def has_uploads(folder: os.PathLike[str] | str) -> bool:
    """Whether the workspace folder ``folder`` ever had uploads (a look that creates nothing)."""
    return os.path.isdir(os.path.join(folder, STATE_DIR, "uploads"))


def no_upload(upload_id: str) -> NotFound:
    """NOT_FOUND: the caller has no upload ``upload_id`` in the workspace (someone else's is not revealed)."""
    return NotFound(
        f"there is no upload '{upload_id}' of yours in this workspace.",
        hint="Start one with {op:create_upload}.",
        details={"upload_id": upload_id},
    )


def completed(upload_id: str, done: dict[str, Any]) -> NotFound:
    """NOT_FOUND for a call on an upload that already ended by completing (``done``: what it wrote)."""
    node = done.get("node_id")
    if done.get("unsure"):
        return NotFound(
            f"upload {upload_id} was being completed when the server stopped, and '{node}' has changed since:"
            " whether this upload wrote one of its versions cannot be told. It writes nothing more.",
            hint="Read the file ({op:read_file}) to see whether it holds your content; if not, start a new upload"
            " ({op:create_upload}).",
            details={"upload_id": upload_id, "completed": None, "node_id": node, "version": None, "etag": None},
        )
    return NotFound(
        f"upload {upload_id} was already completed: it wrote '{node}' as version"
        f" {done.get('version')}. Nothing more was written.",
        hint="Read the file ({op:read_file}) to see it; start a new upload ({op:create_upload}) to write again.",
        details={"upload_id": upload_id, "completed": True, **done},
    )


def _older(dir_fd: int, name: str, age: float) -> bool:
    """Whether ``name`` was last changed more than ``age`` seconds ago (False if it is gone)."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime < time.time() - age
    except FileNotFoundError:
        return False


def _read_json(dir_fd: int, name: str) -> Any:
    """The JSON in ``name`` under ``dir_fd``, or None if it is missing or unreadable."""
    try:
        with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd), "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _empty_and_remove(base: int, name: str) -> None:
    """Remove folder ``name`` under ``base`` and the files in it (tolerating others removing them too)."""
    for _ in range(3):  # a chunk renamed in by a call that opened the folder just before: look again
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=base)
        except FileNotFoundError:
            return
        try:
            with os.scandir(fd) as it:
                names = [e.name for e in it]
            for n in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(n, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=base)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
    log.warning("upload folder %s kept filling while it was removed; the next sweep retries", name)
