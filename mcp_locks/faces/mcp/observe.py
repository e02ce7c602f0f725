"""The observation tools: a workspace's event log."""

# No "from __future__ import annotations": tool signatures use Annotated types the SDK must evaluate.

from typing import Annotated

from pydantic import Field

from mcp_locks.core.models import AuditPage
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.common import READONLY, CursorArg, LimitArg, ToolSet, WorkspaceArg

__all__ = ["register"]


def register(tools: ToolSet, service: LockService) -> None:
    """get_audit_log."""

    @tools.tool(
        annotations=READONLY,
        description="""Read a workspace's event log, newest first: who requested, waited for, got, renewed,
released or lost which lock (expired, broken), who was denied and why (code), and every file write and delete.

Each event has seq, at, kind, node_id, agent, lock_id, fence, waited_ms, held_ms, code, version. Filter by
node_id (that exact node), agent, or since (an ISO 8601 time). Pass next_cursor as cursor for older events.""",
    )
    async def get_audit_log(
        workspace_id: WorkspaceArg = None,
        node_id: Annotated[str | None, Field(description="Only events on this exact node.")] = None,
        agent: Annotated[str | None, Field(description="Only events of this agent.")] = None,
        since: Annotated[str | None, Field(description="Only events at or after this time (ISO 8601, with Z).")] = None,
        limit: LimitArg = 100,
        cursor: CursorArg = None,
    ) -> AuditPage:
        return await service.observe.audit_log(
            workspace_id, node_id, agent, since, limit, cursor, caller=tools.caller()
        )
