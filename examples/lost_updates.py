"""Lost updates, with and without mcp-locks: many agents increment one counter file at the same time.

    python examples/lost_updates.py --url http://127.0.0.1:8765 --key "$(cat ~/.local/share/mcp-locks/admin.key)"

Each agent is a process that adds 1 to a counter ``--increments`` times (read, add one, write back).

* Unguarded: every agent reads and writes a plain local file. Two agents that read the same value
  both write value+1, and one increment is lost; the final count comes out short.
* Guarded: the counter lives in the server's file store. Half the agents take a write lock, read
  and write with its token, and unlock; the other half are optimistic: they read the version and
  write with If-Match, and read again when the server answers 412 VERSION_MISMATCH (or 423 LOCKED
  while a lock holder works). The server refuses every write that would overwrite a change its
  writer had not seen, so the final count is exact.

Given an admin key, the script makes a key for each agent (two agents sharing a key would be one
owner, and an optimistic writer could then slip in under the other's lock) and revokes them after.
Exit status: 0 if the guarded count is exact, 1 if not, 2 if the server could not be used.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# Workers are separate processes: each imports only what it needs (16 of them start on 2 cores).

#: A run that takes longer than this is broken, not slow: every agent gives up by then.
DEADLINE = 240.0
#: An optimistic agent that lost a race waits a random time up to this, doubling per loss (seconds).
BACKOFF_FIRST = 0.002
BACKOFF_MOST = 0.2


def unguarded_agent(path: Path, increments: int) -> None:
    """Read, add one, write back: no coordination at all."""
    for _ in range(increments):
        value = int(path.read_text() or "0")
        path.write_text(str(value + 1))


def guarded_agent(url: str, key: str | None, agent: str, node: str, increments: int, locked: bool) -> None:
    """Increment the counter in the file store, under a lock or optimistically."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    files = f"/v1/workspaces/default/files/{node}"
    lock = f"/v1/workspaces/default/nodes/{node}/lock"
    give_up = time.monotonic() + DEADLINE
    backoff = BACKOFF_FIRST
    with httpx.Client(base_url=url, headers=headers, timeout=60, trust_env=False) as http:
        done = 0
        while done < increments:
            if time.monotonic() > give_up:
                raise SystemExit(f"{agent}: gave up after {DEADLINE:g} s with {done} increments")
            if locked:
                grant = http.post(lock, json={"mode": "write", "timeout": 30, "wait": 60, "agent": agent})
                grant.raise_for_status()
                token = {"Lock-Token": grant.json()["token"]}
                try:
                    value = int(http.get(files, headers=token).raise_for_status().text)
                    http.put(files, content=str(value + 1), headers=token, params={"agent": agent}).raise_for_status()
                finally:
                    http.request("DELETE", lock, headers=token).raise_for_status()
                done += 1
                continue
            read = http.get(files, params={"agent": agent})
            if read.status_code != 423:  # 423: a lock holder is writing it
                read.raise_for_status()
                put = http.put(
                    files,
                    content=str(int(read.text) + 1),
                    headers={"If-Match": read.headers["etag"]},
                    params={"agent": agent},
                )
                if put.status_code not in (412, 423):  # 412: someone wrote first; 423: someone locked it
                    put.raise_for_status()
                    done += 1
                    backoff = BACKOFF_FIRST
                    continue
            # Exponential backoff with full jitter: contenders spread out instead of retrying in step.
            time.sleep(random.uniform(0, backoff))
            backoff = min(backoff * 2, BACKOFF_MOST)


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.DEVNULL)


def wait_all(procs: list[subprocess.Popen[bytes]]) -> bool:
    ok = True
    for p in procs:
        try:
            ok &= p.wait(timeout=DEADLINE + 30) == 0
        except subprocess.TimeoutExpired:
            p.kill()
            ok = False
    return ok


def run_unguarded(agents: int, increments: int, workdir: Path) -> int:
    path = workdir / "counter.txt"
    path.write_text("0")
    wait_all([spawn("--worker", "unguarded", "--path", str(path), "--increments", str(increments))
              for _ in range(agents)])  # fmt: skip
    return int(path.read_text() or "0")


async def run_guarded(url: str, key: str | None, agents: int, increments: int) -> int:
    import anyio
    from pipeline import SetupError, agent_keys  # the examples share their key helper

    names = [f"{'locker' if i % 2 == 0 else 'optimist'}-{i}" for i in range(agents)]
    node = f"counters/{secrets.token_hex(4)}.txt"
    async with agent_keys(url, key, *names) as keys:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, trust_env=False) as http:
            made = await http.put(f"/v1/workspaces/default/files/{node}", content=b"0",
                                  headers={"If-None-Match": "*"})  # fmt: skip
            if not made.is_success:
                raise SetupError(f"could not create the counter: {made.text}")
            procs = []
            for name in names:
                env = {**os.environ, "LOST_UPDATES_KEY": keys[name] or ""}
                mode = "locked" if name.startswith("locker") else "optimistic"
                args = [sys.executable, __file__, "--worker", mode, "--url", url, "--agent", name, "--node", node,
                        "--increments", str(increments)]  # fmt: skip
                procs.append(subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL))  # noqa: ASYNC220 - all at once
            ok = await anyio.to_thread.run_sync(wait_all, procs)
            final = await http.get(f"/v1/workspaces/default/files/{node}")
            if not ok:
                print("some guarded agents failed", file=sys.stderr)
            return int(final.text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("MCP_LOCKS_URL", "http://127.0.0.1:8765"))
    p.add_argument("--key", default=os.environ.get("MCP_LOCKS_KEY"))
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--increments", type=int, default=200)
    p.add_argument("--workdir", type=Path, default=None, help="Where the unguarded counter file goes.")
    p.add_argument("--worker", choices=["unguarded", "locked", "optimistic"], help=argparse.SUPPRESS)
    p.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--agent", help=argparse.SUPPRESS)
    p.add_argument("--node", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "unguarded":
        unguarded_agent(a.path, a.increments)
        return
    if a.worker is not None:
        key = os.environ.get("LOST_UPDATES_KEY") or None
        guarded_agent(a.url, key, a.agent, a.node, a.increments, a.worker == "locked")
        return
    expected = a.agents * a.increments
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="lost-updates-"))
    unguarded = run_unguarded(a.agents, a.increments, workdir)
    print(f"unguarded (plain read/write of {workdir / 'counter.txt'}): {unguarded} of {expected}"
          f" ({expected - unguarded} increments lost)")  # fmt: skip
    import anyio

    sys.path.insert(0, str(Path(__file__).parent))
    from pipeline import SetupError

    try:
        guarded = anyio.run(run_guarded, a.url, a.key, a.agents, a.increments)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"guarded (mcp-locks, half locked, half optimistic): {guarded} of {expected}"
          f" ({expected - guarded} increments lost)")  # fmt: skip
    raise SystemExit(0 if guarded == expected else 1)


if __name__ == "__main__":
    main()
