"""The lock tools: take, release, renew and inspect locks, one at a time or several at once."""

# No "from __future__ import annotations": tool signatures use local Annotated types the SDK must evaluate.

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import Field
from pydantic.fields import FieldInfo

from mcp_locks.core.models import (
    LockFilesResult,
    LockGrant,
    LockItem,
    LockPage,
    LockStatus,
    RenewResult,
    UnlockFilesResult,
    UnlockResult,
)
from mcp_locks.engine.arguments import MAX_ITEMS
from mcp_locks.engine.lock_service import LockService, ServiceLimits
from mcp_locks.faces.mcp.common import (
    CHANGES,
    READONLY,
    SETS,
    AgentArg,
    CursorArg,
    DepthArg,
    LimitArg,
    ModeArg,
    NodeArg,
    NoteArg,
    RequestIdArg,
    TokenArg,
    ToolSet,
    WorkspaceArg,
)
from mcp_locks.faces.mcp.progress import with_progress
from mcp_locks.faces.mcp.results import MCP_WORDS

__all__ = ["register", "register_batch"]


def register(tools: ToolSet, service: LockService) -> None:
    """The one-lock tools: lock_file, unlock_file, renew_lock, check_lock_status, list_locks."""
    _lock_file(tools, service)
    _unlock_file(tools, service)
    _renew_lock(tools, service)
    _check_lock_status(tools, service)
    _list_locks(tools, service)


def register_batch(tools: ToolSet, service: LockService) -> None:
    """The several-locks tools: lock_files (all or none) and unlock_files."""
    _lock_files(tools, service)
    _unlock_files(tools, service)


def _timeout_field(lim: ServiceLimits) -> FieldInfo:
    """The ``timeout`` of a new lock, within the service's limits."""
    field: FieldInfo = Field(
        description=f"Lease length in seconds (1-{lim.max_timeout:g}). The lock is released automatically when "
        "it runs out, unless you call renew_lock.",
        ge=1,
        le=lim.max_timeout,
    )
    return field


def _wait_field(lim: ServiceLimits) -> FieldInfo:
    """The ``wait`` of a lock call, within the service's limits."""
    field: FieldInfo = Field(
        description=f"Seconds to wait in line if the file is locked (0-{lim.max_wait:g}). 0 = fail at once "
        "with LOCKED.",
        ge=0,
        le=lim.max_wait,
    )
    return field


def _lock_file(tools: ToolSet, service: LockService) -> None:
    TimeoutArg = Annotated[float, _timeout_field(service.limits)]
    WaitArg = Annotated[float, _wait_field(service.limits)]

    @tools.tool(
        annotations=CHANGES,
        description="""Lock a file (or a folder with depth='tree') before you read or change it.

Use mode='write' before editing a file: nobody else can lock it until you unlock it or the lease runs out.
Use mode='read' to read a file while keeping writers out (readers share).
Returns a grant: keep `token` secret and pass it to unlock_file when done and to renew_lock to extend the lease.
`fence` grows with every grant: pass it to anything that can reject writes carrying an older fence.

To upgrade a read lock to write (or downgrade write to read), call lock_file again with the same node_id, the
new mode and token=<your token>: same lock, new fence for an upgrade.

Errors and what to do:
- LOCKED: someone else holds it. Retry with wait=30 to wait your turn, or work on another file.
- WAIT_TIMEOUT: you waited `wait` seconds without getting it. Retry later or with a longer wait.
- DEADLOCK: you hold a lock the other holder is waiting for. Release your locks and retry, or use lock_files.
- INVALID_ARGUMENT: fix the named field. FORBIDDEN: your key does not reach that workspace (see list_workspaces).
- NOT_FOUND: the workspace does not exist; an admin can create it.""",
    )
    async def lock_file(
        node_id: NodeArg,
        workspace_id: WorkspaceArg = None,
        mode: ModeArg = "write",
        timeout: TimeoutArg = 300,
        wait: WaitArg = 0,
        depth: DepthArg = "node",
        note: NoteArg = None,
        agent: AgentArg = None,
        request_id: RequestIdArg = None,
        token: Annotated[
            str | None,
            Field(description="Only to upgrade/downgrade a lock you hold: its token. Omit to take a new lock."),
        ] = None,
        ctx: Context[Any, Any] | None = None,
    ) -> LockGrant:
        who = tools.caller()
        return await with_progress(
            service,
            ctx,
            workspace_id,
            node_id,
            who,
            agent,
            wait,
            lambda: service.lock(
                workspace_id, node_id, mode, timeout, wait, depth, note, agent, request_id, token, caller=who
            ),
        )


def _unlock_file(tools: ToolSet, service: LockService) -> None:
    @tools.tool(
        annotations=SETS,
        description="""Release a lock you hold, as soon as you are done with the file.

Pass the token from lock_file. Returns the released lock and how long it was held.
Errors: LOCK_NOT_FOUND (already released, or a wrong token/workspace: nothing to do), LOCK_EXPIRED (the lease ran
out before you released it: another agent may have changed the file since, so re-read it before relying on it),
LOCK_BROKEN (an admin broke it, for the reason given), FORBIDDEN (the lock belongs to another agent's key).""",
    )
    async def unlock_file(
        token: TokenArg,
        workspace_id: WorkspaceArg = None,
        node_id: Annotated[str | None, Field(description="Optional check: the node the lock is on.")] = None,
    ) -> UnlockResult:
        return await service.unlock(workspace_id, token, node_id, caller=tools.caller())


def _renew_lock(tools: ToolSet, service: LockService) -> None:
    lim = service.limits

    @tools.tool(
        annotations=SETS,
        description="""Extend the lease of a lock you hold; call it well before expires_at for long work.

The lease restarts now for `timeout` seconds (default: the lock's previous timeout). Returns the new expires_at.
LOCK_EXPIRED means the lease already ran out: the lock is gone; take it again and re-read the file.""",
    )
    async def renew_lock(
        token: TokenArg,
        workspace_id: WorkspaceArg = None,
        timeout: Annotated[
            float | None,
            Field(description=f"New lease length in seconds (1-{lim.max_timeout:g}).", ge=1, le=lim.max_timeout),
        ] = None,
    ) -> RenewResult:
        return await service.renew(workspace_id, token, timeout, caller=tools.caller())


def _check_lock_status(tools: ToolSet, service: LockService) -> None:
    @tools.tool(
        annotations=READONLY,
        description="""Check whether a file or folder is locked, by whom, until when, and who waits: "may I edit this?".

Shows the locks on this node, tree locks on folders above it that cover it, the waiters, and how many locks are
held below it. Never shows tokens. Read-only: it takes no lock.
Pass your token to also ask "do I still hold it?": `yours` says held (with expires_at and seconds_left) or, if
not, LOCK_EXPIRED / LOCK_BROKEN / LOCK_NOT_FOUND with when and why.""",
    )
    async def check_lock_status(
        node_id: NodeArg,
        workspace_id: WorkspaceArg = None,
        token: Annotated[
            str | None, Field(description="Optional: a token of yours, to check that you still hold its lock.")
        ] = None,
    ) -> LockStatus:
        return await service.status(workspace_id, node_id, token, caller=tools.caller())


def _list_locks(tools: ToolSet, service: LockService) -> None:
    @tools.tool(
        annotations=READONLY,
        description="""List the locks held in a workspace, optionally only under a path prefix or of one owner.

Returns up to `limit` locks ordered by node_id and next_cursor; pass next_cursor as cursor to get the next page.""",
    )
    async def list_locks(
        workspace_id: WorkspaceArg = None,
        prefix: Annotated[str, Field(description="Only node_ids starting with this text, e.g. 'reports/'.")] = "",
        owner: Annotated[str | None, Field(description="Only locks held by this agent.")] = None,
        limit: LimitArg = 100,
        cursor: CursorArg = None,
    ) -> LockPage:
        return await service.list_locks(workspace_id, prefix, owner, limit, cursor, caller=tools.caller())


def _lock_files(tools: ToolSet, service: LockService) -> None:
    TimeoutArg = Annotated[float, _timeout_field(service.limits)]
    WaitArg = Annotated[float, _wait_field(service.limits)]

    @tools.tool(
        annotations=CHANGES,
        description=f"""Lock several files at once: all of them or none (1-{MAX_ITEMS} items).

Use it whenever a change touches more than one file: it waits for all of them together, so it never
deadlocks with other agents and never leaves you holding only part of what you need.
Each item is {{node_id, mode, depth}}. Returns one grant (with its own token and fence) per item, in order.
Errors as for lock_file; on any error nothing is locked.""",
    )
    async def lock_files(
        items: Annotated[list[LockItem], Field(description="The nodes to lock.", min_length=1, max_length=MAX_ITEMS)],
        workspace_id: WorkspaceArg = None,
        timeout: TimeoutArg = 300,
        wait: WaitArg = 0,
        note: NoteArg = None,
        agent: AgentArg = None,
        request_id: RequestIdArg = None,
        ctx: Context[Any, Any] | None = None,
    ) -> LockFilesResult:
        first = items[0].node_id if items else ""
        who = tools.caller()
        return await with_progress(
            service,
            ctx,
            workspace_id,
            first,
            who,
            agent,
            wait,
            lambda: service.lock_many(workspace_id, items, timeout, wait, note, agent, request_id, caller=who),
        )


def _unlock_files(tools: ToolSet, service: LockService) -> None:
    @tools.tool(
        annotations=SETS,
        description="""Release several locks at once (for example everything lock_files gave you).

Each token is released on its own: results[i] says whether tokens[i] was released, or why not
(LOCK_NOT_FOUND, LOCK_EXPIRED). A bad token does not stop the others.""",
    )
    async def unlock_files(
        tokens: Annotated[list[str], Field(description="Tokens to release.", min_length=1, max_length=MAX_ITEMS)],
        workspace_id: WorkspaceArg = None,
    ) -> UnlockFilesResult:
        return (await service.unlock_many(workspace_id, tokens, caller=tools.caller())).said(MCP_WORDS)
