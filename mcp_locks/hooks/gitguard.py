"""Installing and removing the git guard: a pre-commit hook that runs ``mcp-locks git-guard check``.

The hook goes where git looks for hooks (``core.hooksPath`` if set). A pre-commit hook already there is kept,
renamed to ``pre-commit.mcp-locks-chained``, and run first by ours (its failure fails the commit); uninstall
puts it back. Our script is recognised by its marker line, so a reinstall rewrites it in place and uninstall
never removes a hook it did not write. See docs/git-guard.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mcp_locks.hooks.gitguard_git import hooks_dir
from mcp_locks.hooks.install_command import shell_line
from mcp_locks.hooks.install_files import SetupError, remove_file, write_text

__all__ = ["BYPASS_ENV", "CHAINED", "MARKER", "Mode", "Placed", "install", "installed_mode", "uninstall"]

Mode = Literal["block", "warn"]
#: ``MCP_LOCKS_GUARD=off git commit …`` skips the check for that one commit.
BYPASS_ENV = "MCP_LOCKS_GUARD"
#: The line that marks a pre-commit script as the guard's.
MARKER = "# mcp-locks git-guard"
#: Where an existing pre-commit hook is kept while the guard is installed.
CHAINED = "pre-commit.mcp-locks-chained"

_SCRIPT = """#!/bin/sh
{marker} (installed by `mcp-locks git-guard install`; `mcp-locks git-guard uninstall` removes it)
# Refuses a commit of files another agent has write-locked. Skip it once: {bypass}=off git commit ...
# or git commit --no-verify. More: docs/git-guard.md in mcp-locks.
chained="$(dirname "$0")/{chained}"
if [ -x "$chained" ]; then
    "$chained" "$@" || exit $?
fi
exec {command}
"""


@dataclass(frozen=True)
class Placed:
    """What an install or uninstall did: the hook's path, and the other hook it chained or put back (if any)."""

    hook: Path
    chained: Path | None
    changed: bool


def _script(program: Sequence[str], mode: Mode) -> str:
    command = shell_line(program, "git-guard", "check", "--mode", mode)
    return _SCRIPT.format(marker=MARKER, bypass=BYPASS_ENV, chained=CHAINED, command=command)


def _read_hook(path: Path) -> str | None:
    """The hook's text (None if there is none); a binary hook reads as text that is not the guard's."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SetupError(f"cannot read {path}: {e}. Fix its permissions, then retry.") from None


def _is_guard(text: str | None) -> bool:
    """Whether ``text`` is a script the guard wrote (its marker is the second line)."""
    lines = (text or "").splitlines()
    return len(lines) > 1 and lines[1].startswith(MARKER)


def install(repo: Path, program: Sequence[str], mode: Mode) -> Placed:
    """Put the guard in ``repo``'s pre-commit hook (chaining any other one); running it again changes nothing.

    ``program`` is the absolute command that starts ``mcp-locks`` (git runs hooks without your venv).
    """
    where = hooks_dir(repo)
    hook, chained = where / "pre-commit", where / CHAINED
    current = _read_hook(hook)
    script = _script(program, mode)
    if _is_guard(current):
        if current == script:
            return Placed(hook, chained if chained.exists() else None, changed=False)
    elif hook.exists() or hook.is_symlink():
        if chained.exists() or chained.is_symlink():
            raise SetupError(
                f"{hook} is another pre-commit hook, and {chained} exists too (left by an earlier install?). "
                f"Merge or remove one of them by hand, then retry."
            )
        _rename(hook, chained)
    write_text(hook, script, mode=0o755)
    return Placed(hook, chained if chained.exists() or chained.is_symlink() else None, changed=True)


def uninstall(repo: Path) -> Placed:
    """Remove the guard from ``repo`` and put back the pre-commit hook it chained, if any.

    A pre-commit hook that is not the guard is left alone (the guard is then not installed), unless a chained
    hook waits to be put back in its place: which of the two to keep is the user's call.
    """
    where = hooks_dir(repo)
    hook, chained = where / "pre-commit", where / CHAINED
    present = hook.exists() or hook.is_symlink()
    waiting = chained.exists() or chained.is_symlink()
    if present and not _is_guard(_read_hook(hook)):
        if waiting:
            raise SetupError(
                f"{hook} is not the mcp-locks git guard, and {chained} waits to be put back there; "
                "both were left untouched. Keep the one you want as pre-commit and remove the other."
            )
        return Placed(hook, None, changed=False)
    if present:
        remove_file(hook)
    if waiting:
        _rename(chained, hook)
    return Placed(hook, hook if waiting else None, changed=present or waiting)


def installed_mode(repo: Path) -> Mode | None:
    """The mode of the guard installed in ``repo``, or None if there is none."""
    text = _read_hook(hooks_dir(repo) / "pre-commit")
    if text is None or not _is_guard(text):
        return None
    return "warn" if "--mode warn" in text else "block"


def _rename(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as e:
        raise SetupError(f"cannot rename {src} to {dst}: {e}") from None
