"""The file store's service layer: reads, writes, deletes, listings and resumable uploads that obey the locks."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import anyio

from mcp_locks.core.errors import InvalidArgument, LockError, NotFound, TooLarge, Unavailable
from mcp_locks.core.files import check_file_id
from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.core.models import FileContent, FileInfo, FileList, FileStatus, FileWritten, LockStatus, UploadInfo, utc
from mcp_locks.core.records import FileMeta, Staged
from mcp_locks.core.table import LockTable
from mcp_locks.engine.arguments import check_count, check_token, check_version, who_is
from mcp_locks.engine.disk import StagingFile, WorkspaceDisk, os_error

if TYPE_CHECKING:
    from mcp_locks.engine.registry import WorkspaceRegistry

__all__ = ["FileLimits", "FileService"]

T = TypeVar("T")
_UPLOAD_RE = re.compile(r"[0-9a-f]{32}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]+")
#: Bytes gathered from a request body before one hop to a worker thread writes them.
_WRITE_BATCH = 1 << 20
#: Times a read looks again when the file changed between the rule check and the open.
OPEN_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class FileLimits:
    """Bounds of the file store."""

    max_file_size: int = 1 << 30
    #: Most bytes one read_file call returns (MCP results go into a model's context).
    max_read: int = 1 << 20
    chunk_size: int = 16 << 20
    upload_ttl: float = 86_400.0


def _pread(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes at ``offset``; nothing past the end.

    os.pread itself fails on an offset past 2**63 (OverflowError) or one whose end would pass it
    (EINVAL), and any offset is a valid argument.
    """
    return b"" if offset >= os.fstat(fd).st_size else os.pread(fd, n, offset)


def _as_text(data: bytes, eof: bool) -> tuple[str, str, int]:
    """(content, encoding, bytes used): UTF-8 text when it is, else base64; a character cut at the end waits."""
    try:
        return data.decode("utf-8"), "utf-8", len(data)
    except UnicodeDecodeError as e:
        if not eof and e.start >= len(data) - 3 and e.start > 0:
            try:
                return data[: e.start].decode("utf-8"), "utf-8", e.start
            except UnicodeDecodeError:
                pass
    return base64.b64encode(data).decode("ascii"), "base64", len(data)


class _Change(NamedTuple):
    """A write or delete, its arguments checked: where, by whom, under which token or version."""

    ws: str
    node: str
    disk: WorkspaceDisk
    who: Any  # the service's Who: owner, label, key_id, as_key
    token: str | None
    version: int | None


class FileService:
    """Reads and writes a workspace's files under the lock rules (see :class:`~mcp_locks.core.files.FileTable`).

    Content is staged to disk and fsynced in a worker thread before the
    workspace actor is asked to commit it, so the actor never waits for a
    big body; the rule check, the metadata commit and the rename are then one
    actor step. Bodies stream to disk in bounded pieces: a 1 GiB upload never
    sits in memory.
    """

    def __init__(self, registry: WorkspaceRegistry, limits: FileLimits) -> None:
        self.registry = registry
        self.limits = limits

    # ------------------------------------------------------------------ helpers

    async def _where(self, workspace_id: object, node_id: object, caller: Identity) -> tuple[str, str, WorkspaceDisk]:
        svc = self.registry
        ws = await svc.known(workspace_id, caller)
        node = check_file_id(node_id)
        return ws, node, svc.disk(ws)

    async def _change(
        self, workspace_id: object, node_id: object, token: object, if_version: object, agent: object, caller: Identity
    ) -> _Change:
        """Check a change's arguments.

        Without a token or a version the change is refused here, before any content is staged
        (the rule does not depend on the content).
        """
        ws, node, disk = await self._where(workspace_id, node_id, caller)
        c = _Change(ws, node, disk, who_is(caller, agent), check_token(token) if token is not None else None,
                    check_version(if_version))  # fmt: skip
        if c.token is None and c.version is None:
            actor = self.registry.actor(ws)
            await actor.call(
                lambda table, now: actor.files.check_change(
                    table, now, node, owner=c.who.owner, as_key=c.who.as_key, token=None, if_version=None
                )
            )
        return c

    async def _stage(self, disk: WorkspaceDisk, body: bytes | AsyncIterable[bytes], limit: int, what: str) -> Staged:
        try:
            return await self._stage_unchecked(disk, body, limit)
        except OSError as e:  # a full disk, a quota: that call fails with a code, nothing else does
            raise os_error(what, e) from None

    async def _stage_unchecked(self, disk: WorkspaceDisk, body: bytes | AsyncIterable[bytes], limit: int) -> Staged:
        if isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body)
            if len(data) > limit:
                raise self._too_large(limit)
            return await anyio.to_thread.run_sync(disk.stage, (data,))
        f: StagingFile = await anyio.to_thread.run_sync(disk.staging)
        try:
            buf = bytearray()
            async for piece in body:
                if f.size + len(buf) + len(piece) > limit:
                    raise self._too_large(limit)
                buf += piece
                if len(buf) >= _WRITE_BATCH:
                    chunk, buf = bytes(buf), bytearray()
                    await anyio.to_thread.run_sync(f.write, chunk)
            if buf:
                await anyio.to_thread.run_sync(f.write, bytes(buf))
            return await anyio.to_thread.run_sync(f.finish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(f.discard)
            raise

    @staticmethod
    def _too_large(limit: int) -> TooLarge:
        return TooLarge(
            f"the file is larger than {limit} bytes, the most this server accepts.",
            hint="Ask the admin to raise max_file_size, or split the data into several files.",
            details={"limit": limit},
        )

    async def _commit(
        self,
        ws: str,
        disk: WorkspaceDisk,
        staged: str,
        step: Callable[[LockTable, float], T],
    ) -> T:
        """Run ``step`` in the actor; if it refuses (or the caller goes away before), drop the staged content."""
        actor = self.registry.actor(ws)
        used = False

        def run(table: LockTable, now: float) -> T:
            nonlocal used
            out = step(table, now)
            used = True
            return out

        try:
            return await actor.call(run)
        finally:
            if not used:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(disk.discard, staged)

    # ------------------------------------------------------------------ reading

    async def open(
        self, workspace_id: object, node_id: object, token: object = None, *, caller: Identity = LOCAL
    ) -> tuple[str, FileMeta, int]:
        """Check the read rule in the actor, then open the file: (workspace, metadata, descriptor).

        The descriptor is of exactly the version the metadata describes (checked by size and mtime,
        and looked up again if the file changed in between); the caller must close it.
        """
        ws, node, disk = await self._where(workspace_id, node_id, caller)
        tok = check_token(token) if token is not None else None
        who = who_is(caller, None)
        actor = self.registry.actor(ws)

        def step(table: LockTable, now: float) -> tuple[FileMeta, str | None]:
            meta = actor.files.check_read(table, now, node, owner=who.owner, as_key=who.as_key, token=tok)
            pending = actor.files.unapplied(node)  # written earlier in this very batch: still its staged file
            return meta, pending.staged if pending is not None else None

        # The rule is checked in the actor, the file opened outside it; the open is then checked to be
        # the version the actor saw (size and mtime), and read again in the rare case it changed between.
        for _ in range(OPEN_ATTEMPTS):
            meta, staged = await actor.call(step)
            try:
                fd = disk.open_staged(staged) if staged is not None else disk.open_read(node)
            except (FileNotFoundError, NotFound):
                continue  # renamed or deleted meanwhile: look again
            st = os.fstat(fd)
            if st.st_size == meta.size and (not meta.mtime_ns or st.st_mtime_ns == meta.mtime_ns):
                return ws, meta, fd
            os.close(fd)
        raise Unavailable(f"'{node}' changed on every attempt to read it.", hint="Retry in a moment.")

    async def read(
        self,
        workspace_id: object = None,
        node_id: object = None,
        token: object = None,
        offset: object = 0,
        length: object = None,
        *,
        caller: Identity = LOCAL,
    ) -> FileContent:
        """Read ``length`` bytes (default: up to max_read) from ``offset``, as text or base64."""
        off = check_count(offset, "offset")
        n = self.limits.max_read if length is None else check_count(length, "length")
        n = min(n, self.limits.max_read)
        ws, meta, fd = await self.open(workspace_id, node_id, token, caller=caller)
        try:
            data = await anyio.to_thread.run_sync(_pread, fd, n, off)
        finally:
            os.close(fd)
        size = meta.size if meta.tracked else max(meta.size, off + len(data))
        eof = off + len(data) >= size
        content, encoding, used = _as_text(data, eof)
        end = off + used
        return FileContent(
            file=FileInfo.of(ws, meta),
            content=content,
            encoding="utf-8" if encoding == "utf-8" else "base64",
            offset=off,
            length=used,
            eof=end >= size,
            next_offset=None if end >= size else end,
        )

    async def info(
        self, workspace_id: object = None, node_id: object = None, agent: object = None, *, caller: Identity = LOCAL
    ) -> FileStatus:
        """Metadata, lock status, and whether the caller may read and write the file now."""
        ws, node, _disk = await self._where(workspace_id, node_id, caller)
        who = who_is(caller, agent)
        actor = self.registry.actor(ws)

        def step(table: LockTable, now: float) -> tuple[FileMeta | None, Any, bool, bool]:
            meta = actor.files.current(node)
            others = [le for le in table.covering(now, node) if le.owner != who.owner]
            return meta, table.status(now, node), not any(le.mode == "write" for le in others), not others

        meta, st, may_read, may_write = await actor.call(step)
        if may_write:
            advice = (
                f"Free: lock_file('{node}', mode='write') and write with its token, or write with if_version="
                f"{meta.version if meta else 0}."
            )
        elif may_read:
            advice = "Others hold read locks: you may read it; to write, wait for them (lock_file with wait=30)."
        else:
            advice = "Another agent is writing it: wait in line with lock_file(..., wait=30) before reading or writing."
        return FileStatus(
            workspace_id=ws,
            node_id=node,
            exists=meta is not None,
            file=FileInfo.of(ws, meta) if meta else None,
            lock=LockStatus.of(ws, st),
            may_read=may_read,
            may_write=may_write,
            advice=advice,
        )

    async def list(
        self,
        workspace_id: object = None,
        prefix: object = "",
        cursor: object = None,
        limit: object = 200,
        *,
        caller: Identity = LOCAL,
    ) -> FileList:
        """A page of files whose node id starts with ``prefix``, in node id order."""
        svc = self.registry
        ws = await svc.known(workspace_id, caller)
        if not isinstance(prefix, str) or len(prefix) > 1024:
            raise InvalidArgument("prefix must be a string of at most 1024 characters.", details={"field": "prefix"})
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be an integer from 1 to 1000.", details={"field": "limit"})
        after = None
        if cursor is not None:
            after = _decode_file_cursor(cursor)
        disk = svc.disk(ws)
        names, nxt = await anyio.to_thread.run_sync(disk.walk, prefix, after, limit)
        actor = svc.actor(ws)

        def step(table: LockTable, now: float) -> list[FileMeta]:
            out: list[FileMeta] = []
            for n in names:
                try:
                    m = actor.files.current(n)
                except LockError:  # replaced by a folder or a link meanwhile
                    continue
                if m is not None:
                    out.append(m)
            return out

        metas = await actor.call(step)
        return FileList(
            workspace_id=ws,
            files=[FileInfo.of(ws, m) for m in metas],
            next_cursor=_encode_file_cursor(nxt) if nxt else None,
        )

    # ------------------------------------------------------------------ changing

    async def write(
        self,
        workspace_id: object = None,
        node_id: object = None,
        body: bytes | AsyncIterable[bytes] = b"",
        token: object = None,
        if_version: object = None,
        agent: object = None,
        *,
        caller: Identity = LOCAL,
    ) -> FileWritten:
        """Write the whole file atomically, under a lock (``token``) or a version check (``if_version``)."""
        c = await self._change(workspace_id, node_id, token, if_version, agent, caller)
        return await self._write_staged(c, await self._stage(c.disk, body, self.limits.max_file_size, c.node))

    async def _write_staged(self, c: _Change, staged: Staged) -> FileWritten:
        actor = self.registry.actor(c.ws)

        def step(table: LockTable, now: float) -> tuple[FileMeta, bool]:
            return actor.files.write(table, now, c.node, staged, owner=c.who.owner, as_key=c.who.as_key,
                                     by=c.who.owner, token=c.token, if_version=c.version)  # fmt: skip

        meta, created = await self._commit(c.ws, c.disk, staged.name, step)
        return FileWritten(file=FileInfo.of(c.ws, meta), created=created, deleted=False)

    async def delete(
        self,
        workspace_id: object = None,
        node_id: object = None,
        token: object = None,
        if_version: object = None,
        agent: object = None,
        *,
        caller: Identity = LOCAL,
    ) -> FileWritten:
        """Delete the file, under the same rules as a write."""
        c = await self._change(workspace_id, node_id, token, if_version, agent, caller)
        marker = await anyio.to_thread.run_sync(c.disk.marker)
        actor = self.registry.actor(c.ws)

        def step(table: LockTable, now: float) -> FileMeta:
            return actor.files.delete(table, now, c.node, marker, owner=c.who.owner, as_key=c.who.as_key,
                                      by=c.who.owner, token=c.token, if_version=c.version)  # fmt: skip

        gone = await self._commit(c.ws, c.disk, marker, step)
        return FileWritten(file=FileInfo.of(c.ws, gone), created=False, deleted=True)

    # ------------------------------------------------------------------ uploads

    @staticmethod
    def _upload_id(upload_id: object) -> str:
        if not isinstance(upload_id, str) or not _UPLOAD_RE.fullmatch(upload_id):
            raise _no_upload(str(upload_id)[:40])
        return upload_id

    async def _upload_state(self, ws: str, disk: WorkspaceDisk, upload_id: object, caller: Identity) -> _Upload:

        uid = self._upload_id(upload_id)
        up = await anyio.to_thread.run_sync(_Upload.load, disk, uid)
        who = who_is(caller, None)
        now = self.registry.clock.now()
        if up is None or up.owner != who.owner or up.key_id != caller.key_id:
            raise _no_upload(uid)  # someone else's upload is not revealed
        if up.expires_at <= now:
            await anyio.to_thread.run_sync(up.remove)
            raise NotFound(
                f"upload {uid} expired at {utc(up.expires_at):%Y-%m-%dT%H:%M:%SZ} and was dropped.",
                hint="Start a new upload.",
                details={"upload_id": uid},
            )
        return up

    def _upload_info(self, ws: str, up: _Upload, received: dict[int, int]) -> UploadInfo:
        return UploadInfo(
            workspace_id=ws,
            upload_id=up.upload_id,
            chunk_size=self.limits.chunk_size,
            max_size=self.limits.max_file_size,
            received=sorted(received),
            size=sum(received.values()),
            expires_at=utc(up.expires_at),
        )

    async def create_upload(
        self, workspace_id: object = None, node_id: object = None, *, caller: Identity = LOCAL
    ) -> UploadInfo:
        """Start a resumable upload (expired uploads of the workspace are dropped first)."""
        svc = self.registry
        ws = await svc.known(workspace_id, caller)
        if node_id is not None:
            check_file_id(node_id)
        disk = svc.disk(ws)
        now = svc.clock.now()
        await anyio.to_thread.run_sync(_Upload.sweep, disk, now)
        who = who_is(caller, None)
        up = _Upload(disk, secrets.token_hex(16), who.owner, caller.key_id, now + self.limits.upload_ttl)
        await anyio.to_thread.run_sync(up.save)
        return self._upload_info(ws, up, {})

    async def upload_status(
        self, workspace_id: object = None, upload_id: object = None, *, caller: Identity = LOCAL
    ) -> UploadInfo:
        """Which chunks of an upload arrived."""
        ws = await self.registry.known(workspace_id, caller)
        disk = self.registry.disk(ws)
        up = await self._upload_state(ws, disk, upload_id, caller)
        return self._upload_info(ws, up, await anyio.to_thread.run_sync(up.chunks))

    async def put_chunk(
        self,
        workspace_id: object = None,
        upload_id: object = None,
        index: object = None,
        body: bytes | AsyncIterable[bytes] = b"",
        *,
        caller: Identity = LOCAL,
    ) -> UploadInfo:
        """Store chunk ``index`` (sending it again replaces it; a chunk cut off half-way never counts)."""
        ws = await self.registry.known(workspace_id, caller)
        disk = self.registry.disk(ws)
        up = await self._upload_state(ws, disk, upload_id, caller)
        most = -(-self.limits.max_file_size // self.limits.chunk_size)
        n = check_count(index, "chunk")
        if n >= most:
            raise InvalidArgument(
                f"chunk numbers go from 0 to {most - 1} ({self.limits.chunk_size} bytes each at most).",
                details={"field": "chunk", "max": most - 1},
            )
        staged = await self._stage(disk, body, self.limits.chunk_size, f"chunk {n} of upload {up.upload_id}")
        await anyio.to_thread.run_sync(up.adopt_chunk, staged.name, n)
        return self._upload_info(ws, up, await anyio.to_thread.run_sync(up.chunks))

    async def complete_upload(
        self,
        workspace_id: object = None,
        upload_id: object = None,
        node_id: object = None,
        sha256: object = None,
        token: object = None,
        if_version: object = None,
        agent: object = None,
        *,
        caller: Identity = LOCAL,
    ) -> FileWritten:
        """Join chunks 0..n-1, check the sha256, and write them as one atomic write (the upload then ends).

        If the write is refused (LOCKED, VERSION_MISMATCH...), the upload stays: fix the cause and complete again.
        """
        c = await self._change(workspace_id, node_id, token, if_version, agent, caller)
        disk = c.disk
        up = await self._upload_state(c.ws, disk, upload_id, caller)
        if not isinstance(sha256, str) or not _SHA_RE.fullmatch(sha256.lower()):
            raise InvalidArgument("sha256 must be the 64 hex digits of the whole file's SHA-256.",
                                  details={"field": "sha256"})  # fmt: skip
        received = await anyio.to_thread.run_sync(up.chunks)
        missing = [i for i in range(max(received, default=-1) + 1) if i not in received]
        if not received or missing:
            raise InvalidArgument(
                "the upload is missing chunks " + (", ".join(map(str, missing[:20])) if missing else "(none sent)."),
                hint="Send the missing chunks ({op:upload_status} shows which arrived), then complete again.",
                details={"missing": missing[:100]},
            )
        if sum(received.values()) > self.limits.max_file_size:
            raise self._too_large(self.limits.max_file_size)
        staged = await anyio.to_thread.run_sync(up.join, len(received))
        if staged.sha256 != sha256.lower():
            await anyio.to_thread.run_sync(disk.discard, staged.name)
            raise InvalidArgument(
                "the chunks do not add up to the sha256 given.",
                hint="Check which chunk differs (resend them all if unsure), then complete again.",
                details={"field": "sha256", "expected": sha256.lower(), "got": staged.sha256},
            )
        written = await self._write_staged(c, staged)
        await anyio.to_thread.run_sync(up.remove)
        return written

    async def abort_upload(
        self, workspace_id: object = None, upload_id: object = None, *, caller: Identity = LOCAL
    ) -> None:
        """Drop an upload and its chunks."""
        ws = await self.registry.known(workspace_id, caller)
        disk = self.registry.disk(ws)
        up = await self._upload_state(ws, disk, upload_id, caller)
        await anyio.to_thread.run_sync(up.remove)


class _Upload:
    """An upload's folder under ``.mcp-locks/uploads``: ``info.json`` and one file per chunk."""

    def __init__(self, disk: WorkspaceDisk, upload_id: str, owner: str, key_id: str | None, expires_at: float):
        self.disk = disk
        self.upload_id = upload_id
        self.owner = owner
        self.key_id = key_id
        self.expires_at = expires_at

    def _fd(self, create: bool = False) -> int | None:
        base = self.disk.state_dir("uploads")
        if create:
            os.mkdir(self.upload_id, 0o700, dir_fd=base)
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
            info = {"owner": self.owner, "key_id": self.key_id, "expires_at": self.expires_at}
            f = StagingFile(fd, "info.json")
            f.write(json.dumps(info).encode())
            f.finish()
        finally:
            os.close(fd)
        os.rename(tmp, self.upload_id, src_dir_fd=base, dst_dir_fd=base)

    @classmethod
    def load(cls, disk: WorkspaceDisk, upload_id: str) -> _Upload | None:
        up = cls(disk, upload_id, "", None, 0.0)
        fd = up._fd()
        if fd is None:
            return None
        try:
            with open(os.open("info.json", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as f:
                info = json.loads(f.read())
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        up.owner, up.key_id, up.expires_at = info["owner"], info["key_id"], float(info["expires_at"])
        return up

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
                        out[int(e.name)] = e.stat(follow_symlinks=False).st_size
            return out
        finally:
            os.close(fd)

    def adopt_chunk(self, staged: str, index: int) -> None:
        """Move a staged, fsynced chunk into the upload (replacing an earlier copy of it)."""
        fd = self._fd()
        if fd is None:
            self.disk.discard(staged)
            raise _no_upload(self.upload_id)
        try:
            os.rename(staged, str(index), src_dir_fd=self.disk.state_dir("staging"), dst_dir_fd=fd)
            os.fsync(fd)
        finally:
            os.close(fd)

    def join(self, count: int) -> Staged:
        """Chunks 0..count-1 concatenated into one staged, fsynced file (hashed on the way)."""
        fd = self._fd()
        if fd is None:
            raise _no_upload(self.upload_id)
        f = self.disk.staging()
        try:
            for i in range(count):
                src = os.open(str(i), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
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

    def remove(self) -> None:
        base = self.disk.state_dir("uploads")
        fd = self._fd()
        if fd is None:
            return
        try:
            with os.scandir(fd) as it:
                names = [e.name for e in it]
            for name in names:
                os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.upload_id, dir_fd=base)

    @classmethod
    def sweep(cls, disk: WorkspaceDisk, now: float) -> int:
        """Drop every expired upload of the workspace (one being created is not listed yet: it is renamed in)."""
        base = disk.state_dir("uploads")
        gone = 0
        with os.scandir(base) as it:
            ids = [e.name for e in it if _UPLOAD_RE.fullmatch(e.name)]
        for uid in ids:
            up = cls.load(disk, uid)
            if up is not None and up.expires_at <= now:
                up.remove()
                gone += 1
        return gone


def _no_upload(upload_id: str) -> NotFound:
    return NotFound(
        f"there is no upload '{upload_id}' of yours in this workspace.",
        hint="Start one with {op:create_upload}.",
        details={"upload_id": upload_id},
    )


def _encode_file_cursor(node: str) -> str:
    return base64.urlsafe_b64encode(node.encode()).decode().rstrip("=")


def _decode_file_cursor(cursor: object) -> str:
    if isinstance(cursor, str) and len(cursor) <= 4096 and _CURSOR_RE.fullmatch(cursor):
        try:
            return check_file_id(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
        except (binascii.Error, ValueError, LockError):
            pass
    raise InvalidArgument(
        "cursor is not a cursor returned by list_files.",
        hint="Pass next_cursor from the previous page unchanged, or omit it to start over.",
        details={"field": "cursor"},
    )


async def remove_tree(path: os.PathLike[str] | str) -> None:
    """Delete a workspace's own folder (never a bound one) in a worker thread."""
    await anyio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))
