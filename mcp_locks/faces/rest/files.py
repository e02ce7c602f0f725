"""The file routes: read, write and delete a file's content, its metadata, listings, and resumable uploads."""

from __future__ import annotations

import os
import re
from functools import partial

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from mcp_locks.core.errors import InvalidArgument
from mcp_locks.core.models import (
    CompleteUploadRequest,
    FileInfo,
    FileList,
    FileStatus,
    FileWritten,
    UploadInfo,
    UploadRequest,
)
from mcp_locks.engine.file_service import ANY_VERSION, FileService
from mcp_locks.engine.lock_service import LockService
from mcp_locks.faces.rest.content import body_stream, file_headers, file_response
from mcp_locks.faces.rest.operation import Call, Op, header_token, int_param

__all__ = ["ops"]

_FILES = "/v1/workspaces/{workspace_id}/files"
_UPLOADS = "/v1/workspaces/{workspace_id}/uploads"
#: The headers a write (PUT, DELETE) takes.
_WRITE_HEADERS = (
    ("Lock-Token", "The token of your write lock covering the file."),
    ("If-Match", "Without a lock: the ETag (or version) you read, or * (the file must exist); 412 if it changed."),
    ("If-None-Match", "'*': create only (fails with 412 if the file exists)."),
)


#: One entity tag of an If-Match list: weak (W/) or strong, quoted.
_TAG = r'\s*(?:W/)?"[^"]*"\s*'
_TAG_LIST_RE = re.compile(rf"{_TAG}(?:,{_TAG})*")
_TAG_RE = re.compile(r'(W/)?"([^"]*)"')
#: The entity tags this server gives: the version (at most 18 digits: int() of more is refused), "-", a hash;
#: or a version alone ("7": that version, whatever its content).
_OUR_TAG_RE = re.compile(r"[0-9]{1,18}(?:-[0-9a-z]+)?")


def _preconditions(request: Request) -> tuple[int | None, tuple[str, ...] | None]:
    """The version a write expects, or the entity tags its current version must have.

    ``If-None-Match: *`` is version 0 (create only); ``If-Match: *`` is any current version (the file
    must exist); ``If-Match`` with entity tags compares each whole tag, strongly (RFC 9110: a weak tag
    never matches; ``"N"`` names version N); ``If-Match: N`` (a bare number) and ``?if_version=N`` give
    a version.
    """
    if request.headers.get("if-none-match", "").strip() == "*":
        return 0, None
    match = request.headers.get("if-match")
    if match is not None:
        value = match.strip()
        if value == "*":
            return None, (ANY_VERSION,)
        if value.isascii() and value.isdigit() and len(value) <= 18:  # int() refuses "²" and 4300+ digits
            return int(value), None
        return None, _entity_tags(value)
    raw = request.query_params.get("if_version")
    return (None if raw is None else int_param(raw, "if_version", 0)), None


def _entity_tags(value: str) -> tuple[str, ...]:
    """The strong tags of an If-Match list (weak ones never match); tags this server never gives are refused."""
    tags = _TAG_RE.findall(value) if _TAG_LIST_RE.fullmatch(value) else []
    if not tags or not all(_OUR_TAG_RE.fullmatch(tag) for _weak, tag in tags):
        raise InvalidArgument(
            "If-Match must be an ETag this server returned (or a version number, or *).",
            hint="Send the ETag header of the version you read.",
            details={"field": "if-match"},
        )
    return tuple(f'"{tag}"' for weak, tag in tags if not weak)


async def read_file(files: FileService, call: Call) -> Response:
    """The file's content, streamed, with its version headers (HEAD: the headers only)."""
    ws, meta, fd = await files.open(call.params["workspace_id"], call.params["node_id"],
                                    header_token(call.request), caller=call.caller)  # fmt: skip
    # The stream is file work on the workspace too: deleting it meanwhile cuts the download short.
    return file_response(fd, os.fstat(fd).st_size, file_headers(meta), head=call.request.method == "HEAD",
                         guard=partial(files.working, ws))  # fmt: skip


async def write_file(files: FileService, call: Call) -> Response:
    """Replace the file with the body: 201 if it was created."""
    r = call.request
    version, match = _preconditions(r)
    written = await files.write(
        call.params["workspace_id"], call.params["node_id"], body_stream(r), header_token(r),
        version, r.query_params.get("agent"), if_match=match, caller=call.caller,
    )  # fmt: skip
    return Response(written.model_dump_json(), status_code=201 if written.created else 200,
                    media_type="application/json", headers=file_headers(written.file))  # fmt: skip


async def delete_file(files: FileService, call: Call) -> BaseModel:
    """Delete the file."""
    r = call.request
    version, match = _preconditions(r)
    return await files.delete(
        call.params["workspace_id"], call.params["node_id"], header_token(r), version,
        r.query_params.get("agent"), if_match=match, caller=call.caller,
    )  # fmt: skip


async def file_info(files: FileService, call: Call) -> BaseModel:
    """The file's metadata and lock status."""
    return await files.info(call.params["workspace_id"], call.params["node_id"],
                            call.request.query_params.get("agent"), caller=call.caller)  # fmt: skip


async def list_files(files: FileService, call: Call) -> BaseModel:
    """A page of the workspace's files."""
    q = call.request.query_params
    return await files.list(call.params["workspace_id"], q.get("prefix", ""), q.get("cursor"),
                            int_param(q.get("limit"), "limit", 200), caller=call.caller)  # fmt: skip


async def create_upload(files: FileService, call: Call) -> BaseModel:
    """Start a resumable upload."""
    b: UploadRequest = call.body
    return await files.create_upload(call.params["workspace_id"], b.node_id, caller=call.caller)


async def upload_status(files: FileService, call: Call) -> BaseModel:
    """Which chunks of an upload arrived."""
    return await files.upload_status(call.params["workspace_id"], call.params["upload_id"], caller=call.caller)


async def put_chunk(files: FileService, call: Call) -> BaseModel:
    """Store one chunk of an upload, the raw body."""
    return await files.put_chunk(call.params["workspace_id"], call.params["upload_id"],
                                 int_param(call.params["index"], "chunk", 0), body_stream(call.request),
                                 caller=call.caller)  # fmt: skip


async def complete_upload(files: FileService, call: Call) -> BaseModel:
    """Write an upload's chunks as the file."""
    b: CompleteUploadRequest = call.body
    return await files.complete_upload(call.params["workspace_id"], call.params["upload_id"], b.node_id,
                                       b.sha256, b.token, b.if_version, b.agent, caller=call.caller)  # fmt: skip


async def abort_upload(files: FileService, call: Call) -> BaseModel:
    """Drop an upload; the answer is how it stood."""
    ws, uid = call.params["workspace_id"], call.params["upload_id"]
    info = await files.upload_status(ws, uid, caller=call.caller)
    await files.abort_upload(ws, uid, caller=call.caller)
    return info


def ops(service: LockService) -> list[Op]:
    """The file routes, bound to ``service``'s files."""
    return [*_content_ops(service.files), *_upload_ops(service.files)]


def _content_ops(files: FileService) -> list[Op]:
    return [
        Op("GET", _FILES, "list_files", "A page of files, by node_id.", partial(list_files, files), FileList,
           query=(("prefix", "string", "Only node_ids starting with this."), ("limit", "integer", "Page size, 1-1000."),
                  ("cursor", "string", "next_cursor of the last page.")), tags=("files",)),
        Op("GET", f"{_FILES}/{{node_id:path}}", "read_file",
           "The file's content; ETag, X-Version and X-Fence headers give its version. Refused (423) while another"
           " agent writes it, unless Lock-Token shows your own lock.", partial(read_file, files), FileInfo,
           raw_result=True, headers=(("Lock-Token", "Optional: your lock covering the file."),), tags=("files",)),
        Op("PUT", f"{_FILES}/{{node_id:path}}", "write_file",
           "Replace the file atomically with the body: under your write lock (Lock-Token) or a version check"
           " (If-Match / If-None-Match / ?if_version=N). 201 if created.", partial(write_file, files), FileWritten,
           raw_body=True, also=(201,),
           headers=_WRITE_HEADERS, query=(("if_version", "integer", "The version you expect (0 = create only)."),
                                          ("agent", "string", "Label shown as modified_by's label.")),
           tags=("files",)),
        Op("DELETE", f"{_FILES}/{{node_id:path}}", "delete_file", "Delete the file, under the same rules as PUT.",
           partial(delete_file, files), FileWritten, headers=_WRITE_HEADERS,
           query=(("if_version", "integer", "The version you expect."),
                  ("agent", "string", "Label shown as modified_by's label.")), tags=("files",)),
        Op("GET", "/v1/workspaces/{workspace_id}/file-info/{node_id:path}", "file_info",
           "Metadata, lock status, and whether you may read or write the file now.", partial(file_info, files),
           FileStatus, query=(("agent", "string", "Who asks, without keys; with a key only a label."),),
           tags=("files",)),
    ]  # fmt: skip


def _upload_ops(files: FileService) -> list[Op]:
    return [
        Op("POST", _UPLOADS, "create_upload", "Start a resumable upload for a large file.",
           partial(create_upload, files), UploadInfo, UploadRequest, status=201, tags=("files",)),
        Op("GET", f"{_UPLOADS}/{{upload_id}}", "upload_status", "Which chunks of an upload arrived.",
           partial(upload_status, files), UploadInfo, tags=("files",)),
        Op("PUT", f"{_UPLOADS}/{{upload_id}}/chunks/{{index}}", "put_chunk",
           "Send chunk n (0, 1, ...) as the raw body; resending replaces it.", partial(put_chunk, files),
           UploadInfo, raw_body=True, tags=("files",)),
        Op("POST", f"{_UPLOADS}/{{upload_id}}/complete", "complete_upload",
           "Check the sha256 and write the chunks as one atomic write, under the same rules as PUT.",
           partial(complete_upload, files), FileWritten, CompleteUploadRequest, tags=("files",)),
        Op("DELETE", f"{_UPLOADS}/{{upload_id}}", "abort_upload", "Drop an upload and its chunks.",
           partial(abort_upload, files), UploadInfo, tags=("files",)),
    ]  # fmt: skip
