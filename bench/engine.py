"""Engine throughput and latency with the durable SQLite store (no network).

    python -m bench.engine [--callers 64] [--seconds 3] [--runs 5] [--layer service|actor] [--audit on|off]

Prints, per run, lock+release operations/s (a lock and a release count as two)
for N concurrent callers on distinct nodes, the CPU time per operation, and the
p50/p99 of one sequential caller's single durable operation. ``--layer actor``
drives the engine (table + actor + SQLite) directly; ``service`` (the default)
adds LockService's argument checks and pydantic results, as in-process callers
and the MCP tools see it. ``--audit off`` runs without the audit log (events are still counted and
published live), to measure what the log costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from mcp_locks.cli.runtime import tune_gc
from mcp_locks.core.claims import Claim
from mcp_locks.core.records import Granted
from mcp_locks.engine.lock_service import LockService, ServiceLimits
from mcp_locks.observe.observability import ObserveLimits
from mcp_locks.stores.sqlite import SqliteStore


class ActorFace:
    """Lock and release through the workspace actor (table + actor + store), without the service's models."""

    def __init__(self, service: LockService) -> None:
        self.actor = service.registry.actor("default")  # the engine itself, under the service layer

    async def lock(self, node: str) -> str:
        claim = (Claim(node, "write", "node"),)
        g = await self.actor.call(lambda t, now: t.acquire(now, claim, owner="bench", timeout=60))
        assert isinstance(g, Granted)
        return g.leases[0].token

    async def unlock(self, token: str) -> None:
        await self.actor.call(lambda t, now: t.release(now, token))


class ServiceFace:
    """Lock and release through LockService, as in-process callers and the MCP tools do."""

    def __init__(self, service: LockService) -> None:
        self.service = service

    async def lock(self, node: str) -> str:
        return (await self.service.lock(None, node, timeout=60)).token

    async def unlock(self, token: str) -> None:
        await self.service.unlock(None, token)


async def concurrent(face: ActorFace | ServiceFace, callers: int, seconds: float) -> tuple[float, float]:
    """Lock+release on distinct nodes from ``callers`` tasks; returns (operations/s, CPU µs per operation)."""
    ops = 0
    stop = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal ops
        node = f"bench/c{i}"
        n = 0
        while time.perf_counter() < stop and n < 10_000_000:
            token = await face.lock(node)
            await face.unlock(token)
            n += 2
        ops += n

    t0, c0 = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for i in range(callers):
            tg.start_soon(caller, i)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return ops / wall, cpu / max(ops, 1) * 1e6


async def sequential(face: ActorFace | ServiceFace, count: int) -> tuple[float, float]:
    lat: list[float] = []
    for _ in range(count):
        t = time.perf_counter()
        token = await face.lock("bench/seq")
        lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        await face.unlock(token)
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


async def one_run(callers: int, seconds: float, seq: int, layer: str, audit: bool) -> dict[str, float]:
    limits = ServiceLimits(observe=ObserveLimits(audit=audit))
    with tempfile.TemporaryDirectory() as d:
        async with LockService(SqliteStore(Path(d) / "locks.db"), limits=limits) as service:
            face = ActorFace(service) if layer == "actor" else ServiceFace(service)
            await sequential(face, 200)  # warm up
            rate, cpu_us = await concurrent(face, callers, seconds)
            p50, p99 = await sequential(face, seq)
    return {"ops_per_s": rate, "cpu_us_per_op": cpu_us, "seq_p50_us": p50, "seq_p99_us": p99}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--seq", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    ap.add_argument(
        "--layer",
        choices=["service", "actor"],
        default="service",
        help="service: LockService with its pydantic results; actor: the engine (table + actor + store) alone",
    )
    ap.add_argument("--audit", choices=["on", "off"], default="on", help="keep the audit log (as the server does)")
    a = ap.parse_args()
    tune_gc()  # as `mcp-locks serve` does
    runs = []
    for _ in range(a.runs):
        r = anyio.run(
            one_run,
            a.callers,
            a.seconds,
            a.seq,
            a.layer,
            a.audit == "on",
            backend="asyncio",
            backend_options={"use_uvloop": a.loop == "uvloop"},
        )
        runs.append(r)
        print(json.dumps({k: round(v, 1) for k, v in r.items()}))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("median", json.dumps({k: round(v, 1) for k, v in med.items()}))


if __name__ == "__main__":
    main()
