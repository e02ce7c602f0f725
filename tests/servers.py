"""Real servers on free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp

from mcp_locks import Settings, build_app
from mcp_locks.core.clock import ManualClock
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.base import MemoryStore


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port (the kernel picks it, so parallel runs never collide)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(512)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn that leaves signals to the test runner and says when it is up."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = anyio.Event()

    def capture_signals(self) -> Any:  # type: ignore[override]
        return nullcontext()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()


#: Seconds a gracefully stopped test server gives connections still open (an event stream a test left open,
#: say) before it cancels them; a bound, so that a stuck stream cannot hang a test's teardown.
STOP_GRACE = 2.0


@asynccontextmanager
async def serve_app(app: ASGIApp, *, graceful: bool = False, **config: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields its base URL.

    By default the server is stopped at once, without the app's lifespan shutdown. With ``graceful`` it
    gives open connections :data:`STOP_GRACE` seconds and then runs that shutdown (which stops the
    service and closes its store) before this block exits, so that what the caller tears down next
    (a PostgreSQL schema, a folder) is no longer in use.
    """
    sock = free_socket()
    port = sock.getsockname()[1]
    if graceful:
        config.setdefault("timeout_graceful_shutdown", STOP_GRACE)
    server = _QuietServer(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            await server.up.wait()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            server.force_exit = not graceful
    sock.close()


@contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread of its own (for synchronous tests such as Hypothesis ones)."""
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


async def raw_request(
    url: str, method: str, target: bytes, headers: dict[str, str], body: bytes = b""
) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request with ``target`` exactly as given (no client normalises it); return status and body."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"{method} ".encode() + target + b" HTTP/1.1", f"Host: {host}:{port}".encode(), b"Connection: close"]
    head += [f"{k}: {v}".encode() for k, v in headers.items()]
    head.append(f"Content-Length: {len(body)}".encode())
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        with anyio.fail_after(10):
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


@dataclass
class KeyedServer:
    """A real server on a manual clock with an agent key and an admin key."""

    url: str
    service: LockService
    clock: ManualClock
    key: str
    admin: str


@asynccontextmanager
async def keyed_server(data_dir: Path, agent: str = "alice") -> AsyncIterator[KeyedServer]:
    """Serve a memory-store app whose leases and waits move only with the returned clock."""
    clock = ManualClock()
    service = LockService(MemoryStore(), clock=clock)
    async with serve_app(build_app(Settings(store="memory", data_dir=data_dir), service)) as url:
        key, _ = await service.create_key(agent, ["default"])
        admin, _ = await service.create_key("root", [], "admin")
        yield KeyedServer(url, service, clock, key, admin)
