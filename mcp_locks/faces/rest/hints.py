"""How a REST caller is told about another operation: the route, where an MCP agent is told the tool.

Hints name operations face-neutrally (``{op:lock_file}``, see :mod:`mcp_locks.core.errors`); this is the REST
face's vocabulary for them. A test checks every route named here is a route the face serves.
"""

from __future__ import annotations

from mcp_locks.core.errors import Vocabulary

__all__ = ["REST_WORDS"]

_WS = "/v1/workspaces/{workspace_id}"

#: operation (the MCP tool's name) -> the REST route that does it
REST_WORDS: Vocabulary = {
    "lock_file": f"POST {_WS}/nodes/{{node_id}}/lock",
    "renew_lock": f"POST {_WS}/nodes/{{node_id}}/lock/renew",
    "check_lock_status": f"GET {_WS}/nodes/{{node_id}}/lock",
    "unlock_file": f"DELETE {_WS}/nodes/{{node_id}}/lock/{{token}}",
    "lock_files": f"POST {_WS}/locks/batch",
    "unlock_files": f"POST {_WS}/locks/unlock",
    "list_locks": f"GET {_WS}/locks",
    "force_unlock": f"POST {_WS}/locks/{{lock_id}}/force-unlock",
    "read_file": f"GET {_WS}/files/{{node_id}}",
    "write_file": f"PUT {_WS}/files/{{node_id}}",
    "delete_file": f"DELETE {_WS}/files/{{node_id}}",
    "file_info": f"GET {_WS}/file-info/{{node_id}}",
    "list_files": f"GET {_WS}/files",
    "create_upload": f"POST {_WS}/uploads",
    "upload_status": f"GET {_WS}/uploads/{{upload_id}}",
    "create_workspace": "POST /v1/workspaces",
    "list_webhooks": f"GET {_WS}/webhooks",
    "list_keys": "GET /v1/admin/keys",
    "revoke_key": "DELETE /v1/admin/keys/{key_id}",
}
