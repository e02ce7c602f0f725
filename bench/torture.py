"""Torture: client processes hammer one server while nemeses pause, kill and cut; then check the history.

    python -m bench.torture [--seconds 90 | --minutes 10] [--clients 5] [--seed N] [--keep]

A real server (``mcp-locks serve``, SQLite in a fresh folder) sits behind a TCP
proxy on loopback. N client processes each loop over random calls through the
REST API — lock (read/write, node/tree, with random waits), lock_files,
renew, upgrade, unlock, write a file under a lock, increment a shared counter
file (lock, read, write +1, unlock) and plain reads — and record every call's
invocation and answer (:mod:`bench.safety.history`). Meanwhile the nemeses:

- **pause**: SIGSTOP a client for longer than its leases, then SIGCONT it (it
  wakes holding tokens whose leases are over, and tries to use them);
- **kill**: SIGKILL a client, maybe mid-call, and start a fresh one;
- **cut**: close every connection through the proxy (calls in flight become
  "maybe happened");
- **crash**: SIGKILL the server and start it again on the same data.

At the end the nemeses stop, every lease runs out, a last reader reads every
file, and :func:`bench.safety.checker.check` runs over the whole history. The
seed is printed first; the same seed replays the same choices (the timing of
processes is the machine's). Exit status 1 if any promise was broken.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from bench.cluster import Node
from bench.safety.checker import check
from bench.safety.history import Recorder, load

#: Every lease the clients take, in seconds: short so that paused clients outlive theirs
#: and the checker sees many expiries, long enough that a busy 2-vCPU machine does not
#: make live clients lose theirs on every call.
LEASE = 2.0
#: How long a pause lasts: always past a lease, so the paused holder wakes up expired.
PAUSE = (LEASE + 0.5, LEASE + 2.0)
FOLDERS = ("d0", "d1", "d2")
FILES = ("f0", "f1", "f2")
COUNTER = "n"
WS = "default"


# ---------------------------------------------------------------- one client process


def _when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _grant(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": body["token"],
        "fence": body["fence"],
        "expires_at": _when(body["expires_at"]),
        "node": body["node_id"],
        "mode": body["mode"],
        "depth": body["depth"],
        "owner": body["owner"],
    }


class Gone(Exception):
    """The call's outcome is unknown (connection lost, server gone mid-call)."""


class Client:
    """One torture client: random calls, each recorded before it is sent and when it is answered."""

    def __init__(self, url: str, name: str, seed: int, out: Path) -> None:
        self.rng = random.Random(seed)
        self.rec = Recorder(out, name)
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(LEASE + 6.0))
        self.held: dict[str, dict[str, Any]] = {}  # token -> grant
        self.seq = 0
        self.name = name
        self.last_version = 0
        self.last_node = ""

    def call(
        self, kind: str, args: dict[str, Any], method: str, path: str, *, body: Any = None, headers: Any = None,
        content: bytes | None = None,
    ) -> tuple[int, bool, Any]:  # fmt: skip
        """Send one request and record it: (call id, True, the response) or (call id, False, the refusal's code).

        On success the caller records the answer (it knows what to keep of it); raises Gone when the
        outcome is unknown.
        """
        op = self.rec.invoke(kind, args)  # type: ignore[arg-type]
        try:
            r = self.http.request(method, path, json=body, headers=headers, content=content)
        except httpx.ConnectError:
            self.rec.done(op, False, {"code": "NO_CONNECTION"})  # refused before anything was sent
            return op, False, "NO_CONNECTION"
        except httpx.HTTPError as e:
            raise Gone(str(e)) from None
        if r.status_code >= 500:
            raise Gone(f"HTTP {r.status_code}")  # the server may have got as far as committing
        if r.status_code >= 400:
            code = r.json()["error"]["code"]
            self.rec.done(op, False, {"code": code})
            return op, False, code
        return op, True, r

    def forget(self, token: str) -> None:
        """A call on this token had an unknown outcome: a careful client stops using the lease."""
        self.held.pop(token, None)

    # -------------------------------------------------------------- the calls

    def lock(self, node: str, mode: str, depth: str, wait: float) -> dict[str, Any] | None:
        args = {"node": node, "mode": mode, "depth": depth, "timeout": LEASE, "wait": wait}
        body = {"mode": mode, "depth": depth, "timeout": LEASE, "wait": wait, "agent": self.name}
        op, ok, r = self.call("lock", args, "POST", f"/v1/workspaces/{WS}/nodes/{quote(node)}/lock", body=body)
        if not ok:
            return None
        g = _grant(r.json())
        self.rec.done(op, True, g)
        self.held[g["token"]] = g
        return g

    def lock_files(self, folder: str) -> None:
        names = self.rng.sample(FILES, self.rng.choice((2, 3)))
        items = [{"node": f"{folder}/{n}", "mode": "write", "depth": "node"} for n in names]
        body = {
            "items": [{"node_id": i["node"], "mode": "write"} for i in items],
            "timeout": LEASE,
            "wait": self.rng.choice((0, 0.5)),
            "agent": self.name,
        }
        op, ok, r = self.call("lock_files", {"items": items}, "POST", f"/v1/workspaces/{WS}/locks/batch", body=body)
        if ok:
            grants = [_grant(x) for x in r.json()["locks"]]
            self.rec.done(op, True, {"grants": grants})
            for g in grants:
                self.held[g["token"]] = g

    def change_mode(self, g: dict[str, Any], mode: str) -> None:
        """Upgrade a read lock to write, or downgrade a write lock to read (same token, a new fence)."""
        args = {"node": g["node"], "mode": mode, "depth": g["depth"], "token": g["token"], "timeout": LEASE}
        body = {"mode": mode, "depth": g["depth"], "timeout": LEASE, "wait": 0, "token": g["token"]}
        try:
            op, ok, r = self.call("lock", args, "POST", f"/v1/workspaces/{WS}/nodes/{quote(g['node'])}/lock", body=body)
        except Gone:
            self.forget(g["token"])
            raise
        if ok:
            ng = _grant(r.json())
            self.rec.done(op, True, ng)
            self.held[g["token"]] = ng
        elif r in ("LOCK_EXPIRED", "LOCK_NOT_FOUND", "LOCK_BROKEN"):
            self.forget(g["token"])

    def renew(self, g: dict[str, Any]) -> None:
        path = f"/v1/workspaces/{WS}/nodes/{quote(g['node'])}/lock/renew"
        try:
            op, ok, r = self.call("renew", {"token": g["token"], "timeout": LEASE}, "POST", path,
                                 body={"token": g["token"], "timeout": LEASE})  # fmt: skip
        except Gone:
            self.forget(g["token"])
            raise
        if ok:
            until = _when(r.json()["expires_at"])
            self.rec.done(op, True, {"expires_at": until})
            g["expires_at"] = until
        else:
            self.forget(g["token"])

    def unlock(self, g: dict[str, Any]) -> None:
        self.forget(g["token"])
        path = f"/v1/workspaces/{WS}/nodes/{quote(g['node'])}/lock"
        op, ok, _r = self.call("unlock", {"token": g["token"]}, "DELETE", path, headers={"Lock-Token": g["token"]})
        if ok:
            self.rec.done(op, True, {})

    def write_if_version(self, node: str, version: int, value: Any, inc: bool = False) -> None:
        """Write without a lock, over the version read (0: create only)."""
        args: dict[str, Any] = {"node": node, "if_version": version, "value": value}
        if inc:
            args["inc"] = True
        # The agent names the writer (no keys in the torture): another agent's lock on the file refuses it.
        path = f"/v1/workspaces/{WS}/files/{quote(node)}?if_version={version}&agent={self.name}"
        op, ok, r = self.call("write", args, "PUT", path, content=json.dumps(value).encode())
        if ok:
            f = r.json()["file"]
            self.rec.done(op, True, {"version": f["version"], "fence": f["fence"]})

    def write(self, g: dict[str, Any], node: str, value: Any, inc: bool = False) -> bool:
        self.seq += 1
        args: dict[str, Any] = {"node": node, "token": g["token"], "value": value}
        if inc:
            args["inc"] = True
        try:
            op, ok, r = self.call("write", args, "PUT", f"/v1/workspaces/{WS}/files/{quote(node)}",
                                 headers={"Lock-Token": g["token"]}, content=json.dumps(value).encode())  # fmt: skip
        except Gone:
            self.forget(g["token"])
            raise
        if ok:
            f = r.json()["file"]
            self.rec.done(op, True, {"version": f["version"], "fence": f["fence"]})
        elif r in ("LOCK_EXPIRED", "LOCK_NOT_FOUND", "LOCK_BROKEN"):
            self.forget(g["token"])
        return bool(ok)

    def read(self, node: str, token: str | None = None, final: bool = False) -> tuple[bool, Any]:
        """(True, the file's value) or (False, the refusal's code)."""
        args: dict[str, Any] = {"node": node}
        self.last_node = node
        if token is not None:
            args["token"] = token
        if final:
            args["final"] = True
        headers = {"Lock-Token": token} if token else None
        try:
            op, ok, r = self.call("read", args, "GET", f"/v1/workspaces/{WS}/files/{quote(node)}", headers=headers)
        except Gone:
            if token is not None:
                self.forget(token)
            raise
        if not ok:
            if token is not None and r in ("LOCK_EXPIRED", "LOCK_NOT_FOUND", "LOCK_BROKEN"):
                self.forget(token)
            return False, r
        value = json.loads(r.content)
        self.last_version = int(r.headers["X-Version"])
        self.rec.done(op, True, {"version": self.last_version, "value": value})
        return True, value

    def increment_if_version(self) -> None:
        """Read the counter and write it + 1 over the version read, with no lock: the optimistic path."""
        node = f"{self.rng.choice(FOLDERS)}/{COUNTER}"
        ok, value = self.read(node)
        if not ok and value == "NOT_FOUND":
            ok, value, self.last_version = True, 0, 0
        if ok:
            self.pause_maybe()
            self.write_if_version(node, self.last_version, value + 1, inc=True)

    def increment(self) -> None:
        """Lock the folder's counter, read it, write it + 1, unlock: the lost-update check."""
        node = f"{self.rng.choice(FOLDERS)}/{COUNTER}"
        g = self.lock(node, "write", "node", wait=1.0)
        if g is None:
            return
        ok, value = self.read(node, g["token"])
        if not ok and value == "NOT_FOUND":
            ok, value = True, 0  # no counter yet
        if ok and g["token"] in self.held:
            self.pause_maybe()
            self.write(g, node, value + 1, inc=True)
        if g["token"] in self.held:
            self.unlock(g)

    def pause_maybe(self) -> None:
        # Sometimes dawdle past the lease mid-transaction, like an agent that thinks for too long.
        if self.rng.random() < 0.05:
            time.sleep(self.rng.uniform(LEASE * 0.8, LEASE * 1.5))

    def one(self) -> None:
        """One random move."""
        rng = self.rng
        r = rng.random()
        held = list(self.held.values())
        if r < 0.22 or not held:
            folder = rng.choice(FOLDERS)
            if rng.random() < 0.2:
                self.lock(folder, rng.choice(("read", "write")), "tree", rng.choice((0, 0, 0.5)))
            else:
                self.lock(f"{folder}/{rng.choice(FILES)}", rng.choice(("read", "write")), "node",
                          rng.choice((0, 0, 0.3, 1.0)))  # fmt: skip
        elif r < 0.30:
            self.lock_files(rng.choice(FOLDERS))
        elif r < 0.40:
            self.renew(rng.choice(held))
        elif r < 0.46:
            g = rng.choice(held)
            self.change_mode(g, "write" if g["mode"] == "read" else "read")
        elif r < 0.64:
            writes = [g for g in held if g["mode"] == "write"]
            if writes:
                g = rng.choice(writes)
                node = g["node"] if g["depth"] == "node" else f"{g['node']}/{rng.choice(FILES)}"
                self.pause_maybe()
                self.write(g, node, f"{self.name}:{self.seq}")
        elif r < 0.70:
            self.increment()
        elif r < 0.76:
            self.increment_if_version()
        elif r < 0.78:
            ok, _ = self.read(f"{rng.choice(FOLDERS)}/{rng.choice(FILES)}")
            if ok:
                self.write_if_version(self.last_node, self.last_version, f"{self.name}:v{self.seq}")
        elif r < 0.84:
            self.read(f"{rng.choice(FOLDERS)}/{rng.choice(FILES)}")
        else:
            self.unlock(rng.choice(held))
        if len(self.held) > 3:
            self.unlock(rng.choice(list(self.held.values())))

    def run(self, until: float) -> None:
        while time.time() < until:
            try:
                self.one()
            except Gone:
                time.sleep(self.rng.uniform(0.2, 0.6))  # the server may be restarting: do not spin
            time.sleep(self.rng.uniform(0, 0.03))


def client_main(args: argparse.Namespace) -> None:
    c = Client(args.url, args.name, args.seed, Path(args.out))
    c.run(args.until)


# ---------------------------------------------------------------- the server and the proxy


class Proxy:
    """A TCP relay on loopback whose connections a nemesis can cut all at once.

    ``target`` names the port each new connection goes to (None: refuse it).
    """

    def __init__(self, target: Callable[[], int | None]) -> None:
        self.target = target
        self.scopes: set[anyio.CancelScope] = set()
        self.port = 0

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            port = self.target()
            if port is None:
                return
            try:
                up = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                return
            async with up, anyio.create_task_group() as tg:
                self.scopes.add(tg.cancel_scope)

                async def pump(a: anyio.abc.SocketStream, b: anyio.abc.SocketStream) -> None:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        async for chunk in a:
                            await b.send(chunk)
                    tg.cancel_scope.cancel()

                tg.start_soon(pump, client, up)
                tg.start_soon(pump, up, client)
            self.scopes.discard(tg.cancel_scope)

    def cut(self) -> int:
        n = len(self.scopes)
        for s in list(self.scopes):
            s.cancel()
        return n

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        async with listener:
            await listener.serve(self._relay)


def round_robin(nodes: list[Node]) -> Callable[[], int | None]:
    """Each call: the port of the next node that is up (None if none is)."""
    turn = itertools.count()

    def pick() -> int | None:
        live = [n for n in nodes if n.up]
        return live[next(turn) % len(live)].port if live else None

    return pick


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    """One torture run's processes and counts."""

    args: argparse.Namespace
    dir: Path
    rng: random.Random
    servers: list[Node]
    proxy: Proxy
    until: float = 0.0
    clients: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    nemesis: Counter[str] = field(default_factory=Counter)
    made: int = 0

    def spawn(self) -> None:
        self.made += 1
        name = f"c{self.made}"
        self.clients[name] = subprocess.Popen(
            [sys.executable, "-m", "bench.torture", "client", "--url", f"http://127.0.0.1:{self.proxy.port}",
             "--name", name, "--seed", str(self.rng.randrange(2**32)), "--until", str(self.until),
             "--out", str(self.dir / f"{name}.jsonl")],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    async def nemeses(self) -> None:
        rng = self.rng
        first = ["pause", "kill", "cut", "crash"]  # every kind at least once, then at random
        rng.shuffle(first)
        while time.time() < self.until - PAUSE[1] - 1:
            await anyio.sleep(rng.uniform(0.5, 2.5))
            live = [n for n, p in self.clients.items() if p.poll() is None and n not in self.paused]
            what = first.pop() if first else rng.choice(("pause", "pause", "kill", "cut", "cut", "crash"))
            if what == "pause" and live:
                name = rng.choice(live)
                os.kill(self.clients[name].pid, signal.SIGSTOP)
                self.paused.add(name)
                self.nemesis["pause"] += 1

                async def wake(name: str, after: float) -> None:
                    await anyio.sleep(after)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.clients[name].pid, signal.SIGCONT)
                    self.paused.discard(name)

                self._tg.start_soon(wake, name, rng.uniform(*PAUSE))
            elif what == "kill" and live:
                name = rng.choice(live)
                os.kill(self.clients[name].pid, signal.SIGKILL)
                self.clients[name].wait()
                self.nemesis["kill"] += 1
                self.spawn()
            elif what == "cut":
                self.proxy.cut()
                self.nemesis["cut"] += 1
            elif what == "crash":  # with several servers: one of them, while the others go on
                server = rng.choice(self.servers)
                server.kill()
                await anyio.sleep(rng.uniform(0.1, 0.8))
                await anyio.to_thread.run_sync(server.start)
                self.nemesis["crash"] += 1

    async def main(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self.proxy.serve)
            self.until = time.time() + self.args.seconds
            for _ in range(self.args.clients):
                self.spawn()
            await self.nemeses()
            for name in list(self.paused):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.clients[name].pid, signal.SIGCONT)
            for p in list(self.clients.values()):
                await anyio.to_thread.run_sync(_wait_or_kill, p, self.until + LEASE + 15 - time.time())
            tg.cancel_scope.cancel()


def _wait_or_kill(p: subprocess.Popen[bytes], seconds: float) -> None:
    try:
        p.wait(max(1.0, seconds))
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def final_reads(url: str, out: Path) -> None:
    """Once every lease is over, read every file: the state every acknowledged write must be in."""
    c = Client(url, "final", 0, out)
    for folder in FOLDERS:
        for name in (*FILES, COUNTER):
            for _ in range(20):
                try:
                    c.read(f"{folder}/{name}", final=True)
                    break
                except Gone:
                    time.sleep(0.2)


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.torture", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    cl = sub.add_parser("client")
    cl.add_argument("--url", required=True)
    cl.add_argument("--name", required=True)
    cl.add_argument("--seed", type=int, required=True)
    cl.add_argument("--until", type=float, required=True)
    cl.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=90)
    p.add_argument("--minutes", type=float)
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--seed", type=int)
    p.add_argument("--keep", action="store_true", help="keep the history and the server's folder")
    p.add_argument("--store", help="a postgresql:// URL: run --servers servers on it (a new schema, dropped after)")
    p.add_argument("--servers", type=int, default=1)
    args = p.parse_args(argv)
    if args.cmd == "client":
        client_main(args)
        return 0
    if args.minutes:
        args.seconds = args.minutes * 60
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    cluster = f" --store {args.store} --servers {args.servers}" if args.store else ""
    print(f"seed {seed}  (replay: python -m bench.torture --seconds {args.seconds:g} --clients {args.clients}"
          f" --seed {seed}{cluster})", flush=True)  # fmt: skip
    if args.servers > 1 and not args.store:
        p.error("--servers above 1 needs --store postgresql://...")
    work = Path(tempfile.mkdtemp(prefix="mcp-locks-torture-"))
    schema = f"torture_{seed}" if args.store else None
    # On PostgreSQL each server has a folder of its own: file content is in the database, each folder a copy.
    servers = [
        Node(f"server{i + 1}", args.store, schema, work / (f"data{i + 1}" if args.store else "data"))
        for i in range(args.servers)
    ]
    (work / "history").mkdir()
    run = Run(args, work / "history", random.Random(seed), servers, Proxy(round_robin(servers)))
    failed = True
    try:
        for server in servers:
            server.start()
        started = time.time()
        try:
            anyio.run(run.main)
        except Exception as e:  # a server would not restart, say: no verdict on the history
            print(f"torture stopped early: {e!r}; see {work}", flush=True)
            return 2
        time.sleep(LEASE + 0.5)  # every lease is over: the final reads see only what was acknowledged
        final_reads(f"http://127.0.0.1:{servers[0].port}", run.dir / "final.jsonl")
        ran = time.time() - started
        ops = load(sorted(run.dir.glob("*.jsonl")))
        report = check(ops)
        failed = not report.ok
        print(report.summary())
        result = {
            "seed": seed,
            "seconds": round(ran, 1),
            "clients": args.clients,
            "servers": args.servers,
            "client_processes": run.made,
            "calls": len(ops),
            "answered": sum(o.known for o in ops),
            "maybe": report.maybe,
            "granted": sum(1 for o in ops if o.kind in ("lock", "lock_files") and o.ok),
            "writes_acknowledged": sum(1 for o in ops if o.kind == "write" and o.ok),
            "refusals": dict(Counter(o.code for o in ops if o.ok is False)),
            "nemesis": dict(run.nemesis),
            "violations": len(report.violations),
            "undecided": report.undecided,
            "check_seconds": round(report.seconds, 1),
        }
        print("result " + json.dumps(result), flush=True)
    finally:
        for proc in run.clients.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for server in servers:
            server.stop()
        if failed or args.keep:
            print(f"kept: {work}", flush=True)
            if schema:
                print(f"kept schema: {schema}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
            if schema and args.store:
                _drop_schema(args.store, schema)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
