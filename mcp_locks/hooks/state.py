"""The locks a session's hooks took, kept between the short-lived hook processes of that session.

One small JSON file per (server, workspace, session) in a private folder: ``$MCP_LOCKS_HOOK_STATE`` if set,
else ``$XDG_STATE_HOME/mcp-locks/hooks``, else ``~/.local/state/mcp-locks/hooks`` (folder 0700, files 0600:
the tokens in them release the locks). The file's name is a hash, so no path or session id shows in a
listing. Hosts run hooks in parallel, so a session's hook processes take turns on the file under an
advisory lock (``flock``; bounded wait), and each write replaces the file whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SessionState", "recorded", "session_state", "state_dir"]

#: Longest a hook waits for another hook process of the same session to finish with the state file.
TURN_WAIT = 10.0

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; hooks of one session rarely overlap
    fcntl = None  # type: ignore[assignment]


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where session state files live (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("MCP_LOCKS_HOOK_STATE"):
        return Path(env["MCP_LOCKS_HOOK_STATE"])
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mcp-locks" / "hooks"


@dataclass
class SessionState:
    """The session's held locks: node id -> ``{"token", "lock_id", "expires_at"}``."""

    path: Path
    locks: dict[str, dict[str, Any]] = field(default_factory=dict)
    turn_file: Path | None = None
    #: Where the locks were taken (kept in the file, so the session's end releases them from anywhere).
    url: str = ""
    workspace: str = ""
    session: str = ""
    root: str = ""

    def save(self) -> None:
        """Write the state (or remove the file when nothing is held)."""
        if not self.locks:
            self.delete()
            return
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            where = {"url": self.url, "workspace": self.workspace, "session": self.session, "root": self.root}
            json.dump({**where, "locks": self.locks}, f)
        os.replace(tmp, self.path)

    def delete(self) -> None:
        """Forget the session's state."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def end(self) -> None:
        """Forget the session's state (its end).

        The file its hook processes take turns on stays: another process of the session may hold it or wait
        on it, and a new file at that name would let two of them in at once.
        """
        self.delete()


@contextlib.contextmanager
def session_state(
    url: str, workspace: str, session: str, env: Mapping[str, str] | None = None, root: str = ""
) -> Iterator[SessionState]:
    """The session's state, held for this process alone while the block runs (``root``: the project's)."""
    folder = state_dir(env)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = hashlib.sha256(f"{url}\n{workspace}\n{session}".encode()).hexdigest()[:32]
    path = folder / f"{name}.json"
    turn_file = folder / f"{name}.lock"
    fd = os.open(turn_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _take_turn(fd)
        yield SessionState(path, _read(path), turn_file, url, workspace, session, root)
    finally:
        os.close(fd)  # also ends the flock


def _take_turn(fd: int) -> None:
    """Wait (at most TURN_WAIT) for other hook processes of the session; then go ahead regardless."""
    if fcntl is None:
        return
    deadline = time.monotonic() + TURN_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                return  # a stuck hook process must not stop every later edit; the server stays the judge
            time.sleep(0.01)


def recorded(session: str, env: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(url, workspace, project root) of every state file ``session`` left, wherever its hooks ran."""
    found = []
    for path in sorted(state_dir(env).glob("*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("session") == session:
            where = (data.get("url"), data.get("workspace"), data.get("root"))
            if all(isinstance(w, str) and w for w in where):
                found.append((str(where[0]), str(where[1]), str(where[2])))
    return found


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):  # none yet, or unreadable: start afresh (held leases just expire)
        return {}
    locks = data.get("locks") if isinstance(data, dict) else None
    if not isinstance(locks, dict):
        return {}
    return {k: v for k, v in locks.items() if isinstance(v, dict) and isinstance(v.get("token"), str)}
