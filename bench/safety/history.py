"""Histories of lock and file calls, as concurrent clients saw them.

Each client appends two JSON lines per call to its own file: one when it
invokes the call and one when the answer comes back. Both carry the wall-clock
time (``time.time()``, the clock the server stamps leases with; every process
on one machine shares it). A call with no second line (the client was killed,
or the connection broke after the request was sent) "maybe happened": the
checker lets it take effect at any time after its invocation, or never.

Kinds and their fields (``args`` / ``out`` on success; ``out`` is ``{"code"}``
on a refusal):

- ``lock``: args node, mode, depth, timeout, wait and, for an upgrade, token;
  out token, fence, expires_at, node, mode, depth, owner.
- ``lock_files``: args items [{node, mode, depth}]; out grants [as lock's out].
- ``renew``: args token, timeout; out expires_at.
- ``unlock``: args token; out {}.
- ``write``: args node, value and either token (under a lock) or if_version
  (no lock: the version the writer read; 0 creates); inc=True marks an
  increment of a counter file; out version, fence.
- ``read``: args node; out version, value (version 0 and value None: no file).
- ``upload``: the commit of a resumable upload (its chunks went before, unrecorded: they change
  nothing until the commit); args node, token, value, upload (its id); out version, fence.
- ``force_unlock`` (by the admin): args lock_id, node; out fence, owner of the lease it broke.
- ``revoke`` (by the admin): args key (its id), agent; out {}.

With API keys, every client call's args also carry ``key``: the id of the key it was sent with. A
client whose key is revoked gets a new one from the admin, so one client may use several keys.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["lock", "lock_files", "renew", "unlock", "write", "read", "upload", "force_unlock", "revoke"]

#: Refusals that say the token's lease is over (released, expired or broken).
TOKEN_GONE = frozenset({"LOCK_EXPIRED", "LOCK_NOT_FOUND", "LOCK_BROKEN"})


@dataclass(frozen=True)
class Op:
    """One call: who made it, when it was invoked and answered, and what it answered.

    ``ok`` is True (answered), False (refused; ``out["code"]`` says why) or None
    (maybe happened: no answer came back); ``ret`` is ``math.inf`` for the last.
    """

    id: int
    client: str
    kind: Kind
    call: float
    ret: float
    args: dict[str, Any]
    ok: bool | None
    out: dict[str, Any] = field(default_factory=dict)

    @property
    def code(self) -> str | None:
        """The refusal's code (None unless ``ok`` is False)."""
        return self.out.get("code") if self.ok is False else None

    @property
    def known(self) -> bool:
        """True when the client learnt the outcome."""
        return self.ok is not None


class Recorder:
    """Appends one client's calls to a JSON-lines file, flushing each line (a kill -9 loses no answered call)."""

    def __init__(self, path: Path, client: str) -> None:
        self.client = client
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._next = 0

    def _line(self, row: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(row, separators=(",", ":")) + "\n").encode())

    def invoke(self, kind: Kind, args: dict[str, Any]) -> int:
        """Record that a call is about to be sent; returns its id."""
        self._next += 1
        self._line({"i": self._next, "cl": self.client, "k": kind, "c": time.time(), "a": args})
        return self._next

    def done(self, op_id: int, ok: bool, out: dict[str, Any]) -> None:
        """Record the answer (``ok=False`` with ``{"code": ...}`` for a refusal)."""
        self._line({"i": op_id, "cl": self.client, "r": time.time(), "ok": ok, "o": out})

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def load(paths: Iterable[Path]) -> list[Op]:
    """Every call recorded in ``paths``, in invocation order; unanswered calls have ``ok=None``."""
    calls: dict[tuple[str, int], dict[str, Any]] = {}
    answers: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # a line cut short by a kill: the call it starts never went out
                row = json.loads(line)
                key = (row["cl"], row["i"])
                (answers if "r" in row else calls)[key] = row
    ops: list[Op] = []
    for key, c in calls.items():
        a = answers.get(key)
        ops.append(
            Op(
                id=0,
                client=c["cl"],
                kind=c["k"],
                call=c["c"],
                ret=a["r"] if a else math.inf,
                args=c["a"],
                ok=a["ok"] if a else None,
                out=a["o"] if a else {},
            )
        )
    ops.sort(key=lambda o: o.call)
    return [Op(i, o.client, o.kind, o.call, o.ret, o.args, o.ok, o.out) for i, o in enumerate(ops)]
