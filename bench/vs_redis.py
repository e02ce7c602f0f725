"""mcp-locks beside redis-py's ``Lock``, side by side in one run.

    python -m bench.vs_redis [--runs 5] [--pairs 2000] [--block 100] [--handoffs 200]
                             [--redis redis://127.0.0.1:6379/15]

Everything runs in this one process on one uvloop event loop, against local
servers only (the Redis URL must be a loopback address). Each run starts a
fresh bench server (``bench.server --store sqlite``, no API keys, like the
Redis it is set beside) and a fresh in-process ``LockService`` on a fresh
SQLite database, then measures two things:

1. Uncontended lock+unlock pairs/s from one sequential client, for:
   ``engine`` (``LockService.lock``/``unlock`` in-process, as bench/engine.py
   sets it up), ``rest`` (``POST``/``DELETE .../nodes/bench/fN/lock`` through
   the server process, one keep-alive httpx2 connection, as bench/rest.py),
   ``lockclient`` (the project's ``LockClient.acquire``/``release`` over the
   same server: httpx, a request id per lock, the retry wrapper),
   ``rest_min`` (the same requests from a minimal hand-written HTTP/1.1
   client, one write per request: what the server and the protocol cost
   without a client library's work; not a client to use),
   ``redis_async`` (``redis.asyncio`` ``Lock``: ``SET NX PX`` to acquire, the
   default Lua script by ``EVALSHA`` to release) and ``redis_sync`` (the same
   with the blocking ``redis.Redis``, called from the loop's thread). Each
   redis client has one connection (``single_connection_client=True``); every
   lock has a 60 s lease (``timeout``) on all sides; paths/keys cycle over 64
   names. Each config gets 200 warm-up pairs, then ``--pairs`` timed pairs in
   blocks of ``--block``; block k of run r runs the configs in the order
   rotated by r + k, so the machine's drift falls on all of them alike. Per
   config: pairs/s, this process's CPU per pair (client; for ``engine`` the
   whole engine) and the server's CPU per pair (the bench server's
   /proc/PID/stat, or redis-server's ``INFO cpu``). Ratios to redis-py are
   taken within each run, then their median over runs.

2. Hand-off latency: a holder holds a lock, a waiter blocks for it; once the
   waiter is in line (mcp-locks: the lock's status lists it; redis-py: its
   first ``SET NX`` has failed, seen through a subclass of ``Lock`` that only
   notes it), the holder waits a random 5-105 ms (so redis-py's polls fall at
   a random phase) and releases. Latency = the waiter's acquire call returning
   minus the holder's release call returning ("from return"; negative when
   the waiter hears first) and minus the release call's start ("from start",
   which includes the release call itself, made after the idle wait).
   Configs: ``engine`` (in-process ``lock(wait=10)``), ``rest`` (``POST`` with
   ``"wait": 10`` on a second connection), ``redis_0.1`` (``redis.asyncio``
   blocking ``acquire()`` with the default ``sleep=0.1``) and ``redis_0.01``
   (``sleep=0.01``); holder and waiter on separate connections. Hand-offs are
   interleaved across configs, rotated per hand-off.

Durability differs and the output says so: mcp-locks answers a lock or an
unlock only after committing it to SQLite (WAL, ``synchronous=NORMAL``: it
survives a crash of the process), with the audit log on (3 rows per pair);
the Redis queried here is checked for RDB snapshots and AOF (``CONFIG GET
save``/``appendonly``) and the header reports what it keeps on disk.

Every loop is bounded by count, every wait by a timeout, every run by
``--max-run-seconds``; the servers started here are stopped by PID
(bench._proc). Prints one JSON line per run, then markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import redis
import redis.asyncio
import redis.asyncio.lock

from mcp_locks.cli.runtime import tune_gc
from mcp_locks.client import LockClient
from mcp_locks.engine.lock_service import LockService
from mcp_locks.stores.sqlite import SqliteStore

from ._proc import bench_server

LEASE = 60  # seconds, the lock's lease on every side
WAIT = 10  # seconds a hand-off waiter may wait, on every side
WARMUP = 200
NAMES = 64
PAIR_CONFIGS = ("engine", "rest", "lockclient", "rest_min", "redis_async", "redis_sync")
HANDOFF_CONFIGS = ("engine", "rest", "redis_0.1", "redis_0.01")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

Pair = Callable[[int], Awaitable[None]]


def rotated(items: tuple[str, ...], k: int) -> list[str]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def lock_path(name: str) -> str:
    return f"/v1/workspaces/default/nodes/{name}/lock"


# ---------------------------------------------------------------- CPU meters


def server_pid() -> int:
    """PID of the bench server this process started (its child running ``-m bench.server``)."""
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me and b"bench.server" in (d / "cmdline").read_bytes():
                return int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    raise RuntimeError("bench server process not found among this process's children")


def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RedisCpu:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def __call__(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# ---------------------------------------------------------------- part 1: uncontended pairs


class Seen(redis.asyncio.lock.Lock):
    """redis.asyncio's Lock, unchanged, except that it notes a failed attempt (the waiter is in line)."""

    failed: set[str] = set()  # noqa: RUF012 (shared on purpose: the holder looks here)

    async def do_acquire(self, token: str | bytes) -> bool:
        ok = await super().do_acquire(token)
        if not ok:
            Seen.failed.add(str(self.name))
        return ok


def engine_pair(svc: LockService) -> Pair:
    async def pair(i: int) -> None:
        g = await svc.lock(None, f"bench/f{i % NAMES}", timeout=LEASE)
        await svc.unlock(None, g.token)

    return pair


def rest_pair(h: httpx2.AsyncClient) -> Pair:
    paths = [lock_path(f"bench/r{i}") for i in range(NAMES)]
    body = {"mode": "write", "timeout": LEASE}

    async def pair(i: int) -> None:
        path = paths[i % NAMES]
        r = await h.post(path, json=body)
        assert r.status_code == 200, r.text
        r = await h.delete(path, headers={"Lock-Token": r.json()["token"]})
        assert r.status_code == 200, r.text

    return pair


class MinimalHttp:
    """The least a Python HTTP/1.1 client does: one write per request, Content-Length framing, one connection.

    Not a client to use (no timeouts beyond the run's, no chunked bodies, no retries): it shows what
    the server and the protocol cost once the client library's own work is taken away.
    """

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: bytes, path: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
        if self.reader is None or self.writer is None or self.reader.at_eof():  # new, or closed by the server
            await self.aclose()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = b"%s %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %d\r\n\r\n" % (
            method, path, self.host.encode(), self.port, headers, len(body)
        )  # fmt: skip
        self.writer.write(head + body)
        h = await self.reader.readuntil(b"\r\n\r\n")
        i = h.lower().index(b"\r\ncontent-length:") + 17
        data = await self.reader.readexactly(int(h[i : h.index(b"\r\n", i)]))
        assert h[9:12] == b"200", data
        return data

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def minimal_pair(c: MinimalHttp) -> Pair:
    paths = [lock_path(f"bench/m{i}").encode() for i in range(NAMES)]
    body = json.dumps({"mode": "write", "timeout": LEASE}).encode()

    async def pair(i: int) -> None:
        path = paths[i % NAMES]
        token = json.loads(await c.request(b"POST", path, b"Content-Type: application/json\r\n", body))["token"]
        await c.request(b"DELETE", path, b"Lock-Token: %s\r\n" % token.encode())

    return pair


def lockclient_pair(c: LockClient) -> Pair:
    async def pair(i: int) -> None:
        lease = await c.acquire(f"bench/c{i % NAMES}", timeout=LEASE)
        await c.release(lease)

    return pair


def redis_async_pair(r: redis.asyncio.Redis, prefix: str) -> Pair:
    names = [f"{prefix}:a{i}" for i in range(NAMES)]

    async def pair(i: int) -> None:
        lk = r.lock(names[i % NAMES], timeout=LEASE)
        assert await lk.acquire()
        await lk.release()

    return pair


def redis_sync_pair(r: redis.Redis, prefix: str) -> Pair:
    names = [f"{prefix}:s{i}" for i in range(NAMES)]

    async def pair(i: int) -> None:  # blocks the loop for the call, as a sync client does
        lk = r.lock(names[i % NAMES], timeout=LEASE)
        assert lk.acquire()
        lk.release()

    return pair


async def time_pairs(
    pairs: dict[str, Pair], cpu_of: dict[str, Callable[[], float]], run: int, n: int, block: int
) -> dict[str, dict[str, float]]:
    """Pairs/s and CPU µs per pair (this process; the server) of each config, in rotated blocks."""
    for pair in pairs.values():
        for i in range(WARMUP):
            await pair(i)
    wall = dict.fromkeys(pairs, 0.0)
    cpu = dict.fromkeys(pairs, 0.0)
    srv = dict.fromkeys(pairs, 0.0)
    done = 0
    k = 0
    while done < n:
        m = min(block, n - done)
        for name in rotated(tuple(pairs), run + k):
            pair, meter = pairs[name], cpu_of[name]
            s0 = meter()
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(done, done + m):
                await pair(i)
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
            srv[name] += meter() - s0
        done += m
        k += 1
    return {
        name: {
            "pairs_per_s": n / wall[name],
            "client_cpu_us": cpu[name] / n * 1e6,
            "server_cpu_us": srv[name] / n * 1e6,
        }
        for name in pairs
    }


# ---------------------------------------------------------------- part 2: hand-off


class Side:
    """One config's hand-off: hold, wait in line, see the waiter in line, release."""

    def __init__(
        self,
        hold: Callable[[str], Awaitable[Any]],
        wait: Callable[[str], Awaitable[Any]],
        in_line: Callable[[str], Awaitable[bool]],
        release: Callable[[Any], Awaitable[None]],
    ) -> None:
        self.hold, self.wait, self.in_line, self.release = hold, wait, in_line, release


def engine_side(svc: LockService) -> Side:
    async def hold(node: str) -> tuple[str, str]:
        return node, (await svc.lock(None, node, timeout=LEASE)).token

    async def wait(node: str) -> tuple[str, str]:
        return node, (await svc.lock(None, node, timeout=LEASE, wait=WAIT)).token

    async def in_line(node: str) -> bool:
        return bool((await svc.status(None, node)).waiters)

    async def release(h: tuple[str, str]) -> None:
        await svc.unlock(None, h[1])

    return Side(hold, wait, in_line, release)


def rest_side(holder: httpx2.AsyncClient, waiter: httpx2.AsyncClient) -> Side:
    async def lock(h: httpx2.AsyncClient, node: str, wait: float) -> tuple[httpx2.AsyncClient, str, str]:
        r = await h.post(lock_path(node), json={"mode": "write", "timeout": LEASE, "wait": wait})
        assert r.status_code == 200, r.text
        return h, node, r.json()["token"]

    async def hold(node: str) -> tuple[httpx2.AsyncClient, str, str]:
        return await lock(holder, node, 0)

    async def wait(node: str) -> tuple[httpx2.AsyncClient, str, str]:
        return await lock(waiter, node, WAIT)

    async def in_line(node: str) -> bool:
        r = await holder.get(lock_path(node))
        assert r.status_code == 200, r.text
        return bool(r.json()["waiters"])

    async def release(x: tuple[httpx2.AsyncClient, str, str]) -> None:
        h, node, token = x
        r = await h.delete(lock_path(node), headers={"Lock-Token": token})
        assert r.status_code == 200, r.text

    return Side(hold, wait, in_line, release)


def redis_side(holder: redis.asyncio.Redis, waiter: redis.asyncio.Redis, sleep: float) -> Side:
    async def hold(name: str) -> redis.asyncio.lock.Lock:
        Seen.failed.discard(name)
        lk = holder.lock(name, timeout=LEASE)
        assert await lk.acquire(blocking=False)
        return lk

    async def wait(name: str) -> redis.asyncio.lock.Lock:
        lk = waiter.lock(name, timeout=LEASE, sleep=sleep, blocking_timeout=WAIT, lock_class=Seen)
        assert await lk.acquire()  # blocking: SET NX, then sleep `sleep`, again, ...
        return lk

    async def in_line(name: str) -> bool:
        return name in Seen.failed

    async def release(lk: redis.asyncio.lock.Lock) -> None:
        await lk.release()

    return Side(hold, wait, in_line, release)


async def handoff(side: Side, node: str, delay: float) -> tuple[float, float]:
    """One hand-off; returns (ms from release start, ms from release return) to the waiter's grant."""
    with anyio.fail_after(WAIT + 10):
        held = await side.hold(node)
        granted_at = 0.0
        got: Any = None

        async def wait_turn() -> None:
            nonlocal granted_at, got
            got = await side.wait(node)
            granted_at = time.perf_counter()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_turn)
            for _ in range(10_000):  # bounded: ~5 s at most
                if await side.in_line(node):
                    break
                await anyio.sleep(0.0005)
            else:
                raise RuntimeError(f"the waiter for {node} never got in line")
            await anyio.sleep(delay)
            started = time.perf_counter()
            await side.release(held)
            returned = time.perf_counter()
        await side.release(got)
    return (granted_at - started) * 1e3, (granted_at - returned) * 1e3


async def time_handoffs(
    sides: dict[str, Side], names: dict[str, Callable[[int], str]], run: int, n: int, rng: random.Random
) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    for i in range(n):
        for name in rotated(tuple(sides), run + i):
            out[name].append(await handoff(sides[name], names[name](i), rng.uniform(0.005, 0.105)))
    return out


# ---------------------------------------------------------------- one run


async def one_run(
    url: str, redis_url: str, run: int, pairs: int, block: int, handoffs: int, max_seconds: float
) -> dict[str, Any]:
    prefix = f"mcp-locks-bench:{uuid.uuid4().hex[:12]}"
    pid = server_pid()
    sync_r = redis.Redis.from_url(redis_url, single_connection_client=True, socket_timeout=WAIT + 5)
    async_r = redis.asyncio.Redis.from_url(redis_url, single_connection_client=True, socket_timeout=WAIT + 5)
    async_w = redis.asyncio.Redis.from_url(redis_url, single_connection_client=True, socket_timeout=WAIT + 5)
    meter_r = redis.Redis.from_url(redis_url, socket_timeout=5)  # reads INFO cpu, outside the timed calls
    mini = MinimalHttp(url)
    try:
        with tempfile.TemporaryDirectory(prefix="mcp-locks-bench-") as d, anyio.fail_after(max_seconds):
            async with (
                LockService(SqliteStore(Path(d) / "locks.db")) as svc,
                httpx2.AsyncClient(base_url=url, timeout=30, trust_env=False) as h,
                httpx2.AsyncClient(base_url=url, timeout=30 + WAIT, trust_env=False) as hw,
                LockClient(url, None) as lc,
            ):
                fns: dict[str, Pair] = {
                    "engine": engine_pair(svc),
                    "rest": rest_pair(h),
                    "lockclient": lockclient_pair(lc),
                    "rest_min": minimal_pair(mini),
                    "redis_async": redis_async_pair(async_r, prefix),
                    "redis_sync": redis_sync_pair(sync_r, prefix),
                }

                def none() -> float:
                    return 0.0

                def ours() -> float:
                    return proc_cpu(pid)

                meters: dict[str, Callable[[], float]] = {
                    "engine": none,
                    "rest": ours,
                    "lockclient": ours,
                    "rest_min": ours,
                }
                meters |= {"redis_async": RedisCpu(meter_r), "redis_sync": RedisCpu(meter_r)}
                part1 = await time_pairs({k: fns[k] for k in PAIR_CONFIGS}, meters, run, pairs, block)

                sides = {
                    "engine": engine_side(svc),
                    "rest": rest_side(h, hw),
                    "redis_0.1": redis_side(async_r, async_w, 0.1),
                    "redis_0.01": redis_side(async_r, async_w, 0.01),
                }
                node_of: dict[str, Callable[[int], str]] = {
                    "engine": lambda i: f"handoff/e{i % 4}",
                    "rest": lambda i: f"handoff/r{i % 4}",
                    "redis_0.1": lambda i: f"{prefix}:h1:{i % 4}",
                    "redis_0.01": lambda i: f"{prefix}:h2:{i % 4}",
                }
                part2 = await time_handoffs(sides, node_of, run, handoffs, random.Random(run))
    finally:
        left = [k for k in sync_r.scan_iter(f"{prefix}:*", count=1000)]
        if left:
            sync_r.delete(*left)
        sync_r.close()
        meter_r.close()
        await mini.aclose()
        await async_r.aclose()
        await async_w.aclose()
    return {"pairs": part1, "handoff": part2}


# ---------------------------------------------------------------- report


def redis_facts(url: str) -> dict[str, str]:
    r = redis.Redis.from_url(url, socket_timeout=5)
    try:
        info = r.info("server")
        save = r.config_get("save").get("save", "?")
        aof = r.config_get("appendonly").get("appendonly", "?")
    finally:
        r.close()
    return {"version": str(info.get("redis_version")), "save": str(save), "appendonly": str(aof)}


def fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def report(runs: list[dict[str, Any]], facts: dict[str, str], a: argparse.Namespace, started: str) -> None:
    on_disk = (
        'nothing (RDB snapshots off: `save ""`; AOF off)'
        if facts["save"] == "" and facts["appendonly"] == "no"
        else f'`save "{facts["save"]}"`, `appendonly {facts["appendonly"]}`'
    )
    print()
    print(f"### mcp-locks vs redis-py `Lock` ({started})")
    print()
    print(
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, uvloop; "
        f"mcp-locks {version('mcp-locks')}, redis-py {version('redis')}, redis-server {facts['version']} "
        "on 127.0.0.1 (loopback TCP, like the mcp-locks server)."
    )
    print(
        "- Durability: mcp-locks commits every grant and release to SQLite before answering "
        "(WAL, `synchronous=NORMAL`: survives a crash of the process; audit log on, 3 rows per pair). "
        f"Redis here keeps on disk: {on_disk}; a restart loses every lock."
    )
    print(
        f"- `python -m bench.vs_redis --runs {a.runs} --pairs {a.pairs} --block {a.block} --handoffs {a.handoffs}`: "
        "one client, sequential; configs rotated per block and per run; medians over runs "
        "(ratios taken within each run)."
    )
    print()
    print("| uncontended lock+unlock, 1 client | pairs/s (median) | per run | ÷ redis.asyncio | ÷ redis sync "
          "| client CPU µs/pair | server CPU µs/pair |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    labels = {
        "engine": "mcp-locks engine, in-process `LockService` (SQLite)",
        "rest": "mcp-locks REST via a server process (httpx2, 1 keep-alive conn)",
        "lockclient": "mcp-locks `LockClient` (REST, httpx)",
        "rest_min": "mcp-locks REST, minimal hand-written HTTP/1.1 client (not for use: isolates the server)",
        "redis_async": "redis-py `redis.asyncio` `Lock` (1 conn)",
        "redis_sync": "redis-py sync `Lock` (1 conn)",
    }
    for k in PAIR_CONFIGS:
        rates = [r["pairs"][k]["pairs_per_s"] for r in runs]
        ra = statistics.median(r["pairs"][k]["pairs_per_s"] / r["pairs"]["redis_async"]["pairs_per_s"] for r in runs)
        rs = statistics.median(r["pairs"][k]["pairs_per_s"] / r["pairs"]["redis_sync"]["pairs_per_s"] for r in runs)
        ccpu = statistics.median(r["pairs"][k]["client_cpu_us"] for r in runs)
        scpu = statistics.median(r["pairs"][k]["server_cpu_us"] for r in runs)
        print(
            f"| {labels[k]} | **{fmt(statistics.median(rates))}** | {' / '.join(fmt(x) for x in rates)} "
            f"| {ra:.3f} | {rs:.3f} | {fmt(ccpu)} | {fmt(scpu) if k != 'engine' else '(in client)'} |"
        )
    print()
    print("| hand-off, waiter blocked, holder releases | from release return: p50 / p99 ms (median of runs) "
          "| per-run p50 | all runs pooled p50 / p99 | from release start: p50 / p99 (pooled) | n |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    hlabels = {
        "engine": "mcp-locks in-process, `lock(wait=10)`",
        "rest": 'mcp-locks REST, `POST …/lock {"wait": 10}`',
        "redis_0.1": "redis-py asyncio `Lock.acquire()`, default `sleep=0.1`",
        "redis_0.01": "redis-py asyncio `Lock.acquire()`, `sleep=0.01`",
    }
    for k in HANDOFF_CONFIGS:
        per = [[x[1] for x in r["handoff"][k]] for r in runs]
        pooled = [x for p in per for x in p]
        pooled_s = [x[0] for r in runs for x in r["handoff"][k]]
        p50 = statistics.median(statistics.median(p) for p in per)
        p99 = statistics.median(pct(p, 0.99) for p in per)
        print(
            f"| {hlabels[k]} | **{p50:.2f} / {p99:.2f}** | {' / '.join(f'{statistics.median(p):.2f}' for p in per)} "
            f"| {statistics.median(pooled):.2f} / {pct(pooled, 0.99):.2f} "
            f"| {statistics.median(pooled_s):.2f} / {pct(pooled_s, 0.99):.2f} | {len(per[0])} × {len(per)} |"
        )


def start_and_run(a: argparse.Namespace, run: int) -> dict[str, Any]:
    """One run on a fresh server; a server that fails to start (this machine is shared) is tried twice more."""
    for attempt in range(3):
        try:
            with bench_server("--store", "sqlite") as srv:
                return anyio.run(
                    one_run,
                    srv.url,
                    a.redis,
                    run,
                    a.pairs,
                    a.block,
                    a.handoffs,
                    a.max_run_seconds,
                    backend="asyncio",
                    backend_options={"use_uvloop": True},
                )
        except RuntimeError as e:
            if "did not start" not in str(e) or attempt == 2:
                raise
            print(f"run {run + 1}: {e}; starting another server in 5 s", file=sys.stderr, flush=True)
            time.sleep(5)
    raise AssertionError("unreachable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=2000, help="timed pairs per config per run (default 2000)")
    ap.add_argument("--block", type=int, default=100, help="pairs per rotated block (default 100)")
    ap.add_argument("--handoffs", type=int, default=200, help="hand-offs per config per run (default 200)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--max-run-seconds", type=float, default=900, help="a run taking longer fails (default 900)")
    a = ap.parse_args()
    if urlsplit(a.redis).hostname not in LOOPBACK:
        sys.exit(f"--redis must point at a loopback address, not {a.redis!r}")
    if not (0 < a.runs <= 50 and 0 < a.pairs <= 1_000_000 and a.block > 0 and 0 < a.handoffs <= 10_000):
        sys.exit("--runs 1..50, --pairs 1..1000000, --block >= 1, --handoffs 1..10000")
    started = time.strftime("%Y-%m-%d", time.gmtime())
    facts = redis_facts(a.redis)
    tune_gc()  # as `mcp-locks serve` (and the bench server) does
    runs: list[dict[str, Any]] = []
    for run in range(a.runs):
        r = start_and_run(a, run)
        runs.append(r)
        line: dict[str, Any] = {"run": run + 1}
        line |= {k: round(v["pairs_per_s"]) for k, v in r["pairs"].items()}
        line |= {f"handoff_{k}_p50_ms": round(statistics.median(x[1] for x in v), 3) for k, v in r["handoff"].items()}
        print(json.dumps(line), flush=True)
    report(runs, facts, a, started)


if __name__ == "__main__":
    main()
