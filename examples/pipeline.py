"""The reference design's data pipeline: a scraper appends to a dataset while an analyst reads it.

    python examples/pipeline.py --url http://127.0.0.1:8765 --key "$(cat ~/.local/share/mcp-locks/admin.key)"

Two agents run at the same time, each with a key of its own: a lock's owner is its key's
agent, so two agents sharing one key would be one owner, and one waiting for the other would
be refused as a DEADLOCK. Given an admin key, the script makes a key for each agent and
revokes them at the end (on a server started with --insecure-no-auth no key is needed).

* The scraper appends batches of rows to ``data/dataset.csv`` in the working directory, each
  batch under a write lock on the node ``data/dataset.csv``. Halfway through a batch it checks
  (check_lock_status) that the analyst is waiting in line before writing the rest.
* The analyst asks for a read lock with ``wait=30`` as each batch starts, so it waits its turn,
  reads the file, and checks that every batch in it is complete.

Exit status: 0 if the analyst only ever read complete batches, 1 if it read a half-appended
file, 2 if the server could not be used. ``--unsafe`` makes the analyst read without a lock,
to show what the lock prevents (it then reads half a batch and the script exits 1).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx

from mcp_locks import LockError
from mcp_locks.client import LockClient

NODE = "data/dataset.csv"  # the lock's node id: the file's path relative to the working directory
BATCHES = 3
ROWS = 6  # rows per batch
HEADER = "batch,row,fence,value\n"


class SetupError(Exception):
    """The server or the key cannot be used for the example."""


@contextlib.asynccontextmanager
async def agent_keys(url: str, key: str | None, *agents: str) -> AsyncIterator[dict[str, str | None]]:
    """A key of its own for each agent, made with the admin key ``key`` and revoked at the end."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10, trust_env=False) as http:
        try:
            me = await http.get("/v1/me")
        except httpx.TransportError as e:
            raise SetupError(f"no lock server answers at {url} ({e}); start one with `mcp-locks serve`.") from None
        if not me.is_success:
            raise SetupError(f"the server refused the key ({me.status_code}): pass an admin key with --key.")
        if not me.json()["authenticated"]:  # --insecure-no-auth: no keys, every agent is 'anonymous'
            yield dict.fromkeys(agents)
            return
        if me.json()["role"] != "admin":
            raise SetupError("this example makes a key for each agent: pass an admin key with --key.")
        run = secrets.token_hex(3)  # a fresh name per run: an agent has one live key at a time
        made: list[dict[str, str]] = []
        try:
            for agent in agents:
                r = await http.post("/v1/admin/keys", json={"agent": f"{agent}-{run}", "workspaces": ["default"]})
                if not r.is_success:
                    raise SetupError(f"could not make a key for {agent}: {r.json()['error']['message']}")
                made.append(r.json())
            yield {agent: m["key"] for agent, m in zip(agents, made, strict=True)}
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):  # also when the run was cancelled
                for m in made:
                    await http.delete(f"/v1/admin/keys/{m['key_id']}")


def problems_in(text: str) -> list[str]:
    """What is wrong with the dataset as read: a half-written row, or a batch with missing rows."""
    found = []
    if text and not text.endswith("\n"):
        found.append("the last row is half-written")
    rows = list(csv.DictReader(io.StringIO(text)))
    for batch in sorted({r["batch"] for r in rows}):
        numbers = [r["row"] for r in rows if r["batch"] == batch]
        if numbers != [str(i) for i in range(ROWS)]:
            found.append(f"batch {batch} has {len(numbers)} of {ROWS} rows (half-appended)")
    return found


async def scraper(c: LockClient, path: Path, midway: list[anyio.Event], read_early: list[anyio.Event]) -> None:
    unsafe = bool(read_early)
    for batch in range(BATCHES):
        async with c.lock(NODE, mode="write", timeout=30, wait=30, note=f"batch {batch}") as lease:
            print(f"scraper: write lock on {NODE} (fence {lease.fence}), appending batch {batch}")
            async with await anyio.open_file(path, "a") as f:
                if await f.tell() == 0:
                    await f.write(HEADER)
                for row in range(ROWS):
                    if row == ROWS // 2:  # halfway: the analyst turns up now
                        await f.flush()
                        midway[batch].set()
                        if unsafe:
                            await read_early[batch].wait()
                        else:
                            waiters = await until_waiting(c, NODE)
                            print(f"scraper: halfway through batch {batch}; waiting for me: {waiters}")
                    await f.write(f"{batch},{row},{lease.fence},{secrets.token_hex(4)}\n")
        print(f"scraper: batch {batch} done, lock released")


async def until_waiting(c: LockClient, node: str, count: int = 1) -> str:
    """Who waits in line for ``node`` (owner and mode), once ``count`` requests do.

    The server is asked every 20 ms, for at most 10 s (the agents in these examples ask at once).
    """
    for _ in range(500):
        waiters = (await c.status(node))["waiters"]
        if len(waiters) >= count:
            return ", ".join(f"{w['owner']} ({w['mode']})" for w in waiters)
        await anyio.sleep(0.02)
    raise TimeoutError(f"nobody came to wait for {node}")


async def analyst(
    c: LockClient, path: Path, midway: list[anyio.Event], read_early: list[anyio.Event], seen: list[str]
) -> None:
    unsafe = bool(read_early)
    for batch in range(BATCHES):
        await midway[batch].wait()
        if unsafe:
            text = await anyio.Path(path).read_text()
            read_early[batch].set()
            how = "without a lock"
        else:
            asked = time.monotonic()
            async with c.lock(NODE, mode="read", timeout=30, wait=30):
                waited = time.monotonic() - asked
                text = await anyio.Path(path).read_text()
            how = f"after waiting {waited * 1000:.0f} ms for a read lock"
        problems = problems_in(text)
        rows = max(text.count("\n") - 1, 0)
        print(f"analyst: read {rows} rows {how}: " + ("; ".join(problems) or "every batch complete"))
        seen.extend(problems)


async def run(url: str, key: str | None, workdir: Path, unsafe: bool) -> int:
    path = workdir / NODE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a fresh dataset each run
    midway = [anyio.Event() for _ in range(BATCHES)]
    read_early = [anyio.Event() for _ in range(BATCHES)] if unsafe else []
    seen: list[str] = []
    async with (
        agent_keys(url, key, "scraper", "analyst") as keys,
        LockClient(url, keys["scraper"]) as scraping,
        LockClient(url, keys["analyst"]) as analysing,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(scraper, scraping, path, midway, read_early)
        tg.start_soon(analyst, analysing, path, midway, read_early, seen)
    final = problems_in(path.read_text())
    total = path.read_text().count("\n") - 1
    print(f"dataset: {path} has {total} rows in {BATCHES} batches: " + ("; ".join(final) or "consistent"))
    if seen or final:
        print("INCONSISTENT: the analyst read a half-appended dataset")
        return 1
    print("OK: the analyst only ever read complete batches")
    return 0


def example_main(name: str, doc: str | None, unsafe_help: str, run_fn: Any) -> None:
    """The command line every example shares: --url, --key, --workdir, --unsafe; exit with run_fn's status."""
    p = argparse.ArgumentParser(description=(doc or name).splitlines()[0])
    p.add_argument("--url", default=os.environ.get("MCP_LOCKS_URL", "http://127.0.0.1:8765"))
    p.add_argument("--key", default=os.environ.get("MCP_LOCKS_KEY"), help="an admin key [env MCP_LOCKS_KEY]")
    p.add_argument("--workdir", default=os.environ.get("MCP_LOCKS_EXAMPLE_DIR"), help="default: a new temp dir")
    p.add_argument("--unsafe", action="store_true", help=unsafe_help)
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"mcp-locks-{name}-"))
    status = 2
    try:
        status = anyio.run(run_fn, args.url.rstrip("/"), args.key, workdir, args.unsafe)
    except* (SetupError, LockError) as group:  # raised by an agent's task, or while setting up
        for e in group.exceptions:
            print(f"{name}: {e.text() if isinstance(e, LockError) else e}", file=sys.stderr)
    sys.exit(status)


def main() -> None:
    example_main("pipeline", __doc__, "the analyst reads without a lock", run)


if __name__ == "__main__":
    main()
