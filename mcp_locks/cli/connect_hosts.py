"""What each MCP host reads to reach mcp-locks: its config file, the ``locks`` entry in it, and the snippet to show.

Formats checked against each host's documentation (December 2026): Claude Code ``.mcp.json`` (``type: http``),
Claude Desktop ``claude_desktop_config.json`` (command-launched servers only: the stdio bridge), Cursor
``.cursor/mcp.json`` (``url`` + ``headers``), VS Code ``.vscode/mcp.json`` (top-level ``servers``), Codex
``config.toml`` (``[mcp_servers.NAME]`` with ``url`` and ``bearer_token_env_var``: the key stays in the
environment), Gemini CLI ``.gemini/settings.json`` (``httpUrl`` is streamable HTTP; ``url`` would be SSE; Gemini
CLI expands ``$VAR`` in every string of its settings files, so the header names ``$MCP_LOCKS_KEY`` and the key
stays out of that project file, which ``mcp-locks hooks install gemini`` also fills and the team may commit).
No I/O here but reading the environment for paths.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["HOSTS", "KEY_ENV", "SERVER_NAME", "Conn", "Host", "Target", "launcher"]

#: The name every host lists the server under (its tools appear to hooks as ``mcp__locks__<tool>``).
SERVER_NAME = "locks"
#: The environment variable the stdio bridge, the client commands and Codex read the agent's key from.
KEY_ENV = "MCP_LOCKS_KEY"


@dataclass(frozen=True)
class Conn:
    """What every host entry is made of: the server's base URL, the agent's key, and how to launch mcp-locks."""

    url: str  # the server's base URL, without /mcp
    key: str
    launch: tuple[str, ...]  # the absolute command that runs mcp-locks (for hosts that launch a command)

    @property
    def mcp_url(self) -> str:
        """The streamable HTTP endpoint."""
        return f"{self.url}/mcp"

    @property
    def bearer(self) -> dict[str, str]:
        """The header that carries the key."""
        return {"Authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class Target:
    """One host's config file and the ``locks`` entry to put under ``table`` in it."""

    path: Path
    fmt: Literal["json", "toml"]
    table: str  # the top-level key holding the host's servers
    entry: dict[str, Any]
    key_in_file: bool = True

    def document(self) -> dict[str, Any]:
        """The smallest config file holding the entry."""
        return {self.table: {SERVER_NAME: self.entry}}


@dataclass(frozen=True)
class Host:
    """An MCP host: its name on the command line, what it is called, and how it is configured."""

    name: str
    label: str
    target: Callable[[Conn], Target]
    command: Callable[[Conn], str] | None = None  # a shell command that adds the server, if the host has one
    after: str = ""  # what to do once the entry is in place


def launcher() -> tuple[str, ...]:
    """The absolute command that runs this mcp-locks: GUI hosts start servers without your shell's PATH or venv."""
    argv0 = Path(sys.argv[0])
    if argv0.name in ("mcp-locks", "mcp-locks.exe") and argv0.is_file():
        return (os.path.abspath(argv0),)  # the very program running now, wherever PATH points
    found = shutil.which("mcp-locks")
    if found:
        return (os.path.abspath(found),)
    return (os.path.abspath(sys.executable), "-m", "mcp_locks")


def _http(conn: Conn, **extra: Any) -> dict[str, Any]:
    return {**extra, "url": conn.mcp_url, "headers": conn.bearer}


def _claude_desktop_file() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    if sys.platform == "win32":
        return (
            Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
            / "Claude"
            / "claude_desktop_config.json"
        )
    return Path.home() / ".config" / "Claude" / "claude_desktop_config.json"


def _codex_file() -> Path:
    return Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex") / "config.toml"


def _claude_code_command(conn: Conn) -> str:
    # A key is only letters, digits, '_' and '-' (checked when given): it needs no quoting inside "...".
    header = f'"Authorization: Bearer {conn.key}"'
    return f"claude mcp add --transport http {SERVER_NAME} {shlex.quote(conn.mcp_url)} --header {header}"


#: Every host `mcp-locks connect` knows, by its name on the command line.
HOSTS: dict[str, Host] = {
    h.name: h
    for h in (
        Host(
            "claude-code",
            "Claude Code",
            lambda c: Target(Path(".mcp.json"), "json", "mcpServers", _http(c, type="http")),
            command=_claude_code_command,
        ),
        Host(
            "claude-desktop",
            "Claude Desktop",
            lambda c: Target(
                _claude_desktop_file(),
                "json",
                "mcpServers",
                {"command": c.launch[0], "args": [*c.launch[1:], "stdio", "--url", c.url], "env": {KEY_ENV: c.key}},
            ),
            after="Restart Claude Desktop to load it.",
        ),
        Host("cursor", "Cursor", lambda c: Target(Path(".cursor") / "mcp.json", "json", "mcpServers", _http(c))),
        Host(
            "vscode",
            "VS Code",
            lambda c: Target(Path(".vscode") / "mcp.json", "json", "servers", _http(c, type="http")),
        ),
        Host(
            "codex",
            "Codex",
            lambda c: Target(
                _codex_file(),
                "toml",
                "mcp_servers",
                {"url": c.mcp_url, "bearer_token_env_var": KEY_ENV},
                key_in_file=False,
            ),
        ),
        Host(
            "gemini",
            "Gemini CLI",
            lambda c: Target(
                Path(".gemini") / "settings.json",
                "json",
                "mcpServers",
                {"httpUrl": c.mcp_url, "headers": {"Authorization": f"Bearer ${KEY_ENV}"}},
                key_in_file=False,
            ),
        ),
    )
}
