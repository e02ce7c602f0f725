"""The real server plus no-op baselines (MCP tools and a REST route), for benchmarks on the same settings.

    python -m bench.server [--store memory|sqlite] [--data-dir DIR] [--auth]

Without ``--auth`` it serves with ``insecure_no_auth`` (loopback only). With
``--auth`` it checks API keys like a real deployment, with a fresh admin key it
prints on stderr as ``admin key: mlk_...`` (a throw-away key for a throw-away
data directory) before the ``listening on http://127.0.0.1:PORT`` line, which
it prints once it accepts connections.

Baselines: the MCP tools ``noop``, ``shape_lock`` and ``shape_unlock``; and
``POST``/``DELETE /v1/bench/noop``, a REST route inside the same app (so behind
the same guard: Host check, body limit, API key) that reads and parses the JSON
body like the real routes but answers a constant body the size of a lock grant
(POST) or of an unlock result (DELETE) without touching the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver.tools import Tool
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_locks import Settings, build_app
from mcp_locks.cli.runtime import tune_gc
from mcp_locks.core.keys import new_key
from mcp_locks.core.models import LockGrant, LockInfo, UnlockResult
from mcp_locks.faces.app import build_service
from mcp_locks.faces.mcp.tools import build_mcp, build_tools
from tests.servers import free_socket


def rest_noop(grant: LockGrant, released: UnlockResult) -> Callable[[Request], Awaitable[Response]]:
    """The REST baseline: read and parse the JSON body as the real routes do; answer a constant, engine-free."""
    grant_body = grant.model_dump_json().encode()
    released_body = released.model_dump_json().encode()

    async def noop(request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            return Response(b'{"error": "not an object"}', status_code=400, media_type="application/json")
        return Response(grant_body if request.method == "POST" else released_body, media_type="application/json")

    return noop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", choices=["memory", "sqlite"], default="sqlite")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--auth", action="store_true", help="check API keys (a fresh admin key is printed on stderr)")
    ap.add_argument("--no-audit", dest="audit", action="store_false", help="serve with the audit log off")
    a = ap.parse_args()
    data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="mcp-locks-bench-"))
    admin_key: str | None = None
    if a.auth:
        admin_key, _ = new_key("bench", (), "admin", time.time())
        settings = Settings(store=a.store, data_dir=data_dir, insecure_no_auth=False, admin_key=SecretStr(admin_key),
                            audit=a.audit)  # fmt: skip
    else:
        settings = Settings(store=a.store, data_dir=data_dir, insecure_no_auth=True, audit=a.audit)
    service = build_service(settings)

    async def noop() -> dict[str, bool]:
        return {"ok": True}

    baselines = [Tool.from_function(noop, description="Does nothing; the baseline for per-call cost.")]
    # Shape-matched baselines: the very schemas and argument validation of lock_file / unlock_file,
    # answering a constant result without touching the engine (isolates the SDK's per-shape cost).
    tools = {t.name: t for t in build_tools(service)}
    # Ids and token as long as real ones, so the constant answers weigh what real ones do.
    now = datetime.now(UTC)
    grant = LockGrant(
        lock_id="lk_" + "0" * 24,
        token="mlt_" + "0" * 43,
        workspace_id="default",
        node_id="bench/f0",
        mode="write",
        depth="node",
        owner="bench",
        fence=1,
        acquired_at=now,
        expires_at=now + timedelta(seconds=300),
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
    # First in the router (so no real route shadows it), behind the same middleware as every route.
    app.router.routes.insert(0, Route("/v1/bench/noop", rest_noop(grant, released), methods=["POST", "DELETE"]))
    sock = free_socket()
    if admin_key is not None:
        print(f"admin key: {admin_key}", file=sys.stderr, flush=True)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    tune_gc()
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)).run(sockets=[sock])


if __name__ == "__main__":
    main()
