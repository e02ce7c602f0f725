"""Rules for workspace ids and node ids, shared by every face."""

from __future__ import annotations

import functools
import re
import unicodedata

from mcp_locks.core.errors import InvalidArgument

__all__ = [
    "AGENT_PATTERN",
    "DEFAULT_WORKSPACE",
    "MAX_NODE_ID_BYTES",
    "WORKSPACE_PATTERN",
    "ancestors",
    "check_agent_name",
    "check_node_id",
    "check_workspace_id",
]

DEFAULT_WORKSPACE = "default"
MAX_NODE_ID_BYTES = 1024
_WORKSPACE_RE = re.compile(r"[a-z0-9_-]{1,63}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: Names with a meaning of their own: unnamed callers without authentication, and the fallback identities.
RESERVED_AGENTS = frozenset({"anonymous", "local", "nobody"})
_AGENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
#: The same rules, anchored, for JSON schemas (the checks below name the field when they refuse).
WORKSPACE_PATTERN = f"^{_WORKSPACE_RE.pattern}$"
AGENT_PATTERN = f"^{_AGENT_RE.pattern}$"


def check_agent_name(value: object, field: str = "agent") -> str:
    """Return ``value`` if it is a usable agent name (a key's owner), else raise INVALID_ARGUMENT."""
    if not isinstance(value, str) or not _AGENT_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 1-64 characters of letters, digits, '.', '_', '@', '+' or '-',"
            " starting with a letter or digit.",
            hint="Name the agent as people will see it in lock listings, e.g. 'claude-reviewer'.",
            details={"field": field, "rule": "[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}"},
        )
    if value.lower() in RESERVED_AGENTS:
        raise InvalidArgument(
            f"{field} '{value}' is reserved.",
            hint="Pick a name that says which agent it is, e.g. 'claude-reviewer'.",
            details={"field": field, "reserved": sorted(RESERVED_AGENTS)},
        )
    return value


def check_workspace_id(value: object, field: str = "workspace_id") -> str:
    """Return ``value`` if it is 1-63 characters of ``[a-z0-9_-]``, else raise INVALID_ARGUMENT."""
    if value is None:
        return DEFAULT_WORKSPACE
    if not isinstance(value, str) or not _WORKSPACE_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 1-63 characters of a-z, 0-9, '_' or '-'.",
            hint=f"Omit {field} to use the workspace '{DEFAULT_WORKSPACE}'.",
            details={"field": field, "rule": "[a-z0-9_-]{1,63}"},
        )
    return value


def check_node_id(value: object, field: str = "node_id") -> str:
    """Return ``value`` in Unicode NFC if it is a clean workspace-relative path, else raise INVALID_ARGUMENT.

    Composed and decomposed spellings of one name (``é`` as one code point, or ``e`` and a combining
    accent, as macOS writes file names) are one node: every id is normalised where it enters, so locks,
    files and answers all see the composed form (docs/locks.md#names).
    """
    if not isinstance(value, str):
        raise InvalidArgument(
            f"{field} must be a string.",
            hint="Use a workspace-relative path such as 'reports/q3.md'.",
            details={"field": field, "rule": "must be a string"},
        )
    return _check_path(value, field)


@functools.lru_cache(maxsize=65_536)
def _check_path(value: str, field: str) -> str:
    # Cached: agents lock the same few paths over and over; only valid ones are cached.

    def bad(rule: str) -> InvalidArgument:
        return InvalidArgument(
            f"{field} {rule}.",
            hint="Use a workspace-relative path such as 'reports/q3.md'.",
            details={"field": field, "rule": rule},
        )

    if not value:
        raise bad("must not be empty")
    if _CONTROL_RE.search(value):
        raise bad("must not contain control characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise bad("must be valid UTF-8") from None
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
        size = len(value.encode("utf-8"))
    if size > MAX_NODE_ID_BYTES:
        raise bad(f"must be at most {MAX_NODE_ID_BYTES} bytes of UTF-8 (got {size})")
    if value.startswith("/"):
        raise bad("must be relative: no leading '/'")
    for segment in value.split("/"):
        if segment == "":
            raise bad("must not have empty segments ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise bad("must not have '.' or '..' segments")
    return value


def ancestors(node_id: str) -> list[str]:
    """The strict ancestors of ``node_id``, nearest last: ``a/b/c`` -> ``['a', 'a/b']``."""
    out: list[str] = []
    i = node_id.find("/")
    while i != -1:
        out.append(node_id[:i])
        i = node_id.find("/", i + 1)
    return out
