"""An agent dies holding a lock; its lease frees the lock, and its token says why it ended.

    python examples/crash.py --url http://127.0.0.1:8765 --key "$(cat ~/.local/share/mcp-locks/admin.key)"

* A worker agent (a child process) takes a write lock on ``jobs/nightly.lock`` with a short
  lease (2 s), renewing it in the background as LockClient.lock does, and is killed with
  SIGKILL: it never releases.
* A successor agent asks for the same lock with ``wait=10``. It waits in line and is granted
  the lock when the dead worker's lease runs out, with a larger fence.
* Asked with the dead worker's token, check_lock_status answers ``yours.code = LOCK_EXPIRED``
  and when: what the worker would learn if it came back.

Every agent has a key of its own, made with the admin key for the run (see pipeline.py).
Exit status 0 if all of that happened, 1 if not, 2 if the server could not be used.
It takes about as long as the lease (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import anyio
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream
from pipeline import SetupError, agent_keys  # the per-agent keys helper, shared by the examples

from mcp_locks import LockError
from mcp_locks.client import Lease, LockClient

NODE = "jobs/nightly.lock"
LEASE = 2  # seconds: short, so the demo is quick; a real job would use minutes and let renewals run
GRANT_FIELDS = ("workspace_id", "node_id", "lock_id", "mode", "depth", "fence", "timeout")


async def worker(url: str, key: str | None) -> None:
    """The child: hold the lock and work until killed (or until the parent goes away)."""
    async with LockClient(url, key) as c, c.lock(NODE, mode="write", timeout=LEASE, note="nightly job") as lease:
        held = {f: getattr(lease, f) for f in GRANT_FIELDS}
        # To the parent over a private pipe (the token is secret): it asks with it after the crash.
        print(json.dumps(held | {"token": lease.token, "expires_at": lease.expires_at.isoformat()}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # "working"; returns when the parent closes the pipe


async def run(url: str, key: str | None) -> int:
    async with agent_keys(url, key, "worker", "successor") as keys:
        env = {**os.environ, "MCP_LOCKS_URL": url, "MCP_LOCKS_KEY": keys["worker"] or ""}
        async with await anyio.open_process(
            [sys.executable, __file__, "--worker"], env=env, stdout=subprocess.PIPE, stderr=None
        ) as proc:
            assert proc.stdout is not None
            try:
                with anyio.fail_after(15):
                    line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 1 << 16)
                grant = json.loads(line)
                print(
                    f"worker (pid {proc.pid}): holds {NODE} (lock {grant['lock_id']}, fence {grant['fence']})"
                    f" with a {LEASE} s lease, renewed in the background"
                )
            finally:
                os.kill(proc.pid, signal.SIGKILL)  # the crash (also if the worker never reported)
                died = await proc.wait()
        print(f"worker: killed by SIGKILL (exit status {died}); it never released the lock")

        async with LockClient(url, keys["successor"]) as c:
            holders = (await c.status(NODE))["holders"]
            # (Its lease may already be over on a very slow machine: then the worker's last word stands.)
            held = holders[0] if holders else {"owner": "the dead worker", "expires_at": grant["expires_at"]}
            print(
                f"successor: {NODE} is still held by {held['owner']} until {held['expires_at']};"
                " waiting in line (wait=10)"
            )
            asked = time.monotonic()
            async with c.lock(NODE, mode="write", timeout=30, wait=10) as lease:
                waited = time.monotonic() - asked
                mine = (await c.status(NODE))["holders"][0]
            print(
                f"successor: got the lock at {mine['acquired_at']} after waiting {waited:.1f} s,"
                f" with fence {lease.fence} (the dead worker's was {grant['fence']})"
            )

        # What the dead worker's token answers, asked with its key (as the worker would, if it came back).
        dead = Lease(
            **{f: grant[f] for f in GRANT_FIELDS},
            token=grant["token"],
            expires_at=datetime.fromisoformat(grant["expires_at"]),
        )
        async with LockClient(url, keys["worker"]) as c:
            yours = (await c.status(NODE, lease=dead))["yours"]
        print(f"the worker's token: held={yours['held']}, {yours['code']}: {yours['message']}")

    after_expiry = datetime.fromisoformat(mine["acquired_at"]) >= datetime.fromisoformat(held["expires_at"])
    if yours["code"] == "LOCK_EXPIRED" and after_expiry and lease.fence > grant["fence"]:
        print("OK: the lock was taken only after the dead worker's lease ran out; it ended as LOCK_EXPIRED")
        return 0
    print("UNEXPECTED: the lock did not pass on by expiry")
    return 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("MCP_LOCKS_URL", "http://127.0.0.1:8765"))
    p.add_argument("--key", default=os.environ.get("MCP_LOCKS_KEY"), help="an admin key [env MCP_LOCKS_KEY]")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    url = args.url.rstrip("/")
    if args.worker:
        anyio.run(worker, url, args.key or None)
        return
    status = 2
    try:
        status = anyio.run(run, url, args.key)
    except* (SetupError, LockError) as group:
        for e in group.exceptions:
            print(f"crash: {e.text() if isinstance(e, LockError) else e}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
