"""Reading a server's error body back into the :class:`~mcp_locks.LockError` it describes.

One decoder for every client surface: REST answers, MCP tool error results (their ``_meta``, under
:data:`~mcp_locks.core.errors.ERROR_META_KEY`) and the MCP transport's HTTP refusals all carry the same
``{"error": {"code", "message", "hint", "details"}}``.
"""

from __future__ import annotations

from typing import Any

from mcp_locks.core.errors import ERROR_TABLE, Internal, LockError

__all__ = ["TRANSIENT_STATUS", "Transient", "decode_error", "error_of"]

#: Statuses a proxy answers for a server that did not: worth retrying, as a dropped connection is.
TRANSIENT_STATUS = frozenset({502, 503, 504})


class Transient(Exception):
    """A failure worth retrying (the request may or may not have been applied)."""


def decode_error(body: Any) -> LockError | None:
    """The :class:`LockError` subclass an ``{"error": {...}}`` body (or its bare inner dict) describes.

    The class comes from the code (``ERROR_TABLE``); a code this client does not know is :class:`Internal`,
    with the server's message and hint. Anything that is not such a body (no code or message, wrong
    types, not a dict) is ``None``: the caller says what it got instead.
    """
    inner = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        return None
    data = inner.get("data")
    if isinstance(data, dict) and isinstance(data.get("error"), dict):  # a JSON-RPC error carrying the body
        return decode_error(data)
    code, message = inner.get("code"), inner.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    hint, details = inner.get("hint"), inner.get("details")
    return ERROR_TABLE.get(code, Internal)(
        message,
        hint=hint if isinstance(hint, str) else "",
        details=details if isinstance(details, dict) else {},
    )


def error_of(status: int, body: Any) -> LockError:
    """The refusal an HTTP answer carries: the server's own error from its body, else what the status alone says."""
    return decode_error(body) or Internal(f"the server answered {status} without an error body.")
