"""An index of claims on a path tree that answers conflict questions in O(depth + log n).

A claim is ``(node_id, mode, depth)`` under a key. A claim with depth
``"tree"`` covers its node and every node below it (WebDAV depth-infinity).
Two claims conflict when their covered sets overlap and at least one is a
write. Counters per path (claims at it, tree claims at it, claims strictly
below it) make the yes/no question independent of how many claims exist; a
sorted list of paths makes listing the claims below a path a range scan.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from sortedcontainers import SortedList

from ._names import ancestors

__all__ = ["Claim", "ClaimIndex", "Depth", "Mode"]

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


class _Path:
    """Everything the index keeps for one path that has claims."""

    __slots__ = ("ancestors", "claims", "tree", "tree_w", "writes")

    def __init__(self, path: str) -> None:
        self.claims: dict[Any, Claim] = {}
        self.writes = 0
        self.tree = 0
        self.tree_w = 0
        self.ancestors = ancestors(path)


def _bump(counter: dict[str, int], path: str, by: int) -> None:
    n = counter.get(path, 0) + by
    if n:
        counter[path] = n
    else:
        del counter[path]


class ClaimIndex(Generic[K]):
    """Claims keyed by ``K``; no clock, no I/O."""

    def __init__(self) -> None:
        self._claims: dict[K, Claim] = {}
        self._paths: dict[str, _Path] = {}
        self._tree_paths = 0  # how many paths hold a tree claim: ancestors are checked only when > 0
        self._below: dict[str, int] = {}
        self._below_w: dict[str, int] = {}
        # Sorted paths for range scans. A path that loses its last claim stays listed
        # (skipped on reads) until dead entries outnumber live ones, so a path that is
        # locked and unlocked over and over costs no sorted-list work.
        self._sorted: SortedList = SortedList()
        self._listed: set[str] = set()
        self._idle: dict[str, _Path] = {}  # emptied paths, reused if claimed again before the next compaction

    def __len__(self) -> int:
        return len(self._claims)

    def __contains__(self, key: object) -> bool:
        return key in self._claims

    def get(self, key: K) -> Claim | None:
        """The claim under ``key``, if any."""
        return self._claims.get(key)

    def add(self, key: K, claim: Claim) -> None:
        """Add ``claim`` under a new ``key``."""
        if key in self._claims:
            raise KeyError(f"duplicate claim key {key!r}")
        path, write = claim.node_id, claim.mode == "write"
        self._claims[key] = claim
        p = self._paths.get(path)
        if p is None:
            p = self._idle.pop(path, None) or _Path(path)
            self._paths[path] = p
            if path not in self._listed:
                self._listed.add(path)
                self._sorted.add(path)
        p.claims[key] = claim
        if write:
            p.writes += 1
        if claim.depth == "tree":
            if not p.tree:
                self._tree_paths += 1
            p.tree += 1
            if write:
                p.tree_w += 1
        for anc in p.ancestors:
            _bump(self._below, anc, 1)
            if write:
                _bump(self._below_w, anc, 1)

    def remove(self, key: K) -> Claim:
        """Remove and return the claim under ``key``."""
        claim = self._claims.pop(key)
        path, write = claim.node_id, claim.mode == "write"
        p = self._paths[path]
        del p.claims[key]
        if write:
            p.writes -= 1
        if claim.depth == "tree":
            p.tree -= 1
            if not p.tree:
                self._tree_paths -= 1
            if write:
                p.tree_w -= 1
        for anc in p.ancestors:
            _bump(self._below, anc, -1)
            if write:
                _bump(self._below_w, anc, -1)
        if not p.claims:
            del self._paths[path]
            self._idle[path] = p
            if len(self._listed) > 2 * len(self._paths) + 1024:
                self._listed = set(self._paths)
                self._sorted = SortedList(self._listed)
                self._idle.clear()
        return claim

    def conflicts(self, claim: Claim, exclude: K | None = None) -> bool:
        """Whether any claim (other than ``exclude``) conflicts with ``claim``; O(depth + 1)."""
        path, write = claim.node_id, claim.mode == "write"
        p = self._paths.get(path)
        if p is not None:
            here_all, here_w = len(p.claims), p.writes
            if exclude is not None:
                ex = p.claims.get(exclude)
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

    def conflicting(self, claim: Claim, exclude: K | None = None) -> Iterator[tuple[K, Claim]]:
        """Yield the claims that conflict with ``claim``: at its node, on ancestors, then below it."""
        path, write = claim.node_id, claim.mode == "write"
        for key, other in self.at(path).items():
            if key != exclude and (write or other.mode == "write"):
                yield key, other
        for anc in ancestors(path):
            a = self._paths.get(anc)
            if a is not None and a.tree:
                for key, other in a.claims.items():
                    if other.depth == "tree" and key != exclude and (write or other.mode == "write"):
                        yield key, other
        if claim.depth == "tree" and (self._below if write else self._below_w).get(path):
            for below in self._sorted.irange(path + "/", path + _AFTER_SLASH, inclusive=(True, False)):
                for key, other in self.at(below).items():
                    if key != exclude and (write or other.mode == "write"):
                        yield key, other

    def covering(self, node_id: str) -> Iterator[tuple[K, Claim]]:
        """Yield every claim that covers ``node_id``: at it, then tree claims on its ancestors."""
        yield from self.at(node_id).items()
        for anc in ancestors(node_id):
            a = self._paths.get(anc)
            if a is not None and a.tree:
                for key, other in a.claims.items():
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

    def at(self, node_id: str) -> dict[K, Claim]:
        """The claims on exactly ``node_id`` (a live view: do not mutate)."""
        p = self._paths.get(node_id)
        return p.claims if p is not None else {}
