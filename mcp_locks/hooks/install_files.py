"""Reading and writing the small config files ``hooks install`` and ``git-guard install`` edit.

A file is read whole, checked, changed in memory and written back atomically (a temporary file beside it,
then a rename), with its permission bits kept, so a crash never leaves half a config. A file that does not
parse is never written: the error names it and where the parser stopped.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["NEW_FILE_MODE", "SetupError", "dump_json", "read_json", "read_text", "remove_file", "write_text"]

#: The mode of a config file these commands create: readable by all, as the hosts' own files are (no secret
#: is ever written into one; the key stays in the environment).
NEW_FILE_MODE = 0o644


class SetupError(Exception):
    """A config file these commands cannot read or write; the message names the file and what to do."""


def read_text(path: Path) -> str | None:
    """The file's text, or None if there is no such file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SetupError(f"cannot read {path}: {e}. Fix its permissions or encoding, then retry.") from None


def read_json(path: Path) -> tuple[dict[str, Any], str | None]:
    """The JSON object in ``path`` (``{}`` if there is no file) and the text it was read from.

    Raises SetupError, naming the file and the line and column, if it is not a JSON object: such a file is
    someone's config, and is left exactly as it is for them to fix.
    """
    text = read_text(path)
    if text is None or not text.strip():
        return {}, text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SetupError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); it was left untouched. "
            "Fix it (comments are not JSON), then run the command again."
        ) from None
    if not isinstance(data, dict):
        raise SetupError(f"{path} holds a JSON {type(data).__name__}, not an object; it was left untouched.")
    return data, text


def _indent_of(text: str | None) -> str | int:
    """The indentation the file already uses (so its other settings keep their bytes), else two spaces."""
    for line in (text or "").splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            return line[: len(line) - len(stripped)]
    return 2


def dump_json(data: dict[str, Any], like: str | None) -> str:
    """``data`` as JSON text indented as ``like`` is (two spaces for a new file), with a final newline."""
    return json.dumps(data, indent=_indent_of(like), ensure_ascii=False) + "\n"


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` atomically, keeping its mode (``mode``, else 0644, for a new file).

    A symbolic link is followed, so a config kept in a dotfiles repository stays a link.
    """
    target = path.resolve()
    try:
        old = target.stat().st_mode
        keep = stat.S_IMODE(old)
    except FileNotFoundError:
        keep = NEW_FILE_MODE if mode is None else mode
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            os.chmod(tmp, keep)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise SetupError(f"cannot write {path}: {e}. Fix the permissions of {target.parent}, then retry.") from None


def remove_file(path: Path) -> None:
    """Delete ``path`` (a config these commands emptied); a missing file is fine."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise SetupError(f"cannot remove {path}: {e}. Remove it by hand.") from None
