"""An index of claims on a path tree that answers conflict questions in O(depth + log n).

A claim is ``(node_id, mode, depth)`` under a key. A claim with depth
``"tree"`` covers its node and every node below it (WebDAV depth-infinity).
Two claims conflict when their covered sets overlap and at least one is a
write. Counters per path (claims at it, tree claims at it, claims strictly
below it) make the yes/no question independent of how many claims exist; a
sorted list of paths makes listing the claims below a path a range scan.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar

from sortedcontainers import SortedList

from mcp_locks.core.names import ancestors

__all__ = ["Claim", "ClaimIndex", "ClaimLike", "Depth", "Mode"]

Mode = Literal["read", "write"]
Depth = Literal["node", "tree"]
K = TypeVar("K", bound=Hashable)

# Every child path of "p" sorts in ["p/", "p0"): "0" is the character after "/".
_AFTER_SLASH = chr(ord("/") + 1)


class Claim(NamedTuple):
    """What a holder or waiter claims: one node, or a whole subtree."""

    node_id: str
    mode: Mode
    depth: Depth


class ClaimLike(Protocol):
    """Anything with a claim's three fields: a :class:`Claim`, or a held lease (stored as its own claim)."""

    @property
    def node_id(self) -> str:
        """The node claimed."""
        ...

    @property
    def mode(self) -> Mode:
        """``read`` (shared) or ``write`` (exclusive)."""
        ...

    @property
    def depth(self) -> Depth:
        """``node`` (this node only) or ``tree`` (the node and everything below it)."""
        ...


C = TypeVar("C", bound=ClaimLike)


class _Path:
    """Everything the index keeps for one path that has claims.

    Most paths hold one claim, kept in ``key``/``claim``; only a path with several
    keeps a dict of them (``more``): a one-entry dict costs ~220 bytes, a
    million-lock workspace has a million such paths. ``ancestors`` is shared by
    every path in the same folder.
    """

    __slots__ = ("ancestors", "claim", "key", "more", "tree", "tree_w", "writes")

    def __init__(self, ancestors: tuple[str, ...], key: Any, claim: Any) -> None:
        self.ancestors = ancestors
        self.key: Any = key
        self.claim: Any = claim
        self.more: dict[Any, Any] | None = None
        self.writes = 0
        self.tree = 0
        self.tree_w = 0

    def items(self) -> Iterable[tuple[Any, Any]]:
        """(key, claim) of every claim at the path."""
        more = self.more
        if more is not None:
            return more.items()
        return ((self.key, self.claim),)

    def get(self, key: Any) -> Any:
        """The claim under ``key`` at this path, if any."""
        more = self.more
        if more is not None:
            return more.get(key)
        return self.claim if self.key == key else None

    def __len__(self) -> int:
        more = self.more
        return len(more) if more is not None else 1


#: Emptied paths stay in the sorted list (skipped on reads) until this many have gathered, then
#: leave it one by one: a path locked and unlocked over and over costs no sorted-list work, and
#: no clean-up pass ever walks the whole list.
_DEAD_PATHS = 1024


class ClaimIndex(Generic[K, C]):
    """Claims (of type ``C``) keyed by ``K``; no clock, no I/O.

    With ``fold`` (a workspace on a case-insensitive disk: ``str.casefold``), the index also knows
    every claimed path and every folder above one by its folded form, so :meth:`other_spelling`
    finds a claim that names the same file with other case. Without it, that costs nothing.
    """

    def __init__(self, fold: Callable[[str], str] | None = None) -> None:
        self._fold = fold
        # Folded path -> {spelling: claims at or below it}; only with ``fold``.
        self._spellings: dict[str, dict[str, int]] = {}
        self._n = 0
        self._paths: dict[str, _Path] = {}
        self._tree_paths = 0  # how many paths hold a tree claim: ancestors are checked only when > 0
        self._below: dict[str, int] = {}
        self._below_w: dict[str, int] = {}
        # Ancestor tuples by parent folder, shared by its children's _Path records; a folder's
        # entry goes when nothing below it is claimed any more.
        self._anc: dict[str, tuple[str, ...]] = {}
        # Sorted paths for range scans: every path in _paths, and the emptied ones in _dead.
        self._sorted: SortedList = SortedList()
        self._dead: set[str] = set()

    def __len__(self) -> int:
        return self._n

    def _ancestors(self, path: str) -> tuple[str, ...]:
        i = path.rfind("/")
        if i < 0:
            return ()
        parent = path[:i]
        anc = self._anc.get(parent)
        if anc is None:
            anc = self._anc[parent] = (*self._ancestors(parent), parent)
        return anc

    def add(self, key: K, claim: C) -> None:
        """Add ``claim`` under a new ``key``."""
        if self._add(key, claim):
            self._sorted.add(claim.node_id)

    def add_all(self, pairs: Iterable[tuple[K, C]]) -> None:
        """Add many claims at once (loading a workspace): the sorted list is extended once, not per path."""
        fresh = [claim.node_id for key, claim in pairs if self._add(key, claim)]
        self._sorted.update(fresh)

    def _add(self, key: K, claim: C) -> bool:
        """Add ``claim``; True if its path is new and must be added to the sorted list."""
        path, write = claim.node_id, claim.mode == "write"
        p = self._paths.get(path)
        fresh = False
        if p is None:
            p = self._paths[path] = _Path(self._ancestors(path), key, claim)
            if path in self._dead:
                self._dead.discard(path)
            else:
                fresh = True
        elif p.more is None:
            if p.key == key:
                raise KeyError(f"duplicate claim key {key!r}")
            p.more = {p.key: p.claim, key: claim}
            p.key = p.claim = None
        else:
            if key in p.more:
                raise KeyError(f"duplicate claim key {key!r}")
            p.more[key] = claim
        self._n += 1
        if write:
            p.writes += 1
        if claim.depth == "tree":
            if not p.tree:
                self._tree_paths += 1
            p.tree += 1
            if write:
                p.tree_w += 1
        below, below_w = self._below, self._below_w
        for anc in p.ancestors:
            below[anc] = below.get(anc, 0) + 1
            if write:
                below_w[anc] = below_w.get(anc, 0) + 1
        if self._fold is not None:
            self._spell(p.ancestors, path, 1)
        return fresh

    def _spell(self, folders: Iterable[str], path: str, delta: int) -> None:
        """Count a claim on ``path`` in (or out of) the spellings of the path and of each folder above it."""
        assert self._fold is not None
        spellings = self._spellings
        for at in (*folders, path):
            key = self._fold(at)
            seen = spellings.setdefault(key, {})
            n = seen.get(at, 0) + delta
            if n:
                seen[at] = n
            else:
                del seen[at]
                if not seen:
                    del spellings[key]

    def other_spelling(self, node_id: str) -> str | None:
        """A claimed path that names ``node_id`` (or a folder above it) with other case, spelled in full; or None.

        Always None without ``fold``. The answer keeps the rest of ``node_id`` as given: the spelling to use.
        """
        if self._fold is None or not self._spellings:
            return None
        spelled = ""  # node_id as the claims spell it, one segment deeper each time
        for at, seg in zip((*ancestors(node_id), node_id), node_id.split("/"), strict=True):
            seen = self._spellings.get(self._fold(at))
            if not seen:  # nothing claimed there: as given
                spelled = f"{spelled}/{seg}" if spelled else seg
                continue
            spelled = at if at in seen else next(iter(seen))
        return spelled if spelled != node_id else None

    def replace(self, key: K, claim: C) -> None:
        """Store ``claim`` under ``key`` in place of an equal one (same node, mode and depth)."""
        p = self._paths[claim.node_id]
        if p.more is None:
            if p.key != key:
                raise KeyError(key)
            p.claim = claim
        else:
            if key not in p.more:
                raise KeyError(key)
            p.more[key] = claim

    def remove(self, key: K, node_id: str) -> C:
        """Remove and return the claim under ``key`` (on ``node_id``)."""
        path = node_id
        p = self._paths[path]
        more = p.more
        if more is None:
            if p.key != key:
                raise KeyError(key)
            claim: C = p.claim
        else:
            claim = more.pop(key)
            if len(more) == 1:
                ((p.key, p.claim),) = more.items()
                p.more = None
        write = claim.mode == "write"
        self._n -= 1
        if write:
            p.writes -= 1
        if claim.depth == "tree":
            p.tree -= 1
            if not p.tree:
                self._tree_paths -= 1
            if write:
                p.tree_w -= 1
        if self._fold is not None:
            self._spell(p.ancestors, path, -1)
        below, below_w = self._below, self._below_w
        for anc in p.ancestors:
            n = below[anc] - 1
            if n:
                below[anc] = n
            else:
                del below[anc]
                self._anc.pop(anc, None)
            if write:
                n = below_w[anc] - 1
                if n:
                    below_w[anc] = n
                else:
                    del below_w[anc]
        if more is None:
            del self._paths[path]
            dead = self._dead
            dead.add(path)
            if len(dead) > _DEAD_PATHS:
                for d in dead:
                    self._sorted.discard(d)
                dead.clear()
        return claim

    def conflicts(self, claim: ClaimLike, exclude: K | None = None) -> bool:
        """Whether any claim (other than ``exclude``) conflicts with ``claim``; O(depth + 1)."""
        path, write = claim.node_id, claim.mode == "write"
        p = self._paths.get(path)
        if p is not None:
            more = p.more
            if more is None:
                if p.key != exclude and (write or p.writes):
                    return True
            else:
                here_all, here_w = len(more), p.writes
                if exclude is not None:
                    ex = more.get(exclude)
                    if ex is not None:
                        here_all -= 1
                        here_w -= ex.mode == "write"
                if (here_all if write else here_w) > 0:
                    return True
        if self._tree_paths:
            paths = self._paths
            for anc in p.ancestors if p is not None else ancestors(path):
                a = paths.get(anc)
                if a is not None and (a.tree if write else a.tree_w):
                    return True
        if claim.depth == "tree":
            below = self._below if write else self._below_w
            if below.get(path):
                return True
        return False

    def conflicting(self, claim: ClaimLike, exclude: K | None = None) -> Iterator[tuple[K, C]]:
        """Yield the claims that conflict with ``claim``: at its node, on ancestors, then below it."""
        path, write = claim.node_id, claim.mode == "write"
        paths = self._paths
        p = paths.get(path)
        if p is not None and (write or p.writes):  # a read conflicts with writes only: skip a path of readers
            for key, other in p.items():
                if key != exclude and (write or other.mode == "write"):
                    yield key, other
        if self._tree_paths:
            for anc in p.ancestors if p is not None else ancestors(path):
                a = paths.get(anc)
                if a is not None and (a.tree if write else a.tree_w):
                    for key, other in a.items():
                        if other.depth == "tree" and key != exclude and (write or other.mode == "write"):
                            yield key, other
        if claim.depth == "tree" and (self._below if write else self._below_w).get(path):
            for below in self._sorted.irange(path + "/", path + _AFTER_SLASH, inclusive=(True, False)):
                b = paths.get(below)
                if b is not None:
                    for key, other in b.items():
                        if key != exclude and (write or other.mode == "write"):
                            yield key, other

    def covering(self, node_id: str) -> Iterator[tuple[K, C]]:
        """Yield every claim that covers ``node_id``: at it, then tree claims on its ancestors."""
        paths = self._paths
        p = paths.get(node_id)
        if p is not None:
            yield from p.items()
        if self._tree_paths:
            for anc in p.ancestors if p is not None else ancestors(node_id):
                a = paths.get(anc)
                if a is not None and a.tree:
                    for key, other in a.items():
                        if other.depth == "tree":
                            yield key, other

    def paths_from(self, prefix: str, start_at: str | None = None) -> Iterator[str]:
        """Yield, in order, the paths holding claims that start with ``prefix`` ('' = all), from ``start_at`` on."""
        lo = start_at if start_at is not None and start_at > prefix else prefix
        for path in self._sorted.irange(lo, None):
            if not path.startswith(prefix):
                return
            if path in self._paths:
                yield path

    def count_below(self, node_id: str) -> int:
        """How many claims lie strictly below ``node_id``."""
        return self._below.get(node_id, 0)

    def at(self, node_id: str) -> dict[K, C]:
        """The claims on exactly ``node_id`` (do not mutate: it may be the index's own dict)."""
        p = self._paths.get(node_id)
        if p is None:
            return {}
        more = p.more
        return more if more is not None else {p.key: p.claim}
