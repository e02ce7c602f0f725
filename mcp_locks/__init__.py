"""mcp-locks: secure file locks for teams of AI agents, served as an MCP tool server.

The public surface is re-exported here; everything else lives in private modules.
"""

from ._app import __version__, build_app, build_service, build_store
from ._clock import Clock, ManualClock
from ._errors import (
    ERROR_TABLE,
    AlreadyExists,
    Deadlock,
    Internal,
    InvalidArgument,
    LimitExceeded,
    Locked,
    LockError,
    LockExpired,
    LockNotFound,
    NotFound,
    Unavailable,
    WaitTimeout,
)
from ._mcp import build_mcp
from ._models import (
    LockFilesResult,
    LockGrant,
    LockInfo,
    LockItem,
    LockPage,
    LockStatus,
    RenewResult,
    UnlockFilesResult,
    UnlockOutcome,
    UnlockResult,
    WaiterInfo,
    WorkspaceInfo,
)
from ._service import LockService, ServiceLimits
from ._settings import Settings
from ._sqlite import SqliteStore
from ._store import MemoryStore, Store
from ._table import Lease, Limits, LockTable

__all__ = [
    "ERROR_TABLE",
    "AlreadyExists",
    "Clock",
    "Deadlock",
    "Internal",
    "InvalidArgument",
    "Lease",
    "LimitExceeded",
    "Limits",
    "LockError",
    "LockExpired",
    "LockFilesResult",
    "LockGrant",
    "LockInfo",
    "LockItem",
    "LockNotFound",
    "LockPage",
    "LockService",
    "LockStatus",
    "LockTable",
    "Locked",
    "ManualClock",
    "MemoryStore",
    "NotFound",
    "RenewResult",
    "ServiceLimits",
    "Settings",
    "SqliteStore",
    "Store",
    "Unavailable",
    "UnlockFilesResult",
    "UnlockOutcome",
    "UnlockResult",
    "WaitTimeout",
    "WaiterInfo",
    "WorkspaceInfo",
    "__version__",
    "build_app",
    "build_mcp",
    "build_service",
    "build_store",
]
