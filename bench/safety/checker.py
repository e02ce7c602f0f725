"""Check a history of lock and file calls against the promises mcp-locks makes.

Two kinds of check run over one history (see :mod:`bench.safety.history`):

**Linearizability** (the Porcupine algorithm). Calls are grouped by the
top-level folder of the nodes they touch (a tree lock covers only nodes under
it, so folders are independent), and for each group a depth-first search looks
for one sequential order of the calls that (1) respects real time — a call
answered before another was invoked comes first — and (2) is accepted, call by
call, by a model of the lock table and file store. Each step of the search is
memoised on (the set of calls placed, the model state), so a state reached
twice is explored once. A call that maybe happened may take effect anywhere
after its invocation, or never.

The model knows time only through the calls: a call took effect at some
instant in [invoked, answered] (the server stamps leases with the same clock),
so a lease whose deadline is at or before the call's answer *may* have ended,
and one whose deadline is after it *had not*. A lock granted over a holder
that could not yet have expired, a renewal of a lease that had certainly
expired, a read that does not return the last write placed before it, or a
write version that skips or repeats fails the search.

What an admin does is in the model too. A **force-unlock** ends the lease at
once: from then on a write (or anything else) under its token must be refused,
and others may be granted the node. A **revoked key** is refused
(``UNAUTHENTICATED``) from its revocation on, a live key never is, nothing sent
with a revoked key takes effect after the revocation, and the leases it held
end there, as if broken, and a lock granted to a request of the revoked key
that was waiting in line is a violation. With ``strict_revocation=False`` (for
servers from before that rule) such a grant is tolerated, and the lease it makes
keeps others out until its deadline like any other, so mutual exclusion is
checked as strictly either way. An **upload**'s
commit is a write under its lock (fenced alike), and one upload commits at most
once.

**Direct invariants**, each a scan with a clear message:

- two holds that conflict (a write and anything, on covered nodes, tree locks
  included) were both certainly held at one instant ("double grant");
- a grant's fence is not larger than that of every grant answered before it
  was asked for — fences are workspace-wide and only grow, across restarts
  too ("fence went backwards");
- per file, a write answered before another was invoked has a lower version
  and a fence no higher; two acknowledged writes never share a version;
- every acknowledged write is in the final state: the final read's version
  counts every acknowledged write, and each acknowledged increment of a
  counter file is in its final value ("lost write");
- no lease ends before its deadline, unless an admin broke it or revoked its
  key first: a refusal saying the lease is over, answered before the deadline
  the holder last learnt ("lease ended early");
- no upload is acknowledged as committed twice ("upload committed twice").

What a maybe-happened new lock does is not checked: its token never reached
anyone, so "it was never granted" is always a consistent reading. A
maybe-happened upgrade, downgrade or re-lease of a held lease is different:
its holder knows the token, and if it took effect (a downgrade lets readers
in) the rest of the history may depend on it. It is tried both ways: not
done, or done, lasting at least its timeout from when it was sent.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from .history import TOKEN_GONE, Op

#: How far apart the client's and the server's readings of the one clock may be when they
#: describe the same instant: the server reads the clock after a request arrives and rounds
#: times to microseconds in JSON; 10 ms is far above both and far below the 2 s leases used.
SLACK = 0.010


class Hold(NamedTuple):
    """A lease in the model."""

    token: str
    node: str
    mode: str
    depth: str
    expires: float
    fence: int
    owner: str
    key: str = ""  # the id of the API key that took it ('' without keys)


class FileRec(NamedTuple):
    """A file in the model: its version, content and the fence it was last written under."""

    node: str
    version: int
    value: Any
    fence: int


class State(NamedTuple):
    """The model: leases held, files, the highest fence handed out, keys revoked, uploads committed."""

    holds: frozenset[Hold]
    files: frozenset[FileRec]
    last: int
    revoked: frozenset[str] = frozenset()
    uploads: frozenset[str] = frozenset()


EMPTY = State(frozenset(), frozenset(), 0)
_NO_FILE_VERSION = 0


@dataclass(frozen=True)
class Violation:
    """A broken promise: which one, in words, and the calls that show it."""

    kind: str
    message: str
    ops: tuple[int, ...] = ()


@dataclass
class Report:
    """What a check found."""

    ops: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    maybe: int = 0
    groups: int = 0
    violations: list[Violation] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing was violated and every group was decided."""
        return not self.violations and not self.undecided

    def summary(self) -> str:
        """A few lines for a person."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items()))
        lines = [
            f"{self.ops} calls ({kinds}); {self.maybe} maybe happened; {self.groups} folder groups searched"
            f" in {self.seconds:.1f} s",
            f"violations: {len(self.violations)}" + (f"; undecided groups: {self.undecided}" if self.undecided else ""),
        ]
        lines += [f"  {v.kind}: {v.message} (calls {list(v.ops)})" for v in self.violations[:20]]
        return "\n".join(lines)


# ---------------------------------------------------------------- lock geometry


def _covers(node: str, depth: str, other: str) -> bool:
    return other == node or (depth == "tree" and other.startswith(node + "/"))


def _conflict(a_node: str, a_depth: str, a_mode: str, b_node: str, b_depth: str, b_mode: str) -> bool:
    if a_mode == "read" and b_mode == "read":
        return False
    return _covers(a_node, a_depth, b_node) or _covers(b_node, b_depth, a_node)


def _hold(g: dict[str, Any], key: str = "") -> Hold:
    return Hold(g["token"], g["node"], g["mode"], g["depth"], g["expires_at"], g["fence"], g["owner"], key)


def _grants(op: Op) -> list[dict[str, Any]]:
    """The leases an answered lock call granted (an upgrade's too)."""
    if op.ok is not True:
        return []
    if op.kind == "lock":
        return [op.out]
    if op.kind == "lock_files":
        return list(op.out["grants"])
    return []


def _group(node: str) -> str:
    return node.split("/", 1)[0]


# ---------------------------------------------------------------- the model


def _find(holds: frozenset[Hold], token: str) -> Hold | None:
    for h in holds:
        if h.token == token:
            return h
    return None


def _file(files: frozenset[FileRec], node: str) -> FileRec:
    for f in files:
        if f.node == node:
            return f
    return FileRec(node, _NO_FILE_VERSION, None, 0)


def _live(h: Hold, op: Op) -> bool:
    """The lease may still have been held when ``op`` took effect."""
    return op.call < h.expires + SLACK


def _may_be_over(h: Hold, op: Op) -> bool:
    """The lease may have expired by the time ``op`` took effect."""
    return h.expires <= op.ret + SLACK


def _grant(state: State, op: Op, new: list[Hold], replacing: Hold | None = None) -> list[State]:
    holds, last = state.holds, state.last
    if replacing is not None and not (replacing.mode == "read" and new[0].mode == "write"):
        if new[0].fence != replacing.fence:
            return []  # a downgrade or a re-lease keeps its fence
    elif min(h.fence for h in new) <= last:
        return []  # new grants and upgrades take fences that only grow along the order
    kept: list[Hold] = []
    for h in holds:
        if replacing is not None and h.token == replacing.token:
            continue
        if any(h.token == n.token for n in new):
            return []
        if any(_conflict(h.node, h.depth, h.mode, n.node, n.depth, n.mode) for n in new):
            if not _may_be_over(h, op):
                return []  # granted over a lease that had not yet ended
            continue
        kept.append(h)
    return [state._replace(holds=frozenset([*kept, *new]), last=max(last, *(h.fence for h in new)))]


def _maybe_changed(state: State, op: Op, token: str) -> list[State]:
    """A maybe-happened upgrade, downgrade or re-lease: not done, or done (its new fence, if any, unknown)."""
    holds = state.holds
    h = _find(holds, token)
    if h is None or not _live(h, op):
        return [state]
    done = h._replace(mode=op.args["mode"], expires=op.call + op.args["timeout"])  # the earliest it could end
    for o in holds:
        if (
            o.token != h.token
            and _conflict(o.node, o.depth, o.mode, done.node, done.depth, done.mode)
            and not _may_be_over(o, op)
        ):
            return [state]  # an upgrade that could not have been granted yet
    return [state, state._replace(holds=(holds - {h}) | {done})]


def _gone(state: State, op: Op, token: str) -> list[State]:
    """A refusal saying the lease is over: fine if it is not in the model or may have expired."""
    h = _find(state.holds, token)
    if h is None:
        return [state]
    if not _may_be_over(h, op):
        return []
    return [state._replace(holds=state.holds - {h})]


def step(state: State, op: Op, *, strict_revocation: bool = True) -> list[State]:
    """The states ``op`` may lead to from ``state`` (empty: it cannot take effect there).

    ``strict_revocation``: a revoked key is never granted a lock after its revocation. Off, such a grant
    (a request that waited in line when its key was revoked) is accepted, and the lease it makes blocks
    others until its deadline like any other, so mutual exclusion is checked just as strictly.
    """
    # A lease certainly over before this call began is over for every call placed after it too.
    if any(h.expires + SLACK <= op.call for h in state.holds):
        state = state._replace(holds=frozenset(h for h in state.holds if h.expires + SLACK > op.call))
    kind = op.kind
    if kind == "revoke":
        return _revoke(state, op)
    if kind == "force_unlock":
        return _force_unlock(state, op, strict_revocation)
    key = op.args.get("key") or ""
    if op.ok is False and op.code == "UNAUTHENTICATED":
        return [state] if key in state.revoked else []  # a live key refused as unknown
    if key in state.revoked and op.ok is not False:
        new_grant = kind in ("lock", "lock_files") and "token" not in op.args
        if strict_revocation or not new_grant or op.ok is None:
            return []  # a revoked key's call took effect after its revocation
    return _lock_or_file(state, op, key)


def _lock_or_file(state: State, op: Op, key: str) -> list[State]:
    holds = state.holds
    a, out, kind = op.args, op.out, op.kind
    token = a.get("token")
    if kind in ("lock", "lock_files"):
        if op.ok is None:
            if kind == "lock" and token is not None:
                return _maybe_changed(state, op, token)
            return []  # a maybe-happened grant is read as "never granted" (see module docstring)
        if kind == "lock" and token is not None:  # an upgrade (or re-lease) of a held lease
            h = _find(holds, token)
            if op.ok is False:
                return _gone(state, op, token) if op.code in TOKEN_GONE else [state]
            if h is None or not _live(h, op):
                return []
            return _grant(state, op, [_hold(out, h.key)], replacing=h)
        if op.ok is False:
            return [state]
        return _grant(state, op, [_hold(g, key) for g in _grants(op)])
    if kind == "write" and token is None:
        return _write_if_version(state, op)
    if kind in ("renew", "unlock", "write", "upload"):
        assert token is not None  # a renew or unlock always names its lease; a write without one was handled
        h = _find(holds, token)
        if op.ok is False:
            return _gone(state, op, token) if op.code in TOKEN_GONE else [state]
        if h is None or not _live(h, op):
            return []
        if kind == "renew":
            until = out["expires_at"] if op.ok else op.call + a["timeout"]  # maybe: the earliest it could end
            return [state._replace(holds=(holds - {h}) | {h._replace(expires=until)})]
        if kind == "unlock":
            return [state._replace(holds=holds - {h})]
        if kind == "upload":
            if a["upload"] in state.uploads:
                return []  # one upload commits at most once
            state = state._replace(uploads=state.uploads | {a["upload"]})
        return _locked_write(state, op, h)
    if kind == "read":
        f = _file(state.files, a["node"])
        if op.ok is None:
            return [state]
        if op.ok is False:
            return [] if op.code == "NOT_FOUND" and f.version != _NO_FILE_VERSION else [state]
        return [state] if (out["version"], out["value"]) == (f.version, f.value) else []
    raise ValueError(f"unknown kind {kind!r}")


def _locked_write(state: State, op: Op, h: Hold) -> list[State]:
    """A write (or an upload's commit) under the live lease ``h``: it must cover the file, with a fence no older."""
    node = op.args["node"]
    if h.mode != "write" or not _covers(h.node, h.depth, node):
        return []
    f = _file(state.files, node)
    if f.fence > h.fence:
        return []  # fencing: a file written under a newer lease refuses an older one
    if op.ok and (op.out["version"] != f.version + 1 or op.out["fence"] != h.fence):
        return []
    new = FileRec(node, f.version + 1, op.args["value"], h.fence)
    return [state._replace(files=(state.files - {f}) | {new})]


def _revoke(state: State, op: Op) -> list[State]:
    """An admin revokes a key: its calls fail from then on, and the leases it holds end (they count as broken).

    A server that keeps a revoked key's leases until their deadlines is also accepted: those leases can then
    only block others (refusals are always allowed) or be broken by an admin (see :func:`_force_unlock`).
    """
    key = op.args["key"]
    done = state._replace(revoked=state.revoked | {key}, holds=frozenset(h for h in state.holds if h.key != key))
    if op.ok is None:
        return [state, done]
    if op.ok:
        return [] if key in state.revoked else [done]
    if op.code == "NOT_FOUND":
        return [state] if key in state.revoked else []  # "no live key" for a key that was live
    return [state]


def _force_unlock(state: State, op: Op, strict_revocation: bool) -> list[State]:
    """An admin breaks a lease: it ends at once; its holder's calls with the token are refused from then on."""
    token = op.args.get("token")
    if token is None:
        return [state]  # a lease no answered grant announced (its grant maybe happened): nothing to hold it to
    h = _find(state.holds, token)
    if op.ok is None:
        return [state] if h is None else [state, state._replace(holds=state.holds - {h})]
    if op.ok is False:
        return _gone(state, op, token) if op.code in TOKEN_GONE else [state]
    if h is None:
        # Broken after its key's revocation: a server that keeps a revoked key's leases may still hold it.
        revoked = op.args.get("lock_key", "") in state.revoked
        return [state] if revoked and not strict_revocation else []
    if not _live(h, op) or op.out.get("fence", h.fence) != h.fence:
        return []
    return [state._replace(holds=state.holds - {h})]


def _write_if_version(state: State, op: Op) -> list[State]:
    """A write without a lock: it needs the version it names and no other agent's lock on the file."""
    holds, files = state.holds, state.files
    node, want = op.args["node"], op.args["if_version"]
    f = _file(files, node)
    if op.ok is False:
        return [] if op.code == "VERSION_MISMATCH" and f.version == want else [state]
    if f.version != want:
        return []
    kept: list[Hold] = []
    for h in holds:
        if h.owner != op.client and _covers(h.node, h.depth, node):
            if not _may_be_over(h, op):
                return []  # written over another agent's live lock
            continue
        kept.append(h)
    if op.ok and (op.out["version"] != f.version + 1 or op.out["fence"] != f.fence):
        return []
    new = FileRec(node, f.version + 1, op.args["value"], f.fence)
    return [state._replace(holds=frozenset(kept), files=(files - {f}) | {new})]


# ---------------------------------------------------------------- the search (Porcupine)


class _Entry:
    __slots__ = ("call", "index", "match", "next", "op", "prev")

    def __init__(self, op: Op | None, index: int, call: bool) -> None:
        self.op = op
        self.index = index
        self.call = call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _lift(e: _Entry) -> None:
    for x in (e, e.match):
        if x is not None:
            assert x.prev is not None
            x.prev.next = x.next
            if x.next is not None:
                x.next.prev = x.prev


def _unlift(e: _Entry) -> None:
    for x in (e.match, e):
        if x is not None:
            assert x.prev is not None
            x.prev.next = x
            if x.next is not None:
                x.next.prev = x


class Outcome(NamedTuple):
    """The search's answer for one group: ``ok`` True (an order exists), False (none) or None (out of time)."""

    ok: bool | None
    placed: int
    stuck: tuple[int, ...]


def linearizable(
    ops: Sequence[Op], init: State | None = None, *, budget: float = 60.0, strict_revocation: bool = True
) -> Outcome:
    """Search for an order of ``ops`` that real time and the model both accept (see :func:`step`)."""
    state: State = init if init is not None else EMPTY
    events: list[tuple[float, int, _Entry]] = []
    known = 0
    for i, op in enumerate(ops):
        c = _Entry(op, i, True)
        events.append((op.call, 0, c))
        if op.known:
            known += 1
            r = _Entry(op, i, False)
            c.match, r.match = r, c
            events.append((op.ret, 1, r))
    # Calls sort before returns at one instant: touching intervals count as concurrent.
    events.sort(key=lambda t: (t[0], t[1]))
    head = _Entry(None, -1, False)
    prev = head
    for _, _, e in events:
        prev.next, e.prev = e, prev
        prev = e
    cache: set[tuple[int, State]] = set()
    stack: list[tuple[_Entry, State, list[State], int]] = []
    placed = 0  # answered calls placed so far
    lin = 0
    best = (0, 0)
    deadline = time.monotonic() + budget
    entry = head.next
    steps = 0

    def place(e: _Entry, before: State, alts: list[State], start: int) -> bool:
        nonlocal state, lin, placed
        assert e.op is not None
        bit = 1 << e.index
        for k in range(start, len(alts)):
            key = (lin | bit, alts[k])
            if key in cache:
                continue
            cache.add(key)
            stack.append((e, before, alts, k))
            state, lin = alts[k], lin | bit
            placed += e.op.known
            _lift(e)
            return True
        return False

    while placed < known:
        steps += 1
        if steps % 4096 == 0 and time.monotonic() > deadline:
            return Outcome(None, best[0], ())
        if entry is not None and entry.call:
            assert entry.op is not None
            alts = step(state, entry.op, strict_revocation=strict_revocation)
            entry = head.next if alts and place(entry, state, alts, 0) else entry.next
            continue
        # A return (or the end): the call it answers could not be placed before it; undo the last choice.
        if placed > best[0]:
            best = (placed, lin)
        if not stack:
            # Where the deepest attempt stopped: the unplaced answered calls that were answered first.
            left = sorted((ops[i] for i in range(len(ops)) if ops[i].known and not best[1] >> i & 1),
                          key=lambda o: o.ret)  # fmt: skip
            return Outcome(False, best[0], tuple(o.id for o in left[:5]))
        e, before, alts, k = stack.pop()
        assert e.op is not None
        _unlift(e)
        state, lin = before, lin & ~(1 << e.index)
        placed -= e.op.known
        entry = head.next if place(e, before, alts, k + 1) else e.next
    return Outcome(True, placed, ())


# ---------------------------------------------------------------- direct invariants


class _Segment(NamedTuple):
    start: float
    end: float
    node: str
    depth: str
    mode: str
    token: str
    op: int


def _timelines(ops: Sequence[Op]) -> tuple[dict[str, Op], dict[str, list[Op]]]:
    grant_of: dict[str, Op] = {}
    later: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind in ("lock", "lock_files") and "token" not in op.args:
            for g in _grants(op):
                grant_of[g["token"]] = op
        elif "token" in op.args:
            later[op.args["token"]].append(op)
    return grant_of, later


def _broken_from(ops: Sequence[Op], grant_of: dict[str, Op]) -> dict[str, float]:
    """Each lease an admin may have ended (a force-unlock, its key's revocation): the earliest instant it could."""
    at: dict[str, float] = {}
    by_key: dict[str, list[tuple[str, Op]]] = defaultdict(list)
    for token, gop in grant_of.items():
        if gop.args.get("key"):
            by_key[gop.args["key"]].append((token, gop))
    for op in ops:
        if op.ok is False:
            continue
        if op.kind == "force_unlock" and "token" in op.args:
            at[op.args["token"]] = min(at.get(op.args["token"], math.inf), op.call)
        elif op.kind == "revoke":
            for token, gop in by_key.get(op.args["key"], ()):
                if gop.call <= op.ret:  # a grant asked for after the revocation was answered is not ended by it
                    at[token] = min(at.get(token, math.inf), op.call)
    return at


def _segments(ops: Sequence[Op]) -> tuple[list[_Segment], list[Violation]]:
    """When each lease was certainly held, and in which mode; plus leases that ended early."""
    grant_of, later = _timelines(ops)
    broken = _broken_from(ops, grant_of)
    segs: list[_Segment] = []
    early: list[Violation] = []
    for token, gop in grant_of.items():
        g = next(x for x in _grants(gop) if x["token"] == token)
        start, until, mode, node, depth = gop.ret, g["expires_at"], g["mode"], g["node"], g["depth"]
        end = broken.get(token, math.inf)  # a lease an admin ended is certainly held only until then
        for op in sorted(later.get(token, ()), key=lambda o: o.call):
            gone = op.ok is False and op.code in TOKEN_GONE
            if gone and op.kind != "unlock" and op.ret + SLACK < until and op.ret + SLACK < end:
                early.append(
                    Violation(
                        "lease ended early",
                        f"{op.kind} answered {op.code} {until - op.ret:.3f} s before the lease's deadline",
                        (gop.id, op.id),
                    )
                )
            if op.kind == "unlock" or gone or (op.kind == "lock" and op.ok is None):
                end = min(op.call, end)  # released, reported over, or an upgrade of unknown outcome
                break
            if op.kind == "renew" and op.ok:
                until = op.out["expires_at"]
            elif op.kind == "lock" and op.ok:  # upgrade: read until asked, write once answered
                segs.append(_Segment(start, min(op.call, until, end), node, depth, mode, token, gop.id))
                start, until, mode = op.ret, op.out["expires_at"], op.out["mode"]
        segs.append(_Segment(start, min(until, end), node, depth, mode, token, gop.id))
    return segs, early


def _double_grants(segs: list[_Segment]) -> list[Violation]:
    out: list[Violation] = []
    active: list[_Segment] = []
    for s in sorted(segs):
        active = [a for a in active if a.end > s.start + SLACK]
        for a in active:
            if a.token != s.token and _conflict(a.node, a.depth, a.mode, s.node, s.depth, s.mode):
                overlap = min(a.end, s.end) - s.start
                if overlap > SLACK:
                    out.append(
                        Violation(
                            "double grant",
                            f"{a.mode} lock on {a.node} ({a.depth}) and {s.mode} lock on {s.node} ({s.depth})"
                            f" both held for {overlap:.3f} s",
                            (a.op, s.op),
                        )
                    )
        active.append(s)
    return out


def _grows(items: list[tuple[float, float, int, int]], what: str, strict: bool) -> list[Violation]:
    """Each item (call, ret, value, op id): a value must exceed every value answered before its call."""
    out: list[Violation] = []
    by_ret = sorted(items, key=lambda t: t[1])
    k, top, top_op = 0, -math.inf, -1
    for call, _ret, value, op_id in sorted(items, key=lambda t: t[0]):
        while k < len(by_ret) and by_ret[k][1] < call:
            if by_ret[k][2] > top:
                top, top_op = by_ret[k][2], by_ret[k][3]
            k += 1
        if value < top or (strict and value == top):
            out.append(Violation(f"{what} went backwards", f"{what} {value} after {top} was answered", (top_op, op_id)))
    return out


def _files(ops: Sequence[Op]) -> list[Violation]:
    out: list[Violation] = []
    writes: dict[str, list[Op]] = defaultdict(list)
    maybe: dict[str, int] = defaultdict(int)
    commits: dict[str, list[int]] = defaultdict(list)
    for op in ops:
        if op.kind == "upload" and op.ok:
            commits[op.args["upload"]].append(op.id)
        if op.kind in ("write", "upload"):
            if op.ok:
                writes[op.args["node"]].append(op)
            elif op.ok is None:
                maybe[op.args["node"]] += 1
    for node, ws in writes.items():
        out += _grows([(w.call, w.ret, w.out["version"], w.id) for w in ws], f"version of {node}", True)
        out += _grows([(w.call, w.ret, w.out["fence"], w.id) for w in ws], f"write fence on {node}", False)
        seen: dict[int, int] = {}
        for w in ws:
            if w.out["version"] in seen:
                what = f"two writes of {node} acknowledged as version {w.out['version']}"
                out.append(Violation("lost write", what, (seen[w.out["version"]], w.id)))
            seen[w.out["version"]] = w.id
    for upload, ids in commits.items():
        if len(ids) > 1:
            out.append(Violation("upload committed twice", f"upload {upload} acknowledged {len(ids)} times",
                                 tuple(ids)))  # fmt: skip
    for op in ops:
        if op.kind != "read" or not op.args.get("final") or not op.ok:
            continue
        node, ws = op.args["node"], writes.get(op.args["node"], [])
        version, value = op.out["version"], op.out["value"]
        if version < len(ws):
            what = f"{node} ends at version {version} after {len(ws)} acknowledged writes"
            out.append(Violation("lost write", what, (op.id,)))
        by_version = {w.out["version"]: w for w in ws}
        if version in by_version and by_version[version].args["value"] != value:
            out.append(Violation("lost write", f"{node} ends with a value its version's write did not write", (op.id,)))
        incs = [w for w in ws if w.args.get("inc")]
        if incs and isinstance(value, int) and value < len(incs):
            out.append(
                Violation(
                    "lost write",
                    f"counter {node} ends at {value} after {len(incs)} acknowledged increments"
                    f" ({maybe[node]} more maybe happened)",
                    (op.id,),
                )
            )
    return out


def _new_fences(ops: Sequence[Op]) -> list[tuple[float, float, int, int]]:
    """Each fence handed out, once: by a grant or an upgrade (a downgrade or re-lease keeps its fence)."""
    fence_of: dict[str, int] = {}
    out: list[tuple[float, float, int, int]] = []
    for o in ops:
        for g in _grants(o):
            if fence_of.get(g["token"]) != g["fence"]:
                out.append((o.call, o.ret, g["fence"], o.id))
            fence_of[g["token"]] = g["fence"]
    return out


def _name_broken_leases(ops: Sequence[Op]) -> list[Op]:
    """``ops`` with each force-unlock given the token (and key) of the lease its lock_id names, when a grant
    in the history announced that lock_id: the model follows leases by token."""
    lease_of: dict[str, tuple[str, str]] = {}
    for op in ops:
        for g in _grants(op):
            if "lock_id" in g:
                lease_of[g["lock_id"]] = (g["token"], op.args.get("key") or "")
    out: list[Op] = []
    for op in ops:
        if op.kind == "force_unlock" and op.args["lock_id"] in lease_of and "token" not in op.args:
            token, key = lease_of[op.args["lock_id"]]
            op = replace(op, args={**op.args, "token": token, "lock_key": key})
        out.append(op)
    return out


def check(ops: Sequence[Op], *, budget: float = 120.0, strict_revocation: bool = True) -> Report:
    """Run every check over ``ops`` (the search gets ``budget`` seconds in all).

    ``strict_revocation``: a lock granted to a key after its revocation is a violation (see :func:`step`).
    """
    started = time.monotonic()
    ops = _name_broken_leases(ops)
    report = Report(ops=len(ops), maybe=sum(not o.known for o in ops))
    for op in ops:
        report.by_kind[op.kind] = report.by_kind.get(op.kind, 0) + 1
    segs, early = _segments(ops)
    report.violations += _double_grants(segs) + early
    report.violations += _grows(_new_fences(ops), "fence", True)
    report.violations += _files(ops)
    for name, group in _groups(ops).items():
        report.groups += 1
        left = max(1.0, budget - (time.monotonic() - started))
        res = linearizable(group, budget=left, strict_revocation=strict_revocation)
        if res.ok is None:
            report.undecided.append(name)
        elif not res.ok:
            report.violations.append(
                Violation(
                    "not linearizable",
                    f"folder {name}: no order of its {len(group)} calls fits the model; at most {res.placed}"
                    " answered calls could be placed",
                    res.stuck,
                )
            )
    report.seconds = time.monotonic() - started
    return report


def _groups(ops: Iterable[Op]) -> dict[str, list[Op]]:
    """Calls by top-level folder; a key's revocation touches every folder, so it joins every group."""
    token_group: dict[str, str] = {}
    groups: dict[str, list[Op]] = defaultdict(list)
    everywhere: list[Op] = []
    for op in ops:
        a = op.args
        if op.kind == "revoke":
            everywhere.append(op)
            continue
        if op.kind in ("lock", "lock_files") and "token" not in a:
            nodes = [a["node"]] if op.kind == "lock" else [i["node"] for i in a["items"]]
            names = {_group(n) for n in nodes}
            if len(names) != 1:
                raise ValueError(f"call {op.id} spans folders {sorted(names)}; keep lock_files within one")
            name = names.pop()
            for g in _grants(op):
                token_group[g["token"]] = name
        elif "token" in a:
            if a["token"] not in token_group:
                continue  # a token from a grant the history never saw answered: nothing to place it against
            name = token_group[a["token"]]
        else:
            name = _group(a["node"])
        groups[name].append(op)
    if everywhere and not groups:
        groups["(keys)"] = []  # revocations alone still have rules of their own
    for group in groups.values():
        group += everywhere
        group.sort(key=lambda o: o.call)
    return dict(groups)
