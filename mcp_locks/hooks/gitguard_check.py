"""``mcp-locks git-guard check``: whether the staged changes may be committed, given who holds write locks.

A staged path (added, changed, deleted, or either name of a rename) conflicts when another holder has a write
lock on it, or a write tree lock on a folder above it. "Another holder" is any owner but the committer's own
agent: a person committing has no agent session, so every lock their key's agent holds — in any session,
``<agent>/<session>`` — counts as theirs. Node ids are the hook's (:func:`~mcp_locks.hooks.nodes.node_id_of`):
relative to the project root found from the work tree's root. See docs/git-guard.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mcp_locks.core.errors import LockError, Unavailable
from mcp_locks.core.names import ancestors
from mcp_locks.hooks.config import HookConfig, load_config
from mcp_locks.hooks.gitguard import BYPASS_ENV, Mode
from mcp_locks.hooks.gitguard_git import staged_paths, top_level
from mcp_locks.hooks.install_files import SetupError
from mcp_locks.hooks.nodes import node_id_of
from mcp_locks.hooks.remote import connect

__all__ = ["MAX_PAGES", "Outcome", "check"]

#: Pages of held locks read at most (a million locks at 1,000 a page): the check always ends.
MAX_PAGES = 1000
#: Conflicts listed by name at most; the rest are counted.
_SHOWN = 20
_BYPASS = f"bypass this once with {BYPASS_ENV}=off git commit ... (or git commit --no-verify)"


@dataclass(frozen=True)
class Outcome:
    """Whether the commit may go ahead, and the lines to show the committer (on stderr)."""

    allow: bool
    lines: tuple[str, ...] = ()


def check(cwd: Path, mode: Mode, env: Mapping[str, str] | None = None) -> Outcome:
    """Check the commit being made in the repository around ``cwd`` (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get(BYPASS_ENV, "").lower() == "off":
        return Outcome(True, (f"mcp-locks git-guard: skipped ({BYPASS_ENV}=off).",))
    try:
        top = top_level(cwd)
        staged = staged_paths(top)
        cfg = load_config(top, env) if staged else None
        if cfg is None:  # nothing staged (or, never in a work tree, no project)
            return Outcome(True)
        conflicts = _conflicts(cfg, _nodes(cfg.root, top, staged))
    except LockError as e:
        return _unchecked(mode, e.text(), isinstance(e, Unavailable))
    except SetupError as e:
        return _unchecked(mode, str(e), False)
    except Exception as e:  # a fault of the guard itself (an answer it does not understand): no traceback
        # Only the type: an exception's text may quote anything (a header, so the key).
        why = f"the guard failed unexpectedly ({type(e).__name__}). Check .mcp-locks.toml and the API key it names."
        return _unchecked(mode, why, False)
    return _judged(mode, conflicts)


def _nodes(root: Path, top: Path, staged: list[str]) -> dict[str, str]:
    """Node id -> the staged path it is, for the staged paths inside the project (others are never locked)."""
    out: dict[str, str] = {}
    for path in staged:
        try:
            node = node_id_of(root, os.path.join(top, path))
        except LockError:  # a name the server refuses as a node id cannot be locked either
            continue
        if node is not None:
            out.setdefault(node, path)
    return out


def _conflicts(cfg: HookConfig, nodes: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(staged path, lock) for every write lock of another holder on or above a staged node."""
    if not nodes:
        return []
    with connect(cfg, session="git") as remote:
        agent = remote.me().get("agent")
        out = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = remote.list_locks(cursor=cursor)
            out += [(path, lock) for lock in page["locks"] if not _own(lock, agent) for path in _hits(lock, nodes)]
            cursor = page["next_cursor"]
            if not cursor:
                break
    return out


def _own(lock: dict[str, Any], agent: str | None) -> bool:
    """Whether ``lock`` is the committer's: held by their agent, in any session (a read lock never blocks)."""
    owner = str(lock.get("owner", ""))
    mine = agent is not None and (owner == agent or owner.startswith(agent + "/"))
    return mine or lock.get("mode") != "write"


def _hits(lock: dict[str, Any], nodes: dict[str, str]) -> list[str]:
    """The staged paths ``lock`` covers: its own node, and with depth tree everything below it."""
    node = lock["node_id"]
    if lock.get("depth") != "tree":
        return [nodes[node]] if node in nodes else []
    return [path for n, path in nodes.items() if n == node or node in ancestors(n)]


def _holder(lock: dict[str, Any]) -> str:
    label = f" ({lock['label']})" if lock.get("label") else ""
    until = datetime.fromisoformat(lock["expires_at"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    tree = f", tree lock on {lock['node_id']}/" if lock.get("depth") == "tree" else ""
    note = f': "{lock["note"]}"' if lock.get("note") else ""
    return f"{lock['owner']}{label} until {until}{tree}{note}"


def _judged(mode: Mode, conflicts: list[tuple[str, dict[str, Any]]]) -> Outcome:
    if not conflicts:
        return Outcome(True)
    paths = sorted({path for path, _ in conflicts})
    lines = [f"  {path}: write-locked by {_holder(lock)}" for path, lock in sorted(conflicts, key=lambda c: c[0])]
    if len(lines) > _SHOWN:
        lines = [*lines[:_SHOWN], f"  ... and {len(lines) - _SHOWN} more"]
    if mode == "warn":
        head = f"mcp-locks git-guard: warning: {len(paths)} staged file(s) are write-locked by another agent:"
        return Outcome(True, (head, *lines, "Committing anyway (warn mode)."))
    head = f"mcp-locks git-guard: commit refused: {len(paths)} staged file(s) are write-locked by another agent:"
    tail = (
        "Wait until they release them (mcp-locks status PATH shows who holds one), unstage them "
        f"(git restore --staged PATH), or {_BYPASS}."
    )
    return Outcome(False, (head, *lines, tail))


def _unchecked(mode: Mode, why: str, down: bool) -> Outcome:
    """The verdict when the locks could not be read: refuse in block mode, allow with a warning in warn mode."""
    if down:
        why += " Start the server (mcp-locks serve) or point MCP_LOCKS_URL / url in .mcp-locks.toml at it."
    if mode == "warn":
        return Outcome(True, (f"mcp-locks git-guard: warning: cannot check the locks: {why}", "Committing anyway."))
    return Outcome(False, (f"mcp-locks git-guard: commit refused: cannot check the locks: {why}", f"Or {_BYPASS}."))
