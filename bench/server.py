"""The real server plus one no-op tool, for benchmarks that need a baseline on the same SDK settings.

    python -m bench.server [--store memory|sqlite] [--data-dir DIR]

Prints ``listening on http://127.0.0.1:PORT`` on stderr once it accepts connections.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver.tools import Tool

from mcp_locks import LockGrant, LockInfo, Settings, UnlockResult, build_app, build_mcp, build_service
from mcp_locks._mcp import build_tools
from mcp_locks._runtime import tune_gc
from tests.servers import free_socket


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", choices=["memory", "sqlite"], default="sqlite")
    ap.add_argument("--data-dir", type=Path, default=None)
    a = ap.parse_args()
    data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="mcp-locks-bench-"))
    settings = Settings(store=a.store, data_dir=data_dir, insecure_no_auth=True)
    service = build_service(settings)

    async def noop() -> dict[str, bool]:
        return {"ok": True}

    baselines = [Tool.from_function(noop, description="Does nothing; the baseline for per-call cost.")]
    # Shape-matched baselines: the very schemas and argument validation of lock_file / unlock_file,
    # answering a constant result without touching the engine (isolates the SDK's per-shape cost).
    tools = {t.name: t for t in build_tools(service)}
    grant = LockGrant(
        lock_id="lk_0",
        token="mlt_0",
        workspace_id="default",
        node_id="bench/x",
        mode="write",
        depth="node",
        owner="bench",
        fence=1,
        acquired_at=datetime.now(UTC),
        expires_at=datetime.now(UTC),
        timeout=300,
        waited_ms=0,
    )
    released = UnlockResult(
        workspace_id="default",
        released=LockInfo(**grant.model_dump(exclude={"token", "workspace_id", "waited_ms", "replayed"})),
        held_ms=1,
    )

    async def const_grant(**_: Any) -> LockGrant:
        return grant

    async def const_released(**_: Any) -> UnlockResult:
        return released

    baselines.append(tools["lock_file"].model_copy(update={"name": "shape_lock", "fn": const_grant}))
    baselines.append(tools["unlock_file"].model_copy(update={"name": "shape_unlock", "fn": const_released}))
    mcp = build_mcp(service, extra_tools=baselines)
    app = build_app(settings, service, mcp=mcp)
    sock = free_socket()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    tune_gc()
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)).run(sockets=[sock])


if __name__ == "__main__":
    main()
