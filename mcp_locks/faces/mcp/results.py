"""How every tool failure reaches a client: a coded error result, never a traceback or a pydantic dump.

An error result is ``isError: true`` with one text block that starts with the
stable code and says what to do next, and the machine-readable body in the
result's ``_meta`` under :data:`ERROR_META_KEY`. It carries no
``structuredContent``: hosts built on the TypeScript SDK check structured
content against the tool's output schema even on errors, and would throw
instead of showing the text.

Hints name other operations face-neutrally (``{op:NAME}``, NAME a tool's name); an
agent is told the tool, or :data:`MCP_WORDS` for what no tool does.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, InputRequiredResult, TextContent
from pydantic import ValidationError

from mcp_locks.core.errors import ERROR_META_KEY, Internal, InvalidArgument, LockError, Vocabulary
from mcp_locks.core.models import invalid_from, unknown_field

__all__ = ["ERROR_META_KEY", "MCP_WORDS", "LockMCPServer", "error_result"]

log = logging.getLogger("mcp_locks.mcp")


#: How an agent is told about an operation no tool does (hints name every other one by its tool).
MCP_WORDS: Vocabulary = {
    "create_upload": "a resumable upload (REST API: POST /v1/workspaces/{workspace_id}/uploads)",
    "upload_status": "the upload's status (REST API: GET /v1/workspaces/{workspace_id}/uploads/{upload_id})",
    "list_keys": "mcp-locks keys list",
    "list_webhooks": "the webhook list (mcp-locks webhooks list, or GET /v1/workspaces/{workspace_id}/webhooks)",
    "revoke_key": "mcp-locks keys revoke",
}


def error_result(err: LockError) -> CallToolResult:
    """A tool error: text starting with the stable code, the REST error body in ``_meta``, no structuredContent."""
    return CallToolResult(
        is_error=True,
        content=[TextContent(type="text", text=err.text(MCP_WORDS))],
        _meta={ERROR_META_KEY: err.to_dict(MCP_WORDS)},
    )


class LockMCPServer(MCPServer[Any]):
    """MCPServer whose tool failures are always coded results, bad arguments included."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Call the tool; whatever fails becomes :func:`error_result` of its LockError."""
        tool = self._tool_manager.get_tool(name)
        if tool is not None and isinstance(arguments, dict):
            # A misspelt field would otherwise be dropped silently (timout=600 -> a 300 s lease).
            bad = unknown_field(name, arguments, list(tool.parameters.get("properties", {})))
            if bad is not None:
                return error_result(bad)
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            return error_result(self._coded(name, exc))

    def _coded(self, name: str, exc: ToolError) -> LockError:
        """The LockError a failed call stands for (INTERNAL, logged here, for anything unforeseen)."""
        cause = exc.__cause__
        if isinstance(cause, LockError):
            return cause
        if isinstance(cause, ValidationError):
            return invalid_from(name, cause)
        if self._tool_manager.get_tool(name) is None:
            names = ", ".join(t.name for t in self._tool_manager.list_tools())
            return InvalidArgument(f"there is no tool named '{name[:64]}'.", hint=f"Available tools: {names}.")
        log.error("tool %s failed", name, exc_info=cause or exc)
        return Internal("the server failed to handle this call.", hint="Retry; if it persists, report it.")
