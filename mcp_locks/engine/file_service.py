"""The file store's service layer: reads, writes, deletes, listings and resumable uploads that obey the locks.

The quota's accounting is in :mod:`~mcp_locks.engine.quota`, the uploads' folders in
:mod:`~mcp_locks.engine.uploads`; this module runs the steps that use them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import anyio

from mcp_locks.core.errors import (
    InvalidArgument,
    LockError,
    NotFound,
    QuotaExceeded,
    TooLarge,
    Unavailable,
    VersionMismatch,
)
from mcp_locks.core.files import FileTable, check_file_id, is_yours
from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.core.models import FileContent, FileInfo, FileList, FileStatus, FileWritten, LockStatus, UploadInfo, utc
from mcp_locks.core.records import FileMeta, Staged
from mcp_locks.core.table import LockTable
from mcp_locks.engine.arguments import check_count, check_token, check_version, who_is
from mcp_locks.engine.disk import StagingFile, WorkspaceDisk, os_error
from mcp_locks.engine.quota import Quotas, Room, size_of, stage_limit
from mcp_locks.engine.registry import workspace_deleted
from mcp_locks.engine.uploads import Upload, check_upload_id, claim, completed, has_uploads, keyed, no_upload, settled

if TYPE_CHECKING:
    from mcp_locks.engine.registry import WorkspaceRegistry

__all__ = ["ANY_VERSION", "FileLimits", "FileService"]

log = logging.getLogger("mcp_locks.files")

T = TypeVar("T")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]+")
#: Bytes gathered from a request body before one hop to a worker thread writes them.
_WRITE_BATCH = 1 << 20
#: Times a read looks again when the file changed between the rule check and the open.
OPEN_ATTEMPTS = 5
#: In ``if_match``: any current version will do (HTTP ``If-Match: *``), but the file must exist.
ANY_VERSION = "*"


@dataclass(frozen=True, slots=True)
class FileLimits:
    """Bounds of the file store."""

    max_file_size: int = 1 << 30
    #: Most bytes one read_file call returns (MCP results go into a model's context).
    max_read: int = 1 << 20
    chunk_size: int = 16 << 20
    upload_ttl: float = 86_400.0
    #: Most bytes of file content one workspace may keep (None: no quota).
    quota_bytes: int | None = None
    #: Most files one workspace may keep (None: no quota).
    quota_files: int | None = None

    @property
    def quota(self) -> bool:
        """Whether a per-workspace quota applies."""
        return self.quota_bytes is not None or self.quota_files is not None


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
    """A write or delete, its arguments checked: where, by whom, under which token or precondition."""

    ws: str
    node: str
    disk: WorkspaceDisk
    who: Any  # the service's Who: owner, label, key_id, as_key
    token: str | None
    version: int | None
    #: Entity tags the current version must have (HTTP If-Match; '"7"' names version 7 whatever its
    #: content), or (ANY_VERSION,): the file must exist.
    match: tuple[str, ...] | None = None


class _Gate:
    """One upload's gate: a completion, a chunk being adopted and a drop run one at a time (in this server)."""

    __slots__ = ("claimed", "lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0
        #: The holder also holds the upload against other server processes sharing the folder (:meth:`_claimed`).
        self.claimed = False


class FileService:
    """Reads and writes a workspace's files under the lock rules (see :class:`~mcp_locks.core.files.FileTable`).

    Content is staged to disk and fsynced in a worker thread before the
    workspace actor is asked to commit it, so the actor never waits for a
    big body; the rule check, the quota check, the metadata commit and the
    rename are then one actor step. Bodies stream to disk in bounded pieces:
    a 1 GiB upload never sits in memory. Every call runs as file work on its
    workspace (``WorkspaceRegistry.file_work``): deleting the workspace
    cancels it and it ends with NOT_FOUND.
    """

    def __init__(self, registry: WorkspaceRegistry, limits: FileLimits) -> None:
        self.registry = registry
        self.limits = limits
        self.quotas = Quotas(limits.quota_bytes, limits.quota_files)
        self._gates: dict[str, _Gate] = {}
        self._sweeping = False
        self._sweep_again = False
        registry.access_listeners.append(self._access_changed)

    # ------------------------------------------------------------------ helpers

    def working(self, workspace_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """File work on ``workspace_id`` done outside this service (a download streaming its response)."""
        return self.registry.file_work(workspace_id)

    async def _where(self, workspace_id: object, node_id: object, caller: Identity) -> tuple[str, str, WorkspaceDisk]:
        svc = self.registry
        ws = await svc.known(workspace_id, caller)
        node = check_file_id(node_id)
        return ws, node, svc.disk(ws)

    async def _change(
        self,
        ws: str,
        node_id: object,
        token: object,
        if_version: object,
        agent: object,
        caller: Identity,
        if_match: tuple[str, ...] | None,
        *,
        writing: bool = True,
    ) -> tuple[_Change, Room | None]:
        """Check a change's arguments, and (``writing``) the room the byte quota leaves for it.

        Without a token or a precondition the change is refused here, before any content is staged
        (the rule does not depend on the content); so is a new file over the file quota.
        """
        node = check_file_id(node_id)
        match = _check_match(if_match)
        c = _Change(ws, node, self.registry.disk(ws), who_is(caller, agent),
                    check_token(token) if token is not None else None, check_version(if_version), match)  # fmt: skip
        quota = writing and self.limits.quota
        if not (c.token is None and c.version is None and c.match is None) and not quota:
            return c, None
        held = await self.quotas.holding(c.disk) if quota else None
        actor = self.registry.actor(ws)

        def step(table: LockTable, now: float) -> Room | None:
            files = actor.files
            version = self._resolved(files, table, now, c)
            files.check_change(table, now, node, owner=c.who.owner, as_key=c.who.as_key, token=c.token,
                               if_version=version)  # fmt: skip
            return self.quotas.room(ws, files, now, node, held) if quota else None

        return c, await actor.call(step)

    def _resolved(self, files: FileTable, table: LockTable, now: float, c: _Change) -> int | None:
        """The version a change expects: ``if_version``, or the current one if it has an ETag ``match`` names.

        In the actor step, so the ETag compared is the one the write replaces. A refusal by the lock rules
        (LOCKED, a dead token) is reported before a failed precondition, as with ``if_version``.
        """
        if table.retired:
            raise workspace_deleted(c.ws)
        if c.match is None:
            return c.version
        cur = files.current(c.node)
        if cur is not None and (ANY_VERSION in c.match or cur.etag in c.match or f'"{cur.version}"' in c.match):
            return cur.version
        files.check_change(table, now, c.node, owner=c.who.owner, as_key=c.who.as_key, token=c.token,
                           if_version=cur.version if cur is not None else 0)  # fmt: skip
        raise _no_match(c.node, cur, c.match)

    # ------------------------------------------------------------------ staging and committing

    async def _stage(
        self,
        disk: WorkspaceDisk,
        body: bytes | AsyncIterable[bytes],
        limit: int,
        what: str,
        over: Callable[[int], LockError] | None = None,
    ) -> Staged:
        """Stage ``body``; more than ``limit`` bytes is refused with ``over(bytes seen)`` (TOO_LARGE by default)."""
        refuse = over or (lambda seen: self._too_large(limit))
        try:
            return await self._stage_unchecked(disk, body, limit, refuse)
        except OSError as e:  # a full disk, a quota: that call fails with a code, nothing else does
            raise os_error(what, e) from None

    async def _stage_unchecked(
        self,
        disk: WorkspaceDisk,
        body: bytes | AsyncIterable[bytes],
        limit: int,
        refuse: Callable[[int], LockError],
    ) -> Staged:
        if isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body)
            if len(data) > limit:
                raise refuse(len(data))
            return await anyio.to_thread.run_sync(disk.stage, (data,))
        f: StagingFile = await anyio.to_thread.run_sync(disk.staging)
        try:
            buf = bytearray()
            async for piece in body:
                if f.size + len(buf) + len(piece) > limit:
                    raise refuse(f.size + len(buf) + len(piece))
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
        ws, node, _disk = await self._where(workspace_id, node_id, caller)
        async with self.registry.file_work(ws):
            meta, fd = await self._open(ws, node, token, caller)
        return ws, meta, fd

    async def _open(self, ws: str, node: str, token: object, caller: Identity) -> tuple[FileMeta, int]:
        disk = self.registry.disk(ws)
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
                return meta, fd
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
        ws, node, _disk = await self._where(workspace_id, node_id, caller)
        async with self.registry.file_work(ws):
            meta, fd = await self._open(ws, node, token, caller)
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
            others = [le for le in table.covering(now, node) if not is_yours(le, who.owner, who.as_key)]
            return meta, table.status(now, node), not any(le.mode == "write" for le in others), not others

        async with self.registry.file_work(ws):
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
        async with svc.file_work(ws):
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
        if_match: tuple[str, ...] | None = None,
        caller: Identity = LOCAL,
    ) -> FileWritten:
        """Write the whole file atomically, under a lock (``token``) or a precondition.

        The precondition is ``if_version`` (0: create only) or ``if_match``: entity tags one of which the
        current version must have, or (ANY_VERSION,): the file must exist, at any version.
        """
        ws = await self.registry.known(workspace_id, caller)
        async with self.registry.file_work(ws):
            c, room = await self._change(ws, node_id, token, if_version, agent, caller, if_match)
            limit, over = stage_limit(room, self.limits.max_file_size)
            return await self._write_staged(c, await self._stage(c.disk, body, limit, c.node, over))

    async def _write_staged(self, c: _Change, staged: Staged) -> FileWritten:
        out = await self._commit(c.ws, c.disk, staged.name, self._write_step(c, staged))
        assert out is not None  # no version expected: the step writes or refuses
        meta, created = out
        return FileWritten(file=FileInfo.of(c.ws, meta), created=created, deleted=False)

    def _write_step(
        self, c: _Change, staged: Staged, *, expect: int | None = None, upload: str | None = None
    ) -> Callable[[LockTable, float], tuple[FileMeta, bool] | None]:
        """The actor step committing ``staged`` as ``c``'s file: (metadata, created).

        ``expect``: write only if the file's next version is this one (None returned otherwise, nothing
        written). ``upload``: the upload whose chunks ``staged`` joins; they stop counting in this step.
        """
        actor = self.registry.actor(c.ws)
        held = self.quotas.held_now(c.disk)

        def step(table: LockTable, now: float) -> tuple[FileMeta, bool] | None:
            files = actor.files
            version = self._resolved(files, table, now, c)
            if expect is not None and self._next_version(files, table, now, c, version) != expect:
                return None
            old = size_of(files, c.node)
            if self.limits.quota:
                try:
                    self.quotas.check_write(c.ws, files, now, c.node, staged.size, held, upload)
                except QuotaExceeded:
                    # A refusal by the lock rules is the one to report: the quota is not what stops it.
                    files.check_change(table, now, c.node, owner=c.who.owner, as_key=c.who.as_key, token=c.token,
                                       if_version=version)  # fmt: skip
                    raise
            meta, created = files.write(table, now, c.node, staged, owner=c.who.owner, as_key=c.who.as_key,
                                        by=c.who.owner, token=c.token, if_version=version)  # fmt: skip
            self.quotas.tally(c.ws, files, old, meta.size)
            self.quotas.joined(held, upload)  # in the same step: counted once, as chunks or as the file
            return meta, created

        return step

    def _next_version(self, files: FileTable, table: LockTable, now: float, c: _Change, version: int | None) -> int:
        """The version a write of ``c`` (expecting ``version``) would give the file now; a refusal is raised."""
        cur, _lease = files.check_change(table, now, c.node, owner=c.who.owner, as_key=c.who.as_key, token=c.token,
                                         if_version=version)  # fmt: skip
        return files.next_version(c.node, cur)

    async def delete(
        self,
        workspace_id: object = None,
        node_id: object = None,
        token: object = None,
        if_version: object = None,
        agent: object = None,
        *,
        if_match: tuple[str, ...] | None = None,
        caller: Identity = LOCAL,
    ) -> FileWritten:
        """Delete the file, under the same rules as a write (no quota: a delete only gives room back)."""
        ws = await self.registry.known(workspace_id, caller)
        async with self.registry.file_work(ws):
            c, _room = await self._change(ws, node_id, token, if_version, agent, caller, if_match, writing=False)
            marker = await anyio.to_thread.run_sync(c.disk.marker)
            actor = self.registry.actor(c.ws)

            def step(table: LockTable, now: float) -> FileMeta:
                files = actor.files
                version = self._resolved(files, table, now, c)
                old = size_of(files, c.node)
                gone = files.delete(table, now, c.node, marker, owner=c.who.owner, as_key=c.who.as_key,
                                    by=c.who.owner, token=c.token, if_version=version)  # fmt: skip
                self.quotas.tally(c.ws, files, old, None)
                return gone

            gone = await self._commit(c.ws, c.disk, marker, step)
        return FileWritten(file=FileInfo.of(c.ws, gone), created=False, deleted=True)

    # ------------------------------------------------------------------ uploads

    @contextlib.asynccontextmanager
    async def _gate(self, upload_id: str) -> AsyncIterator[None]:
        """Hold the upload's gate: in this server, one completion (or chunk adoption, or drop) at a time."""
        gate = self._gates.get(upload_id)
        if gate is None:
            gate = self._gates[upload_id] = _Gate()
        gate.users += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[upload_id]

    @contextlib.asynccontextmanager
    async def _claimed(self, disk: WorkspaceDisk, upload_id: str) -> AsyncIterator[None]:
        """Under the upload's gate: hold it against other server processes sharing the folder, too.

        A completion holds it from before it looks at the upload to its end, and settling a completion
        cut short needs it: with several servers on one folder, another server's completion in flight is
        not one cut short (UNAVAILABLE then). The lock is the kernel's (flock): a dead process lets go.
        """
        gate = self._gates[upload_id]
        if gate.claimed:  # the completion holding the gate has it already
            yield
            return
        fd = await anyio.to_thread.run_sync(claim, disk, upload_id)
        if fd is None:
            raise Unavailable(
                f"upload {upload_id} is being completed by another server process.",
                hint="Retry in a moment: its answer then says what it wrote.",
                details={"upload_id": upload_id},
            )
        gate.claimed = True
        try:
            yield
        finally:
            gate.claimed = False
            os.close(fd)

    async def _remove(self, up: Upload) -> None:
        """Remove an upload and its chunks (they stop counting against the quota)."""
        with anyio.CancelScope(shield=True):  # gone from disk means gone from the count
            await anyio.to_thread.run_sync(up.remove)
            await self.quotas.forget(up.disk, up.upload_id)

    async def _drop(self, up: Upload) -> None:
        """Remove an upload nobody is completing or adding to right now (those see its state themselves)."""
        if up.upload_id not in self._gates:
            await self._remove(up)

    async def _upload_state(
        self, ws: str, disk: WorkspaceDisk, upload_id: object, caller: Identity, *, gated: bool = False
    ) -> Upload:
        """The caller's unfinished upload (NOT_FOUND if none, if it expired, or if it was completed).

        A completion cut short (its ``commit.json`` left) is settled first, under the upload's gate.
        """
        uid = check_upload_id(upload_id)
        up = await anyio.to_thread.run_sync(Upload.load, disk, uid)
        who = who_is(caller, None)
        now = self.registry.clock.now()
        if up is None or up.owner != who.owner or up.key_id != caller.key_id:
            raise no_upload(uid)  # someone else's upload is not revealed
        if up.expires_at <= now:
            if gated:
                await self._remove(up)
            else:
                await self._drop(up)
            raise NotFound(
                f"upload {uid} expired at {utc(up.expires_at):%Y-%m-%dT%H:%M:%SZ} and was dropped.",
                hint="Start a new upload.",
                details={"upload_id": uid},
            )
        if up.done is None and up.marker is not None:
            if not gated:  # a completion of it may be running here: settle it only once that one is over
                async with self._gate(uid):
                    return await self._upload_state(ws, disk, uid, caller, gated=True)
            async with self._claimed(disk, uid):
                # Looked at again once held: another server may have ended it meanwhile.
                fresh = await anyio.to_thread.run_sync(Upload.load, disk, uid)
                if fresh is None:
                    raise no_upload(uid)
                up = fresh
                if up.done is None and up.marker is not None:
                    with anyio.CancelScope(shield=True):  # the upload's files and its count change together
                        await self._settle(ws, up)
        if up.done is not None:
            raise completed(uid, up.done)
        return up

    def _upload_info(self, ws: str, up: Upload, received: dict[int, int]) -> UploadInfo:
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
        """Start a resumable upload (expired uploads of the workspace are dropped first).

        ``node_id``, if given, is the file it is for: with a quota, a new file over the file quota is
        refused at once, and chunks may use the room the file they replace gives back.
        """
        svc = self.registry
        ws = await svc.known(workspace_id, caller)
        node = check_file_id(node_id) if node_id is not None else None
        async with svc.file_work(ws):
            if self.limits.quota:
                actor = svc.actor(ws)

                def step(table: LockTable, now: float) -> None:
                    if table.retired:
                        raise workspace_deleted(ws)
                    self.quotas.check_files(ws, actor.files, node)

                await actor.call(step)
            disk = svc.disk(ws)
            now = svc.clock.now()
            await self._sweep(disk, lambda up: up.expires_at <= now)
            who = who_is(caller, None)
            up = Upload(disk, secrets.token_hex(16), who.owner, caller.key_id, now + self.limits.upload_ttl, node)
            await anyio.to_thread.run_sync(up.save)
        return self._upload_info(ws, up, {})

    async def upload_status(
        self, workspace_id: object = None, upload_id: object = None, *, caller: Identity = LOCAL
    ) -> UploadInfo:
        """Which chunks of an upload arrived."""
        ws = await self.registry.known(workspace_id, caller)
        async with self.registry.file_work(ws):
            up = await self._upload_state(ws, self.registry.disk(ws), upload_id, caller)
            received = await anyio.to_thread.run_sync(up.chunks)
        return self._upload_info(ws, up, received)

    async def put_chunk(
        self,
        workspace_id: object = None,
        upload_id: object = None,
        index: object = None,
        body: bytes | AsyncIterable[bytes] = b"",
        *,
        caller: Identity = LOCAL,
    ) -> UploadInfo:
        """Store chunk ``index`` (sending it again replaces it; a chunk cut off half-way never counts).

        With a byte quota, the chunks of unfinished uploads count as they arrive: a chunk that would take
        the workspace over it is refused (QUOTA_EXCEEDED) and not kept; the chunks that arrived before stay.
        """
        ws = await self.registry.known(workspace_id, caller)
        async with self.registry.file_work(ws):
            disk = self.registry.disk(ws)
            up = await self._upload_state(ws, disk, upload_id, caller)
            most = -(-self.limits.max_file_size // self.limits.chunk_size)
            n = check_count(index, "chunk")
            if n >= most:
                raise InvalidArgument(
                    f"chunk numbers go from 0 to {most - 1} ({self.limits.chunk_size} bytes each at most).",
                    details={"field": "chunk", "max": most - 1},
                )
            limit, over = await self._chunk_limit(ws, up, n)
            staged = await self._stage(disk, body, limit, f"chunk {n} of upload {up.upload_id}", over)
            async with self._gate(up.upload_id):
                try:  # completed, aborted or dropped while the chunk arrived, or no room left: it is not kept
                    up = await self._upload_state(ws, disk, up.upload_id, caller, gated=True)
                    undo = await self._hold_chunk(ws, up, n, staged.size)
                    try:
                        await anyio.to_thread.run_sync(up.adopt_chunk, staged.name, n)
                    except BaseException:
                        undo()
                        raise
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(disk.discard, staged.name)
                    raise
            received = await anyio.to_thread.run_sync(up.chunks)
        return self._upload_info(ws, up, received)

    async def _chunk_limit(self, ws: str, up: Upload, n: int) -> tuple[int, Callable[[int], LockError] | None]:
        """The most bytes chunk ``n`` may have: the chunk size, or less if the byte quota leaves less room.

        A first look, so a body far over the room is cut off as it arrives; :meth:`_hold_chunk` decides.
        """
        held = await self.quotas.holding(up.disk)
        if held is None:
            return self.limits.chunk_size, None
        actor = self.registry.actor(ws)

        def step(table: LockTable, now: float) -> Room:
            if table.retired:
                raise workspace_deleted(ws)
            return self.quotas.chunk_room(ws, actor.files, now, up, n, held)

        return stage_limit(await actor.call(step), self.limits.chunk_size, upload=True)

    async def _hold_chunk(self, ws: str, up: Upload, n: int, size: int) -> Callable[[], None]:
        """Count chunk ``n`` of ``size`` bytes against the byte quota before it is kept (or QUOTA_EXCEEDED).

        Returns what gives the room back if the chunk is not kept after all. In an actor step, so chunks
        racing each other, and writes racing them, are counted one at a time.
        """
        held = self.quotas.held_now(up.disk)
        if held is None:
            return lambda: None
        actor = self.registry.actor(ws)

        def step(table: LockTable, now: float) -> Callable[[], None]:
            if table.retired:
                raise workspace_deleted(ws)
            return self.quotas.hold_chunk(ws, actor.files, now, up, n, size, held)

        return await actor.call(step)

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

        If the write is refused (LOCKED, VERSION_MISMATCH, QUOTA_EXCEEDED...), the upload stays: fix the
        cause and complete again. An upload commits at most once, even across a crash: calls racing to
        complete it run one at a time, and once one has written the file the others (and any later call)
        get NOT_FOUND naming the file and version it wrote (see :meth:`_commit_upload`).
        """
        ws = await self.registry.known(workspace_id, caller)
        async with self.registry.file_work(ws):
            c, _room = await self._change(ws, node_id, token, if_version, agent, caller, None)
            uid = check_upload_id(upload_id)
            if not isinstance(sha256, str) or not _SHA_RE.fullmatch(sha256.lower()):
                await self._upload_state(ws, c.disk, uid, caller)  # someone else's upload is NOT_FOUND first
                raise InvalidArgument("sha256 must be the 64 hex digits of the whole file's SHA-256.",
                                      details={"field": "sha256"})  # fmt: skip
            async with self._gate(uid), self._claimed(c.disk, uid):
                up = await self._upload_state(ws, c.disk, uid, caller, gated=True)
                staged = await self._joined(up, sha256.lower())
                # Once its commit may have happened, the upload must be settled whatever happens to the caller.
                with anyio.CancelScope(shield=True):
                    written = await self._commit_upload(c, up, staged)
        return written

    async def _commit_upload(self, c: _Change, up: Upload, staged: Staged) -> FileWritten:
        """Commit ``staged`` (the joined chunks) as ``c``'s file: at most once, whatever happens meanwhile.

        First ``commit.json`` records, durably, the content's name, sha256 and mtime and the version the
        commit is to give the file; the commit step writes that version or nothing. Once the commit is
        durable the upload is marked done (``done.json``). A crash or a failed step in between leaves
        ``commit.json``: the next call on the upload settles it from the file's records (:meth:`_settle`),
        so a retry answers as the first call would have, and never writes again.
        """
        actor = self.registry.actor(c.ws)
        for _ in range(OPEN_ATTEMPTS):
            try:
                version = await actor.call(self._version_step(c))
                marker = {"staged": staged.name, "node_id": c.node, "version": version, "sha256": staged.sha256,
                          "size": staged.size, "mtime_ns": staged.mtime_ns}  # fmt: skip
                await anyio.to_thread.run_sync(up.mark, marker)
            except BaseException as e:
                await self._unstage(up, staged.name)
                if isinstance(e, OSError):
                    raise os_error(f"upload {up.upload_id}", e) from None
                raise
            up.marker = marker
            out = await self._try_commit(c, up, staged, version)
            if out is None:
                continue  # the file changed between the two steps: record the version it will now get
            meta, created = out
            await anyio.to_thread.run_sync(up.finish, {"node_id": c.node, "version": meta.version, "etag": meta.etag})
            await self.quotas.forget(up.disk, up.upload_id)
            return FileWritten(file=FileInfo.of(c.ws, meta), created=created, deleted=False)
        await self._unstage(up, staged.name)
        raise Unavailable(
            f"'{c.node}' changed on every attempt to commit the upload to it.", hint="Complete the upload again."
        )

    def _version_step(self, c: _Change) -> Callable[[LockTable, float], int]:
        """The actor step telling the version a write of ``c`` would give the file (a refusal is raised)."""
        actor = self.registry.actor(c.ws)

        def step(table: LockTable, now: float) -> int:
            return self._next_version(actor.files, table, now, c, self._resolved(actor.files, table, now, c))

        return step

    async def _try_commit(self, c: _Change, up: Upload, staged: Staged, version: int) -> tuple[FileMeta, bool] | None:
        """The commit step of :meth:`_commit_upload`; if it fails, what it left is settled (or dropped)."""
        step = self._write_step(c, staged, expect=version, upload=up.upload_id)
        wrote = False

        def run(table: LockTable, now: float) -> tuple[FileMeta, bool] | None:
            nonlocal wrote
            out = step(table, now)
            wrote = out is not None
            return out

        try:
            return await self.registry.actor(c.ws).call(run)
        except BaseException:
            if not wrote:  # refused, or never run: nothing of it was committed
                await self._unstage(up, staged.name)
            else:  # recorded, and then the store or the disk failed: it may have committed
                try:
                    await self._settle(c.ws, up)
                except LockError as e:  # the store is still out: the next call on the upload settles it
                    log.warning("could not settle upload %s yet: %s", up.upload_id, e.code)
                    # Meanwhile its chunks, still on disk, count again (the step stopped counting them); if it did
                    # commit, the room is counted twice until it is settled: on the safe side.
                    await self.quotas.recount(up)
            raise

    async def _unstage(self, up: Upload, staged: str) -> None:
        """Drop joined content no commit took: ``commit.json`` first, so nothing then claims a file that is gone."""
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(up.unmark)
            except OSError as e:  # the marker stays, naming the content: the next call on the upload settles it
                log.error("could not clear the commit record of upload %s: %s", up.upload_id, e)
                return
            up.marker = None
            await anyio.to_thread.run_sync(up.disk.discard, staged)

    async def _settle(self, ws: str, up: Upload) -> None:
        """Under the upload's gate: did the completion ``commit.json`` records commit? Mark the upload so.

        The file's records tell (:func:`~mcp_locks.engine.uploads.settled`); if they cannot, the upload
        ends without writing, and says so. Either way it never writes twice.
        """
        m = up.marker
        assert m is not None
        actor = self.registry.actor(ws)

        def step(table: LockTable, now: float) -> dict[str, Any] | None:
            if table.retired:
                raise workspace_deleted(ws)
            return settled(actor.files, m)

        done = await actor.call(step)
        if done is None:
            await self._unstage(up, str(m["staged"]))
            await self.quotas.recount(up)  # its chunks are still there (the failed step may have stopped counting them)
            return
        if done.get("unsure"):
            log.warning(
                "upload %s: a completion cut short cannot be told to have written '%s'", up.upload_id, done["node_id"]
            )
        await anyio.to_thread.run_sync(up.finish, done)
        await self.quotas.forget(up.disk, up.upload_id)
        up.done = done

    async def _joined(self, up: Upload, sha256: str) -> Staged:
        """The upload's chunks joined into one staged file whose sha256 is ``sha256``."""
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
        if staged.sha256 != sha256:
            await anyio.to_thread.run_sync(up.disk.discard, staged.name)
            raise InvalidArgument(
                "the chunks do not add up to the sha256 given.",
                hint="Check which chunk differs (resend them all if unsure), then complete again.",
                details={"field": "sha256", "expected": sha256, "got": staged.sha256},
            )
        return staged

    async def abort_upload(
        self, workspace_id: object = None, upload_id: object = None, *, caller: Identity = LOCAL
    ) -> None:
        """Drop an upload and its chunks (the room they held under the byte quota is given back)."""
        ws = await self.registry.known(workspace_id, caller)
        async with self.registry.file_work(ws):
            uid = check_upload_id(upload_id)
            async with self._gate(uid):
                up = await self._upload_state(ws, self.registry.disk(ws), uid, caller, gated=True)
                await self._remove(up)

    # ------------------------------------------------------------------ dropping uploads

    async def _sweep(
        self, disk: WorkspaceDisk, doomed: Callable[[Upload], bool], ups: Sequence[Upload] | None = None
    ) -> int:
        """Drop the uploads (``ups``, or all) ``doomed`` says to (and leftovers of interrupted ones); how many."""
        if ups is None:
            ups = await anyio.to_thread.run_sync(Upload.all, disk)
        gone = 0
        for up in ups:
            if doomed(up) and up.upload_id not in self._gates:
                await self._remove(up)
                gone += 1
        return gone

    def _access_changed(self) -> None:
        """A key was revoked (or a workspace deleted): drop the uploads of revoked keys, in the background."""
        if self._sweeping:
            self._sweep_again = True  # the running sweep goes round once more
            return
        try:
            self.registry.background(self._drop_revoked, "dropping the uploads of revoked keys")
        except Unavailable:  # not running: a stopped server has no uploads in flight
            return
        self._sweeping = True

    async def _drop_revoked(self) -> None:
        try:
            while True:
                self._sweep_again = False
                await self._drop_revoked_once()
                if not self._sweep_again:
                    return
        finally:
            self._sweeping = False

    async def _drop_revoked_once(self) -> None:
        """Drop every upload whose key is revoked (or gone), in every workspace that has uploads."""
        svc = self.registry
        folders = {ws: folder for ws in svc.workspaces if ws not in svc.deleting and (folder := svc.folder(ws))}
        # One hop to a worker thread for all the looks; a folder never opened here is opened only if it has uploads.
        having = await anyio.to_thread.run_sync(lambda: [ws for ws, f in folders.items() if has_uploads(f)])
        live: dict[str, bool] = {}
        for ws in having:
            try:
                async with svc.file_work(ws):
                    disk = svc.disk(ws)
                    ups = [up for up in await anyio.to_thread.run_sync(Upload.all, disk) if keyed(up)]
                    for kid in {up.key_id for up in ups} - live.keys():
                        assert kid is not None  # keyed
                        rec = await svc.store.get_key(kid)
                        live[kid] = rec is not None and rec.revoked_at is None
                    dropped = await self._sweep(disk, lambda up: not live[up.key_id or ""], ups)
            except LockError as e:  # this workspace's folder cannot be used now (or it was just deleted)
                log.warning("could not look at the uploads of %s: %s", ws, e.code)
                continue
            if dropped:
                log.info("dropped %d upload(s) of revoked keys in %s", dropped, ws)


def _check_match(if_match: object) -> tuple[str, ...] | None:
    if if_match is None:
        return None
    if not isinstance(if_match, tuple) or not all(isinstance(t, str) for t in if_match):
        raise InvalidArgument("if_match must be a tuple of entity tags.", details={"field": "if-match"})
    return if_match


def _no_match(node: str, cur: FileMeta | None, match: tuple[str, ...]) -> VersionMismatch:
    if cur is None:
        return VersionMismatch(
            f"'{node}' does not exist, and the write asked for an existing file (If-Match).",
            hint="Create it instead: {op:write_file} with if_version 0.",
            details={"node_id": node, "current_version": 0, "etag": None},
        )
    return VersionMismatch(
        f"'{node}' is at version {cur.version} (ETag {cur.etag}), which If-Match does not name"
        f" ({cur.modified_by or 'someone else'} changed it).",
        hint="Someone changed it after you read it. Read it again ({op:read_file}), redo your change on the new"
        " content, and write with the new ETag.",
        details={"node_id": node, "current_version": cur.version, "etag": cur.etag},
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
