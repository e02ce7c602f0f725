"""Engine throughput and latency with the durable SQLite store (no network).

    python -m bench.engine [--callers 64] [--seconds 3] [--runs 5]

Prints, per run, lock+release operations/s for N concurrent callers on distinct
nodes, and the p50/p99 of one sequential caller's single durable operation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from mcp_locks import LockService, SqliteStore
from mcp_locks._runtime import tune_gc


async def concurrent(service: LockService, callers: int, seconds: float) -> tuple[float, float]:
    """Lock+release on distinct nodes from ``callers`` tasks; returns (operations/s, CPU µs per operation)."""
    ops = 0
    stop = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal ops
        node = f"bench/c{i}"
        n = 0
        while time.perf_counter() < stop and n < 10_000_000:
            g = await service.lock(None, node, timeout=60)
            await service.unlock(None, g.token)
            n += 2
        ops += n

    t0, c0 = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for i in range(callers):
            tg.start_soon(caller, i)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return ops / wall, cpu / max(ops, 1) * 1e6


async def sequential(service: LockService, count: int) -> tuple[float, float]:
    lat: list[float] = []
    for _ in range(count):
        t = time.perf_counter()
        g = await service.lock(None, "bench/seq", timeout=60)
        lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        await service.unlock(None, g.token)
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


async def one_run(callers: int, seconds: float, seq: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        async with LockService(SqliteStore(Path(d) / "locks.db")) as service:
            await sequential(service, 200)  # warm up
            rate, cpu_us = await concurrent(service, callers, seconds)
            p50, p99 = await sequential(service, seq)
    return {"ops_per_s": rate, "cpu_us_per_op": cpu_us, "seq_p50_us": p50, "seq_p99_us": p99}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--seq", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    a = ap.parse_args()
    tune_gc()  # as `mcp-locks serve` does
    runs = []
    for _ in range(a.runs):
        r = anyio.run(
            one_run, a.callers, a.seconds, a.seq, backend="asyncio", backend_options={"use_uvloop": a.loop == "uvloop"}
        )
        runs.append(r)
        print(json.dumps({k: round(v, 1) for k, v in r.items()}))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("median", json.dumps({k: round(v, 1) for k, v in med.items()}))


if __name__ == "__main__":
    main()
