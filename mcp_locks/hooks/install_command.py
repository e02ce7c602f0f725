"""The command line a host (or git) runs to reach ``mcp-locks``, and how to recognise it again.

Hosts and git start hooks from wherever they were launched (a GUI app, a hook runner), often without the
virtual environment's ``bin`` on PATH, so the command written starts with an absolute path (the caller's
``launcher()``: the running ``mcp-locks``, else ``python -m mcp_locks``). It is shell-quoted, because every
host runs its hook commands through a shell.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PROGRAM", "is_ours", "shell_line"]

#: The executable's name; the entries these commands write are recognised by it.
PROGRAM = "mcp-locks"


def shell_line(program: Sequence[str], *args: str) -> str:
    """``program ARGS…`` as one shell command line (``program``: the words that start ``mcp-locks``)."""
    return shlex.join([*program, *args])


def is_ours(command: object, *args: str) -> bool:
    """Whether ``command`` (a hook's command line) runs ``mcp-locks ARGS…``, from any path or interpreter.

    So uninstall finds the entries written by any earlier install (another venv, another version), and
    never another tool's hooks.
    """
    if not isinstance(command, str):
        return False
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    if not words:
        return False
    if Path(words[0]).name == PROGRAM:
        rest = words[1:]
    elif words[1:3] == ["-m", "mcp_locks"]:
        rest = words[3:]
    else:
        return False
    return rest[: len(args)] == list(args)
