"""Hand-off latency: how soon a waiter is granted after the holder lets go.

    python -m bench.handoff [--rounds 200] [--redis redis://127.0.0.1:6379/15]

mcp-locks: a waiter blocked in lock_file(wait=30) over MCP streamable HTTP; the
latency is from the holder's unlock_file returning to the waiter's lock_file
returning. redis-py: the same with redis.lock.Lock (blocking acquire, default
sleep=0.1 s), from the holder's release() returning to the waiter's acquire()
returning. Both run in this one process against local servers, one after the other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid

import anyio
from mcp import Client

from ._proc import bench_server


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


async def ours(url: str, rounds: int) -> list[float]:
    lat: list[float] = []
    async with Client(f"{url}/mcp") as holder, Client(f"{url}/mcp") as waiter:
        for i in range(rounds):
            node = f"handoff/{i % 4}"
            g = await holder.call_tool("lock_file", {"node_id": node, "agent": "holder"})
            assert g.structured_content is not None, g.content
            got = anyio.Event()
            granted_at = 0.0

            async def wait_turn(node: str = node, got: anyio.Event = got) -> None:
                nonlocal granted_at
                r = await waiter.call_tool("lock_file", {"node_id": node, "agent": "waiter", "wait": 30})
                granted_at = time.perf_counter()
                assert r.structured_content is not None, r.content
                await waiter.call_tool("unlock_file", {"token": r.structured_content["token"]})
                got.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_turn)
                # Wait (bounded) until the waiter is in line, as seen by anyone.
                with anyio.fail_after(10):
                    while True:
                        st = await holder.call_tool("check_lock_status", {"node_id": node})
                        assert st.structured_content is not None
                        if st.structured_content["waiters"]:
                            break
                await holder.call_tool("unlock_file", {"token": g.structured_content["token"]})
                released_at = time.perf_counter()
                with anyio.fail_after(10):
                    await got.wait()
            lat.append((granted_at - released_at) * 1000)
    return lat


def redis_py(url: str, rounds: int) -> list[float]:
    import redis

    r = redis.Redis.from_url(url)
    r.ping()
    lat: list[float] = []
    for _ in range(rounds):
        name = f"mcp-locks-bench:{uuid.uuid4().hex}"
        holder = r.lock(name, timeout=30)
        assert holder.acquire(blocking=False)
        granted_at = 0.0
        started = threading.Event()

        def wait_turn(name: str = name, started: threading.Event = started) -> None:
            nonlocal granted_at
            lk = r.lock(name, timeout=30, blocking_timeout=10)  # polls every 0.1 s (redis-py default)
            started.set()
            assert lk.acquire()
            granted_at = time.perf_counter()
            lk.release()

        t = threading.Thread(target=wait_turn)
        t.start()
        started.wait(10)
        time.sleep(0.15)  # let it fail its first try and start polling
        holder.release()
        released_at = time.perf_counter()
        t.join(15)
        lat.append((granted_at - released_at) * 1000)
    return lat


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(xs), 2), "p99_ms": round(pct(xs, 0.99), 2), "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--redis-rounds", type=int, default=50)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    a = ap.parse_args()
    with bench_server("--store", "sqlite") as srv:
        mine = anyio.run(ours, srv.url, a.rounds)
    out = {"mcp_locks": summary(mine)}
    try:
        out["redis_py_lock"] = summary(redis_py(a.redis, a.redis_rounds))
    except Exception as e:  # the baseline is optional where no Redis runs
        out["redis_py_lock"] = {"error": str(e)[:200]}  # type: ignore[dict-item]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
