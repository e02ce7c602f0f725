"""File content over HTTP: a request body read piece by piece, a file streamed back, and its version headers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from mcp_locks.core.errors import LockError
from mcp_locks.core.models import FileInfo
from mcp_locks.core.records import FileMeta
from mcp_locks.faces.rest.operation import error_response

__all__ = ["body_stream", "file_headers", "file_response"]


async def body_stream(request: Request) -> AsyncIterator[bytes]:
    """The request body, piece by piece as it arrives (never gathered whole)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        piece = message.get("body", b"")
        if piece:
            yield piece
        if not message.get("more_body", False):
            return


def file_headers(m: FileInfo | FileMeta) -> dict[str, str]:
    """The headers that give a file's version: ETag, X-Version, X-Fence and (if known) X-Sha256."""
    return {
        "ETag": m.etag,
        "X-Version": str(m.version),
        "X-Fence": str(m.fence),
        **({"X-Sha256": m.sha256} if m.sha256 else {}),
    }


#: Work the stream runs as (the workspace's file work: deleting the workspace cancels it).
Guard = Callable[[], AbstractAsyncContextManager[None]]


class _FileResponse(StreamingResponse):
    """Streams an open file of known size; the descriptor is closed however the response ends."""

    def __init__(self, fd: int, size: int, headers: dict[str, str], head: bool, guard: Guard | None) -> None:
        self.fd = fd
        self.guard = guard

        async def pieces() -> AsyncIterator[bytes]:
            offset = 0
            while offset < size and not head:  # exactly the size announced, even if the file grows
                piece = await anyio.to_thread.run_sync(os.pread, fd, min(1 << 18, size - offset), offset)
                if not piece:
                    return
                offset += len(piece)
                yield piece

        super().__init__(pieces(), media_type="application/octet-stream",
                         headers={**headers, "Content-Length": str(size)})  # fmt: skip

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if self.guard is None:
                await super().__call__(scope, receive, send)
            else:
                async with self.guard():
                    await super().__call__(scope, receive, sending)
        except LockError as e:  # the workspace was deleted meanwhile (NOT_FOUND)
            if not started:
                await error_response(e)(scope, receive, send)
            # Else the body stops short of its Content-Length and the server closes the connection:
            # the client sees an incomplete download, never a complete-looking wrong one.
        finally:
            os.close(self.fd)


def file_response(
    fd: int, size: int, headers: dict[str, str], head: bool = False, guard: Guard | None = None
) -> Response:
    """Stream an open file (closed at the end, or when the client goes away); HEAD sends the headers only.

    With ``guard``, the stream runs inside it: if it ends the stream with a LockError, the client gets
    that error if nothing was sent yet, else a body cut short.
    """
    return _FileResponse(fd, size, headers, head, guard)
