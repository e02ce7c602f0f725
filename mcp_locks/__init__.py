"""mcp-locks: secure file locks for teams of AI agents, served as an MCP tool server.

The public surface is re-exported here; everything else lives in private modules.
"""

from ._app import __version__, build_app, build_service, build_store
from ._clock import Clock, ManualClock
from ._errors import (
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
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
    WaitTimeout,
)
from ._keys import LOCAL, Identity, KeyRecord
from ._mcp import build_mcp
from ._mcp_client import McpLockClient
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
    WorkspaceList,
)
from ._postgres import PostgresStore
from ._service import LockService, ServiceLimits
from ._settings import Settings
from ._sqlite import SqliteStore
from ._store import MemoryStore, Store
from ._table import Lease, Limits, LockTable

__all__ = [
    "ERROR_TABLE",
    "LOCAL",
    "AlreadyExists",
    "BadHost",
    "Clock",
    "Deadlock",
    "Forbidden",
    "Identity",
    "Internal",
    "InvalidArgument",
    "KeyRecord",
    "Lease",
    "LimitExceeded",
    "Limits",
    "LockBroken",
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
    "McpLockClient",
    "MemoryStore",
    "MethodNotAllowed",
    "NotFound",
    "PostgresStore",
    "RateLimited",
    "RenewResult",
    "ServiceLimits",
    "Settings",
    "SqliteStore",
    "Store",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "UnlockFilesResult",
    "UnlockOutcome",
    "UnlockResult",
    "WaitTimeout",
    "WaiterInfo",
    "WorkspaceInfo",
    "WorkspaceList",
    "__version__",
    "build_app",
    "build_mcp",
    "build_service",
    "build_store",
]
