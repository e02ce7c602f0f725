"""The rules for the arguments every face passes to the services, in one place.

Each check takes the raw value a face received (JSON, a query string, a tool argument) and returns it
typed, or raises INVALID_ARGUMENT naming the field, so MCP, REST and the CLI refuse the same things alike.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import NamedTuple

from mcp_locks.core.claims import Depth, Mode
from mcp_locks.core.errors import InvalidArgument
from mcp_locks.core.keys import Identity
from mcp_locks.core.table import ANONYMOUS

MAX_ITEMS = 100
#: Longest cursor accepted: ours encode a node id (<= 1024 bytes) and a lock id.
MAX_CURSOR = 4096


MODES: dict[str, Mode] = {"read": "read", "shared": "read", "write": "write", "exclusive": "write"}
_TEXT_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def check_mode(value: object, field: str = "mode") -> Mode:
    """A lock mode: 'read' or 'write' (with 'shared' and 'exclusive' as aliases)."""
    if isinstance(value, str) and value in MODES:
        return MODES[value]
    raise InvalidArgument(
        f"{field} must be 'read' or 'write' ('shared' and 'exclusive' are accepted as aliases).",
        hint="Use 'write' to edit a file, 'read' to read it while keeping writers out.",
        details={"field": field},
    )


def check_depth(value: object, field: str = "depth") -> Depth:
    """A lock depth: 'node' or 'tree'."""
    if value == "node" or value == "tree":
        return value
    raise InvalidArgument(
        f"{field} must be 'node' or 'tree'.",
        hint="'tree' locks a folder and everything below it.",
        details={"field": field},
    )


def check_seconds(value: object, field: str, lo: float, hi: float, hint: str) -> float:
    """A finite number of seconds from ``lo`` to ``hi``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a number of seconds.", hint=hint, details={"field": field})
    if not lo <= value <= hi:
        raise InvalidArgument(
            f"{field} must be between {lo:g} and {hi:g} seconds (got {value:g}).",
            hint=hint,
            details={"field": field, "min": lo, "max": hi},
        )
    return float(value)


def check_text(value: object, field: str, max_len: int, *, allow_newlines: bool = False) -> str | None:
    """An optional short text: a string without control characters, at most ``max_len`` long."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string.", details={"field": field})
    if len(value) > max_len:
        raise InvalidArgument(
            f"{field} must be at most {max_len} characters (got {len(value)}).", details={"field": field}
        )
    bad = _TEXT_RE.search(value) if allow_newlines else re.search(r"[\x00-\x1f\x7f]", value)
    if bad:
        raise InvalidArgument(f"{field} must not contain control characters.", details={"field": field})
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{field} must be valid UTF-8 (no lone surrogates).", details={"field": field}) from None
    return value


def owner_of(agent: object) -> str:
    """The owner an unauthenticated call names with ``agent`` (``anonymous`` without one)."""
    name = check_text(agent, "agent", 64)
    if name is None or not name.strip():
        return ANONYMOUS
    return name.strip()


class Who(NamedTuple):
    """How a call's caller shows up in the table."""

    owner: str  # owns what the call takes (deadlock detection compares owners)
    label: str | None  # shown beside the owner
    key_id: str | None  # recorded on new leases
    as_key: str | None  # the key a token's lease must have been taken with (None: any)


def who_is(caller: Identity, agent: object) -> Who:
    """Owner, label and keys of a call: the key's agent owns, and ``agent`` names a session below it.

    Subagents of one host share one key. A call that names itself (``agent="reviewer"``) acts for the
    session ``<key's agent>/reviewer``: two sessions of one key are two holders, who queue behind each
    other and see each other in status, rather than one holder that would deadlock with itself. A session
    never widens what the key may do: tokens still work only with the key that took them.

    Without authentication (:data:`LOCAL`) ``agent`` names the owner and tokens work for anyone;
    an admin key skips the token's key check too (it may release anyone's lock).
    """
    if not caller.authenticated:
        return Who(owner_of(agent), None, None, None)
    label = check_text(agent, "agent", 64)
    label = label.strip() or None if label is not None else None
    owner = caller.agent if label is None or label == caller.agent else f"{caller.agent}/{label}"
    return Who(owner, label, caller.key_id, None if caller.role == "admin" else caller.key_id)


def encode_cursor(after: tuple[str, str]) -> str:
    """An opaque cursor for the next page."""
    return base64.urlsafe_b64encode(json.dumps(list(after)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The position a cursor names (INVALID_ARGUMENT if it is not one of ours)."""
    try:
        if len(cursor) <= MAX_CURSOR:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            node, lock_id = json.loads(raw)
            if isinstance(node, str) and isinstance(lock_id, str):
                return node, lock_id
    except (ValueError, TypeError, RecursionError):
        pass
    raise InvalidArgument(
        "cursor is not a cursor returned by list_locks.",
        hint="Pass next_cursor from the previous page unchanged, or omit it to start over.",
        details={"field": "cursor"},
    )


def check_token(token: object, field: str = "token") -> str:
    """A lock token as lock_file returned it."""
    if not isinstance(token, str) or not token or len(token) > 256:
        raise InvalidArgument(
            f"{field} must be the token string that lock_file returned.",
            hint="Pass the 'token' field of the grant exactly as it was returned.",
            details={"field": field},
        )
    return token


def check_version(value: object) -> int | None:
    """An optional ``if_version``: a whole number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(
            "if_version must be a whole number >= 0 (0 = the file must not exist yet).",
            hint="Pass the version {op:file_info} or {op:read_file} showed you.",
            details={"field": "if_version"},
        )
    return value


def check_count(value: object, field: str, lo: int = 0) -> int:
    """A whole number >= ``lo``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InvalidArgument(f"{field} must be a whole number >= {lo}.", details={"field": field})
    return value
