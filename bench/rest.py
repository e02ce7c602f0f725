"""REST lock+unlock vs a no-op route, and the cost of checking API keys on MCP calls.

    python -m bench.rest [--calls 2000] [--rounds 5] [--store sqlite|memory]

Two parts, each against bench/server.py processes with the durable SQLite
store (the default), and a client in this process making calls one after another.

1. REST, on one server with ``--auth`` (API keys checked, as deployed), one
   keep-alive HTTP client sending ``Authorization: Bearer <admin key>``. Per
   round, two series of ``--calls`` requests: no-op pairs ``POST`` then
   ``DELETE /v1/bench/noop`` (a route inside the same app, behind the same
   guard, that parses the body but touches no engine and answers a constant
   body the size of the real one), and real pairs ``POST
   /v1/workspaces/default/nodes/bench/fN/lock`` ``{"mode": "write", "timeout":
   300}`` then ``DELETE`` of the same path with the ``Lock-Token`` header.
   Target: lock/noop >= 0.9.

2. Key checking on MCP: lock_file+unlock_file (bench/mcp_http.py's
   ``rate_lock``) against a server with ``--auth`` and one without (
   ``insecure_no_auth``), each through its own MCP client built the same way
   (the SDK's default HTTP client; only the Authorization header differs).
   Target: 1 - authed/unauthed <= 0.05.

   The two servers run at the same time and their rounds alternate, rather
   than one server after the other: the difference sought is a few percent,
   smaller than the drift of a shared machine over the minutes a run takes
   (other processes, CPU frequency), and alternating rounds spreads that drift
   over both series alike. Only one series runs at a time; the other server
   sits idle in its event loop meanwhile, costing nothing measurable. Both
   servers are started fresh for this part (the part-1 server is stopped), so
   their databases hold the same history.

In both parts the series within a round swap order every round (so neither
always runs first), and both are warmed up first (200 calls each). One JSON
line per round, then one JSON summary: medians in calls/s, ratios, and the
machine. Only loopback addresses are used; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from ._proc import BenchServer, bench_server
from .mcp_http import rate_lock

NOOP_PATH = "/v1/bench/noop"
LOCK_BODY = {"mode": "write", "timeout": 300}
WARMUP = 200
REST_RATIO_MIN = 0.9
AUTH_COST_MAX = 0.05


def lock_paths(real: bool) -> list[str]:
    """The 64 paths a series cycles through (one, 64 times over, for the no-op)."""
    if real:
        return [f"/v1/workspaces/default/nodes/bench/f{i}/lock" for i in range(64)]
    return [NOOP_PATH] * 64


async def rate_rest(h: httpx2.AsyncClient, calls: int, paths: list[str]) -> float:
    """HTTP requests per second for ``calls // 2`` POST+DELETE pairs over ``paths``."""
    t0 = time.perf_counter()
    for i in range(calls // 2):
        path = paths[i % len(paths)]
        r = await h.post(path, json=LOCK_BODY)
        assert r.status_code == 200, r.text
        token = r.json()["token"]  # the no-op answers a grant-shaped body too
        r = await h.delete(path, headers={"Lock-Token": token})
        assert r.status_code == 200, r.text
    return (calls // 2 * 2) / (time.perf_counter() - t0)


async def alternate(
    first: Callable[[], Awaitable[float]], second: Callable[[], Awaitable[float]], swap: bool
) -> tuple[float, float]:
    """Run both series, ``second`` first when ``swap``; return their rates as (first, second)."""
    if swap:
        b = await second()
        return await first(), b
    a = await first()
    return a, await second()


async def run_rest(srv: BenchServer, calls: int, rounds: int) -> dict[str, float]:
    noop_paths, real_paths = lock_paths(False), lock_paths(True)
    noop: list[float] = []
    lock: list[float] = []
    headers = {"Authorization": f"Bearer {srv.key}"}
    async with httpx2.AsyncClient(base_url=srv.url, headers=headers, timeout=30, trust_env=False) as h:
        await rate_rest(h, WARMUP, noop_paths)
        await rate_rest(h, WARMUP, real_paths)
        for i in range(rounds):
            n, m = await alternate(
                lambda: rate_rest(h, calls, noop_paths), lambda: rate_rest(h, calls, real_paths), i % 2 == 1
            )
            noop.append(n)
            lock.append(m)
            print(
                json.dumps(
                    {"part": "rest", "round": i + 1, "noop": round(n), "lock": round(m), "ratio": round(m / n, 3)}
                )
            )
    n, m = statistics.median(noop), statistics.median(lock)
    return {"noop_calls_per_s": n, "lock_unlock_calls_per_s": m, "ratio_vs_noop": m / n}


def mcp_client(url: str, key: str | None) -> tuple[httpx2.AsyncClient, Client]:
    """An MCP client on ``url`` over the SDK's default HTTP client, sending ``key`` if given."""
    h = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"} if key is not None else None)
    return h, Client(streamable_http_client(f"{url}/mcp", http_client=h))


async def run_auth_cost(authed: BenchServer, plain: BenchServer, calls: int, rounds: int) -> dict[str, float]:
    with_key: list[float] = []
    without: list[float] = []
    ha, ca = mcp_client(authed.url, authed.key)
    hp, cp = mcp_client(plain.url, None)
    async with ha, hp, ca, cp:
        await rate_lock(ca, WARMUP)
        await rate_lock(cp, WARMUP)
        for i in range(rounds):
            p, a = await alternate(lambda: rate_lock(cp, calls), lambda: rate_lock(ca, calls), i % 2 == 1)
            without.append(p)
            with_key.append(a)
            print(
                json.dumps(
                    {
                        "part": "mcp_auth",
                        "round": i + 1,
                        "no_auth": round(p),
                        "auth": round(a),
                        "cost": round(1 - a / p, 3),
                    }
                )
            )
    p, a = statistics.median(without), statistics.median(with_key)
    return {"no_auth_calls_per_s": p, "auth_calls_per_s": a, "auth_cost": 1 - a / p}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "mcp": version("mcp"),
        "mcp_locks": version("mcp-locks"),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000, help="calls per series per round (default 2000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    a = ap.parse_args()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with bench_server("--auth", "--store", a.store) as srv:
        if srv.key is None:
            raise RuntimeError("the --auth bench server printed no admin key")
        rest = anyio.run(run_rest, srv, a.calls, a.rounds)
    with bench_server("--auth", "--store", a.store) as authed, bench_server("--store", a.store) as plain:
        if authed.key is None:
            raise RuntimeError("the --auth bench server printed no admin key")
        auth = anyio.run(run_auth_cost, authed, plain, a.calls, a.rounds)
    summary = {
        "part": "summary",
        "date": started,
        "calls": a.calls,
        "rounds": a.rounds,
        "store": a.store,
        "rest": {k: round(v, 3) for k, v in rest.items()}
        | {"target_min": REST_RATIO_MIN, "ok": rest["ratio_vs_noop"] >= REST_RATIO_MIN},
        "mcp_auth": {k: round(v, 3) for k, v in auth.items()}
        | {"target_max": AUTH_COST_MAX, "ok": auth["auth_cost"] <= AUTH_COST_MAX},
        "machine": machine(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
