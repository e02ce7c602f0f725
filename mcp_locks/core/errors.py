"""The one error table.

Every failure a client can see is a :class:`LockError` subclass. Each class
carries its stable ``code`` and the HTTP status the REST face uses, so MCP
error text, REST bodies and tests all read from this table and cannot drift.

Hints are face-neutral: where a hint names another operation it writes
``{op:NAME}`` (NAME is the MCP tool's name, e.g. ``{op:lock_file}``), and each
face renders it in its own words — the tool for an agent, the route for a REST
caller, the command for a CLI user — by passing its vocabulary to
:meth:`LockError.text` or :meth:`LockError.to_dict`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

#: Where an MCP tool error result carries its machine-readable body (``_meta``): structuredContent must match
#: the tool's output schema, which TypeScript-SDK hosts check even on errors, so the body cannot go there.
ERROR_META_KEY = "io.github.mcp-locks/error"

#: How a hint names an operation: ``{op:lock_file}``.
_OP = re.compile(r"\{op:([a-z_]+)\}")

#: What a face calls each operation a hint may name; an operation it does not list keeps its own name.
Vocabulary = Mapping[str, str]


def render_hint(hint: str, words: Vocabulary | None = None) -> str:
    """``hint`` with each ``{op:NAME}`` said as ``words[NAME]`` (as ``NAME`` where there is no word for it)."""
    if "{op:" not in hint:
        return hint
    said = words or {}
    return _OP.sub(lambda m: said.get(m.group(1), m.group(1)), hint)


__all__ = [
    "ERROR_TABLE",
    "AlreadyExists",
    "BadHost",
    "Deadlock",
    "Forbidden",
    "Internal",
    "InvalidArgument",
    "LimitExceeded",
    "LockBroken",
    "LockError",
    "LockExpired",
    "LockNotFound",
    "Locked",
    "MethodNotAllowed",
    "NotFound",
    "QuotaExceeded",
    "RateLimited",
    "StaleFence",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
    "VersionMismatch",
    "Vocabulary",
    "WaitTimeout",
    "refusal_in",
    "render_hint",
]


class LockError(Exception):
    """A refusal with a stable code, a message for the caller and a hint of what to do next.

    ``details`` is a JSON-serialisable mapping for programs (holders, expiry
    times, the offending field); it never holds tokens.
    """

    code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, hint: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = details or {}

    def text(self, words: Vocabulary | None = None) -> str:
        """The one-line form agents read: ``CODE: message hint``, the hint in a face's ``words``."""
        hint = render_hint(self.hint, words)
        return f"{self.code}: {self.message}" + (f" {hint}" if hint else "")

    def to_dict(self, words: Vocabulary | None = None) -> dict[str, Any]:
        """The machine-readable body every face sends (REST's error body, MCP's error ``_meta``)."""
        return {
            "code": self.code,
            "message": self.message,
            "hint": render_hint(self.hint, words),
            "details": self.details,
        }

    def __str__(self) -> str:
        return self.text()


class InvalidArgument(LockError):
    """An argument broke a rule; ``details["field"]`` names it."""

    code = "INVALID_ARGUMENT"
    http_status = 422


class Unauthenticated(LockError):
    """No API key, or one that is unknown, malformed or revoked."""

    code = "UNAUTHENTICATED"
    http_status = 401


class Forbidden(LockError):
    """The key is valid but may not do this: another workspace, another agent's lock, or an admin-only call.

    A workspace the key does not reach gets this answer whether or not it exists.
    """

    code = "FORBIDDEN"
    http_status = 403


class BadHost(LockError):
    """The Host header names no address this server answers for (DNS-rebinding protection)."""

    code = "BAD_HOST"
    http_status = 421


class NotFound(LockError):
    """The workspace (or REST route, or key) does not exist."""

    code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(LockError):
    """The workspace already exists."""

    code = "ALREADY_EXISTS"
    http_status = 409


class Locked(LockError):
    """The node is held in a conflicting mode (or an earlier request waits for it) and wait was 0."""

    code = "LOCKED"
    http_status = 423


class WaitTimeout(LockError):
    """The request waited in line for its whole ``wait`` and was not granted."""

    code = "WAIT_TIMEOUT"
    http_status = 423


class Deadlock(LockError):
    """Waiting would close a cycle of owners waiting for each other."""

    code = "DEADLOCK"
    http_status = 409


class LockExpired(LockError):
    """The token's lease ran out; ``details["expired_at"]`` says when."""

    code = "LOCK_EXPIRED"
    http_status = 410


class LockBroken(LockError):
    """An admin force-unlocked the token's lock; ``details`` say who, when and why."""

    code = "LOCK_BROKEN"
    http_status = 410


class LockNotFound(LockError):
    """No lock has this token (never existed, released, or forgotten after the retention period)."""

    code = "LOCK_NOT_FOUND"
    http_status = 404


class VersionMismatch(LockError):
    """A write's if_version (or If-Match) is not the file's current version: someone else wrote it first."""

    code = "VERSION_MISMATCH"
    http_status = 412


class StaleFence(LockError):
    """A write under a lock whose fence is older than the one the file was last written under."""

    code = "STALE_FENCE"
    http_status = 409


class LimitExceeded(LockError):
    """A server limit (locks, waiters, batch size) would be exceeded."""

    code = "LIMIT_EXCEEDED"
    http_status = 429


class QuotaExceeded(LockError):
    """A write would take the workspace over its file quota (bytes or files); nothing of it was kept.

    ``details`` name the ``limit`` that would be passed, its value and what the workspace already uses.
    """

    code = "QUOTA_EXCEEDED"
    http_status = 413


class RateLimited(LockError):
    """The key sent more requests than its rate allows; ``details["retry_after"]`` says when to try again."""

    code = "RATE_LIMITED"
    http_status = 429


class TooLarge(LockError):
    """The request body is larger than the server accepts."""

    code = "PAYLOAD_TOO_LARGE"
    http_status = 413


class UnsupportedMediaType(LockError):
    """A REST request body that is not declared as JSON."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class MethodNotAllowed(LockError):
    """The REST route exists but not with this HTTP method."""

    code = "METHOD_NOT_ALLOWED"
    http_status = 405


class Unavailable(LockError):
    """The store could not commit; nothing in the failed request took effect."""

    code = "UNAVAILABLE"
    http_status = 503


class Internal(LockError):
    """A bug on our side; the details are in the server log, never sent to the client."""

    code = "INTERNAL"
    http_status = 500


def refusal_in(exc: BaseException) -> LockError | None:
    """``exc`` if it is a :class:`LockError`, else the first one an ExceptionGroup holds, else None.

    A task group wraps what its tasks raise: a refusal (UNAVAILABLE while a database restarts) can reach
    a face inside an ExceptionGroup, and must still be answered as itself, not as INTERNAL.
    """
    if isinstance(exc, LockError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := refusal_in(inner)) is not None:
                return found
    return None


#: code -> class; the one table every face reads.
ERROR_TABLE: dict[str, type[LockError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        Forbidden,
        BadHost,
        NotFound,
        AlreadyExists,
        Locked,
        WaitTimeout,
        Deadlock,
        LockExpired,
        LockBroken,
        LockNotFound,
        VersionMismatch,
        StaleFence,
        LimitExceeded,
        QuotaExceeded,
        RateLimited,
        TooLarge,
        MethodNotAllowed,
        UnsupportedMediaType,
        Unavailable,
        Internal,
    )
}
