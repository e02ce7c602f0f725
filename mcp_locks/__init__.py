"""mcp-locks: secure file locks for teams of AI agents, served as an MCP tool server.

The public surface: the clients (:class:`LockClient`, :class:`SyncLockClient`, :class:`McpLockClient`),
what they hand back or raise (:class:`Lease`, :class:`LeaseLost`, :class:`LockError` and its subclasses),
and what embeds the server (:func:`build_app`, :class:`Settings`). Names load on first use, so importing
the package (or :mod:`mcp_locks.client`) costs no server module; everything else is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp_locks.client import Lease, LeaseLost, LockClient, McpLockClient, SyncLockClient
    from mcp_locks.core.errors import (
        ERROR_TABLE,
        AlreadyExists,
        BadHost,
        Deadlock,
        Forbidden,
        Internal,
        InvalidArgument,
        LimitExceeded,
        LockBroken,
        Locked,
        LockError,
        LockExpired,
        LockNotFound,
        MethodNotAllowed,
        NotFound,
        QuotaExceeded,
        RateLimited,
        StaleFence,
        TooLarge,
        Unauthenticated,
        Unavailable,
        UnsupportedMediaType,
        VersionMismatch,
        WaitTimeout,
    )
    from mcp_locks.faces.app import build_app
    from mcp_locks.settings import Settings

    __version__: str

_ERRORS = [
    "ERROR_TABLE",
    "AlreadyExists",
    "BadHost",
    "Deadlock",
    "Forbidden",
    "Internal",
    "InvalidArgument",
    "LimitExceeded",
    "LockBroken",
    "Locked",
    "LockError",
    "LockExpired",
    "LockNotFound",
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
    "WaitTimeout",
]
#: Where each public name lives; it is imported from there on first use.
_WHERE: dict[str, str] = {
    **dict.fromkeys(["Lease", "LeaseLost", "LockClient", "McpLockClient", "SyncLockClient"], "mcp_locks.client"),
    **dict.fromkeys(_ERRORS, "mcp_locks.core.errors"),
    "build_app": "mcp_locks.faces.app",
    "Settings": "mcp_locks.settings",
}

__all__ = [
    "ERROR_TABLE",
    "AlreadyExists",
    "BadHost",
    "Deadlock",
    "Forbidden",
    "Internal",
    "InvalidArgument",
    "Lease",
    "LeaseLost",
    "LimitExceeded",
    "LockBroken",
    "LockClient",
    "LockError",
    "LockExpired",
    "LockNotFound",
    "Locked",
    "McpLockClient",
    "MethodNotAllowed",
    "NotFound",
    "QuotaExceeded",
    "RateLimited",
    "Settings",
    "StaleFence",
    "SyncLockClient",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
    "VersionMismatch",
    "WaitTimeout",
    "__version__",
    "build_app",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name == "__version__":
        from mcp_locks.core.version import package_version

        globals()[name] = value = package_version()
        return value
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'mcp_locks' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
