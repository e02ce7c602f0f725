"""Torture: client processes hammer one server (or a cluster) while nemeses strike; then check the history.

    python -m bench.torture [--seconds 90 | --minutes 10] [--clients 5] [--seed N] [--keep]
                            [--face rest|mcp|both] [--store sqlite|postgres|postgresql://...] [--servers N]
                            [--no-keys] [--lenient-revocation]

Real servers (``mcp-locks serve``) sit behind a TCP proxy on loopback: one on SQLite in a fresh folder,
or ``--servers N`` on PostgreSQL — ``--store postgres`` starts a PostgreSQL instance of the run's own
(:mod:`bench.torture_pg`), which a nemesis restarts; a ``postgresql://`` URL uses that database (a new
schema). Every server requires API keys: each client process gets a key for its own agent from the admin
API (``--no-keys``: none, agents named by argument). N client processes each loop over random calls
through one face — REST or MCP tools over streamable HTTP (``--face``, :mod:`bench.torture_faces`) — lock
(read/write, node/tree, with random waits), lock_files, renew, upgrade, unlock, write a file under a lock,
commit a resumable upload under a lock, increment a shared counter file (lock, read, write +1, unlock, or
by version with no lock) and plain reads, and record every call's invocation and answer
(:mod:`bench.safety.history`). Meanwhile the nemeses:

- **pause**: SIGSTOP a client for longer than its leases, then SIGCONT it (it
  wakes holding tokens whose leases are over, and tries to use them);
- **kill**: SIGKILL a client, maybe mid-call, and start a fresh one;
- **cut**: close every connection through the proxy (calls in flight become
  "maybe happened");
- **crash**: SIGKILL a server and start it again on the same data (with several, the others go on);
- **force**: the admin breaks a lock someone holds (force-unlock);
- **revoke**: the admin revokes a client's key, then issues its agent a new one (with keys);
- **dbrestart**: restart the run's own PostgreSQL, cleanly or as a crash (``--store postgres``).

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
from pathlib import Path
from typing import Any

import anyio

from bench.cluster import Node
from bench.safety.checker import check
from bench.safety.history import TOKEN_GONE, Kind, Recorder, load
from bench.torture_admin import Admin, AuthNode, admin_key
from bench.torture_faces import FACES, Face, Gone, Keys, RestFace
from bench.torture_pg import OwnPostgres

#: Every lease the clients take, in seconds: short so that paused clients outlive theirs
#: and the checker sees many expiries, long enough that a busy 2-vCPU machine does not
#: make live clients lose theirs on every call.
LEASE = 2.0
#: How long a pause lasts: always past a lease, so the paused holder wakes up expired.
PAUSE = (LEASE + 0.5, LEASE + 2.0)
#: How long a client's agent goes without a key between its revocation and the new one.
KEYLESS = (0.3, 1.5)
#: How long every server has, after the database restarted, to serve again: a reconnect takes well under one.
RECOVER = 15.0
#: How long after a database restart the servers are looked at (see Run._dbrestart).
SETTLE = 3.0
#: Top-level folders by default: each is a group of its own for the checker and a place of contention.
FOLDERS = 3
FILES = ("f0", "f1", "f2")
COUNTER = "n"
#: Refusals after which a careful client stops using a token: its lease is over, or not its key's.
FORGET = TOKEN_GONE | {"FORBIDDEN"}
#: How often each nemesis is picked, once each kind has struck once.
WEIGHTS = {"pause": 2, "kill": 1, "cut": 2, "crash": 1, "force": 2, "revoke": 1, "dbrestart": 1}


# ---------------------------------------------------------------- one client process


class Client:
    """One torture client: random calls, each recorded before it is sent and when it is answered."""

    def __init__(self, face: Face, name: str, seed: int, out: Path, folders: int = FOLDERS) -> None:
        self.rng = random.Random(seed)
        self.folders = [f"d{i}" for i in range(folders)]
        self.rec = Recorder(out, name)
        self.face = face
        self.keys = face.keys
        self.held: dict[str, dict[str, Any]] = {}  # token -> grant
        self.seq = 0
        self.name = name
        self.last_version = 0
        self.last_node = ""

    def call(self, kind: Kind, args: dict[str, Any], send: Callable[[], tuple[bool, Any]],
             keep: Callable[[Any], dict[str, Any]] = lambda out: out) -> tuple[bool, Any]:  # fmt: skip
        """Record a call, send it, record its answer: (True, what ``keep`` kept) or (False, the refusal's code).

        Raises Gone when the outcome is unknown (the call stays "maybe happened" in the history).
        """
        if self.keys.key:
            args = {**args, "key": self.keys.key_id}
        op = self.rec.invoke(kind, args)
        ok, out = send()
        if not ok:
            self.rec.done(op, False, {"code": out})
            if out == "UNAUTHENTICATED":
                self._rekey()
            return False, out
        kept = keep(out)
        self.rec.done(op, True, kept)
        return True, kept

    def _rekey(self) -> None:
        """Our key was revoked: take the new one once the admin has issued it (until then, wait a little)."""
        if self.keys.reload():
            reset = getattr(self.face, "reset", None)
            if reset is not None:
                reset()  # an MCP session carries its key: open the next one with the new key
        else:
            time.sleep(self.rng.uniform(0.05, 0.2))

    def forget(self, token: str) -> None:
        """A call on this token had an unknown outcome: a careful client stops using the lease."""
        self.held.pop(token, None)

    def on_token(self, token: str, send: Callable[[], tuple[bool, Any]]) -> Callable[[], tuple[bool, Any]]:
        """``send``, forgetting ``token`` when the outcome is unknown or the lease is over."""

        def sent() -> tuple[bool, Any]:
            try:
                ok, out = send()
            except Gone:
                self.forget(token)
                raise
            if not ok and out in FORGET:
                self.forget(token)
            return ok, out

        return sent

    # -------------------------------------------------------------- the calls

    def lock(self, node: str, mode: str, depth: str, wait: float) -> dict[str, Any] | None:
        args = {"node": node, "mode": mode, "depth": depth, "timeout": LEASE, "wait": wait}
        body = {"mode": mode, "depth": depth, "timeout": LEASE, "wait": wait, "agent": self.name}
        ok, out = self.call("lock", args, lambda: self.face.lock(node, body))
        if not ok:
            return None
        g: dict[str, Any] = out
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
        ok, out = self.call("lock_files", {"items": items}, lambda: self.face.lock_files(body),
                            lambda grants: {"grants": grants})  # fmt: skip
        if ok:
            for g in out["grants"]:
                self.held[g["token"]] = g

    def change_mode(self, g: dict[str, Any], mode: str) -> None:
        """Upgrade a read lock to write, or downgrade a write lock to read (same token, a new fence)."""
        args = {"node": g["node"], "mode": mode, "depth": g["depth"], "token": g["token"], "timeout": LEASE}
        body = {"mode": mode, "depth": g["depth"], "timeout": LEASE, "wait": 0, "token": g["token"]}
        ok, ng = self.call("lock", args, self.on_token(g["token"], lambda: self.face.lock(g["node"], body)))
        if ok:
            self.held[g["token"]] = ng

    def renew(self, g: dict[str, Any]) -> None:
        send = self.on_token(g["token"], lambda: self.face.renew(g["node"], g["token"], LEASE))
        ok, out = self.call("renew", {"token": g["token"], "timeout": LEASE}, send)
        if ok:
            g["expires_at"] = out["expires_at"]
        else:
            self.forget(g["token"])

    def unlock(self, g: dict[str, Any]) -> None:
        self.forget(g["token"])
        self.call("unlock", {"token": g["token"]}, lambda: self.face.unlock(g["node"], g["token"]))

    def write_if_version(self, node: str, version: int, value: Any, inc: bool = False) -> None:
        """Write without a lock, over the version read (0: create only)."""
        args: dict[str, Any] = {"node": node, "if_version": version, "value": value}
        if inc:
            args["inc"] = True
        # The writer is its key's agent (or, without keys, the agent it names): another agent's lock refuses it.
        self.call("write", args, lambda: self.face.write(node, json.dumps(value).encode(), None, version, self.name))

    def write(self, g: dict[str, Any], node: str, value: Any, inc: bool = False) -> bool:
        self.seq += 1
        args: dict[str, Any] = {"node": node, "token": g["token"], "value": value}
        if inc:
            args["inc"] = True
        content = json.dumps(value).encode()
        ok, _ = self.call("write", args, self.on_token(g["token"],
                          lambda: self.face.write(node, content, g["token"], None, self.name)))  # fmt: skip
        return ok

    def upload(self, g: dict[str, Any], node: str) -> None:
        """A resumable upload under the write lock ``g``: chunks first, then the commit (the recorded write)."""
        self.seq += 1
        value = f"{self.name}:u{self.seq}"
        content = json.dumps(value).encode()
        cut = self.rng.randrange(1, len(content))
        upload_id = self.face.start_upload(node, [content[:cut], content[cut:]])
        if upload_id is None:
            return  # the upload could not be set up: nothing was written
        args = {"node": node, "token": g["token"], "value": value, "upload": upload_id}
        self.pause_maybe()
        for attempt in range(2):  # a commit whose answer was lost is sent again: it must not commit twice
            try:
                self.call("upload", args, self.on_token(g["token"],
                          lambda: self.face.complete_upload(upload_id, node, g["token"], content)))  # fmt: skip
                return
            except Gone:
                if attempt:
                    raise
                time.sleep(self.rng.uniform(0.2, 0.6))

    def read(self, node: str, token: str | None = None, final: bool = False) -> tuple[bool, Any]:
        """(True, the file's value) or (False, the refusal's code)."""
        args: dict[str, Any] = {"node": node}
        self.last_node = node
        if token is not None:
            args["token"] = token
        if final:
            args["final"] = True
        send = (lambda: self.face.read(node, token)) if token is None else self.on_token(
            token, lambda: self.face.read(node, token))  # fmt: skip
        ok, out = self.call("read", args, send)
        if not ok:
            return False, out
        self.last_version = out["version"]
        return True, out["value"]

    def increment_if_version(self) -> None:
        """Read the counter and write it + 1 over the version read, with no lock: the optimistic path."""
        node = f"{self.rng.choice(self.folders)}/{COUNTER}"
        ok, value = self.read(node)
        if not ok and value == "NOT_FOUND":
            ok, value, self.last_version = True, 0, 0
        if ok:
            self.pause_maybe()
            self.write_if_version(node, self.last_version, value + 1, inc=True)

    def increment(self) -> None:
        """Lock the folder's counter, read it, write it + 1, unlock: the lost-update check."""
        node = f"{self.rng.choice(self.folders)}/{COUNTER}"
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
            folder = rng.choice(self.folders)
            if rng.random() < 0.2:
                self.lock(folder, rng.choice(("read", "write")), "tree", rng.choice((0, 0, 0.5)))
            else:
                self.lock(f"{folder}/{rng.choice(FILES)}", rng.choice(("read", "write")), "node",
                          rng.choice((0, 0, 0.3, 1.0)))  # fmt: skip
        elif r < 0.30:
            self.lock_files(rng.choice(self.folders))
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
                if r < 0.59:
                    self.pause_maybe()
                    self.write(g, node, f"{self.name}:{self.seq}")
                else:
                    self.upload(g, node)
        elif r < 0.70:
            self.increment()
        elif r < 0.76:
            self.increment_if_version()
        elif r < 0.78:
            ok, _ = self.read(f"{rng.choice(self.folders)}/{rng.choice(FILES)}")
            if ok:
                self.write_if_version(self.last_node, self.last_version, f"{self.name}:v{self.seq}")
        elif r < 0.84:
            self.read(f"{rng.choice(self.folders)}/{rng.choice(FILES)}")
        else:
            self.unlock(rng.choice(held))
        if len(self.held) > 3:
            self.unlock(rng.choice(list(self.held.values())))

    def run(self, until: float, stop: Path | None = None) -> None:
        """Random moves until ``until``, or until the ``stop`` file appears (the run has enough calls)."""
        while time.time() < until and not (stop is not None and stop.exists()):
            try:
                self.one()
            except Gone:
                time.sleep(self.rng.uniform(0.2, 0.6))  # the server may be restarting: do not spin
            time.sleep(self.rng.uniform(0, 0.01))  # a breath between moves, not a pause


def client_main(args: argparse.Namespace) -> None:
    keys = Keys(Path(args.key_file) if args.key_file else None)
    face = FACES[args.face](args.url, keys, LEASE + 6.0)
    try:
        client = Client(face, args.name, args.seed, Path(args.out), args.folders)
        client.run(args.until, Path(args.stop_file) if args.stop_file else None)
    finally:
        face.close()


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
    admin: Admin
    pg: OwnPostgres | None = None
    until: float = 0.0
    clients: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)  # client -> its current key's id
    faces: dict[str, str] = field(default_factory=dict)  # client -> the face it calls through
    paused: set[str] = field(default_factory=set)
    nemesis: Counter[str] = field(default_factory=Counter)
    wedged: list[str] = field(default_factory=list)  # servers that stopped serving after a database restart
    killed: set[str] = field(default_factory=set)
    made: int = 0
    began: float = 0.0
    calls: int = 0
    read_to: dict[Path, int] = field(default_factory=dict)

    @property
    def keys(self) -> bool:
        """Whether the servers require API keys (each client has its own)."""
        return not self.args.no_keys

    def _key_file(self, name: str) -> Path:
        return self.dir.parent / "keys" / f"{name}.key"

    def _give_key(self, name: str, key: str) -> None:
        """Hand ``name`` its key: written aside, then renamed, so a client never reads half a key."""
        path = self._key_file(name)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key + "\n")
        tmp.replace(path)
        self.key_ids[name] = key.split("_")[1]

    async def spawn(self) -> None:
        self.made += 1
        name = f"c{self.made}"
        key_args: list[str] = []
        if self.keys:
            self._give_key(name, await anyio.to_thread.run_sync(self.admin.issue, name))
            key_args = ["--key-file", str(self._key_file(name))]
        self._start_client(name, key_args)

    def _start_client(self, name: str, key_args: list[str]) -> None:
        self.clients[name] = subprocess.Popen(
            [sys.executable, "-m", "bench.torture", "client", "--url", f"http://127.0.0.1:{self.proxy.port}",
             "--name", name, "--seed", str(self.rng.randrange(2**32)), "--until", str(self.until),
             "--out", str(self.dir / f"{name}.jsonl"), "--face", self.faces.setdefault(name, self.face_of()),
             "--folders", str(self.args.folders),
             "--stop-file", str(self.stop_file), *key_args],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def face_of(self) -> str:
        """The face of the client being started: the one asked for, or with ``both`` REST and MCP by turns."""
        if self.args.face != "both":
            return str(self.args.face)
        return "mcp" if self.made % 2 else "rest"

    @property
    def stop_file(self) -> Path:
        """The file whose appearance stops every client."""
        return self.dir.parent / "stop"

    def counted(self) -> int:
        """How many calls the clients have recorded so far (their invocation lines, read as they grow)."""
        for path in self.dir.glob("c*.jsonl"):
            with open(path, "rb") as f:
                f.seek(self.read_to.get(path, 0))
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]  # a line being written is counted once it is whole
            self.read_to[path] = self.read_to.get(path, 0) + len(whole)
            self.calls += whole.count(b'"k":')
        return self.calls

    def kinds(self) -> list[str]:
        """The nemeses this run has."""
        kinds = ["pause", "kill", "cut", "crash", "force"]
        if self.keys:
            kinds.append("revoke")
        if self.pg is not None:
            kinds.append("dbrestart")
        return kinds

    async def nemeses(self) -> None:
        rng = self.rng
        kinds = self.kinds()
        first = list(kinds)  # every kind at least once, then at random
        rng.shuffle(first)
        while time.time() < self.until - PAUSE[1] - 1:
            await anyio.sleep(rng.uniform(0.5, 2.5))
            if self.args.calls and self.counted() >= self.args.calls:
                self.stop_file.touch()  # enough calls: the clients stop at their next move
                self.until = time.time()
                break
            live = [n for n, p in self.clients.items() if p.poll() is None and n not in self.paused]
            what = first.pop() if first else rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
            if what in ("pause", "kill", "revoke") and not live:
                continue
            await getattr(self, f"_{what}")(rng.choice(live) if live else "")
            self.nemesis[what] += 1

    async def _pause(self, name: str) -> None:
        os.kill(self.clients[name].pid, signal.SIGSTOP)
        self.paused.add(name)

        async def wake(name: str, after: float) -> None:
            await anyio.sleep(after)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.clients[name].pid, signal.SIGCONT)
            self.paused.discard(name)

        self._tg.start_soon(wake, name, self.rng.uniform(*PAUSE))

    async def _kill(self, name: str) -> None:
        os.kill(self.clients[name].pid, signal.SIGKILL)
        self.clients[name].wait()
        self.killed.add(name)
        await self.spawn()

    async def _cut(self, _: str) -> None:
        self.proxy.cut()

    async def _crash(self, _: str) -> None:
        """SIGKILL a server (with several: one of them, while the others go on) and start it again."""
        server = self.rng.choice(self.servers)
        server.kill()
        await anyio.sleep(self.rng.uniform(0.1, 0.8))
        await anyio.to_thread.run_sync(server.start)

    async def _force(self, _: str) -> None:
        """The admin breaks a lock somebody holds."""
        if not await anyio.to_thread.run_sync(self.admin.force_unlock):
            self.nemesis["force (none held)"] += 1

    async def _revoke(self, name: str) -> None:
        """Revoke a client's key; a little later its agent gets a new one (the client picks it up)."""
        await anyio.to_thread.run_sync(self.admin.revoke, self.key_ids[name], name)
        await anyio.sleep(self.rng.uniform(*KEYLESS))
        self._give_key(name, await anyio.to_thread.run_sync(self.admin.issue, name))

    async def _dbrestart(self, _: str) -> None:
        """Restart the database under the servers: cleanly, or as a crash (immediate: recovery at start)."""
        assert self.pg is not None
        mode = self.rng.choice(("fast", "immediate"))
        await anyio.to_thread.run_sync(self.pg.restart, mode)
        self.nemesis[f"dbrestart ({mode})"] += 1
        # A server notices a lost connection at its next use: some uses come every few seconds (its cluster
        # roles are pinged every 2 s), so look after those have come round.
        await anyio.sleep(SETTLE)
        await self.heal(f"a {mode} restart")

    async def heal(self, after: str) -> None:
        """Restart every server that runs but no longer serves: a defect of the server, counted and reported.

        It is restarted so that the run goes on testing the promises rather than one server's silence.
        """
        for server in self.servers:
            if server.up and not await anyio.to_thread.run_sync(self.admin.serves, server, RECOVER):
                self.wedged.append(f"{server.name} after {after} at {time.time() - self.began:.0f} s")
                server.kill()
                await anyio.to_thread.run_sync(server.start)

    async def main(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self.proxy.serve)
            self.began = time.time()
            self.until = self.began + self.args.seconds
            for _ in range(self.args.clients):
                await self.spawn()
            await self.nemeses()
            for name in list(self.paused):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.clients[name].pid, signal.SIGCONT)
            for p in list(self.clients.values()):
                await anyio.to_thread.run_sync(_wait_or_kill, p, self.until + LEASE + 15 - time.time())
            await self.heal("the run")  # the final reads need a server that serves
            tg.cancel_scope.cancel()


def _wait_or_kill(p: subprocess.Popen[bytes], seconds: float) -> None:
    try:
        p.wait(max(1.0, seconds))
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def final_reads(url: str, key: str, out: Path, folders: int) -> None:
    """Once every lease is over, read every file (over REST, as the admin): the state every acknowledged write
    must be in."""
    face = RestFace(url, Keys(None, key), LEASE + 6.0)
    c = Client(face, "final", 0, out, folders)
    for folder in c.folders:
        for name in (*FILES, COUNTER):
            for _ in range(20):
                try:
                    c.read(f"{folder}/{name}", final=True)
                    break
                except Gone:
                    time.sleep(0.2)
    face.close()


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.torture", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    cl = sub.add_parser("client")
    cl.add_argument("--url", required=True)
    cl.add_argument("--name", required=True)
    cl.add_argument("--seed", type=int, required=True)
    cl.add_argument("--until", type=float, required=True)
    cl.add_argument("--out", required=True)
    cl.add_argument("--face", choices=sorted(FACES), default="rest")
    cl.add_argument("--key-file")
    cl.add_argument("--folders", type=int, default=FOLDERS)
    cl.add_argument("--stop-file")
    p.add_argument("--seconds", type=float, default=90)
    p.add_argument("--minutes", type=float)
    p.add_argument("--calls", type=int, help="stop once the clients have made this many calls (--seconds: at most)")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--folders", type=int, default=FOLDERS, help="top-level folders the clients share")
    p.add_argument("--seed", type=int)
    p.add_argument("--keep", action="store_true", help="keep the history and the servers' folders")
    p.add_argument("--face", choices=[*sorted(FACES), "both"], default="rest",
                   help="how the clients call: REST, MCP tools, or both (half the clients each)")  # fmt: skip
    p.add_argument("--store", default="sqlite",
                   help="sqlite; postgres (a PostgreSQL instance of the run's own, restarted by a nemesis); or a"
                   " postgresql:// URL (a new schema there, dropped after)")  # fmt: skip
    p.add_argument("--servers", type=int, default=1, help="servers on the one database (PostgreSQL only)")
    p.add_argument("--no-keys", action="store_true", help="servers without API keys: agents named by argument")
    p.add_argument("--lenient-revocation", action="store_true",
                   help="tolerate a lock granted to a key's waiting request after its revocation (for servers"
                   " older than issue 20's revocation; by default it is a violation)")  # fmt: skip
    p.add_argument("--budget", type=float, help="seconds for the checker's search [default: by the history's size]")
    return p


def _replay(args: argparse.Namespace, seed: int) -> str:
    flags = [f"--seconds {args.seconds:g}", f"--clients {args.clients}", f"--folders {args.folders}",
             f"--seed {seed}", f"--face {args.face}",
             f"--store {args.store}", f"--servers {args.servers}"]  # fmt: skip
    flags += [f"--calls {args.calls}"] * bool(args.calls) + ["--no-keys"] * args.no_keys
    flags += ["--lenient-revocation"] * args.lenient_revocation
    return "python -m bench.torture " + " ".join(flags)


def _servers(args: argparse.Namespace, work: Path, dsn: str | None, schema: str | None, key: str) -> list[Node]:
    # On PostgreSQL each server has a folder of its own: file content is in the database, each folder a copy.
    folders = [work / (f"data{i + 1}" if dsn else "data") for i in range(args.servers)]
    if args.no_keys:
        return [Node(f"server{i + 1}", dsn, schema, d) for i, d in enumerate(folders)]
    nodes: list[Node] = []
    for i, d in enumerate(folders):
        node = AuthNode(f"server{i + 1}", dsn, schema, d)
        node.admin = key
        nodes.append(node)
    return nodes


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.cmd == "client":
        client_main(args)
        return 0
    if args.minutes:
        args.seconds = args.minutes * 60
    if args.servers > 1 and args.store == "sqlite":
        p.error("--servers above 1 needs --store postgres (or a postgresql:// URL)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed {seed}  (replay: {_replay(args, seed)})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="mcp-locks-torture-"))
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(OwnPostgres.started()) if args.store == "postgres" else None
        dsn = pg.dsn if pg else (args.store if args.store.startswith("postgresql") else None)
        return _run(args, seed, work, pg, dsn)


def _run(args: argparse.Namespace, seed: int, work: Path, pg: OwnPostgres | None, dsn: str | None) -> int:
    schema = f"torture_{seed}" if dsn else None
    key = "" if args.no_keys else admin_key()
    servers = _servers(args, work, dsn, schema, key)
    (work / "history").mkdir()
    rng = random.Random(seed)
    admin = Admin(servers, key, work / "history" / "admin.jsonl", random.Random(rng.randrange(2**32)))
    run = Run(args, work / "history", rng, servers, Proxy(round_robin(servers)), admin, pg)
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
        final_reads(servers[0].url, key, run.dir / "final.jsonl", args.folders)
        ran = time.time() - started
        admin.close()
        ops = load(sorted(run.dir.glob("*.jsonl")))
        budget = args.budget or max(120.0, len(ops) / 400)
        report = check(ops, budget=budget, strict_revocation=not args.lenient_revocation)
        failed = not report.ok
        print(report.summary())
        print("result " + json.dumps(_result(args, seed, ran, run, ops, report)), flush=True)
    finally:
        for proc in run.clients.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for server in servers:
            server.stop()
        if failed or args.keep:
            print(f"kept: {work}", flush=True)
            if schema and pg is None:
                print(f"kept schema: {schema}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
            if schema and pg is None and dsn:
                _drop_schema(dsn, schema)
    return 1 if failed else 0


def _result(args: argparse.Namespace, seed: int, ran: float, run: Run, ops: list[Any], report: Any) -> dict[str, Any]:
    return {
        "seed": seed,
        "seconds": round(ran, 1),
        "face": args.face,
        "store": "postgres" if run.pg else ("postgresql" if args.store.startswith("postgresql") else "sqlite"),
        "keys": not args.no_keys,
        "clients": args.clients,
        "folders": args.folders,
        "servers": args.servers,
        "client_processes": run.made,
        "calls": len(ops),
        "by_kind": dict(Counter(o.kind for o in ops)),
        "by_face": dict(Counter(run.faces.get(o.client, "rest (admin, final reads)") for o in ops)),
        "answered": sum(o.known for o in ops),
        "maybe": report.maybe,
        "granted": sum(1 for o in ops if o.kind in ("lock", "lock_files") and o.ok),
        "writes_acknowledged": sum(1 for o in ops if o.kind in ("write", "upload") and o.ok),
        "uploads_committed": sum(1 for o in ops if o.kind == "upload" and o.ok),
        "locks_broken": sum(1 for o in ops if o.kind == "force_unlock" and o.ok),
        "keys_revoked": sum(1 for o in ops if o.kind == "revoke" and o.ok),
        "refusals": dict(Counter(o.code for o in ops if o.ok is False)),
        "nemesis": dict(run.nemesis),
        "wedged": run.wedged,
        # Client processes that died on their own (a bug in the torture, or an answer it could not read).
        "client_failures": sorted(n for n, p in run.clients.items() if n not in run.killed and p.returncode != 0),
        "violations": len(report.violations),
        "lost_writes": sum(1 for v in report.violations if v.kind == "lost write"),
        "undecided": report.undecided,
        "check_seconds": round(report.seconds, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
