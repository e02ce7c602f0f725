"""An index of claims on a path tree that answers conflict questions in O(depth + log n).

A claim is ``(node_id, mode, depth)`` under a key. A claim with depth
``"tree"`` covers its node and every node below it (WebDAV depth-infinity).
Two claims conflict when their covered sets overlap and at least one is a
write. Counters per path (claims at it, tree claims at it, claims strictly
below it) make the yes/no question independent of how many claims exist;
sorted path lists make listing the claims below a path a range scan.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from sortedcontainers import SortedList

from ._names import ancestors

__all__ = ["Claim", "ClaimIndex", "Depth", "Mode"]

Mode = Literal["read", "write"]
Depth = Literal["node", "tree"]
K = TypeVar("K", bound=Hashable)

# Every child path of "p" sorts in ["p/", "p0"): "0" is the character after "/".
_AFTER_SLASH = chr(ord("/") + 1)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a holder or waiter claims: one node, or a whole subtree."""

    node_id: str
    mode: Mode
    depth: Depth


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
        self._at: dict[str, dict[K, Claim]] = {}
        self._at_w: dict[str, int] = {}
        self._tree: dict[str, int] = {}
        self._tree_w: dict[str, int] = {}
        self._below: dict[str, int] = {}
        self._below_w: dict[str, int] = {}
        self._paths: SortedList = SortedList()
        self._wpaths: SortedList = SortedList()

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
        at = self._at.get(path)
        if at is None:
            at = self._at[path] = {}
            self._paths.add(path)
        at[key] = claim
        if write:
            if not self._at_w.get(path):
                self._wpaths.add(path)
            _bump(self._at_w, path, 1)
        if claim.depth == "tree":
            _bump(self._tree, path, 1)
            if write:
                _bump(self._tree_w, path, 1)
        for anc in ancestors(path):
            _bump(self._below, anc, 1)
            if write:
                _bump(self._below_w, anc, 1)

    def remove(self, key: K) -> Claim:
        """Remove and return the claim under ``key``."""
        claim = self._claims.pop(key)
        path, write = claim.node_id, claim.mode == "write"
        at = self._at[path]
        del at[key]
        if not at:
            del self._at[path]
            self._paths.remove(path)
        if write:
            _bump(self._at_w, path, -1)
            if not self._at_w.get(path):
                self._wpaths.remove(path)
        if claim.depth == "tree":
            _bump(self._tree, path, -1)
            if write:
                _bump(self._tree_w, path, -1)
        for anc in ancestors(path):
            _bump(self._below, anc, -1)
            if write:
                _bump(self._below_w, anc, -1)
        return claim

    def conflicts(self, claim: Claim, exclude: K | None = None) -> bool:
        """Whether any claim (other than ``exclude``) conflicts with ``claim``; O(depth + 1)."""
        path, write = claim.node_id, claim.mode == "write"
        skip_all = skip_w = 0
        if exclude is not None:
            ex = self._claims.get(exclude)
            if ex is not None and ex.node_id == path:
                skip_all, skip_w = 1, int(ex.mode == "write")
        here = len(self._at.get(path, ())) - skip_all if write else self._at_w.get(path, 0) - skip_w
        if here > 0:
            return True
        tree = self._tree if write else self._tree_w
        if tree:
            for anc in ancestors(path):
                if tree.get(anc):
                    return True
        if claim.depth == "tree":
            below = self._below if write else self._below_w
            if below.get(path):
                return True
        return False

    def conflicting(self, claim: Claim, exclude: K | None = None) -> Iterator[tuple[K, Claim]]:
        """Yield the claims that conflict with ``claim``: at its node, on ancestors, then below it."""
        path, write = claim.node_id, claim.mode == "write"
        for key, other in self._at.get(path, {}).items():
            if key != exclude and (write or other.mode == "write"):
                yield key, other
        for anc in ancestors(path):
            if self._tree.get(anc):
                for key, other in self._at[anc].items():
                    if other.depth == "tree" and key != exclude and (write or other.mode == "write"):
                        yield key, other
        if claim.depth == "tree" and (self._below if write else self._below_w).get(path):
            paths = self._paths if write else self._wpaths
            for below in paths.irange(path + "/", path + _AFTER_SLASH, inclusive=(True, False)):
                for key, other in self._at[below].items():
                    if key != exclude and (write or other.mode == "write"):
                        yield key, other

    def covering(self, node_id: str) -> Iterator[tuple[K, Claim]]:
        """Yield every claim that covers ``node_id``: at it, then tree claims on its ancestors."""
        yield from self._at.get(node_id, {}).items()
        for anc in ancestors(node_id):
            if self._tree.get(anc):
                for key, other in self._at[anc].items():
                    if other.depth == "tree":
                        yield key, other

    def paths_from(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Yield, in order, the paths holding claims that start with the string ``prefix`` ('' = all)."""
        if start_after is not None and start_after >= prefix:
            it = self._paths.irange(start_after, None, inclusive=(False, False))
        else:
            it = self._paths.irange(prefix, None)
        for path in it:
            if not path.startswith(prefix):
                return
            yield path

    def count_below(self, node_id: str) -> int:
        """How many claims lie strictly below ``node_id``."""
        return self._below.get(node_id, 0)

    def at(self, node_id: str) -> dict[K, Claim]:
        """The claims on exactly ``node_id`` (a live view: do not mutate)."""
        return self._at.get(node_id, {})
