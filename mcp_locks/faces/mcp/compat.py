"""The opt-in ``storage`` tool: Fast.io's grouped call shape, ``{"action": ..., "params": {...}}``, on the real tools.

Fast.io's documentation teaches agents one grouped tool (``storage`` with ``action: "lock_file"`` and the
arguments in ``params``). With ``compat_storage_tool`` on, such an agent works here unchanged: each action is
dispatched to the real tool of that name through the server's own ``call_tool``, so the arguments are
validated by that tool's model, errors are its coded errors and the answer is its answer, byte for byte.
"""

# No "from __future__ import annotations": the tool signature uses Annotated types the SDK must evaluate.

from typing import Annotated, Any, Literal, get_args

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, InputRequiredResult
from pydantic import Field

from mcp_locks.core.errors import Internal
from mcp_locks.faces.mcp.common import DESTRUCTIVE, ToolSet

__all__ = ["ACTIONS", "register", "union_schema"]

#: The actions, each the name of the real tool it runs: the lock and file tools, as Fast.io's ``storage``
#: groups them. Workspaces, admin and the audit log keep only their own tools.
Action = Literal[
    "lock_file",
    "unlock_file",
    "renew_lock",
    "check_lock_status",
    "list_locks",
    "lock_files",
    "unlock_files",
    "read_file",
    "write_file",
    "delete_file",
    "list_files",
    "file_info",
]
ACTIONS: tuple[str, ...] = get_args(Action)


def register(tools: ToolSet) -> None:
    """Declare ``storage`` on ``tools``, which must already hold every tool it maps (their schemas make its own)."""
    real = {t.name: t for t in tools.tools}
    missing = [a for a in ACTIONS if a not in real]
    if missing:
        raise RuntimeError(f"storage maps tools that are not declared: {', '.join(missing)}")
    actions = ", ".join(ACTIONS)

    @tools.tool(
        # The union of what its actions do: delete_file and write_file destroy, lock_file adds.
        annotations=DESTRUCTIVE,
        output_schema=union_schema([real[a] for a in ACTIONS]),
        description=f"""Locks and files through one tool, in Fast.io's grouped call shape:
{{"action": "lock_file", "params": {{"workspace_id": "default", "node_id": "reports/q3.md", "mode": "write"}}}}.

`action` names the operation and `params` holds the arguments of the tool of the same name, as that tool's
description says; the answer is that tool's answer (lock_file: a grant with lock_id and the secret token).
Errors are that tool's coded errors: INVALID_ARGUMENT names the wrong field of params, and an unknown action is
INVALID_ARGUMENT listing the actions. Actions: {actions}.""",
    )
    async def storage(
        action: Annotated[Action, Field(description=f"The operation: one of {actions}.")],
        params: Annotated[
            dict[str, Any],
            Field(default_factory=dict, description="The arguments of the tool named by action, e.g. node_id."),
        ],
        ctx: Context[Any, Any] | None = None,
    ) -> CallToolResult:
        if ctx is None:  # the SDK always passes one; only a direct Python call could get here
            raise Internal("storage needs the server's context.", hint="Call it through an MCP client.")
        # The server's own call_tool: unknown fields, validation and every error are handled as for the tool.
        result = await ctx.mcp_server.call_tool(action, params, ctx)
        if isinstance(result, InputRequiredResult):  # no real tool asks for input; never pass one on unexplained
            raise Internal(f"{action} asked for input, which storage cannot pass on.", hint="Call the tool itself.")
        return result


def union_schema(tools: list[Tool]) -> dict[str, Any]:
    """An object schema that every result of ``tools`` satisfies: ``anyOf`` their output schemas.

    ``anyOf``, not ``oneOf``: two actions may share a result shape (write_file and delete_file do), and a
    result matching two branches must still be valid.
    """
    branches: list[dict[str, Any]] = []
    for t in tools:
        schema = t.output_schema
        if schema is None:
            raise RuntimeError(f"{t.name} has no output schema to publish for storage")
        if schema not in branches:
            branches.append(schema)
    return {"type": "object", "description": "The answer of the tool named by action.", "anyOf": branches}
