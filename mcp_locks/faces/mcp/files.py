"""The file tools: read, write, delete and list a workspace's files under its locks."""

# No "from __future__ import annotations": tool signatures use Annotated types the SDK must evaluate.

import base64
import binascii
from typing import Annotated, Literal

from pydantic import Field

from mcp_locks.core.errors import InvalidArgument
from mcp_locks.core.models import FileContent, FileList, FileStatus, FileWritten
from mcp_locks.engine.file_service import FileService
from mcp_locks.faces.mcp.common import DESTRUCTIVE, READONLY, REMOVES, AgentArg, CursorArg, ToolSet, WorkspaceArg

__all__ = ["register"]

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


def register(tools: ToolSet, files: FileService) -> None:
    """read_file, write_file, delete_file, list_files, file_info."""
    _read_file(tools, files)
    _write_file(tools, files)
    _delete_file(tools, files)
    _list_files(tools, files)
    _file_info(tools, files)


def _read_file(tools: ToolSet, files: FileService) -> None:
    @tools.tool(
        annotations=READONLY,
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
        return await files.read(workspace_id, node_id, token, offset, length, caller=tools.caller())


def _write_file(tools: ToolSet, files: FileService) -> None:
    @tools.tool(
        annotations=DESTRUCTIVE,
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
            workspace_id, node_id, _decode(content, encoding), token, if_version, agent, caller=tools.caller()
        )


def _delete_file(tools: ToolSet, files: FileService) -> None:
    @tools.tool(
        annotations=REMOVES,
        description="""Delete a workspace file, under the same rules as write_file (a lock token or if_version).""",
    )
    async def delete_file(
        node_id: FileNodeArg,
        workspace_id: WorkspaceArg = None,
        token: FileTokenArg = None,
        if_version: IfVersionArg = None,
        agent: AgentArg = None,
    ) -> FileWritten:
        return await files.delete(workspace_id, node_id, token, if_version, agent, caller=tools.caller())


def _list_files(tools: ToolSet, files: FileService) -> None:
    @tools.tool(
        annotations=READONLY,
        description="""List the files of a workspace in path order, with their versions and who wrote them last.

Use prefix='reports/' for one folder. Pass next_cursor back as cursor for the next page.""",
    )
    async def list_files(
        workspace_id: WorkspaceArg = None,
        prefix: Annotated[str, Field(description="Only paths starting with this, e.g. 'reports/'.")] = "",
        cursor: CursorArg = None,
    ) -> FileList:
        return await files.list(workspace_id, prefix, cursor, caller=tools.caller())


def _file_info(tools: ToolSet, files: FileService) -> None:
    @tools.tool(
        annotations=READONLY,
        description="""May I edit this file now? A file's metadata (version, fence, who wrote it last) and its lock
status (holders, waiters), with may_read / may_write for you and advice on what to do next. Changes nothing.""",
    )
    async def file_info(node_id: FileNodeArg, workspace_id: WorkspaceArg = None, agent: AgentArg = None) -> FileStatus:
        return await files.info(workspace_id, node_id, agent, caller=tools.caller())


def _decode(content: str, encoding: str) -> bytes:
    """``content`` as bytes, or INVALID_ARGUMENT naming the field."""
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
