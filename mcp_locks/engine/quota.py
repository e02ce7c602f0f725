"""The per-workspace quota: the bytes and files a workspace keeps, and the room unfinished uploads hold.

The file service owns one :class:`Quotas`. Its actor steps ask it whether a write or a chunk fits
(QUOTA_EXCEEDED if not) and tell it what they committed, so each check is one step with the change it
allows: writes and chunks racing each other are counted one at a time.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import anyio

from mcp_locks.core.errors import LockError, QuotaExceeded
from mcp_locks.core.files import FileTable
from mcp_locks.engine.disk import WorkspaceDisk
from mcp_locks.engine.uploads import Upload

__all__ = ["Held", "Quotas", "Room", "size_of", "stage_limit"]


class _Terms(NamedTuple):
    """A change's effect on the bytes a workspace's quota counts, as a function of its size ``s``.

    After it the workspace counts ``base + max(free, s)`` bytes: up to ``free`` bytes cost nothing more,
    their room being held already (by chunks of uploads named for the file written, or, for a chunk, by
    the file its upload is named for). ``before`` is what it counts now, ``held`` the part of that in
    unfinished uploads' chunks. The quota lets a change through if it stays within the quota or does
    not add to what is counted (so a lowered quota never blocks a change that shrinks nothing).
    """

    before: int
    base: int
    free: int
    held: int

    def after(self, size: int) -> int:
        """What the workspace counts once the change, ``size`` bytes, is made."""
        return self.base + max(self.free, size)

    def limit(self, quota: int) -> int:
        """The largest size the quota lets through: within it, or no more than counted now."""
        return max(self.free, max(quota, self.before) - self.base)

    def refusal(self, quota: int, size: int, *, upload: bool = False) -> QuotaExceeded:
        """QUOTA_EXCEEDED for a change of ``size`` bytes."""
        return _over_quota("bytes", quota, self.before, self.after(size) - self.before, held=self.held, upload=upload)


class Room(NamedTuple):
    """How big one file may be under the workspace's byte quota, and the terms to explain a refusal."""

    limit: int
    quota: int
    terms: _Terms


class _Open:
    """An unfinished upload's chunks, as the byte quota counts them: chunk number -> size, and their sum."""

    __slots__ = ("chunks", "expires_at", "node", "size")

    def __init__(self, node: str | None, expires_at: float, chunks: dict[int, int]) -> None:
        self.node = node
        self.expires_at = expires_at
        self.chunks = chunks
        self.size = sum(chunks.values())  # kept up to date: actor steps sum every open upload

    def put(self, index: int, size: int | None) -> int | None:
        """Set (``size`` None: remove) chunk ``index``; its size before (None if it had none)."""
        before = self.chunks.pop(index, None)
        if size is not None:
            self.chunks[index] = size
        self.size += (size or 0) - (before or 0)
        return before


class Held:
    """The chunks a workspace's unfinished uploads keep on disk (upload id -> :class:`_Open`).

    Counted from the uploads folder when first needed (``ready`` set then), then kept by every step
    that adds a chunk, commits an upload or drops one. They count against the byte quota until their
    upload commits (its file then counts instead), is dropped, or expires.
    """

    __slots__ = ("ready", "ups")

    def __init__(self) -> None:
        self.ready = anyio.Event()
        self.ups: dict[str, _Open] = {}


@dataclass(slots=True)
class _Usage:
    """What a workspace's files take, counted once from the records of the FileTable it names.

    The actor rebuilds its FileTable when it reloads (a failed commit, another server's changes), so a
    count whose table is not the actor's current one is counted again; otherwise every write and delete
    step updates it, in the step that commits the file.
    """

    table: weakref.ReferenceType[FileTable]
    bytes: int
    files: int


class Quotas:
    """A server's quota accounting: each workspace's usage, and its unfinished uploads' chunks.

    Methods whose docstring begins "In the actor" run in the actor step of the change they count or check.
    """

    def __init__(self, quota_bytes: int | None, quota_files: int | None) -> None:
        #: Most bytes of file content one workspace may keep (None: no byte quota).
        self.quota_bytes = quota_bytes
        #: Most files one workspace may keep (None: no file quota).
        self.quota_files = quota_files
        self._usage: dict[str, _Usage] = {}
        #: Per workspace folder (a deleted workspace's goes with its folder object): its uploads' chunks.
        self._held: weakref.WeakKeyDictionary[WorkspaceDisk, Held] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ unfinished uploads' chunks

    async def holding(self, disk: WorkspaceDisk) -> Held | None:
        """The workspace's unfinished uploads' chunks (None without a byte quota), counted on first use."""
        if self.quota_bytes is None:
            return None
        while True:
            held = self._held.get(disk)
            if held is None:
                held = self._held[disk] = Held()
                try:
                    held.ups = await anyio.to_thread.run_sync(_count, disk)
                except BaseException:
                    if self._held.get(disk) is held:
                        del self._held[disk]  # the next caller counts again
                    raise
                finally:
                    held.ready.set()
                return held
            if held.ready.is_set():
                return held
            await held.ready.wait()  # counted by another call: take its count (or count again if it failed)

    def held_now(self, disk: WorkspaceDisk) -> Held | None:
        """The count :meth:`holding` made (a call that needs it awaited that first), for an actor step."""
        held = self._held.get(disk)
        return held if held is not None and held.ready.is_set() else None

    async def forget(self, disk: WorkspaceDisk, upload_id: str) -> None:
        """An upload's chunks are gone (dropped, or joined into its file): they no longer count."""
        held = self._held.get(disk)
        if held is not None:
            await held.ready.wait()  # a count being made may include them: take them out of it
            held.ups.pop(upload_id, None)

    async def recount(self, up: Upload) -> None:
        """Count ``up``'s chunks again, as they are on disk (a commit step that failed may have let go of them)."""
        held = self.held_now(up.disk)
        if held is not None:
            chunks = await anyio.to_thread.run_sync(up.chunks)
            held.ups[up.upload_id] = _Open(up.node, up.expires_at, chunks)

    @staticmethod
    def joined(held: Held | None, upload: str | None) -> None:
        """In the actor: ``upload``'s chunks are the file just written now, which counts instead."""
        if held is not None and upload is not None:
            held.ups.pop(upload, None)

    # ------------------------------------------------------------------ terms

    @staticmethod
    def _groups(held: Held | None, now: float, without: str | None = None) -> dict[str | None, int]:
        """Bytes of unexpired uploads' chunks by the file they are named for (None: none named)."""
        out: dict[str | None, int] = {}
        for uid, up in held.ups.items() if held is not None else ():
            if uid != without and up.expires_at > now and up.size:
                out[up.node] = out.get(up.node, 0) + up.size
        return out

    def _counted(self, files: FileTable, node: str | None, chunks: int) -> int:
        """What ``chunks`` bytes of uploads named for ``node`` count: past the size of the file they replace.

        The uploads named for one file share the room it gives back, so many of them cannot each stage
        that much again for free.
        """
        return chunks if node is None else max(0, chunks - (size_of(files, node) or 0))

    def _held_bytes(self, files: FileTable, groups: dict[str | None, int]) -> int:
        return sum(self._counted(files, node, chunks) for node, chunks in groups.items())

    def _write_terms(
        self, ws: str, files: FileTable, now: float, node: str, held: Held | None, upload: str | None = None
    ) -> _Terms:
        """The quota terms of writing ``node`` (with the chunks of ``upload``, which then stop counting)."""
        usage = self._usage_of(ws, files).bytes
        groups = self._groups(held, now)
        before = self._held_bytes(files, groups)
        if upload is not None:
            groups = self._groups(held, now, without=upload)
        named = groups.get(node, 0)
        others = self._held_bytes(files, groups) - self._counted(files, node, named)
        # Afterwards: the files less the one replaced, plus the new one, plus the chunks it does not cover.
        return _Terms(usage + before, usage - (size_of(files, node) or 0) + others, named, before)

    def _chunk_terms(self, ws: str, files: FileTable, now: float, up: Upload, index: int, held: Held) -> _Terms:
        """The quota terms of chunk ``index`` of ``up`` (replacing the copy of it that arrived before, if any)."""
        usage = self._usage_of(ws, files).bytes
        groups = self._groups(held, now)
        before = self._held_bytes(files, groups)
        mine = held.ups.get(up.upload_id)
        rest = groups.get(up.node, 0) - (mine.chunks.get(index, 0) if mine is not None else 0)
        others = before - self._counted(files, up.node, groups.get(up.node, 0))
        # Its group counts past the file it is named for: free up to that file's size less the rest.
        free = (size_of(files, up.node) or 0) - rest if up.node is not None else -rest
        return _Terms(usage + before, usage + others - free, free, before)

    # ------------------------------------------------------------------ checks

    def check_files(self, ws: str, files: FileTable, node: str | None) -> None:
        """In the actor: refuse a new ``node`` over the file quota (``node`` None: an upload not named yet)."""
        quota = self.quota_files
        if quota is None or node is None or size_of(files, node) is not None:
            return
        u = self._usage_of(ws, files)
        if u.files + 1 > quota:
            raise _over_quota("files", quota, u.files, 1)

    def room(self, ws: str, files: FileTable, now: float, node: str, held: Held | None) -> Room | None:
        """In the actor: refuse a new ``node`` over the file quota; the byte room for it (None: no byte quota)."""
        self.check_files(ws, files, node)
        quota = self.quota_bytes
        if quota is None:
            return None
        terms = self._write_terms(ws, files, now, node, held)
        return Room(terms.limit(quota), quota, terms)

    def check_write(
        self, ws: str, files: FileTable, now: float, node: str, size: int, held: Held | None, upload: str | None
    ) -> None:
        """In the actor: refuse a write of ``size`` bytes (of ``upload``'s chunks, if given) over a quota.

        A write that adds nothing to what the workspace counts is let through even over a lowered quota
        (no bigger than the file it replaces, or than the chunks it is made of).
        """
        self.check_files(ws, files, node)
        quota = self.quota_bytes
        if quota is not None:
            terms = self._write_terms(ws, files, now, node, held, upload)
            if terms.after(size) > max(quota, terms.before):
                raise terms.refusal(quota, size)

    def chunk_room(self, ws: str, files: FileTable, now: float, up: Upload, index: int, held: Held) -> Room:
        """In the actor: how big chunk ``index`` of ``up`` may be under the byte quota (a first look)."""
        quota = self.quota_bytes
        assert quota is not None  # chunks are held only under a byte quota
        terms = self._chunk_terms(ws, files, now, up, index, held)
        return Room(terms.limit(quota), quota, terms)

    def hold_chunk(
        self, ws: str, files: FileTable, now: float, up: Upload, index: int, size: int, held: Held
    ) -> Callable[[], None]:
        """In the actor: count chunk ``index`` of ``size`` bytes (or QUOTA_EXCEEDED); what gives its room back."""
        quota = self.quota_bytes
        assert quota is not None  # chunks are held only under a byte quota
        terms = self._chunk_terms(ws, files, now, up, index, held)
        if terms.after(size) > max(quota, terms.before):
            raise terms.refusal(quota, size, upload=True)
        mine = held.ups.setdefault(up.upload_id, _Open(up.node, up.expires_at, {}))
        before = mine.put(index, size)

        def undo() -> None:
            mine.put(index, before)

        return undo

    # ------------------------------------------------------------------ usage

    def tally(self, ws: str, files: FileTable, old: int | None, new: int | None) -> None:
        """A committed write (``new`` its size) or delete (``new`` None) of a file of ``old`` bytes."""
        u = self._usage.get(ws)
        if u is not None and u.table() is files:
            u.bytes += (new or 0) - (old or 0)
            u.files += (new is not None) - (old is not None)

    def _usage_of(self, ws: str, files: FileTable) -> _Usage:
        """The workspace's usage, counted from the records if ``files`` is not the table last counted."""
        u = self._usage.get(ws)
        if u is None or u.table() is not files:
            live = [m for m in files.records() if not m.deleted]
            u = self._usage[ws] = _Usage(weakref.ref(files), sum(m.size for m in live), len(live))
        return u


def size_of(files: FileTable, node: str | None) -> int | None:
    """The recorded size of ``node`` if it is a live file (the usage counts records), else None."""
    m = files.record(node) if node is not None else None
    return None if m is None or m.deleted else m.size


def stage_limit(room: Room | None, most: int, *, upload: bool = False) -> tuple[int, Callable[[int], LockError] | None]:
    """The most bytes a body may stage: ``most``, or less if the byte quota leaves less ``room``.

    With the refusal past it: QUOTA_EXCEEDED if the quota is the tighter bound, else None (the caller's own).
    """
    if room is None or room.limit >= most:
        return most, None
    return room.limit, lambda seen: room.terms.refusal(room.quota, seen, upload=upload)


def _count(disk: WorkspaceDisk) -> dict[str, _Open]:
    """The chunks of every unfinished upload of the workspace, read from disk (blocking: a worker thread's)."""
    return {up.upload_id: _Open(up.node, up.expires_at, up.chunks()) for up in Upload.unfinished(disk)}


def _over_quota(
    limit: str, quota: int, used: int, needed: int, *, held: int = 0, upload: bool = False
) -> QuotaExceeded:
    """QUOTA_EXCEEDED: ``needed`` more of ``limit`` (bytes or files) than the ``quota`` leaves (``used`` kept)."""
    what = "bytes of file content" if limit == "bytes" else "files"
    of = f" ({held} of them in unfinished uploads' chunks)" if held else ""
    kept = " The chunks that arrived before stay; resend this one once there is room." if upload else ""
    drop = ", complete or drop unfinished uploads" if held else ""
    return QuotaExceeded(
        f"this workspace may keep {quota} {what}; it keeps {used}{of} and this needs {needed} more.{kept}",
        hint=f"Delete files you no longer need ({{op:delete_file}}){drop}, or ask the operator to raise"
        f" --quota-{limit}.",
        details={"limit": limit, "quota": quota, "used": used, "needed": needed},
    )
