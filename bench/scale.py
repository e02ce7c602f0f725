"""Scale: a million held locks, ten thousand waiters, a hundred thousand expiries at once.

    python -m bench.scale --bench held    [--held 1000000] [--runs 3] [--layer service|actor]
    python -m bench.scale --bench waiters [--waiters 10000] [--shape distinct|shared] [--runs 3]
    python -m bench.scale --bench expiry  [--expiring 100000] [--workspaces 1] [--runs 3]
    python -m bench.scale --bench held,waiters,expiry   # all three, one after the other

Everything runs in-process on the durable SQLite store (WAL, sync=normal), as
bench/engine.py does, with ``tune_gc()`` as ``mcp-locks serve`` runs it, through
``LockService`` (``--layer actor``: the workspace actor and table alone, for
``held``). Each run is a child process of its own (so its RSS figures are its
own, and nothing is left running), killed if it overruns ``--run-timeout``;
every loop is bounded by a count and every wait by a deadline. Per-run figures
are printed as JSON, then their medians and the targets met or missed.
``--no-audit`` turns the audit log off; ``--profile PATH`` writes pyinstrument
profiles of the measured phases (fill, restart, waiters, expiry).

held (issue 7a): fill one workspace with ``--held`` locks through the batch path
  (``lock_many`` / ``acquire`` with 100 items per call, ``--fill-callers`` calls
  at once) and measure, at 1,000 held and again at ``--held`` held: one sequential
  caller's lock+unlock pair on a fresh node, ``status`` of a held node and
  ``renew`` of a random held lock (p50 of each, µs), and 64 concurrent callers
  doing lock+unlock pairs on fresh nodes for 2 s (operations/s, CPU µs per
  operation). ``*_ratio`` is the figure at --held over the figure at 1,000
  (``conc_ops_ratio``: throughput at 1,000 over throughput at --held). Before each
  point the WAL is checkpointed and the file system flushed. Then RSS per held
  lock (``--tracemalloc``: also traced Python memory, at ~6x the fill time), and
  restart to ready: close the service, open a new one on the same database and
  time until the first call on that workspace (a status) answers.
waiters (7b): ``distinct``: ``--waiters`` nodes held by one agent and one waiter
  (its own agent, ``wait=``) on each; ``shared``: every waiter asks for a read
  lock on one node held by one write lock. Then every holder's lock is released
  (``unlock_many``, 100 tokens per call) and the time until every waiter's call
  has returned its grant is measured (``drain_committed_s``: until the commit
  that granted the last one), with RSS per waiter (most of it is the waiting
  callers' tasks, not the engine).
expiry (7c): ``--expiring`` leases, each with its own timeout so they end at that
  many distinct instants of one second, and a waiter (its own agent) on each
  node, on a :class:`ManualClock` that stands still during set-up. The clock is
  then moved past that second at once: ``expire_to_committed_s`` is the time
  until the commit that expired them and granted every waiter returned (all
  granted, durably, waiters woken), ``expire_to_all_granted_s`` until every
  waiter's call has returned its grant. A worst case: on the real clock the
  first of them would be handled as they fell.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from mcp_locks.cli.runtime import tune_gc
from mcp_locks.core.claims import Claim
from mcp_locks.core.clock import ManualClock
from mcp_locks.core.records import Granted, StoreChange
from mcp_locks.core.table import Limits
from mcp_locks.engine.arguments import MAX_ITEMS
from mcp_locks.engine.lock_service import LockService, ServiceLimits
from mcp_locks.observe.observability import ObserveLimits
from mcp_locks.stores.sqlite import SqliteStore

#: Locks held at the "small" measuring point.
SMALL = 1_000
#: Lease of the held locks: the service's longest, so none ends during a run.
HELD_LEASE = 86_400.0
#: Room above --held for the locks the measurements take and release (the default limit is exactly 1,000,000).
HEADROOM = 10_000
#: Each measuring point: this many sequential operations of each kind, and this long for the concurrent test.
SEQ_OPS = 2_000
CONC_SECONDS = 2.0
CONC_CALLERS = 64
#: How many held locks' tokens the bench keeps (to renew); keeping all of them would count in the RSS figure.
SAMPLE = 2_000
#: Expiry bench: lease length on the manual clock. It stands still during set-up, so no lease ends early
#: however long set-up takes; any value at or above the service's 1 s minimum gives the same figures.
EXPIRY_LEASE = 60.0
#: Waits long enough never to time out during a run (the service's longest wait).
WAIT = 3_600.0
#: Every wait for a condition in a run gives up after this long.
DEADLINE = 600.0


def rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: psutil, if installed
        import psutil  # type: ignore[import-untyped,unused-ignore]

        return int(psutil.Process().memory_info().rss)


def dir_mib(d: str) -> float:
    """Size of the files in ``d`` (the database and its WAL), MiB."""
    return sum(p.stat().st_size for p in Path(d).iterdir()) / 2**20


def p50(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Profile:
    """With ``--profile PATH``: profile one measured phase with pyinstrument (pip install pyinstrument)."""

    def __init__(self, path: str | None, what: str) -> None:
        self.path, self.what = path, what
        self.p: Any = None

    def __enter__(self) -> None:
        self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.path:
            from pyinstrument import Profiler

            self.p = Profiler(interval=0.0005, async_mode="disabled")
            self.p.start()

    def stop(self) -> None:
        if self.p is not None:
            self.p.stop()
            out = f"{self.path}.{self.what}.txt"
            with open(out, "w") as f:
                f.write(self.p.output_text(unicode=False, show_all=False))
            print(f"profile of {self.what}: {out}", file=sys.stderr)


async def wait_until(cond: Callable[[], bool], what: str, limit: float = DEADLINE) -> None:
    """Poll ``cond`` every 5 ms until true; fail after ``limit`` seconds."""
    end = time.perf_counter() + limit
    while not cond():
        if time.perf_counter() > end:
            raise TimeoutError(f"gave up waiting for {what}")
        await anyio.sleep(0.005)


async def settle(limit: float = DEADLINE) -> None:
    """Wait until this process is idle: every task has run up to its next wait.

    A waiter counts as in line once the table holds it; its task still has to come back from the
    call that queued it and start waiting for its grant. Measuring before those tasks are parked
    would bill their queueing to the phase measured next.
    """
    end = time.perf_counter() + limit
    while True:
        c = time.process_time()
        await anyio.sleep(0.02)
        if time.process_time() - c < 0.002:
            return
        if time.perf_counter() > end:
            raise TimeoutError("gave up waiting for the process to go idle")


class TimedStore(SqliteStore):
    """The SQLite store, noting when each commit returned (a grant is durable, and its waiter woken, then)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commit_ends: list[float] = []

    async def commit(self, workspace_id: str, changes: Sequence[StoreChange]) -> None:
        await super().commit(workspace_id, changes)
        self.commit_ends.append(time.perf_counter())

    def last_commit_before(self, t: float) -> float:
        return max(x for x in self.commit_ends if x <= t)


# ---------------------------------------------------------------------------------------------- faces


class ServiceFace:
    """LockService, as in-process callers and the MCP tools call it."""

    def __init__(self, service: LockService, ws: str | None = None) -> None:
        self.service, self.ws = service, ws

    async def lock(self, node: str, timeout: float = HELD_LEASE) -> str:
        return (await self.service.lock(self.ws, node, timeout=timeout)).token

    async def unlock(self, token: str) -> None:
        await self.service.unlock(self.ws, token)

    async def status(self, node: str) -> None:
        st = await self.service.status(self.ws, node)
        assert st.holders, st

    async def renew(self, token: str) -> None:
        await self.service.renew(self.ws, token)

    async def lock_many(self, nodes: list[str], timeout: float = HELD_LEASE, agent: str | None = None) -> list[str]:
        r = await self.service.lock_many(
            self.ws, [{"node_id": n, "mode": "write"} for n in nodes], timeout=timeout, agent=agent
        )
        return [g.token for g in r.locks]


class ActorFace:
    """The workspace actor (table + actor + SQLite) without the service's checks and models."""

    def __init__(self, service: LockService, ws: str = "default") -> None:
        self.actor = service.registry.actor(ws)

    async def lock(self, node: str, timeout: float = HELD_LEASE) -> str:
        claim = (Claim(node, "write", "node"),)
        g = await self.actor.call(lambda t, now: t.acquire(now, claim, owner="bench", timeout=timeout))
        assert isinstance(g, Granted)
        return g.leases[0].token

    async def unlock(self, token: str) -> None:
        await self.actor.call(lambda t, now: t.release(now, token))

    async def status(self, node: str) -> None:
        st = await self.actor.call(lambda t, now: t.status(now, node))
        assert st.holders, st

    async def renew(self, token: str) -> None:
        await self.actor.call(lambda t, now: t.renew(now, token))

    async def lock_many(self, nodes: list[str], timeout: float = HELD_LEASE, agent: str | None = None) -> list[str]:
        claims = tuple(Claim(n, "write", "node") for n in nodes)
        g = await self.actor.call(lambda t, now: t.acquire(now, claims, owner=agent or "bench", timeout=timeout))
        assert isinstance(g, Granted)
        return [le.token for le in g.leases]


Face = ServiceFace | ActorFace


def service_limits(a: argparse.Namespace, table: Limits) -> ServiceLimits:
    """The service's limits for a run: ``table`` as given, the audit log on unless --no-audit."""
    return ServiceLimits(table=table, observe=ObserveLimits(audit=not a.no_audit))


def held_node(i: int) -> str:
    """The i-th held node: 1,000 files per folder, so paths look like a real tree."""
    return f"held/d{i // 1000:04d}/f{i % 1000:04d}.txt"


async def fill(
    face: Face,
    lo: int,
    hi: int,
    callers: int,
    keep: dict[int, str],
    node: Callable[[int], str] = held_node,
    timeout: float = HELD_LEASE,
    agent: str | None = None,
) -> float:
    """Lock nodes lo..hi-1 through the batch path, ``callers`` calls of 100 items at once; returns seconds.

    Tokens of the indices in ``keep`` are stored there.
    """
    chunks = list(range(lo, hi, MAX_ITEMS))
    it = iter(chunks)

    async def caller() -> None:
        for start in it:  # shared iterator: each chunk is taken by one caller
            idx = range(start, min(start + MAX_ITEMS, hi))
            tokens = await face.lock_many([node(i) for i in idx], timeout, agent)
            for i, tok in zip(idx, tokens, strict=True):
                if i in keep:
                    keep[i] = tok

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
    return time.perf_counter() - t0


async def timed(n: int, op: Callable[[int], Awaitable[None]]) -> list[float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await op(i)
        lat.append(time.perf_counter() - t)
    return lat


async def measure_point(face: Face, tag: str, held: int, tokens: dict[int, str]) -> dict[str, float]:
    """Per-operation costs with ``held`` locks held (see the module doc)."""
    rnd = random.Random(held)
    sample = list(tokens.items())

    async def pair(i: int) -> None:
        token = await face.lock(f"fresh/{tag}/s{i}")
        await face.unlock(token)

    async def status(i: int) -> None:
        await face.status(held_node(rnd.choice(sample)[0]))

    async def renew(i: int) -> None:
        await face.renew(rnd.choice(sample)[1])

    await timed(200, lambda i: pair(-1 - i))  # warm up
    out = {
        "pair_us": p50(await timed(SEQ_OPS, pair)) * 1e6,
        "status_us": p50(await timed(SEQ_OPS, status)) * 1e6,
        "renew_us": p50(await timed(SEQ_OPS, renew)) * 1e6,
    }
    ops = 0
    stop = time.perf_counter() + CONC_SECONDS

    async def caller(c: int) -> None:
        nonlocal ops
        n = 0
        while time.perf_counter() < stop and n < 1_000_000:
            token = await face.lock(f"fresh/{tag}/c{c}/{n}")
            await face.unlock(token)
            n += 1
        ops += 2 * n

    t0, c0 = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for c in range(CONC_CALLERS):
            tg.start_soon(caller, c)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out["conc_ops_per_s"] = ops / wall
    out["conc_cpu_us_per_op"] = cpu / max(ops, 1) * 1e6
    return out


def checkpoint(service: LockService) -> None:
    """Fold the WAL into the database and flush the file system, so both measuring points start alike.

    Without the flush, the kernel writes the fill's ~450 MiB back to disk during the
    measurement at 1M, and the commits it throttles made one run in three ~2x slower.
    """
    store = service.store
    assert isinstance(store, SqliteStore)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.sync()


# ---------------------------------------------------------------------------------------------- held


async def run_held(a: argparse.Namespace) -> dict[str, float]:
    limits = service_limits(a, Limits(max_locks=a.held + HEADROOM))
    rnd = random.Random(7)
    first: dict[int, str] = {i: "" for i in range(SMALL)}  # every token of the first 1,000
    # A uniform sample over all --held locks, for the second measuring point.
    keep: dict[int, str] = {i: "" for i in rnd.sample(range(a.held), min(SAMPLE, a.held)) if i >= SMALL}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mcp-locks-scale-") as d:
        db = Path(d) / "locks.db"
        async with LockService(SqliteStore(db), limits=limits) as service:
            face: Face = ActorFace(service) if a.layer == "actor" else ServiceFace(service)
            await fill(face, 0, SMALL, a.fill_callers, first)
            checkpoint(service)
            small = await measure_point(face, "small", SMALL, first)
            out.update({f"{k}_1k": v for k, v in small.items()})
            keep.update({i: first[i] for i in range(0, SMALL, max(1, a.held // SAMPLE))})
            gc.collect()
            if a.tracemalloc:
                tracemalloc.start()
            rss0, traced0 = rss(), tracemalloc.get_traced_memory()[0]
            with Profile(a.profile, "fill"):
                out["fill_s"] = await fill(face, SMALL, a.held, a.fill_callers, keep)
            out["fill_locks_per_s"] = (a.held - SMALL) / out["fill_s"]
            gc.collect()
            rss1, traced1 = rss(), tracemalloc.get_traced_memory()[0]
            if a.tracemalloc:
                tracemalloc.stop()
                out["traced_bytes_per_lock"] = (traced1 - traced0) / (a.held - SMALL)
            out["rss_mib_full"] = rss1 / 2**20
            out["rss_bytes_per_lock"] = (rss1 - rss0) / (a.held - SMALL)
            keep = {i: t for i, t in keep.items() if t}
            checkpoint(service)
            big = await measure_point(face, "big", a.held, keep)
            out.update({f"{k}_1m": v for k, v in big.items()})
            for k in ("pair_us", "status_us", "renew_us", "conc_cpu_us_per_op"):
                out[f"{k}_ratio"] = out[f"{k}_1m"] / out[f"{k}_1k"]
            out["conc_ops_ratio"] = out["conc_ops_per_s_1k"] / out["conc_ops_per_s_1m"]
            del face
        gc.collect()
        out["db_mib"] = dir_mib(d)
        # Restart to ready: a new service on the same database, until the first call on the workspace answers.
        prof = Profile(a.profile, "restart")
        prof.start()
        t0 = time.perf_counter()
        async with LockService(SqliteStore(db), limits=limits) as service:
            t1 = time.perf_counter()
            node = held_node(next(iter(keep)))
            st = await service.status(None, node)
            t2 = time.perf_counter()
            prof.stop()
            assert st.holders, st
            table = service.registry.actor("default").table
            assert table is not None
            assert len(table) >= a.held, len(table)
            out["restart_open_s"] = t1 - t0
            out["restart_first_call_s"] = t2 - t1
            out["restart_s"] = t2 - t0
            out["rss_mib_after_restart"] = rss() / 2**20
    return out


# ---------------------------------------------------------------------------------------------- waiters


def waiter_node(i: int) -> str:
    return f"busy/d{i // 1000:03d}/f{i % 1000:03d}.txt"


class Waiters:
    """Counts the grants of ``n`` waiting callers; ``done`` is set when the last one has its lock."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.granted = 0
        self.last_grant = 0.0
        self.grants: list[float] = []  # when each call returned its grant (perf_counter)
        self.done = anyio.Event()
        self.failures: list[str] = []

    async def wait(self, i: int, call: Callable[[], Awaitable[Any]]) -> None:
        """Run waiter ``i``'s lock call and record its grant."""
        try:
            g = await call()
        except Exception as e:  # reported, not raised: one failure must not hide the figures
            self.failures.append(repr(e)[:200])
            return
        assert g.owner == f"w{i}"
        self.granted += 1
        self.last_grant = time.perf_counter()
        self.grants.append(self.last_grant)
        if self.granted == self.n:
            self.done.set()


async def longest_stall(stop: anyio.Event, tick: float = 0.005) -> float:
    """The longest gap, until ``stop``, between turns of a task that asks to run every ``tick`` seconds.

    What any other caller of the server (another workspace, a health check, a new connection)
    waits at worst meanwhile: the event loop runs nothing else while a step holds it.
    """
    longest = 0.0
    last = time.perf_counter()
    end = last + DEADLINE
    while not stop.is_set() and last < end:
        await anyio.sleep(tick)
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    return longest


async def run_waiters(a: argparse.Namespace) -> dict[str, float]:
    """``--shape distinct``: a waiter per held node. ``shared``: every waiter wants a read lock on one node
    held by one write lock, so one release grants them all at once."""
    n = a.waiters
    shared = a.shape == "shared"
    limits = service_limits(a, Limits(max_waiters=max(n, Limits().max_waiters)))
    out: dict[str, float] = {}

    def wanted(i: int) -> str:
        return "busy/shared.txt" if shared else waiter_node(i)

    with tempfile.TemporaryDirectory(prefix="mcp-locks-scale-") as d:
        store = TimedStore(Path(d) / "locks.db")
        async with LockService(store, limits=limits) as service:
            face = ServiceFace(service)
            held = 1 if shared else n
            tokens = {i: "" for i in range(held)}
            await fill(face, 0, held, a.fill_callers, tokens, node=wanted, timeout=HELD_LEASE, agent="holder")
            table = service.registry.actor("default").table
            assert table is not None
            gc.collect()
            rss0 = rss()
            ws = Waiters(n)
            failures = ws.failures
            mode = "read" if shared else "write"

            async def waiter(i: int) -> None:
                await ws.wait(
                    i, lambda: service.lock(None, wanted(i), mode=mode, wait=WAIT, timeout=HELD_LEASE, agent=f"w{i}")
                )

            async with anyio.create_task_group() as tg:
                t0 = time.perf_counter()
                for i in range(n):
                    tg.start_soon(waiter, i)
                await wait_until(lambda: table.waiter_count + len(failures) >= n, "every waiter in line")
                out["enqueue_s"] = time.perf_counter() - t0
                if failures:
                    raise RuntimeError(f"{len(failures)} waiters failed: {failures[:3]}")
                gc.collect()
                rss1 = rss()
                out["rss_bytes_per_waiter"] = (rss1 - rss0) / n
                out["rss_mib_waiting"] = rss1 / 2**20
                status_lat = await timed(200, lambda i: _status(service, wanted(i)))
                out["status_us_with_waiters"] = p50(status_lat) * 1e6
                toks = [tokens[i] for i in range(held)]
                chunks = [toks[i : i + MAX_ITEMS] for i in range(0, held, MAX_ITEMS)]
                it = iter(chunks)

                async def releaser() -> None:
                    for chunk in it:
                        r = await service.unlock_many(None, chunk)
                        assert r.released == len(chunk), r

                t1, c1 = time.perf_counter(), time.process_time()
                with Profile(a.profile, "waiters"):
                    async with anyio.create_task_group() as rg:
                        for _ in range(a.fill_callers):
                            rg.start_soon(releaser)
                    out["release_calls_s"] = time.perf_counter() - t1
                    with anyio.fail_after(DEADLINE):
                        await ws.done.wait()
                # Granted (committed, waiter woken) by the end of the commit that served the last one.
                out["drain_committed_s"] = store.last_commit_before(ws.last_grant) - t1
                out["drain_s"] = ws.last_grant - t1
                out["drain_cpu_s"] = time.process_time() - c1
                out["granted"] = ws.granted
            gc.collect()
            out["rss_mib_after"] = rss() / 2**20
            assert table.waiter_count == 0
            assert len(table) == n
    return out


async def _status(service: LockService, node: str) -> None:
    st = await service.status(None, node)
    assert st.waiters, st


# ---------------------------------------------------------------------------------------------- expiry


def exp_node(i: int) -> str:
    return f"lease/d{i // 1000:03d}/f{i % 1000:03d}.txt"


async def run_expiry(a: argparse.Namespace) -> dict[str, float]:
    n: int = a.expiring
    nws: int = a.workspaces
    per_ws = -(-n // nws)
    limits = service_limits(a, Limits(max_waiters=max(per_ws, Limits().max_waiters), expire_batch=a.expire_batch))
    clock = ManualClock(start=1_800_000_000.0)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mcp-locks-scale-") as d:
        store = TimedStore(Path(d) / "locks.db")
        async with LockService(store, clock=clock, limits=limits) as service:
            names = ["default"] + [f"ws{k}" for k in range(1, nws)]
            for w in names[1:]:
                await service.create_workspace(w)

            def ws_of(i: int) -> str:
                return names[i % nws]

            # One lease per node, each with its own timeout, so n leases end at n distinct instants of one second.
            it = iter(range(n))
            t0 = time.perf_counter()

            async def holder() -> None:
                for i in it:
                    await service.lock(ws_of(i), exp_node(i), timeout=EXPIRY_LEASE + i / n, agent="holder")

            async with anyio.create_task_group() as tg:
                for _ in range(CONC_CALLERS):
                    tg.start_soon(holder)
            out["fill_s"] = time.perf_counter() - t0
            tables = [service.registry.actor(w).table for w in names]
            ws = Waiters(n)
            failures = ws.failures

            async def waiter(i: int) -> None:
                await ws.wait(
                    i, lambda: service.lock(ws_of(i), exp_node(i), wait=WAIT, timeout=HELD_LEASE, agent=f"w{i}")
                )

            gc.collect()
            rss0 = rss()
            async with anyio.create_task_group() as tg:
                t1 = time.perf_counter()
                for i in range(n):
                    tg.start_soon(waiter, i)
                await wait_until(
                    lambda: sum(t.waiter_count for t in tables if t is not None) + len(failures) >= n,
                    "every waiter in line",
                )
                await settle()
                out["enqueue_s"] = time.perf_counter() - t1
                if failures:
                    raise RuntimeError(f"{len(failures)} waiters failed: {failures[:3]}")
                gc.collect()
                out["rss_mib_waiting"] = rss() / 2**20
                out["rss_bytes_per_waiter"] = (rss() - rss0) / n
                first_end = min(t.next_deadline() or 0.0 for t in tables if t is not None)
                assert first_end >= clock.now() + EXPIRY_LEASE, first_end - clock.now()
                stalls: list[float] = []

                async def probe() -> None:
                    stalls.append(await longest_stall(ws.done))

                tg.start_soon(probe)
                await anyio.sleep(0.02)  # the probe has taken its first turn
                c0 = time.process_time()
                t2 = time.perf_counter()
                with Profile(a.profile, "expiry"):
                    # Every lease ends in [start + LEASE, start + LEASE + 1): move past that second at once.
                    clock.advance(EXPIRY_LEASE + 1.0)
                    with anyio.fail_after(DEADLINE):
                        await ws.done.wait()
                # All expired and all granted, durably (the waiters are woken) when that commit returns;
                # each waiter's call has returned (with its service result built) by last_grant.
                out["expire_to_committed_s"] = store.last_commit_before(ws.last_grant) - t2
                out["expire_to_all_granted_s"] = ws.last_grant - t2
                out["first_grant_s"] = min(ws.grants) - t2
                out["median_grant_s"] = statistics.median(ws.grants) - t2
                out["cpu_s"] = time.process_time() - c0
                out["granted"] = ws.granted
            out["longest_stall_s"] = stalls[0]  # the task group has ended: so has the probe
            assert all(t is not None and len(t) == per_ws and t.waiter_count == 0 for t in tables)
    return out


# ---------------------------------------------------------------------------------------------- driver

BENCHES: dict[str, Callable[[argparse.Namespace], Awaitable[dict[str, float]]]] = {
    "held": run_held,
    "waiters": run_waiters,
    "expiry": run_expiry,
}
#: (figure, target, whether lower is better), per bench, checked on the medians.
TARGETS: dict[str, list[tuple[str, float]]] = {
    "held": [
        ("pair_us_ratio", 1.5),
        ("status_us_ratio", 1.5),
        ("renew_us_ratio", 1.5),
        ("conc_ops_ratio", 1.5),
        ("rss_bytes_per_lock", 1024.0),
        ("restart_s", 15.0),
    ],
    "waiters": [],
    "expiry": [("expire_to_committed_s", 1.0), ("expire_to_all_granted_s", 1.0)],
}


def child(a: argparse.Namespace) -> None:
    tune_gc()  # as `mcp-locks serve` does
    r = anyio.run(BENCHES[a.child], a, backend="asyncio", backend_options={"use_uvloop": a.loop == "uvloop"})
    print("RESULT " + json.dumps(r), flush=True)


def fmt(r: dict[str, float]) -> str:
    return json.dumps({k: round(v, 3) if abs(v) < 100 else round(v, 1) for k, v in r.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="held,waiters,expiry", help="comma-separated: held, waiters, expiry")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--held", type=int, default=1_000_000)
    ap.add_argument("--waiters", type=int, default=10_000)
    ap.add_argument("--expiring", type=int, default=100_000)
    ap.add_argument("--workspaces", type=int, default=1, help="expiry: spread the leases over this many workspaces")
    ap.add_argument(
        "--expire-batch",
        type=int,
        default=Limits().expire_batch,
        help="expiry: leases ended per commit in a storm (Limits.expire_batch; a number above --expiring: one commit)",
    )
    ap.add_argument("--fill-callers", type=int, default=16, help="concurrent batch calls while filling")
    ap.add_argument("--layer", choices=["service", "actor"], default="service", help="held: which layer to drive")
    ap.add_argument(
        "--shape",
        choices=["distinct", "shared"],
        default="distinct",
        help="waiters: one held node per waiter, or all reading one node held by one write lock",
    )
    ap.add_argument("--no-audit", action="store_true", help="run with the audit log off (mcp-locks serve --no-audit)")
    ap.add_argument("--tracemalloc", action="store_true", help="held: also trace allocations during the fill (slow)")
    ap.add_argument("--profile", metavar="PATH", help="write pyinstrument profiles of the measured phases to PATH.*")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    ap.add_argument("--run-timeout", type=float, default=1800.0, help="seconds before a run's process is killed")
    ap.add_argument("--child", choices=list(BENCHES), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    names = [b.strip() for b in a.bench.split(",") if b.strip()]
    for b in names:
        if b not in BENCHES:
            ap.error(f"unknown bench {b!r}")
    passed = [x for x in sys.argv[1:]]
    for b in names:
        runs: list[dict[str, float]] = []
        for k in range(a.runs):
            cmd = [sys.executable, "-m", "bench.scale", *passed, "--child", b]
            t = time.perf_counter()
            p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=a.run_timeout, check=False)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode != 0 or line is None:
                print(f"{b} run {k + 1}: failed (exit {p.returncode})", file=sys.stderr)
                continue
            r = json.loads(line[len("RESULT ") :])
            runs.append(r)
            print(f"{b} run {k + 1} ({time.perf_counter() - t:.0f} s)", fmt(r), flush=True)
        if not runs:
            continue
        med: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{b} median", fmt(med), flush=True)
        verdicts = {key: ("met" if med[key] <= target else "MISSED") + f" ({med[key]:.3g} vs <= {target:g})"
                    for key, target in TARGETS[b] if key in med}  # fmt: skip
        if verdicts:
            print(f"{b} targets", json.dumps(verdicts), flush=True)


if __name__ == "__main__":
    main()
