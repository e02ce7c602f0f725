"""The real server plus one no-op tool, for benchmarks that need a baseline on the same SDK settings.

    python -m bench.server [--store memory|sqlite] [--data-dir DIR]

Prints ``listening on http://127.0.0.1:PORT`` on stderr once it accepts connections.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import uvicorn

from mcp_locks import Settings, build_app, build_mcp, build_service
from mcp_locks._runtime import tune_gc
from tests.servers import free_socket


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", choices=["memory", "sqlite"], default="sqlite")
    ap.add_argument("--data-dir", type=Path, default=None)
    a = ap.parse_args()
    data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="mcp-locks-bench-"))
    settings = Settings(store=a.store, data_dir=data_dir)
    service = build_service(settings)
    mcp = build_mcp(service)

    @mcp.tool(description="Does nothing; the baseline for per-call cost.")
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    app = build_app(settings, service, mcp=mcp)
    sock = free_socket()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    tune_gc()
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)).run(sockets=[sock])


if __name__ == "__main__":
    main()
