"""How a CLI user is told about another operation: the ``mcp-locks`` command, where an agent is told the tool.

Hints name operations face-neutrally (``{op:create_workspace}``, see :mod:`mcp_locks.core.errors`); this is
the command line's vocabulary for those it has a command for. The rest keep the tool's name.
"""

from __future__ import annotations

from mcp_locks.core.errors import Vocabulary

__all__ = ["CLI_WORDS"]

#: operation (the MCP tool's name) -> the command that does it
CLI_WORDS: Vocabulary = {
    "create_workspace": "mcp-locks workspaces create",
    "list_keys": "mcp-locks keys list",
    "revoke_key": "mcp-locks keys revoke",
    "check_lock_status": "mcp-locks status",
    "list_locks": "mcp-locks locks",
    "list_webhooks": "mcp-locks webhooks list",
}
