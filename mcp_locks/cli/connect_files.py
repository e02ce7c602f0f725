"""Putting the ``locks`` entry into a host's config file: every other server and setting kept, written 0600.

JSON files are rewritten from their parsed form (key order kept, 2-space indents, a final newline). TOML files
are edited as text, since no TOML writer is a dependency: the ``[mcp_servers.locks]`` table is appended, or its
old lines are replaced; the result is parsed again and must equal the old file with only that entry changed,
or nothing is written. A file that does not parse is never overwritten.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from mcp_locks.cli.connect_hosts import SERVER_NAME, Target

__all__ = ["Loaded", "load", "merged", "snippet", "write_private"]

_BY_HAND = "Nothing was written: fix it, or run without --write and add the entry by hand."


@dataclass(frozen=True)
class Loaded:
    """A host's config file as it is now: its text ("" if it does not exist yet) and what it holds."""

    path: Path
    text: str
    data: dict[str, Any]


def load(target: Target) -> Loaded:
    """Read and parse ``target``'s file; a clear error (naming the file and the position) if it cannot be used."""
    path = target.path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Loaded(path, "", {})
    except UnicodeDecodeError:
        raise click.ClickException(f"{path} is not UTF-8 text. {_BY_HAND}") from None
    except OSError as e:
        raise click.ClickException(f"cannot read {path}: {e.strerror}.") from None
    data = _parse(path, text, target.fmt)
    servers = data.get(target.table)
    if servers is not None and not isinstance(servers, dict):
        raise click.ClickException(f"'{target.table}' in {path} is not a table of servers. {_BY_HAND}")
    return Loaded(path, text, data)


def _parse(path: Path, text: str, fmt: str) -> dict[str, Any]:
    if fmt == "toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:  # its message ends with "(at line L, column C)"
            raise click.ClickException(f"{path} is not valid TOML: {e}. {_BY_HAND}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise click.ClickException(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
            f" (comments and trailing commas are not JSON). {_BY_HAND}"
        ) from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path} does not hold a JSON object. {_BY_HAND}")
    return data


def merged(loaded: Loaded, target: Target) -> str:
    """The file's new text: as it was, with the ``locks`` entry under ``target.table`` added or replaced."""
    if target.fmt == "json":
        data = copy.deepcopy(loaded.data)
        data.setdefault(target.table, {})[SERVER_NAME] = target.entry  # an existing entry keeps its place
        return json_text(data)
    return _toml_merged(loaded, target)


def snippet(target: Target) -> str:
    """The smallest file holding the entry, for a person to merge by hand."""
    if target.fmt == "json":
        return json_text(target.document())
    return toml_table(f"{target.table}.{SERVER_NAME}", target.entry)


def json_text(document: dict[str, Any]) -> str:
    """JSON as hosts and people write it: 2-space indents, non-ASCII kept, a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def toml_table(header: str, entry: dict[str, Any]) -> str:
    """``entry`` as a TOML table under ``[header]``."""
    lines = [f"[{header}]", *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items())]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_merged(loaded: Loaded, target: Target) -> str:
    text, table = loaded.text, target.table
    block = toml_table(f"{table}.{SERVER_NAME}", target.entry)
    if SERVER_NAME not in loaded.data.get(table, {}):
        sep = "" if not text else "\n" if text.endswith("\n") else "\n\n"  # one blank line before the new table
        new = text + sep + block
    else:
        name = rf"""[ \t]*(["']?){re.escape(table)}\1[ \t]*\.[ \t]*(["']?){re.escape(SERVER_NAME)}\2[ \t]*"""
        header = re.compile(rf"^[ \t]*\[{name}\][ \t]*(#.*)?$", re.M)
        own = re.compile(rf"[ \t]*\[\[?{name}\.")  # its sub-tables ([mcp_servers.locks.env]) go with it
        m = header.search(text)
        if m is None:
            raise _cannot_edit(loaded.path, table)
        ends = (h.start() for h in re.finditer(r"^[ \t]*\[", text[m.end() :], re.M))
        end = next((m.end() + e for e in ends if not own.match(text, m.end() + e)), len(text))
        new = text[: m.start()] + block + ("\n" if end < len(text) else "") + text[end:]
    expected = copy.deepcopy(loaded.data)
    expected.setdefault(table, {})[SERVER_NAME] = target.entry
    try:
        ok = tomllib.loads(new) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:  # the text edit would change more than the entry, or break the file: leave it alone
        raise _cannot_edit(loaded.path, table)
    return new


def _cannot_edit(path: Path, table: str) -> click.ClickException:
    return click.ClickException(
        f"{path} defines {table}.{SERVER_NAME} in a form this command does not edit safely."
        f" Nothing was written: replace that entry by hand with the one printed without --write."
    )


def write_private(path: Path, text: str) -> Path:
    """Replace the file at ``path`` (through a symbolic link, if it is one) with ``text``, mode 0600, atomically.

    Returns the path written. The file may hold an agent's key: only its owner may read it.
    """
    real = Path(os.path.realpath(path))
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")  # created 0600
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror}.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, real)  # readers see the old file or the new one, never half of it
    except OSError as e:
        os.unlink(tmp)
        raise click.ClickException(f"cannot write {path}: {e.strerror}.") from None
    return real
