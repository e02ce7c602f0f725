"""Several servers on one PostgreSQL database: throughput with 1, 2 and 3 servers, and hand-off latency across them.

    python -m bench.multinode [--seconds 6] [--runs 3] [--clients 32] [--samples 40] [--pg URL]

Throughput: ``--clients`` concurrent REST callers (spread over the servers) each take and release
write locks on random files (1,000 names per workspace, so conflicts are rare), for ``--seconds``
per run; the median of ``--runs`` runs, in lock+unlock pairs per second. Once on one workspace
(every call serialised on it, whatever the server) and once spread over 64 workspaces. The
baseline, measured in the same run: one server on the embedded SQLite store.

Hand-off: a holder on one server releases while a waiter waits on another; the time from the
release call's start to the waiter's answer, over ``--samples`` hand-offs (p50 and p95). Beside
it, the same with both on one server (PostgreSQL and SQLite).

Every server is a real ``mcp-locks serve`` process on loopback; every PostgreSQL run gets a new schema,
dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.cluster import Node, running

PG = "postgresql://postgres@127.0.0.1:5432/test"
WORKSPACES = 64
NAMES = 1000
LEASE = 30


@contextmanager
def servers(kind: str, n: int, pg: str) -> Iterator[list[Node]]:
    """``n`` servers on a new schema of ``pg`` (``kind`` "pg"), or one on SQLite (``kind`` "sqlite")."""
    import psycopg

    work = Path(tempfile.mkdtemp(prefix="mcp-locks-multinode-"))
    schema = f"bench_{secrets.token_hex(4)}" if kind == "pg" else None
    nodes = [Node(f"s{i + 1}", pg if schema else None, schema, work / f"s{i + 1}") for i in range(n)]
    try:
        with running(nodes):
            yield nodes
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if schema:
            with psycopg.connect(pg, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def make_workspaces(url: str) -> list[str]:
    names = [f"ws{i}" for i in range(WORKSPACES)]
    async with httpx.AsyncClient(base_url=url, timeout=30) as h:
        for name in names:
            r = await h.post("/v1/workspaces", json={"workspace_id": name})
            assert r.status_code in (200, 201, 409), r.text
    return names


async def throughput(nodes: list[Node], workspaces: list[str], clients: int, seconds: float) -> float:
    """Lock+unlock pairs per second over ``seconds``, callers spread over ``nodes``."""
    done = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as h:
        until = time.perf_counter() + seconds

        async def caller(i: int) -> None:
            nonlocal done
            rng = random.Random(i)
            base = nodes[i % len(nodes)].url
            while time.perf_counter() < until:
                ws = rng.choice(workspaces)
                path = f"{base}/v1/workspaces/{ws}/nodes/f{rng.randrange(NAMES)}.txt/lock"
                r = await h.post(path, json={"mode": "write", "timeout": LEASE, "wait": 10})
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                r = await h.request("DELETE", path, headers={"Lock-Token": r.json()["token"]})
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                done += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(clients):
                tg.start_soon(caller, i)
        took = time.perf_counter() - started
    return done / took


async def handoff(holder: Node, waiter: Node, samples: int) -> list[float]:
    """Milliseconds from the holder's release call to the waiter's grant, per sample."""
    out: list[float] = []
    async with httpx.AsyncClient(timeout=30) as h:
        for k in range(samples):
            out.append(await _one_handoff(h, holder, waiter, f"/v1/workspaces/default/nodes/handoff-{k}.txt/lock"))
    return out


async def _one_handoff(h: httpx.AsyncClient, holder: Node, waiter: Node, path: str) -> float:
    held = (await h.post(holder.url + path, json={"mode": "write", "timeout": LEASE})).json()
    granted = anyio.Event()
    at: list[float] = []

    async def wait() -> None:
        r = await h.post(waiter.url + path, json={"mode": "write", "timeout": LEASE, "wait": 20})
        at.append(time.perf_counter())
        assert r.status_code == 200, r.text
        await h.request("DELETE", waiter.url + path, headers={"Lock-Token": r.json()["token"]})
        granted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        with anyio.fail_after(20):  # the waiter is in line (seen through the holder's server)
            for _ in range(4000):
                if (await h.get(holder.url + path)).json()["waiters"]:
                    break
                await anyio.sleep(0.005)
        released = time.perf_counter()
        await h.request("DELETE", holder.url + path, headers={"Lock-Token": held["token"]})
        with anyio.fail_after(20):
            await granted.wait()
    return (at[0] - released) * 1000


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"throughput": {}, "handoff_ms": {}}
    configs = [("sqlite", 1), ("pg", 1), ("pg", 2), ("pg", 3)]
    for kind, n in configs:
        with servers(kind, n, args.pg) as nodes:
            spread = anyio.run(make_workspaces, nodes[0].url)
            for label, wss in (("one workspace", ["default"]), ("64 workspaces", spread)):
                runs = [anyio.run(throughput, nodes, wss, args.clients, args.seconds) for _ in range(args.runs)]
                key = f"{kind} x{n}, {label}"
                result["throughput"][key] = {
                    "median": round(statistics.median(runs), 1),
                    "runs": [round(r, 1) for r in runs],
                }
                print(f"{key}: {statistics.median(runs):.1f} pairs/s  {[round(r) for r in runs]}", flush=True)
            pairs = [("same server", nodes[0], nodes[0])]
            if n > 1:
                pairs.append(("across servers", nodes[0], nodes[1]))
            for label, a, b in pairs:
                ms = anyio.run(handoff, a, b, args.samples)
                key = f"{kind} x{n}, {label}"
                result["handoff_ms"][key] = {"p50": round(_pct(ms, 0.5), 2), "p95": round(_pct(ms, 0.95), 2)}
                print(f"hand-off {key}: p50 {_pct(ms, 0.5):.2f} ms  p95 {_pct(ms, 0.95):.2f} ms", flush=True)
    base = result["throughput"]
    for key, v in base.items():
        label = key.split(", ", 1)[1]
        v["vs_sqlite"] = round(v["median"] / base[f"sqlite x1, {label}"]["median"], 2)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.multinode", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--pg", default=PG, help="the PostgreSQL database (a new schema is made in it per run)")
    args = p.parse_args(argv)
    print("result " + json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
