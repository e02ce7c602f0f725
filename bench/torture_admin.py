"""The torture's admin: servers that require API keys, a key per client, revocations and force-unlocks.

The admin talks to a live server directly (never through the cutting proxy) with the admin key every
server is started with (``MCP_LOCKS_ADMIN_KEY``). What changes locks or keys — a revocation, a
force-unlock — is recorded in the history like any client call (:mod:`bench.safety.history`); issuing a
key is not (a new key holds nothing).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.cluster import Node
from bench.safety.history import Recorder
from mcp_locks.core.keys import new_key

WS = "default"
#: How long the admin keeps retrying a call no live server answered (a crash, a database restart).
PATIENCE = 30.0


def admin_key() -> str:
    """A fresh admin key for ``MCP_LOCKS_ADMIN_KEY`` (every server of a run gets the same)."""
    return new_key("admin", (), "admin", time.time())[0]


class AuthNode(Node):
    """A :class:`Node` that requires API keys (its admin key from the environment), with no ``--insecure-no-auth``."""

    admin: str = ""

    def start(self) -> None:
        """Start the process on a free port; return once it answers /healthz."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.url = ""
        start = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, "MCP_LOCKS_ADMIN_KEY": self.admin}
        if self.schema:
            env["MCP_LOCKS_PG_SCHEMA"] = self.schema
        store = ("--store", self.dsn) if self.dsn else ()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mcp_locks", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                 str(self.data), *store, "--log-level", "warning", *self.extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        url = ""
        while time.monotonic() < deadline and not url:
            m = re.findall(r"listening on (http://127\.0\.0\.1:\d+)/", self.log.read_bytes()[start:].decode())
            url = m[-1] if m else ""
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        while time.monotonic() < deadline and url:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    self.url = url  # only now is it up (a proxy sends it connections from here on)
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-2000:]}")


class Admin:
    """The admin's calls, each to a live server, recorded when they change locks or keys."""

    def __init__(self, nodes: list[Node], key: str, out: Path, rng: random.Random) -> None:
        self.nodes = nodes
        self.key = key
        self.rng = rng
        self.rec = Recorder(out, "admin")
        self.http = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=httpx.Timeout(10.0))
        self.counts: dict[str, int] = {}

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request to a live server; raises httpx.HTTPError when none answered."""
        live = [n for n in self.nodes if n.up]
        if not live:
            raise httpx.ConnectError("no server is up")
        r = self.http.request(method, self.rng.choice(live).url + path, **kw)
        if r.status_code >= 500:
            raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
        return r

    def _patiently(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Retry an unrecorded request until a server answers it (PATIENCE seconds at most)."""
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                return self._send(method, path, **kw)
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def issue(self, agent: str) -> str:
        """A new key for ``agent`` (its one live key: a leftover live key, say from a lost answer, is revoked)."""
        for _ in range(5):
            r = self._patiently("POST", "/v1/admin/keys", json={"agent": agent, "workspaces": [WS]})
            if r.status_code == 201:
                return str(r.json()["key"])
            if r.json()["error"]["code"] != "ALREADY_EXISTS":
                raise RuntimeError(f"could not issue a key for {agent}: {r.text}")
            self.revoke(r.json()["error"]["details"]["key_id"], agent)
        raise RuntimeError(f"could not issue a key for {agent}")

    def revoke(self, key_id: str, agent: str) -> None:
        """Revoke a key, recorded; retried until an answer comes (a lost one leaves a call that maybe happened)."""
        deadline = time.monotonic() + PATIENCE
        while True:
            op = self.rec.invoke("revoke", {"key": key_id, "agent": agent})
            try:
                r = self._send("DELETE", f"/v1/admin/keys/{key_id}")
            except httpx.ConnectError:
                self.rec.done(op, False, {"code": "NO_CONNECTION"})
            except httpx.HTTPError:
                pass  # maybe revoked: ask again (a revoked key answers NOT_FOUND)
            else:
                if r.status_code == 200:
                    self.rec.done(op, True, {})
                else:
                    self.rec.done(op, False, {"code": r.json()["error"]["code"]})
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not revoke key {key_id}")
            time.sleep(0.3)

    def force_unlock(self) -> bool:
        """Break one lock held in the workspace, picked at random; False if none was held or nobody answered."""
        try:
            r = self._send("GET", f"/v1/workspaces/{WS}/locks", params={"limit": 1000})
        except httpx.HTTPError:
            return False
        locks = r.json().get("locks", []) if r.status_code == 200 else []
        if not locks:
            return False
        lock = self.rng.choice(locks)
        op = self.rec.invoke("force_unlock", {"lock_id": lock["lock_id"], "node": lock["node_id"]})
        try:
            r = self._send("POST", f"/v1/workspaces/{WS}/locks/{lock['lock_id']}/force-unlock",
                           json={"reason": "torture: the admin breaks a lock"})  # fmt: skip
        except httpx.ConnectError:
            self.rec.done(op, False, {"code": "NO_CONNECTION"})
            return False
        except httpx.HTTPError:
            return True  # maybe broken
        if r.status_code == 200:
            released = r.json()["released"]
            self.rec.done(op, True, {"fence": released["fence"], "owner": released["owner"]})
        else:
            self.rec.done(op, False, {"code": r.json()["error"]["code"]})
        return True

    def serves(self, node: Node, within: float) -> bool:
        """Whether ``node`` answers a call that needs the database (a list of locks) within ``within`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = self.http.get(f"{node.url}/v1/workspaces/{WS}/locks", params={"limit": 1}, timeout=2.0)
                if r.status_code == 200:
                    return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        """Close the history file and the connections."""
        self.rec.close()
        self.http.close()
