"""Small line edits of TOML files that keep everything else in them byte for byte.

Python reads TOML (``tomllib``) but writes none, and rewriting a user's file from parsed data would drop its
comments and layout. These helpers check the file with ``tomllib``, then change one line, or add one.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from mcp_locks.hooks.install_files import SetupError

__all__ = ["parse", "set_top_level", "switch_on"]

_HEADER = re.compile(r"^\s*\[")


def parse(text: str | None, path: Path) -> dict[str, Any]:
    """The TOML document ``text`` (read from ``path``; ``{}`` if None); SetupError naming the file if it is not TOML."""
    try:
        return tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as e:
        raise SetupError(f"{path} is not valid TOML ({e}); it was left untouched. Fix it, then retry.") from None


def _literal(value: str | bool) -> str:
    """``value`` as a TOML literal (a JSON string is a valid TOML basic string)."""
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def set_top_level(text: str, key: str, value: str | bool) -> str:
    """``text`` with the top-level ``key = value`` line set: replaced where it is, else added before any table."""
    lines = text.splitlines(keepends=True)
    assign = re.compile(rf"^\s*{re.escape(key)}\s*=")
    line = f"{key} = {_literal(value)}\n"
    end = next((i for i, s in enumerate(lines) if _HEADER.match(s)), len(lines))
    for i in range(end):
        if assign.match(lines[i]):
            lines[i] = line
            return "".join(lines)
    if end == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines.insert(end, line)
    return "".join(lines)


def switch_on(text: str, table: str, keys: tuple[str, ...]) -> str | None:
    """``text`` with each ``KEY = false`` line in ``[table]`` turned to true; None if none was found that way."""
    lines = text.splitlines(keepends=True)
    inside = False
    flip = re.compile(rf"^(\s*(?:{'|'.join(map(re.escape, keys))})\s*=\s*)false\b")
    changed = False
    for i, line in enumerate(lines):
        if _HEADER.match(line):
            inside = re.match(rf"\s*\[\s*{re.escape(table)}\s*\]", line) is not None
        elif inside and flip.match(line):
            lines[i] = flip.sub(r"\1true", line, count=1)
            changed = True
    return "".join(lines) if changed else None
