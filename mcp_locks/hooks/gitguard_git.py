"""The few git questions the git guard asks: where the hooks live, the work tree, the staged paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mcp_locks.hooks.install_files import SetupError

__all__ = ["hooks_dir", "run_git", "staged_paths", "top_level"]

#: Seconds any one git command may take (they read the index and the config only).
_GIT_TIMEOUT = 60


def run_git(cwd: Path, *args: str) -> bytes:
    """``git ARGS…`` in ``cwd``: its stdout; SetupError with git's own message if it fails."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, timeout=_GIT_TIMEOUT, stdin=subprocess.DEVNULL, check=False
        )
    except FileNotFoundError:
        raise SetupError("git is not installed (or not on PATH).") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"git {' '.join(args)} took over {_GIT_TIMEOUT} s; retry.") from None
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise SetupError(f"git {' '.join(args)} failed in {cwd}: {why}")
    return done.stdout


def hooks_dir(cwd: Path) -> Path:
    """The directory git runs hooks from (``core.hooksPath`` if set), absolute."""
    out = run_git(cwd, "rev-parse", "--git-path", "hooks").decode().strip()
    return (cwd / out).absolute()


def top_level(cwd: Path) -> Path:
    """The root of the work tree ``cwd`` is in."""
    return Path(run_git(cwd, "rev-parse", "--show-toplevel").decode().strip())


def staged_paths(cwd: Path) -> list[str]:
    """The paths the next commit changes, relative to the work tree's root.

    ``--no-renames`` lists a renamed file under both names: moving a locked file away changes it too.
    Deleted files are listed; ``-z`` keeps unusual names as they are (no quoting).
    """
    out = run_git(cwd, "diff", "--cached", "--name-only", "--no-renames", "-z")
    return [p.decode("utf-8", errors="surrogateescape") for p in out.split(b"\0") if p]
