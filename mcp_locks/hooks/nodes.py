"""A written path as the node id it is locked under: relative to the project root, with ``/`` separators."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mcp_locks.core.names import check_node_id

__all__ = ["node_id_of", "node_ids"]


def node_id_of(root: Path, path: str) -> str | None:
    """``path``'s node id below ``root``, or None when it lies outside the root (or is the root itself).

    Both sides go through ``realpath``, so a project reached through a symlink (``/tmp`` on macOS, a
    linked checkout) still maps its files to the same ids. A name the server would refuse as a node id
    raises INVALID_ARGUMENT (see :func:`~mcp_locks.core.names.check_node_id`).
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    rel = os.path.relpath(real, real_root)
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None
    return check_node_id(Path(rel).as_posix(), "path")


def node_ids(root: Path, paths: Iterable[str]) -> list[str]:
    """The node ids of the paths inside ``root``, without repeats, in order."""
    out: list[str] = []
    for p in paths:
        node = node_id_of(root, p)
        if node is not None and node not in out:
            out.append(node)
    return out
