"""Which files a host's tool call is about to write, read from the call's own arguments.

Per host (fixtures and sources: ``tests/fixtures/hooks/README.md``):

* Claude Code: ``file_path`` of Write, Edit and (older versions) MultiEdit; ``notebook_path`` of NotebookEdit.
* Cursor: Write, StrReplace, Delete, Edit, MultiEdit, TabWrite and ApplyPatch. Cursor documents no
  ``tool_input`` for them, so ``file_path``, ``path`` and ``target_file`` are all accepted, and a patch body
  (ApplyPatch) is read like Codex's. The older ``afterFileEdit`` event names its file at the top level.
* Codex: ``apply_patch``; every ``*** Add File:``, ``*** Update File:``, ``*** Delete File:`` and
  ``*** Move to:`` line of the patch in ``tool_input.command``.
* Gemini CLI: ``file_path`` of ``write_file`` and ``replace`` (there is no built-in ``edit`` tool).

Shell commands are never parsed: a shell tool, a read-only tool and an unknown tool write no file *we know
of*, so their calls get ``[]`` (and are allowed). Relative paths are joined to the payload's ``cwd`` (Cursor:
else its first workspace root); the result is absolute, resolved (``realpath``), in order of appearance,
without repeats.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from mcp_locks.core.errors import InvalidArgument

__all__ = ["EDIT_TOOLS", "PATCH_HEADERS", "PayloadError", "base_folder", "patch_paths", "written_paths"]

#: Tool names whose calls write files, per host.
EDIT_TOOLS: dict[str, frozenset[str]] = {
    "claude-code": frozenset({"Write", "Edit", "MultiEdit", "NotebookEdit"}),
    "cursor": frozenset({"Write", "StrReplace", "Delete", "Edit", "MultiEdit", "TabWrite", "ApplyPatch"}),
    "codex": frozenset({"apply_patch"}),
    "gemini": frozenset({"write_file", "replace"}),
}
#: The patch lines that name a file the patch writes (Codex's apply_patch format).
PATCH_HEADERS = ("*** Add File: ", "*** Update File: ", "*** Delete File: ", "*** Move to: ")
_PATH_KEYS = {
    "claude-code": ("file_path", "notebook_path"),
    "cursor": ("file_path", "path", "target_file"),
    "gemini": ("file_path", "path"),
}
_PATCH_KEYS = ("command", "patch", "input")


class PayloadError(InvalidArgument):
    """The host's hook input is not what its documentation describes; the message says what is wrong."""


def base_folder(payload: Mapping[str, Any]) -> str | None:
    """The folder relative paths are relative to: ``cwd``, else (Cursor) the first of ``workspace_roots``."""
    cwd = payload.get("cwd")
    if isinstance(cwd, str) and cwd:
        return cwd
    roots = payload.get("workspace_roots")
    if isinstance(roots, list) and roots and isinstance(roots[0], str) and roots[0]:
        return roots[0]
    return None


def written_paths(host: str, payload: Mapping[str, Any]) -> list[str]:
    """The absolute paths the call in ``payload`` will write ([] for a tool that writes none we know of)."""
    if host == "cursor" and payload.get("hook_event_name") == "afterFileEdit":
        return _absolute([_string(payload, "file_path", "the afterFileEdit input")], payload)
    tool = payload.get("tool_name")
    if not isinstance(tool, str) or tool not in EDIT_TOOLS.get(host, ()):
        return []
    args = payload.get("tool_input")
    if not isinstance(args, dict):
        raise PayloadError(
            f"the {tool} call has no tool_input object, so the files it writes are unknown.",
            details={"field": "tool_input"},
        )
    if tool == "apply_patch" or (tool == "ApplyPatch" and not _first_path(args, host)):
        return _absolute(patch_paths(_patch_text(args, tool)), payload)
    found = _first_path(args, host)
    if found is None:
        keys = " or ".join(_PATH_KEYS[host])
        raise PayloadError(f"the {tool} call names no file (no {keys} in tool_input).", details={"field": "tool_input"})
    return _absolute([found], payload)


def patch_paths(patch: str) -> list[str]:
    """Every path an apply_patch body adds, updates, deletes or moves to, as written in the patch."""
    found = []
    for raw in patch.splitlines():
        line = raw.strip()  # Codex trims header lines: an indented header still names a file
        for header in PATCH_HEADERS:
            if line.startswith(header) and line[len(header) :].strip():
                found.append(line[len(header) :].strip())
                break
    if not found:
        raise PayloadError(
            "the patch names no file (no '*** Add File:', '*** Update File:', '*** Delete File:' or "
            "'*** Move to:' line).",
            details={"field": "tool_input.command"},
        )
    return found


def _first_path(args: Mapping[str, Any], host: str) -> str | None:
    for key in _PATH_KEYS.get(host, ()):
        value = args.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _patch_text(args: Mapping[str, Any], tool: str) -> str:
    for key in _PATCH_KEYS:
        value = args.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise PayloadError(f"the {tool} call carries no patch text in tool_input.command.", details={"field": "tool_input"})


def _string(payload: Mapping[str, Any], key: str, what: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{what} has no {key}.", details={"field": key})
    return value


def _absolute(paths: Iterable[str], payload: Mapping[str, Any]) -> list[str]:
    base = base_folder(payload)
    out: list[str] = []
    for p in paths:
        if not os.path.isabs(p):
            if base is None or not os.path.isabs(base):
                raise PayloadError(
                    f"the path {p!r} is relative and the input has no absolute cwd to resolve it against.",
                    details={"field": "cwd"},
                )
            p = os.path.join(base, p)
        p = os.path.realpath(p)  # not normpath first: '..' after a symlinked folder is the link target's parent
        if p not in out:
            out.append(p)
    return out
