"""Where each host keeps its hooks, and the entries ``mcp-locks hooks install`` puts there.

Facts from each host's documentation, summed up in ``tests/fixtures/hooks/README.md``. An entry is a JSON
template in which :data:`COMMAND` stands for the command line (see :mod:`mcp_locks.hooks.install_command`).
Entries are recognised by their command alone, never by an extra key: hosts may reject keys they do not know.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mcp_locks.hooks.paths import EDIT_TOOLS

__all__ = ["COMMAND", "HOSTS", "SCOPES", "Host", "Scope"]

Scope = Literal["project", "user"]
#: The scopes, in the order ``hooks status`` lists them.
SCOPES: tuple[Scope, ...] = ("project", "user")

#: Stands for the hook's command line in the templates below.
COMMAND = "\0command"

#: Seconds a PreToolUse check may take before the host gives up on it (and lets the edit go ahead).
_TIMEOUT = 30


@dataclass(frozen=True)
class Host:
    """One host: its config file per scope, what an install adds, and what to tell the user afterwards."""

    name: str
    title: str
    #: The config file, relative to the project root (project scope) and to the user directory (user scope).
    path: str
    #: Event name -> the entry (a matcher group, or for Cursor a bare handler) added to that event's list.
    entries: dict[str, dict[str, Any]]
    #: Top-level keys a new file starts with (Cursor's schema version).
    preamble: dict[str, Any] = field(default_factory=dict)
    #: Overrides the user directory (relative to HOME) if this environment variable is set.
    home_env: str | None = None
    #: Printed after an install: what the user still has to do.
    after: str = ""

    def config_file(self, scope: Scope, project: Path) -> Path:
        """The file an install in ``scope`` edits (``project`` is the project root)."""
        if scope == "project":
            return project / self.path
        top, _, rest = self.path.partition("/")
        override = os.environ.get(self.home_env) if self.home_env else None
        return Path(override) / rest if override else Path.home() / top / rest


def _names(host: str) -> str:
    """The host's edit tools as a list of exact names (``A|B``), the tools ``mcp-locks hook`` reads paths from."""
    return "|".join(sorted(EDIT_TOOLS[host]))


def _regex(host: str) -> str:
    """The host's edit tools as an anchored regex, for hosts whose matcher is an unanchored regex."""
    return f"^({_names(host)})$"


def _group(matcher: str | None, **handler: Any) -> dict[str, Any]:
    """A matcher group of one command handler (the shape Claude Code, Codex and Gemini share)."""
    group: dict[str, Any] = {} if matcher is None else {"matcher": matcher}
    group["hooks"] = [{"type": "command", "command": COMMAND, **handler}]
    return group


_CLAUDE = Host(
    name="claude-code",
    title="Claude Code",
    path=".claude/settings.json",
    home_env="CLAUDE_CONFIG_DIR",
    entries={
        # A matcher of plain names separated by | is an exact list for Claude Code (no regex).
        "PreToolUse": _group(_names("claude-code"), timeout=_TIMEOUT),
        # `mcp-locks hook` releases a session's locks at its end, and a subagent's when it stops.
        "SessionEnd": _group(None),
        "SubagentStop": _group(None),
    },
    after="Claude Code reads its settings when a session starts: restart running sessions.",
)

_CURSOR = Host(
    name="cursor",
    title="Cursor",
    path=".cursor/hooks.json",
    preamble={"version": 1},
    entries={
        "preToolUse": {"command": COMMAND, "matcher": _names("cursor"), "timeout": _TIMEOUT},
        "sessionEnd": {"command": COMMAND},
    },
    after=(
        "Cursor runs project hooks only in trusted workspaces. It also runs Claude Code's hooks "
        "(.claude/settings*.json): install one of the two per project, not both."
    ),
)

_CODEX = Host(
    name="codex",
    title="Codex",
    path=".codex/hooks.json",
    home_env="CODEX_HOME",
    entries={
        # Codex edits files with apply_patch only. It has no SessionEnd (Stop ends each turn, and the hook
        # does nothing then): a session's locks end with their lease.
        "PreToolUse": _group(_regex("codex"), timeout=_TIMEOUT, statusMessage="Checking file locks"),
    },
    after=(
        "Codex runs a hook only once you have trusted it: open /hooks in Codex and trust the mcp-locks entries "
        "(again after each change of the command). Codex enforces a deny for apply_patch on a best-effort "
        "basis in some versions (openai/codex#27833)."
    ),
)

_GEMINI = Host(
    name="gemini",
    title="Gemini CLI",
    path=".gemini/settings.json",
    entries={
        # Gemini's timeouts are in milliseconds; its matcher is an unanchored regex.
        "BeforeTool": _group(_regex("gemini"), name="mcp-locks", timeout=_TIMEOUT * 1000),
        "SessionEnd": _group(None, name="mcp-locks-release"),
    },
    after="Gemini CLI asks you to confirm a changed project hook before it first runs it.",
)

#: The hosts ``hooks install`` knows, by the name ``mcp-locks hook HOST`` takes.
HOSTS: dict[str, Host] = {h.name: h for h in (_CLAUDE, _CURSOR, _CODEX, _GEMINI)}
