"""File metadata and the rules that make writes respect locks: a pure registry, no I/O, no clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from mcp_locks.core.errors import InvalidArgument, Locked, LockError, NotFound, StaleFence, VersionMismatch
from mcp_locks.core.names import check_node_id
from mcp_locks.core.records import FileMeta, FileOp, OnDisk, PutFile, Staged

if TYPE_CHECKING:
    from mcp_locks.core.records import Event, EventKind, Lease
    from mcp_locks.core.table import LockTable

__all__ = [
    "STATE_DIR",
    "FileMeta",
    "FileOp",
    "FileTable",
    "OnDisk",
    "PutFile",
    "Staged",
    "check_file_id",
    "is_yours",
]

#: The folder under a workspace's root where mcp-locks keeps staged writes and uploads; no node may be in it.
STATE_DIR = ".mcp-locks"
#: Longest path segment a file system accepts (NAME_MAX on Linux).
NAME_MAX = 255


def check_file_id(value: object, field: str = "node_id") -> str:
    """A node id that may name a file: a clean path, not in the state folder, each segment a valid file name."""
    node = check_node_id(value, field)
    segments = node.split("/")
    if any(seg.lower() == STATE_DIR for seg in segments):  # any depth: a nested bound folder keeps state too
        raise InvalidArgument(
            f"{field} must not go through a '{STATE_DIR}' folder: mcp-locks keeps its own state there.",
            hint="Pick another folder.",
            details={"field": field, "rule": f"no {STATE_DIR} segment"},
        )
    if any(len(s.encode()) > NAME_MAX for s in segments):
        raise InvalidArgument(
            f"{field} has a segment longer than {NAME_MAX} bytes, which no file system accepts.",
            details={"field": field, "rule": f"segments of at most {NAME_MAX} bytes"},
        )
    return node


def _holders_text(leases: list[Lease], owner: str) -> str:
    from mcp_locks.core.records import fmt_time as _fmt_time

    said = ", ".join(f"agent '{le.owner}' ({le.mode} lock until {_fmt_time(le.expires_at)})" for le in leases[:3])
    if any(le.owner == owner for le in leases):
        said += " (taken with another key of yours: a lock belongs to the key that took it)"
    return said


def is_yours(lease: Lease, owner: str, as_key: str | None) -> bool:
    """Whether ``lease`` is the caller's: same owner (agent or session) and, with an agent key, that very key.

    The lock rule's own: a token works only with the key that took it, so a lock taken with another key
    of the same agent (an old one, since revoked) is someone else's. Without ``as_key`` (an admin, or a
    server without authentication) the owner's name decides, as it decides whose token an admin may use.
    """
    return lease.owner == owner and (as_key is None or lease.key_id == as_key)


def _same_but_case(a: str, b: str) -> bool:
    """Whether ``a`` and ``b``, or a folder of one and the other, name one path once case is ignored."""
    fa, fb = a.casefold(), b.casefold()
    return fa == fb or fa.startswith(fb + "/") or fb.startswith(fa + "/")


class FileTable:
    """The files of one workspace as the lock rules see them.

    The workspace actor owns it beside the :class:`LockTable`, so checking
    the rules and recording a write are one step: nobody can take a lock
    between the check and the write.

    Rules for changing a file (write or delete):

    * If anyone else holds any lock covering the node (read or write, on
      the node or a tree lock above it): LOCKED. A lock is the caller's only
      if it has the caller's owner name (agent or session) *and* was taken
      with the caller's key: the lock rule's own, where a token works only
      with the key that took it.
    * With a token: it must name a live write lock of the caller covering the
      node (LOCK_EXPIRED / LOCK_BROKEN / LOCK_NOT_FOUND otherwise), whose fence
      is not older than the fence the file was last written under
      (STALE_FENCE). This is what stops a late writer: its lease ended, or a
      newer lock has written since.
    * Without a token: ``if_version`` is required and must equal the current
      version (0 = the file must not exist), else VERSION_MISMATCH.
    * Neither: INVALID_ARGUMENT. A blind write is how updates get lost.

    Reads are refused (LOCKED) only while someone else holds a write lock
    covering the node, unless the reader shows a live token of its own.

    Changes are appended to the lock table's ``changes`` (committed in the
    same transaction as lock changes) and the disk work to :attr:`ops`,
    which the actor applies after the commit and before answering.
    """

    def __init__(
        self, metas: Iterable[FileMeta], probe: Callable[[str], OnDisk | None], *, case_insensitive: bool = False
    ) -> None:
        self._meta: dict[str, FileMeta] = {m.node_id: m for m in metas}
        self._probe = probe
        #: The folder ignores case: a change this batch made under one spelling is not on disk yet to say so.
        self._case_insensitive = case_insensitive
        #: Disk changes recorded since the actor last took them: committed with the batch, then applied.
        self.ops: list[FileOp] = []
        # Until then the disk still shows the old file: this batch's later steps must not look there.
        self._unapplied: dict[str, FileOp] = {}

    def take_ops(self) -> list[FileOp]:
        """The disk changes to apply after this batch's commit (the disk then matches the records again)."""
        ops, self.ops = self.ops, []
        self._unapplied.clear()
        return ops

    def applied(self, ops: Iterable[FileOp], locks: LockTable) -> None:
        """The disk now matches these records: clear their pending mark (committed with the next batch)."""
        for op in ops:
            m = self._meta.get(op.node_id)
            if m is not None and m.pending == op.staged:
                m = self._meta[op.node_id] = m._replace(pending=None)
                locks.changes.append(PutFile(m))

    def carry(self, ops: list[FileOp]) -> None:
        """Ops whose apply failed: keep them pending (reads use their staged files) for the next batch."""
        if ops:
            self.ops[:0] = ops
            for op in ops:
                self._unapplied.setdefault(op.node_id, op)

    def unapplied(self, node_id: str) -> FileOp | None:
        """The change to ``node_id`` recorded in this batch but not yet on disk, if any (read its staged file)."""
        return self._unapplied.get(node_id)

    def records(self) -> list[FileMeta]:
        """Every file's committed record (a server catching up on a shared store merges changes into them)."""
        return list(self._meta.values())

    def record(self, node_id: str) -> FileMeta | None:
        """The stored record of ``node_id`` (a tombstone included), if any."""
        return self._meta.get(node_id)

    def pending(self) -> list[FileMeta]:
        """Records whose disk change may not have been applied yet."""
        return [m for m in self._meta.values() if m.pending is not None]

    def current(self, node_id: str) -> FileMeta | None:
        """The file as it is now, or None if there is none.

        A file in a bound folder that mcp-locks never wrote is version 1, untracked. A file changed
        outside mcp-locks since its last write (other size or mtime) counts as one version more, untracked,
        so a write with the version read before that change fails instead of destroying it.
        """
        m = self._meta.get(node_id)
        op = self._unapplied.get(node_id)
        if op is not None:  # written (or deleted) earlier in this batch: the record is the truth
            return None if op.delete else m
        found = self._probe(node_id)
        if found is not None and found.kind != "file":
            raise _not_a_file(node_id, found.kind)
        if found is None:
            return None  # never written, deleted, or removed behind our back
        unchanged = m is not None and (not m.mtime_ns or (found.size, found.mtime_ns) == (m.size, m.mtime_ns))
        if m is not None and not m.deleted and unchanged:
            return m
        # Never written through us (or re-created behind our back after a delete).
        base = m.version if m is not None else 0
        fence = m.fence if m else 0
        return FileMeta(
            node_id, base + 1, found.size, None, found.mtime, None, fence, tracked=False, mtime_ns=found.mtime_ns
        )

    # ------------------------------------------------------------------ rules

    def check_read(
        self, locks: LockTable, now: float, node_id: str, *, owner: str, as_key: str | None, token: str | None
    ) -> FileMeta:
        """The file's metadata if ``owner`` may read it now (LOCKED / NOT_FOUND / token errors otherwise)."""
        if token is not None:
            self._lease(locks, now, token, as_key, node_id, need_write=False)
        else:
            writers = [
                le for le in locks.covering(now, node_id) if le.mode == "write" and not is_yours(le, owner, as_key)
            ]
            if writers:
                raise Locked(
                    f"'{node_id}' is being written: {_holders_text(writers, owner)}.",
                    hint="Read it after the writer unlocks it: {op:lock_file} with mode 'read' and wait=30 waits in"
                    " line and then shows a consistent file (pass its token to {op:read_file}).",
                    details={"node_id": node_id, "holders": [le.owner for le in writers]},
                )
        meta = self.current(node_id)
        if meta is None:
            raise _no_file(node_id)
        return meta

    def check_change(
        self,
        locks: LockTable,
        now: float,
        node_id: str,
        *,
        owner: str,
        as_key: str | None,
        token: str | None,
        if_version: int | None,
        must_exist: bool = False,
    ) -> tuple[FileMeta | None, Lease | None]:
        """Whether ``owner`` may change the file now: its current metadata and the lease it writes under."""
        lease = self._lease(locks, now, token, as_key, node_id, need_write=True) if token is not None else None
        others = [le for le in locks.covering(now, node_id) if le is not lease and not is_yours(le, owner, as_key)]
        if others:
            raise Locked(
                f"'{node_id}' is locked by {_holders_text(others, owner)}.",
                hint="Take the lock yourself ({op:lock_file} with mode 'write' and wait=30) and write with its token.",
                details={"node_id": node_id, "holders": [le.owner for le in others]},
            )
        for other, op in self._unapplied.items():  # changes earlier in this batch are not on disk yet
            if self._case_insensitive and other != node_id and _same_but_case(other, node_id):
                raise InvalidArgument(
                    f"'{node_id}' is spelled with other case than '{other}', changed a moment ago: this"
                    " workspace's folder ignores case, so both would be one file.",
                    hint=f"Use '{other}'.",
                    details={"field": "node_id", "node_id": node_id, "existing": other},
                )
            if not op.delete and other.startswith(node_id + "/"):
                raise _not_a_file(node_id, "dir")
            if not op.delete and node_id.startswith(other + "/"):
                raise InvalidArgument(
                    f"'{node_id}' cannot be used: '{other}' is a file, not a folder.",
                    hint="Pick a path whose folders are not files.",
                    details={"field": "node_id", "node_id": node_id, "segment": other},
                )
        cur = self.current(node_id)
        if cur is None and must_exist:
            raise _no_file(node_id)
        if lease is None and if_version is None:
            raise InvalidArgument(
                "a write needs a lock token or if_version: a blind write can destroy someone else's change.",
                hint="Either take a write lock ({op:lock_file}) and pass its token, or pass if_version="
                f"{cur.version if cur else 0} (the version you read; 0 = create only) and retry on VERSION_MISMATCH.",
                details={"field": "token", "current_version": cur.version if cur else 0},
            )
        last = self._meta.get(node_id)
        if lease is not None and last is not None and last.fence > lease.fence:
            raise StaleFence(
                f"'{node_id}' was written under fence {last.fence}, newer than your lock's fence {lease.fence}.",
                hint="Another lock has written this file since yours was granted. Unlock, take the lock again,"
                " re-read the file and redo the change.",
                details={"node_id": node_id, "file_fence": last.fence, "your_fence": lease.fence},
            )
        have = cur.version if cur is not None else 0
        if if_version is not None and if_version != have:
            said = "it does not exist" if cur is None else f"last written by {cur.modified_by or 'someone else'}"
            raise VersionMismatch(
                f"'{node_id}' is at version {have}, not {if_version} ({said}).",
                hint="Someone changed it after you read it. Read it again ({op:read_file}), redo your change on the new"
                " content, and write with the new version.",
                details={"node_id": node_id, "current_version": have, "etag": cur.etag if cur else None},
            )
        return cur, lease

    def next_version(self, node_id: str, cur: FileMeta | None) -> int:
        """The version a write of ``node_id`` would give it now (``cur``: its live record, as checked).

        Above the live file's and a deleted one's: a version is never given twice to one path.
        """
        last = self._meta.get(node_id)
        return max(cur.version if cur else 0, last.version if last else 0) + 1

    def write(
        self,
        locks: LockTable,
        now: float,
        node_id: str,
        staged: Staged,
        *,
        owner: str,
        as_key: str | None,
        by: str,
        token: str | None,
        if_version: int | None,
    ) -> tuple[FileMeta, bool]:
        """Check the rules, then record ``staged`` as the file's new content; returns (meta, created)."""
        cur, lease = self.check_change(
            locks, now, node_id, owner=owner, as_key=as_key, token=token, if_version=if_version
        )
        last = self._meta.get(node_id)
        version = self.next_version(node_id, cur)
        fence = max(lease.fence if lease else 0, last.fence if last else 0)
        meta = FileMeta(
            node_id, version, staged.size, staged.sha256, now, by, fence, pending=staged.name, mtime_ns=staged.mtime_ns
        )
        self._put(locks, meta, FileOp(node_id, staged.name, delete=False))
        locks.events.append(_file_event("written", now, meta, owner, lease))
        return meta, cur is None

    def delete(
        self,
        locks: LockTable,
        now: float,
        node_id: str,
        marker: str,
        *,
        owner: str,
        as_key: str | None,
        by: str,
        token: str | None,
        if_version: int | None,
    ) -> FileMeta:
        """Check the rules, then record a tombstone; ``marker`` (a staged empty file) marks the unlink as pending."""
        cur, lease = self.check_change(
            locks, now, node_id, owner=owner, as_key=as_key, token=token, if_version=if_version, must_exist=True
        )
        assert cur is not None
        last = self._meta.get(node_id)
        fence = max(lease.fence if lease else 0, last.fence if last else 0)
        tomb = FileMeta(node_id, cur.version, 0, None, now, by, fence, deleted=True, pending=marker)
        self._put(locks, tomb, FileOp(node_id, marker, delete=True))
        locks.events.append(_file_event("deleted", now, tomb, owner, lease))
        return cur

    def _put(self, locks: LockTable, meta: FileMeta, op: FileOp) -> None:
        self._meta[meta.node_id] = meta
        locks.changes.append(PutFile(meta))
        self.ops.append(op)
        self._unapplied[meta.node_id] = op

    @staticmethod
    def _lease(
        locks: LockTable, now: float, token: str, as_key: str | None, node_id: str, *, need_write: bool
    ) -> Lease:
        got = locks.holding(now, token, as_key)
        if isinstance(got, LockError):
            raise got  # LOCK_EXPIRED / LOCK_BROKEN / LOCK_NOT_FOUND, saying when and why
        lease = got
        covers = lease.covers(node_id)
        if not covers:
            raise InvalidArgument(
                f"this token's lock is on '{lease.node_id}' ({lease.depth}), which does not cover '{node_id}'.",
                hint="Pass the token of a lock on this file, or of a tree lock on a folder above it.",
                details={"field": "token", "lock_node_id": lease.node_id},
            )
        if need_write and lease.mode != "write":
            raise InvalidArgument(
                f"this token's lock on '{lease.node_id}' is a read lock; changing a file needs a write lock.",
                hint="Upgrade it: {op:lock_file} with mode 'write' and this token, then write.",
                details={"field": "token", "mode": lease.mode},
            )
        return lease


def _no_file(node_id: str) -> NotFound:
    return NotFound(
        f"there is no file '{node_id}'.",
        hint="{op:list_files} shows the files; {op:write_file} with if_version=0 creates one.",
        details={"node_id": node_id},
    )


def _not_a_file(node_id: str, kind: str) -> InvalidArgument:
    what = {"dir": "a folder", "link": "a symbolic link"}.get(kind, "not a regular file")
    return InvalidArgument(
        f"'{node_id}' is {what}; only regular files can be read or written.",
        hint="Symbolic links are never followed, so paths cannot leave the workspace's folder.",
        details={"field": "node_id", "node_id": node_id, "kind": kind},
    )


def _file_event(kind: EventKind, now: float, meta: FileMeta, owner: str, lease: Lease | None) -> Event:
    from mcp_locks.core.records import Event

    if lease is None:  # an optimistic write (a version check), under no lock
        return Event(kind, now, meta.node_id, owner, version=meta.version)
    return Event(
        kind, now, meta.node_id, owner, lease.lock_id, lease.mode, lease.depth, lease.fence,
        label=lease.label, version=meta.version,
    )  # fmt: skip
