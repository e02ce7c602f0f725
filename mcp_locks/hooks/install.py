"""``mcp-locks hooks install`` and ``uninstall``: mcp-locks' hook entries in a host's config file.

Install merges one entry per event the host needs (see :mod:`mcp_locks.hooks.install_hosts`) into the
host's file for the scope: every other hook and setting stays, in its order, and running it twice leaves
one entry. In the user scope the command written is the absolute path of this ``mcp-locks``, so a host started
from a desktop finds it without the virtual environment on PATH. A project's file is shared (committed), and
this machine's path means nothing on a teammate's: there the command is plain ``mcp-locks hook HOST``, found
on PATH, and the output says everyone needs it there. Project scope also makes sure the project has a
``.mcp-locks.toml`` (never with a key in it) and writes ``--policy`` there. Uninstall takes out exactly the
entries whose command runs ``mcp-locks hook HOST``, and the lists and objects only they filled.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_locks.hooks.config import CONFIG_FILE, DEFAULT_URL, find_project_root
from mcp_locks.hooks.install_command import PROGRAM, shell_line
from mcp_locks.hooks.install_files import SetupError, dump_json, read_json, read_text, remove_file, write_text
from mcp_locks.hooks.install_hosts import Host, Scope
from mcp_locks.hooks.install_merge import ShapeError, merge, unmerge
from mcp_locks.hooks.install_toml import parse, set_top_level, switch_on

__all__ = ["KEY_ENV", "Outcome", "install", "project_root", "uninstall"]

#: The environment variable a new ``.mcp-locks.toml`` names for the key (the key itself is never written).
KEY_ENV = "MCP_LOCKS_KEY"
_NEW_PROJECT_CONFIG = f"""# mcp-locks settings for this project (shared with the team: never put a key here).
url = "{DEFAULT_URL}"
workspace = "default"
key_env = "{KEY_ENV}"
"""
#: Codex's switches that turn its hooks off when false (``codex_hooks`` is the deprecated name).
_CODEX_SWITCHES = ("hooks", "codex_hooks")
#: After a project install: its command is looked up on PATH, on every machine that uses the project.
ON_PATH = (
    f"This project's hooks run `{PROGRAM}` from PATH (the file is shared): everyone who works on it needs "
    f"{PROGRAM} on PATH (pipx install {PROGRAM}), or the host fails to start the check and lets edits through."
)


@dataclass(frozen=True)
class Outcome:
    """What an install or uninstall did to one host's file, and what the user should know or do next."""

    path: Path
    changed: bool
    notes: tuple[str, ...] = ()


def project_root(cwd: Path) -> Path:
    """The project around ``cwd`` (see :func:`mcp_locks.hooks.config.find_project_root`); SetupError outside one."""
    found = find_project_root(cwd)
    if found is None:
        raise SetupError(
            f"{cwd} is in no project (no {CONFIG_FILE} or .git here or above). "
            f"Run this in your project, or create {CONFIG_FILE} at its root first."
        )
    return found.path


def _save(path: Path, before: str | None, old: dict[str, Any], new: dict[str, Any], host: Host) -> bool:
    """Write ``new`` unless it says what the file already does; an emptied file is removed. Whether it changed."""
    if new == old and before is not None:
        return False
    if new in ({}, host.preamble) and before is not None:
        remove_file(path)
    else:
        write_text(path, dump_json(new, before))
    return True


def _shaped(path: Path, change: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = change()
    except ShapeError as e:
        raise SetupError(f"{path}: {e}; it was left untouched. Fix it to the host's documented shape.") from None
    return result


def install(host: Host, scope: Scope, cwd: Path, program: Sequence[str], policy: str | None = None) -> Outcome:
    """Add ``PROGRAM hook HOST`` entries to ``host``'s file for ``scope`` (and the policy to the project).

    ``program`` is the absolute command that starts ``mcp-locks`` (hosts run hooks without your PATH), written
    in the user scope only: a project's file is shared, so it gets ``mcp-locks``, looked up on PATH.
    """
    if scope == "user" and policy is not None:
        raise SetupError(
            f"--policy is a project's setting (policy in {CONFIG_FILE}): "
            "install with --scope project, or set it in each project's file."
        )
    root = project_root(cwd) if scope == "project" else Path.home()
    path = host.config_file(scope, root)
    config, before = read_json(path)
    command = shell_line((PROGRAM,) if scope == "project" else program, "hook", host.name)
    merged = _shaped(path, lambda: merge(config, host, command))  # checked before any file is written
    notes = _project_settings(root, policy) if scope == "project" else []
    if scope == "project":
        notes.append(ON_PATH)
        if shutil.which(PROGRAM) is None:
            notes.append(f"{PROGRAM} is not on your PATH either: install it with pipx, or the hooks fail here too.")
    if host.name == "codex":
        notes += _codex_switch(path.with_name("config.toml"), fix=True)
        if scope == "project":  # a user-wide switch turns project hooks off too; that file is the user's to edit
            notes += _codex_switch(host.config_file("user", root).with_name("config.toml"), fix=False)
    changed = _save(path, before, config, merged, host)
    if host.after:
        notes.append(host.after)
    return Outcome(path, changed, tuple(notes))


def uninstall(host: Host, scope: Scope, cwd: Path) -> Outcome:
    """Take the ``mcp-locks hook HOST`` entries out of ``host``'s file for ``scope``; nothing else."""
    path = host.config_file(scope, project_root(cwd) if scope == "project" else Path.home())
    config, before = read_json(path)
    if before is None:
        return Outcome(path, changed=False)
    changed = _save(path, before, config, _shaped(path, lambda: unmerge(config, host)), host)
    return Outcome(path, changed)


def _project_settings(root: Path, policy: str | None) -> list[str]:
    """Make sure ``root`` has a ``.mcp-locks.toml``; set ``policy`` in it if given. What was done, as notes."""
    path = root / CONFIG_FILE
    before = read_text(path)
    parse(before, path)  # a file that is not TOML is refused before anything is written
    text = _NEW_PROJECT_CONFIG if before is None else before
    if policy is not None:
        text = set_top_level(text, "policy", policy)
    if text == before:
        return []
    write_text(path, text)
    what = "created" if before is None else "updated"
    return [f"{path} {what}" + (f" (policy = {policy!r})." if policy else ".")]


def _codex_switch(path: Path, fix: bool) -> list[str]:
    """If ``path``'s ``[features]`` turn Codex's hooks off, turn them on (``fix``) or say so; notes of what was done."""
    before = read_text(path)
    features = parse(before, path).get("features", {})
    if not isinstance(features, dict) or all(features.get(k) is not False for k in _CODEX_SWITCHES):
        return []
    after = switch_on(before or "", "features", _CODEX_SWITCHES) if fix else None
    if after is None:  # not ours to edit, or set some other way (a dotted key, an inline table)
        return [f"Codex hooks are turned off in {path} ([features] hooks = false): turn them on there."]
    write_text(path, after)
    return [f"Codex hooks were turned off in {path}; turned them on ([features] hooks = true)."]
