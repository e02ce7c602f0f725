"""The least an expiry storm can cost here: records and rows alone, with no lock table around them.

    python -m bench.storm_floor [--leases 100000] [--runs 3]

Issue 20 asks for 100,000 leases ending at once, each freeing a waiter, all granted within
one second. Whatever the table's design, each of those grants needs at least: the ended
lease's record, a new lease with a fresh id and 256-bit token, an event for each, and the
store's rows for both, committed. This measures those alone, with no index, no line, no
fence, no waking of a caller:

- ``records_s``: building the 100,000 ``Ended`` + ``Lease`` + two ``Event`` records and
  their two store changes, in a bare loop;
- ``commit_s``: ``SqliteStore.commit`` of those changes (100,000 new lease rows and 100,000
  ended ones, no audit segment) on a database already holding the 100,000 leases, its WAL
  checkpointed first.

``floor_s`` is their sum: a storm on this machine, in this language and with one durable
row per grant, takes at least that. Beside it, ``table_s``: the lock table itself ending the
100,000 leases and granting their waiters (``LockTable.expire``, no store), which is what the
floor leaves out. Each run is a child process of its own; medians printed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp_locks.cli.runtime import tune_gc
from mcp_locks.core.claims import Claim
from mcp_locks.core.records import Ended, EndLease, Event, Lease, PutLease, StoreChange
from mcp_locks.core.table import Limits, LockTable, new_id_and_token
from mcp_locks.stores.sqlite import SqliteStore

T0 = 1_800_000_000.0
LEASE = 60.0


def node(i: int) -> str:
    return f"lease/d{i // 1000:03d}/f{i % 1000:03d}.txt"


def held(n: int) -> list[Lease]:
    """``n`` leases as the storm finds them: one per node, each ending at its own instant of one second."""
    out = []
    for i in range(n):
        lock_id, token = new_id_and_token()
        ends = T0 + LEASE + i / n
        out.append(Lease(lock_id, token, node(i), "write", "node", "holder", None, i + 1, T0, ends, LEASE))
    return out


def records(old: list[Lease]) -> tuple[float, list[StoreChange]]:
    """End each lease and grant its node anew: records, events and store changes only."""
    now = T0 + LEASE + 1
    changes: list[StoreChange] = []
    events: list[Event] = []
    started = time.perf_counter()
    for i, le in enumerate(old):
        ended = Ended(le.lock_id, le.token, le.node_id, le.owner, "expired", le.expires_at)
        events.append(Event.of("expired", le.expires_at, le, held_ms=round((le.expires_at - T0) * 1000)))
        changes.append(EndLease(le, ended))
        lock_id, token = new_id_and_token()
        new = Lease(lock_id, token, le.node_id, "write", "node", f"w{i}", None, len(old) + i + 1, now, now + 600, 600.0)
        events.append(Event.of("granted", now, new, waited_ms=1000))
        changes.append(PutLease(new))
    return time.perf_counter() - started, changes


async def commit(old: list[Lease], changes: list[StoreChange]) -> float:
    with tempfile.TemporaryDirectory(prefix="mcp-locks-floor-") as d:
        store = SqliteStore(Path(d) / "locks.db")
        await store.open()
        try:
            await store.create_workspace("default", None, T0)
            await store.commit("default", [PutLease(le) for le in old])
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the fill's WAL is not billed to the storm
            started = time.perf_counter()
            await store.commit("default", changes)
            return time.perf_counter() - started
        finally:
            await store.close()


def table(n: int) -> float:
    """The lock table in the same storm: ``n`` held leases, a waiter on each, then one ``expire``."""
    t = LockTable("default", limits=Limits(max_waiters=n))
    for i in range(n):
        t.acquire(T0, (Claim(node(i), "write", "node"),), owner="holder", timeout=LEASE + i / n)
    for i in range(n):
        t.acquire(T0, (Claim(node(i), "write", "node"),), owner=f"w{i}", timeout=600, wait=3600)
    t.changes.clear()
    t.events.clear()
    gc.collect()
    started = time.perf_counter()
    t.expire(T0 + LEASE + 1)
    took = time.perf_counter() - started
    if len(t.outcomes) != n:
        raise RuntimeError(f"{len(t.outcomes)} of {n} waiters decided")
    return took


def child(n: int) -> dict[str, float]:
    tune_gc()  # as `mcp-locks serve` runs
    old = held(n)
    gc.collect()
    records_s, changes = records(old)
    commit_s = asyncio.run(commit(old, changes))
    del old, changes
    return {"records_s": records_s, "commit_s": commit_s, "floor_s": records_s + commit_s, "table_s": table(n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--leases", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.leases)), flush=True)
        return
    runs = []
    for k in range(a.runs):
        cmd = [sys.executable, "-m", "bench.storm_floor", "--leases", str(a.leases), "--child"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"run {k + 1}: " + json.dumps({key: round(v, 3) for key, v in r.items()}), flush=True)
        runs.append(r)
    print("median " + json.dumps({key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}))


if __name__ == "__main__":
    main()
