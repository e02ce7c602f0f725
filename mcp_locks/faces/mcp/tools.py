"""The MCP face: tools that parse arguments, call the service and format results or coded errors."""

# No "from __future__ import annotations": tool signatures use local Annotated types the SDK must evaluate.

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

from mcp_locks.core.errors import Internal, InvalidArgument, LockError
from mcp_locks.core.keys import LOCAL, Identity
from mcp_locks.core.models import (
    AuditPage,
    FileContent,
    FileList,
    FileStatus,
    FileWritten,
    LockFilesResult,
    LockGrant,
    LockItem,
    LockPage,
    LockStatus,
    RenewResult,
    UnlockFilesResult,
    UnlockResult,
    WorkspaceInfo,
    WorkspaceList,
    invalid_from,
    unknown_field,
)
from mcp_locks.engine.arguments import MAX_ITEMS
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.auth import current_caller

__all__ = ["INSTRUCTIONS", "build_mcp", "build_tools", "error_result", "flat_schema"]

log = logging.getLogger("mcp_locks.mcp")
_F = TypeVar("_F", bound=Callable[..., Any])

INSTRUCTIONS = """\
mcp-locks coordinates edits to shared files between agents.
Before editing a shared file: lock_file(node_id, mode="write") -> keep the returned token secret ->
read, change and write the file -> unlock_file(token). Use mode="read" to read while keeping writers out.
Leases end after `timeout` seconds (default 300) unless you call renew_lock; a lock whose lease ended is
gone and your next call with its token fails with LOCK_EXPIRED. If a file is locked you get LOCKED:
retry with wait=30 to wait in line (first come, first served), or work on something else.
To take several locks, use lock_files (all or none; it never deadlocks). Send request_id to make a
lock call safe to retry. Every grant carries a `fence` number that grows with every grant; pass it
along with writes to systems that can reject an older fence.
Your key decides who you are (the owner of your locks) and which workspaces you reach; list_workspaces
shows them. A token works only with the key that took its lock.
Files: the workspace's files are kept here and the locks are enforced on them. Edit with
lock_file -> read_file(token) -> write_file(token) -> unlock_file, or optimistically with
read_file -> write_file(if_version=<version read>) retrying on VERSION_MISMATCH. file_info says whether
you may edit a file now.
Errors start with a stable CODE and say what to do next.
"""

WorkspaceArg = Annotated[
    str | None,
    Field(description="Workspace id (1-63 of a-z 0-9 _ -). Omit for your key's only workspace, else 'default'."),
]
NodeArg = Annotated[
    str,
    Field(description="Workspace-relative path of the file or folder, e.g. 'reports/q3.md' (no leading '/', no '..')."),
]
ModeArg = Annotated[
    Literal["read", "write", "shared", "exclusive"],
    Field(description="'write' (exclusive: to change the file) or 'read' (shared: to read it consistently)."),
]
DepthArg = Annotated[
    Literal["node", "tree"],
    Field(description="'node' locks this path only; 'tree' locks it and everything below it (a whole folder)."),
]
NoteArg = Annotated[
    str | None, Field(description="Optional short note shown to others, e.g. what you are doing.", max_length=1024)
]
AgentArg = Annotated[
    str | None,
    Field(
        description="Optional label shown beside the owner (your key's agent), e.g. which sub-agent or task.",
        max_length=64,
    ),
]
RequestIdArg = Annotated[
    str | None,
    Field(
        description="Optional id of this request (e.g. a UUID). Retrying with the same request_id returns the "
        "original result instead of taking a second lock.",
        max_length=128,
    ),
]
TokenArg = Annotated[str, Field(description="The secret token returned by lock_file / lock_files.")]


def error_result(err: LockError) -> CallToolResult:
    """A tool error whose text starts with the stable code, with the same body as REST in structuredContent."""
    return CallToolResult(
        is_error=True,
        content=[TextContent(type="text", text=err.text())],
        structured_content={"error": err.to_dict()},
    )


class _LockMCPServer(MCPServer[Any]):
    """MCPServer whose tool failures are always coded results, never tracebacks or pydantic dumps."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        tool = self._tool_manager.get_tool(name)
        if tool is not None and isinstance(arguments, dict):
            bad = unknown_field(name, arguments, list(tool.parameters.get("properties", {})))
            if bad is not None:
                return error_result(bad)
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, LockError):
                return error_result(cause)
            if isinstance(cause, ValidationError):
                return error_result(invalid_from(name, cause))
            if self._tool_manager.get_tool(name) is None:
                names = ", ".join(t.name for t in self._tool_manager.list_tools())
                return error_result(
                    InvalidArgument(f"there is no tool named '{name[:64]}'.", hint=f"Available tools: {names}.")
                )
            log.error("tool %s failed", name, exc_info=cause or exc)
            return error_result(
                Internal("the server failed to handle this call.", hint="Retry; if it persists, report it.")
            )


def build_mcp(
    service: LockService,
    *,
    name: str = "mcp-locks",
    version: str = "",
    extra_tools: Sequence[Tool] = (),
    local: Identity = LOCAL,
) -> MCPServer[Any]:
    """An MCP server whose tools call ``service`` (plus ``extra_tools``, e.g. a benchmark's baseline)."""
    tools = [*build_tools(service, local=local), *extra_tools]
    # --- resources (locks://...) and their subscriptions, both protocol eras: see _resources.py
    from mcp.server.subscriptions import InMemorySubscriptionBus

    from mcp_locks.faces.mcp.resources import register_resources

    bus = InMemorySubscriptionBus()
    server = _LockMCPServer(name, version=version, instructions=INSTRUCTIONS, tools=tools, subscriptions=bus)
    register_resources(server, service, bus, local=local)
    return server


def build_tools(service: LockService, *, local: Identity = LOCAL) -> list[Tool]:
    """The lock tools, bound to ``service``.

    Each call acts for the key its HTTP request carried (the guard verified it),
    or for ``local`` on transports without HTTP (in-memory, stdio).
    """
    lim = service.limits
    tools: list[Tool] = []

    def caller() -> Identity:
        return current_caller(local)

    def tool(description: str, annotations: ToolAnnotations) -> Callable[[_F], _F]:
        def register(fn: _F) -> _F:
            t = Tool.from_function(fn, description=description, annotations=annotations)
            # Arguments are validated by the pydantic model; the schema is what clients read and walk.
            t.parameters = flat_schema(t.parameters)
            if t.fn_metadata.output_schema is not None:
                t.fn_metadata.output_schema = flat_schema(t.fn_metadata.output_schema)
            tools.append(t)
            return fn

        return register

    TimeoutArg = Annotated[
        float,
        Field(
            description=f"Lease length in seconds (1-{lim.max_timeout:g}). The lock is released automatically when "
            "it runs out, unless you call renew_lock.",
            ge=1,
            le=lim.max_timeout,
        ),
    ]
    WaitArg = Annotated[
        float,
        Field(
            description=f"Seconds to wait in line if the file is locked (0-{lim.max_wait:g}). 0 = fail at once "
            "with LOCKED.",
            ge=0,
            le=lim.max_wait,
        ),
    ]
    readonly = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
    changes = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

    @tool(
        annotations=changes,
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
        return await with_progress(
            service,
            ctx,
            workspace_id,
            node_id,
            who := caller(),
            agent,
            wait,
            lambda: service.lock(
                workspace_id, node_id, mode, timeout, wait, depth, note, agent, request_id, token, caller=who
            ),
        )

    @tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
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
        return await service.unlock(workspace_id, token, node_id, caller=caller())

    @tool(
        annotations=changes,
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
        return await service.renew(workspace_id, token, timeout, caller=caller())

    @tool(
        annotations=readonly,
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
        return await service.status(workspace_id, node_id, token, caller=caller())

    @tool(
        annotations=readonly,
        description="""List the locks held in a workspace, optionally only under a path prefix or of one owner.

Returns up to `limit` locks ordered by node_id and next_cursor; pass next_cursor as cursor to get the next page.""",
    )
    async def list_locks(
        workspace_id: WorkspaceArg = None,
        prefix: Annotated[str, Field(description="Only node_ids starting with this text, e.g. 'reports/'.")] = "",
        owner: Annotated[str | None, Field(description="Only locks held by this agent.")] = None,
        limit: Annotated[int, Field(description="Page size, 1-1000.", ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
    ) -> LockPage:
        return await service.list_locks(workspace_id, prefix, owner, limit, cursor, caller=caller())

    @tool(
        annotations=readonly,
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
        limit: Annotated[int, Field(description="Page size, 1-1000.", ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
    ) -> AuditPage:
        return await service.observe.audit_log(workspace_id, node_id, agent, since, limit, cursor, caller=caller())

    @tool(
        annotations=changes,
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
        return await with_progress(
            service,
            ctx,
            workspace_id,
            first,
            who := caller(),
            agent,
            wait,
            lambda: service.lock_many(workspace_id, items, timeout, wait, note, agent, request_id, caller=who),
        )

    @tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
        description="""Release several locks at once (for example everything lock_files gave you).

Each token is released on its own: results[i] says whether tokens[i] was released, or why not
(LOCK_NOT_FOUND, LOCK_EXPIRED). A bad token does not stop the others.""",
    )
    async def unlock_files(
        tokens: Annotated[list[str], Field(description="Tokens to release.", min_length=1, max_length=MAX_ITEMS)],
        workspace_id: WorkspaceArg = None,
    ) -> UnlockFilesResult:
        return await service.unlock_many(workspace_id, tokens, caller=caller())

    @tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
        description="""Create a workspace: a separate set of locks, e.g. one per project or repository.

ALREADY_EXISTS means it is there already: just use it. The workspace 'default' always exists.""",
    )
    async def create_workspace(
        workspace_id: Annotated[str, Field(description="New workspace id: 1-63 of a-z 0-9 _ -.")],
        description: Annotated[str | None, Field(description="What the workspace is for.", max_length=1024)] = None,
    ) -> WorkspaceInfo:
        return await service.create_workspace(workspace_id, description, caller=caller())

    @tool(
        annotations=readonly,
        description="""List the workspaces your key reaches (every workspace for an admin key), with their descriptions.

Pass one of these ids as workspace_id to the other tools; a key bound to one workspace uses it by default.""",
    )
    async def list_workspaces() -> WorkspaceList:
        return WorkspaceList(workspaces=await service.list_workspaces(caller=caller()))

    @tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
        description="""Admin only: break another agent's lock, e.g. one held by a crashed or stuck agent.

The lock is released at once and waiters are served; its holder's next call with the token fails with
LOCK_BROKEN, carrying your reason. Prefer waiting for the lease to run out when you can.""",
    )
    async def force_unlock(
        lock_id: Annotated[str, Field(description="The lock_id shown by list_locks or check_lock_status.")],
        reason: Annotated[str, Field(description="Why; the holder reads it.", min_length=1, max_length=1024)],
        workspace_id: WorkspaceArg = None,
    ) -> UnlockResult:
        return await service.force_unlock(workspace_id, lock_id, reason, caller=caller())

    files = service.files
    FileNodeArg = Annotated[str, Field(description="Workspace-relative path of the file, e.g. 'reports/q3.md'.")]
    FileTokenArg = Annotated[
        str | None, Field(description="The token of your lock covering the file (a write lock to change it).")
    ]
    IfVersionArg = Annotated[
        int | None,
        Field(
            description="Without a lock: the version you read (from read_file or file_info); 0 = create only. The "
            "call fails with VERSION_MISMATCH if someone wrote since.",
            ge=0,
        ),
    ]

    @tool(
        annotations=readonly,
        description=f"""Read a workspace file (up to {files.limits.max_read} bytes per call; page with offset).

Returns the content (text, or base64 for binary) and the file's metadata: `version` (pass it as if_version
to write without a lock) and `fence`. Refused with LOCKED while another agent holds a write lock on it,
unless you pass the token of your own lock. For a read nobody can change under you, lock_file(mode='read')
first and pass its token.""",
    )
    async def read_file(
        node_id: FileNodeArg,
        workspace_id: WorkspaceArg = None,
        token: FileTokenArg = None,
        offset: Annotated[int, Field(description="Byte offset to start at.", ge=0)] = 0,
        length: Annotated[
            int | None, Field(description="Most bytes to return (default: all, up to the cap).", ge=0)
        ] = None,
    ) -> FileContent:
        return await files.read(workspace_id, node_id, token, offset, length, caller=caller())

    @tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
        description="""Write a whole workspace file atomically (readers see the old or the new content, never a mix).

Two safe ways, and one of them is required (a blind write is refused):
- Locked: lock_file(node_id, mode='write') -> write_file(..., token=<its token>) -> unlock_file. If your lease
  ran out or someone newer wrote, you get LOCK_EXPIRED / LOCK_BROKEN / STALE_FENCE and the file is untouched.
- Optimistic: read_file -> change -> write_file(..., if_version=<the version you read>; 0 = create). On
  VERSION_MISMATCH read again, redo your change and retry.
LOCKED means another agent holds a lock on the file: wait for it (lock_file with wait=30).
Returns the new version and fence. Large files: use the REST API (PUT, or a resumable upload).""",
    )
    async def write_file(
        node_id: FileNodeArg,
        content: Annotated[str, Field(description="The new content: text, or base64 if encoding='base64'.")],
        workspace_id: WorkspaceArg = None,
        encoding: Annotated[Literal["utf-8", "base64"], Field(description="How content is encoded.")] = "utf-8",
        token: FileTokenArg = None,
        if_version: IfVersionArg = None,
        agent: AgentArg = None,
    ) -> FileWritten:
        return await files.write(
            workspace_id, node_id, _decode(content, encoding), token, if_version, agent, caller=caller()
        )

    @tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
        description="""Delete a workspace file, under the same rules as write_file (a lock token or if_version).""",
    )
    async def delete_file(
        node_id: FileNodeArg,
        workspace_id: WorkspaceArg = None,
        token: FileTokenArg = None,
        if_version: IfVersionArg = None,
        agent: AgentArg = None,
    ) -> FileWritten:
        return await files.delete(workspace_id, node_id, token, if_version, agent, caller=caller())

    @tool(
        annotations=readonly,
        description="""List the files of a workspace in path order, with their versions and who wrote them last.

Use prefix='reports/' for one folder. Pass next_cursor back as cursor for the next page.""",
    )
    async def list_files(
        workspace_id: WorkspaceArg = None,
        prefix: Annotated[str, Field(description="Only paths starting with this, e.g. 'reports/'.")] = "",
        cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
    ) -> FileList:
        return await files.list(workspace_id, prefix, cursor, caller=caller())

    @tool(
        annotations=readonly,
        description="""May I edit this file now? A file's metadata (version, fence, who wrote it last) and its lock
status (holders, waiters), with may_read / may_write for you and advice on what to do next. Changes nothing.""",
    )
    async def file_info(node_id: FileNodeArg, workspace_id: WorkspaceArg = None, agent: AgentArg = None) -> FileStatus:
        return await files.info(workspace_id, node_id, agent, caller=caller())

    return tools


def _decode(content: str, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(
                "content is not valid base64.", hint="Send text with encoding='utf-8'.", details={"field": "content"}
            ) from None
    try:
        return content.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("content must be valid UTF-8 text.", details={"field": "content"}) from None


#: Seconds between progress notifications while a lock call waits in line (the clients' idle timeouts are longer).
PROGRESS_EVERY = 5.0

_R = TypeVar("_R")


async def with_progress(
    service: LockService,
    ctx: Context[Any, Any] | None,
    workspace_id: str | None,
    node_id: str,
    caller: Identity,
    agent: str | None,
    wait: float,
    call: Callable[[], Awaitable[_R]],
) -> _R:
    """Run a lock call; while it waits, tell a client that asked for progress where it stands, every 5 s.

    The message gives the place in line, the current holders and the seconds waited;
    ``progress`` is the seconds waited and ``total`` the ``wait`` asked for. Clients
    that did not ask for progress get nothing (the SDK drops it).
    """
    if ctx is None or wait <= 0:
        return await call()
    clock = service.clock
    start = clock.now()
    me = caller.agent if caller.authenticated else agent

    async def report() -> None:
        while True:
            await clock.wait(anyio.Event(), clock.now() + PROGRESS_EVERY)
            waited = clock.now() - start
            try:
                st = await service.status(workspace_id, node_id, caller=caller)
            except LockError:
                continue
            mine = [w.position for w in st.waiters if me is not None and w.owner == me]
            place = f"position {mine[0]} in line" if mine else f"{len(st.waiters)} waiting"
            holders = ", ".join(f"{h.owner} until {h.expires_at:%H:%M:%SZ}" for h in (st.holders + st.covering)[:3])
            msg = f"waiting for '{node_id}': {place}; held by {holders or 'nobody'}; waited {waited:.0f} s of {wait:g}"
            await ctx.report_progress(waited, wait, msg)

    # The reporter runs in the service's task group, not a local one: leaving a local group is
    # a point where a cancellation could land after the grant came back (and lose it), and a
    # failing report must never cut the wait short. Cancelling its scope does not wait.
    scope = service.background(report, "progress report")
    try:
        return await call()
    finally:
        scope.cancel()


def flat_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same JSON schema with ``$ref`` inlined, ``anyOf [X, null]`` as ``type: [X, null]`` and no titles.

    Clients validate every structured result against the output schema, and the
    modern HTTP transport walks the input schema on every call; this equivalent
    form is ~25-45% cheaper for both and reads more easily. Only simple
    nullables are rewritten; anything else is kept.
    """
    defs: dict[str, Any] = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node and node["$ref"].startswith("#/$defs/"):
            target = defs[node["$ref"].removeprefix("#/$defs/")]
            return walk({**target, **{k: v for k, v in node.items() if k != "$ref"}})
        out = {k: walk(v) for k, v in node.items() if k not in ("$defs", "title")}
        any_of = out.get("anyOf")
        if isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of:
            other = next(x for x in any_of if x != {"type": "null"})
            if isinstance(other, dict) and isinstance(other.get("type"), str):
                merged = {**other, **{k: v for k, v in out.items() if k != "anyOf"}}
                merged["type"] = [other["type"], "null"]
                if "enum" in other:
                    merged["enum"] = [*other["enum"], None]
                return merged
        return out

    result: dict[str, Any] = walk(schema)
    return result
