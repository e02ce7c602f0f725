"""REST lock+unlock vs a no-op route, and the cost of checking API keys on MCP calls.

    python -m bench.rest [--calls 2000] [--rounds 5] [--block 50] [--store sqlite|memory]

Both parts run against bench/server.py processes with the durable SQLite store
(the default), and a client in this process making calls one after another.

1. REST, on one server with ``--auth`` (API keys checked, as deployed), one
   keep-alive HTTP client sending ``Authorization: Bearer <admin key>``. Two
   series: no-op pairs ``POST`` then ``DELETE /v1/bench/noop`` (a route inside
   the same app, behind the same guard, that parses the body but touches no
   engine and answers a constant body the size of the real one), and real pairs
   ``POST /v1/workspaces/default/nodes/bench/fN/lock`` ``{"mode": "write",
   "timeout": 300}`` then ``DELETE`` of the same path with the ``Lock-Token``
   header. Target: lock/noop >= 0.9.

2. Key checking on MCP: lock_file+unlock_file against a server with ``--auth``
   and one without (``insecure_no_auth``), each through its own MCP client built
   the same way (the SDK's default HTTP client; only the Authorization header
   differs). Target: 1 - authed/unauthed <= 0.05. Both servers are fresh, so
   their databases hold the same history.

3. The key check itself, in-process: microseconds the guard spends on a known
   key and on a key seen for the first time, set beside the MCP call time of
   part 2. Parts 1 and 2 resolve a few percent only roughly on a shared 2-core
   machine; this one is exact.

Within each round the two series run in alternating blocks of ``--block``
pairs (the other series first every other block), so drift of the machine
(other processes, CPU frequency) falls on both alike; the figures are medians
over rounds of per-round rates and ratios. Both series are warmed up first
(200 calls each). One JSON line per round, then one JSON summary with the
machine. Only loopback addresses are used; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from ._proc import BenchServer, bench_server

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


async def time_rest(h: httpx2.AsyncClient, pairs: int, paths: list[str], start: int = 0) -> float:
    """Seconds for ``pairs`` POST+DELETE pairs over ``paths``."""
    t0 = time.perf_counter()
    for i in range(start, start + pairs):
        path = paths[i % len(paths)]
        r = await h.post(path, json=LOCK_BODY)
        assert r.status_code == 200, r.text
        token = r.json()["token"]  # the no-op answers a grant-shaped body too
        r = await h.delete(path, headers={"Lock-Token": token})
        assert r.status_code == 200, r.text
    return time.perf_counter() - t0


async def time_mcp(c: Client, pairs: int, start: int = 0) -> float:
    """Seconds for ``pairs`` lock_file+unlock_file calls."""
    t0 = time.perf_counter()
    for i in range(start, start + pairs):
        r = await c.call_tool("lock_file", {"node_id": f"bench/f{i % 64}"})
        assert r.structured_content is not None, r.content
        r = await c.call_tool("unlock_file", {"token": r.structured_content["token"]})
        assert not r.is_error
    return time.perf_counter() - t0


async def interleaved(
    a: Callable[[int, int], Awaitable[float]], b: Callable[[int, int], Awaitable[float]], calls: int, block: int
) -> tuple[float, float]:
    """Calls per second of two series run in alternating blocks of ``block`` pairs (``calls`` calls each).

    Alternating small blocks, and starting with the other series every block, puts both
    series through the same moments of a drifting machine, so their ratio is steady
    even when the absolute rates wander from round to round.
    """
    ta = tb = 0.0
    done = 0
    pairs = calls // 2
    while done < pairs:
        n = min(block, pairs - done)
        if (done // block) % 2:
            tb += await b(n, done)
            ta += await a(n, done)
        else:
            ta += await a(n, done)
            tb += await b(n, done)
        done += n
    return 2 * pairs / ta, 2 * pairs / tb


async def run_rest(srv: BenchServer, calls: int, rounds: int, block: int) -> dict[str, float]:
    noop_paths, real_paths = lock_paths(False), lock_paths(True)
    noop: list[float] = []
    lock: list[float] = []
    headers = {"Authorization": f"Bearer {srv.key}"}
    async with httpx2.AsyncClient(base_url=srv.url, headers=headers, timeout=30, trust_env=False) as h:
        await time_rest(h, WARMUP, noop_paths)
        await time_rest(h, WARMUP, real_paths)
        for i in range(rounds):
            n, m = await interleaved(
                lambda k, s: time_rest(h, k, noop_paths, s), lambda k, s: time_rest(h, k, real_paths, s), calls, block
            )
            noop.append(n)
            lock.append(m)
            print(
                json.dumps(
                    {"part": "rest", "round": i + 1, "noop": round(n), "lock": round(m), "ratio": round(m / n, 3)}
                )
            )
    ratios = [m / n for n, m in zip(noop, lock, strict=True)]
    return {
        "noop_calls_per_s": statistics.median(noop),
        "lock_unlock_calls_per_s": statistics.median(lock),
        "ratio_vs_noop": statistics.median(ratios),
    }


def mcp_client(url: str, key: str | None) -> tuple[httpx2.AsyncClient, Client]:
    """An MCP client on ``url`` over the SDK's default HTTP client, sending ``key`` if given."""
    h = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"} if key is not None else None)
    return h, Client(streamable_http_client(f"{url}/mcp", http_client=h))


async def run_auth_cost(
    authed: BenchServer, plain: BenchServer, calls: int, rounds: int, block: int
) -> dict[str, float]:
    with_key: list[float] = []
    without: list[float] = []
    ha, ca = mcp_client(authed.url, authed.key)
    hp, cp = mcp_client(plain.url, None)
    async with ha, hp, ca, cp:
        await time_mcp(ca, WARMUP)
        await time_mcp(cp, WARMUP)
        for i in range(rounds):
            p, a = await interleaved(lambda k, s: time_mcp(cp, k, s), lambda k, s: time_mcp(ca, k, s), calls, block)
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
    costs = [1 - a / p for p, a in zip(without, with_key, strict=True)]
    return {
        "no_auth_calls_per_s": statistics.median(without),
        "auth_calls_per_s": statistics.median(with_key),
        "auth_cost": statistics.median(costs),
    }


async def key_check_us(n: int = 20_000) -> dict[str, float]:
    """Microseconds per request that checking keys adds, measured in-process on a SQLite store.

    ``guard_*``: the whole guard (host check, body limit, key check, auth context)
    around an app that answers at once, with keys checked and without;
    ``key_check_us`` is their difference, the cost every authenticated request
    pays; ``cold_key_us`` is the first check of a key (store lookup and digest compare).
    """
    from mcp_locks.engine.lock_service import LockService
    from mcp_locks.faces.auth import Guard, KeyVerifier
    from mcp_locks.stores.sqlite import SqliteStore

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def per_request(guard: Guard, headers: list[tuple[bytes, bytes]]) -> float:
        scope = {"type": "http", "path": "/mcp", "method": "POST", "headers": headers}
        for _ in range(200):
            await guard(scope, receive, send)
        t0 = time.perf_counter()
        for _ in range(n):
            await guard(scope, receive, send)
        return (time.perf_counter() - t0) / n * 1e6

    with tempfile.TemporaryDirectory(prefix="mcp-locks-bench-") as d:
        async with LockService(SqliteStore(Path(d) / "locks.db")) as svc:
            key, _ = await svc.create_key("bench", ["default"])
            host = [(b"host", b"127.0.0.1:8765")]
            verifier = KeyVerifier(svc.store)
            with_key = await per_request(
                Guard(app, verifier=verifier, loopback_only=True, max_body=1 << 20),
                [*host, (b"authorization", f"Bearer {key}".encode())],
            )
            without = await per_request(Guard(app, verifier=None, loopback_only=True, max_body=1 << 20), host)
            t0 = time.perf_counter()
            for _ in range(n // 10):
                await KeyVerifier(svc.store).verify_token(key)
            cold = (time.perf_counter() - t0) / (n // 10) * 1e6
    return {"guard_with_keys_us": with_key, "guard_without_us": without, "key_check_us": with_key - without,
            "cold_key_us": cold}  # fmt: skip


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
    ap.add_argument("--block", type=int, default=50, help="pairs per alternating block (default 50)")
    a = ap.parse_args()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with bench_server("--auth", "--store", a.store) as srv:
        if srv.key is None:
            raise RuntimeError("the --auth bench server printed no admin key")
        rest = anyio.run(run_rest, srv, a.calls, a.rounds, a.block)
    with bench_server("--auth", "--store", a.store) as authed, bench_server("--store", a.store) as plain:
        if authed.key is None:
            raise RuntimeError("the --auth bench server printed no admin key")
        auth = anyio.run(run_auth_cost, authed, plain, a.calls, a.rounds, a.block)
    check = anyio.run(key_check_us)
    per_call_us = 1e6 / auth["auth_calls_per_s"]
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
        "key_check": {k: round(v, 2) for k, v in check.items()}
        | {"mcp_call_us": round(per_call_us), "share_of_mcp_call": round(check["key_check_us"] / per_call_us, 4)},
        "machine": machine(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
