"""Adding mcp-locks' hook entries to a host's config object, and taking exactly them out again.

Pure functions on the parsed JSON: the caller reads and writes the file. An entry is "ours" when its
command runs ``mcp-locks hook HOST`` (from any path), so a reinstall replaces it in place, an entry of an
older install is found, and every other hook and setting is kept as it was, in its order.
"""

from __future__ import annotations

from typing import Any

from mcp_locks.hooks.install_command import is_ours
from mcp_locks.hooks.install_hosts import COMMAND, Host

__all__ = ["ShapeError", "found", "merge", "unmerge"]


class ShapeError(ValueError):
    """The config's ``hooks`` are not shaped as the host documents them; the message says where."""


def _fill(template: Any, command: str) -> Any:
    """``template`` with :data:`COMMAND` replaced by ``command`` (a fresh copy)."""
    if template == COMMAND:
        return command
    if isinstance(template, dict):
        return {k: _fill(v, command) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, command) for v in template]
    return template


def _mine(handler: Any, host: Host) -> bool:
    return isinstance(handler, dict) and is_ours(handler.get("command"), "hook", host.name)


def _strip(entry: Any, host: Host) -> tuple[Any | None, bool]:
    """``entry`` without our handlers (None if nothing else was in it), and whether it had any."""
    if _mine(entry, host):  # Cursor's flat handler
        return None, True
    handlers = entry.get("hooks") if isinstance(entry, dict) else None
    if not isinstance(handlers, list):
        return entry, False
    kept = [h for h in handlers if not _mine(h, host)]
    if len(kept) == len(handlers):
        return entry, False
    return ({**entry, "hooks": kept} if kept else None), True


def _hooks_of(config: dict[str, Any]) -> dict[str, Any]:
    hooks = config.get("hooks", {})
    if not isinstance(hooks, dict):
        raise ShapeError(f'"hooks" is a JSON {type(hooks).__name__}, not an object')
    return hooks


def _entries_of(hooks: dict[str, Any], event: str) -> list[Any]:
    entries = hooks.get(event, [])
    if not isinstance(entries, list):
        raise ShapeError(f'"hooks"."{event}" is a JSON {type(entries).__name__}, not a list')
    return entries


def _replace(entries: list[Any], host: Host, ours: dict[str, Any] | None) -> tuple[list[Any], bool]:
    """``entries`` with our handlers taken out and ``ours`` (if any) where the first of them was, else last."""
    out: list[Any] = []
    placed = ours is None
    touched = False
    for entry in entries:
        kept, had = _strip(entry, host)
        touched |= had
        if had and not placed:
            out.append(ours)
            placed = True
        if kept is not None:
            out.append(kept)
    if not placed:
        out.append(ours)
    return out, touched


def merge(config: dict[str, Any], host: Host, command: str) -> dict[str, Any]:
    """``config`` with exactly one entry of ours per event ``host`` needs, running ``command``."""
    out = dict(config)
    for key, value in host.preamble.items():
        out.setdefault(key, value)
    hooks = dict(_hooks_of(config))
    for event in list(hooks):
        if event not in host.entries and isinstance(hooks[event], list):  # left by an older install
            kept, touched = _replace(hooks[event], host, None)
            if touched and not kept:
                del hooks[event]
            elif touched:
                hooks[event] = kept
    for event, template in host.entries.items():
        hooks[event], _ = _replace(_entries_of(hooks, event), host, _fill(template, command))
    out["hooks"] = hooks
    return out


def unmerge(config: dict[str, Any], host: Host) -> dict[str, Any]:
    """``config`` without our entries, and without an event list or ``hooks`` object that only they filled."""
    hooks = _hooks_of(config)
    if not hooks:
        return config
    left: dict[str, Any] = {}
    for event, entries in hooks.items():
        if not isinstance(entries, list):
            left[event] = entries
            continue
        kept, touched = _replace(entries, host, None)
        if kept or not touched:
            left[event] = kept
    out = dict(config)
    if left:
        out["hooks"] = left
    else:
        del out["hooks"]
    return out


def found(config: dict[str, Any], host: Host) -> dict[str, list[str]]:
    """Event -> the command lines of our handlers in that event (events without one left out)."""
    try:
        hooks = _hooks_of(config)
    except ShapeError:
        return {}
    out: dict[str, list[str]] = {}
    for event, entries in hooks.items():
        for entry in entries if isinstance(entries, list) else []:
            handlers = entry.get("hooks") if isinstance(entry, dict) and "command" not in entry else [entry]
            for h in handlers if isinstance(handlers, list) else []:
                if _mine(h, host):
                    out.setdefault(event, []).append(h["command"])
    return out
