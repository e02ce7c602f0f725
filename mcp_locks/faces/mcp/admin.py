"""The workspace tools: create and list workspaces, and break another agent's lock (admin only)."""

# No "from __future__ import annotations": tool signatures use Annotated types the SDK must evaluate.

from typing import Annotated

from pydantic import Field

from mcp_locks.core.models import UnlockResult, WorkspaceInfo, WorkspaceList
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.mcp.common import READONLY, REMOVES, SETS, ToolSet, WorkspaceArg

__all__ = ["register"]


def register(tools: ToolSet, service: LockService) -> None:
    """create_workspace, list_workspaces, force_unlock."""
    _create_workspace(tools, service)
    _list_workspaces(tools, service)
    _force_unlock(tools, service)


def _create_workspace(tools: ToolSet, service: LockService) -> None:
    @tools.tool(
        annotations=SETS,
        description="""Create a workspace: a separate set of locks, e.g. one per project or repository.

ALREADY_EXISTS means it is there already: just use it. The workspace 'default' always exists.""",
    )
    async def create_workspace(
        workspace_id: Annotated[str, Field(description="New workspace id: 1-63 of a-z 0-9 _ -.")],
        description: Annotated[str | None, Field(description="What the workspace is for.", max_length=1024)] = None,
    ) -> WorkspaceInfo:
        return await service.create_workspace(workspace_id, description, caller=tools.caller())


def _list_workspaces(tools: ToolSet, service: LockService) -> None:
    @tools.tool(
        annotations=READONLY,
        description="""List the workspaces your key reaches (every workspace for an admin key), with their descriptions.

Pass one of these ids as workspace_id to the other tools; a key bound to one workspace uses it by default.""",
    )
    async def list_workspaces() -> WorkspaceList:
        return WorkspaceList(workspaces=await service.list_workspaces(caller=tools.caller()))


def _force_unlock(tools: ToolSet, service: LockService) -> None:
    @tools.tool(
        annotations=REMOVES,
        description="""Admin only: break another agent's lock, e.g. one held by a crashed or stuck agent.

The lock is released at once and waiters are served; its holder's next call with the token fails with
LOCK_BROKEN, carrying your reason. Prefer waiting for the lease to run out when you can.""",
    )
    async def force_unlock(
        lock_id: Annotated[str, Field(description="The lock_id shown by list_locks or check_lock_status.")],
        reason: Annotated[str, Field(description="Why; the holder reads it.", min_length=1, max_length=1024)],
        workspace_id: WorkspaceArg = None,
    ) -> UnlockResult:
        return await service.force_unlock(workspace_id, lock_id, reason, caller=tools.caller())
