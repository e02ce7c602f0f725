"""lock_file+unlock_file over MCP streamable HTTP vs a no-op tool, same server, same client, same run.

    python -m bench.mcp_http [--calls 2000] [--rounds 5] [--mode auto|legacy]

The server (bench/server.py) runs in its own process with the durable SQLite store;
one client makes calls one after another. Three series per round, interleaved so
drift affects all alike: a trivial no-op tool (no arguments, {"ok": true}); a
shape-matched no-op (lock_file's and unlock_file's own schemas and argument
validation, constant results, no engine); and the real lock_file+unlock_file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import anyio
from mcp import Client

from ._proc import bench_server


async def rate_noop(c: Client, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        r = await c.call_tool("noop", {})
        assert not r.is_error
    return calls / (time.perf_counter() - t0)


async def rate_lock(c: Client, calls: int, lock: str = "lock_file", unlock: str = "unlock_file") -> float:
    t0 = time.perf_counter()
    for i in range(calls // 2):
        r = await c.call_tool(lock, {"node_id": f"bench/f{i % 64}", "agent": "bench"})
        assert r.structured_content is not None, r.content
        r = await c.call_tool(unlock, {"token": r.structured_content["token"]})
        assert not r.is_error
    return (calls // 2 * 2) / (time.perf_counter() - t0)


async def run(url: str, calls: int, rounds: int, mode: str) -> dict[str, float]:
    noop: list[float] = []
    shape: list[float] = []
    lock: list[float] = []
    async with Client(f"{url}/mcp", mode=mode) as c:  # type: ignore[arg-type]
        await rate_noop(c, 200)
        await rate_lock(c, 200)
        for _ in range(rounds):
            noop.append(await rate_noop(c, calls))
            shape.append(await rate_lock(c, calls, "shape_lock", "shape_unlock"))
            lock.append(await rate_lock(c, calls))
            print(json.dumps({"noop": round(noop[-1]), "shape": round(shape[-1]), "lock": round(lock[-1])}))
    n, sh, m = statistics.median(noop), statistics.median(shape), statistics.median(lock)
    return {
        "noop_calls_per_s": n,
        "shape_noop_calls_per_s": sh,
        "lock_unlock_calls_per_s": m,
        "ratio_vs_noop": m / n,
        "ratio_vs_shape_noop": m / sh,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", choices=["auto", "legacy"], default="auto")
    ap.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    a = ap.parse_args()
    with bench_server("--store", a.store) as srv:
        out = anyio.run(run, srv.url, a.calls, a.rounds, a.mode)
    print("median", json.dumps({k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    main()
