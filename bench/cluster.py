"""Real ``mcp-locks serve`` processes, alone or several on one PostgreSQL schema (and one data dir).

Used by the cluster tests, the torture run and bench/multinode.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Node:
    """One server process on a data dir that outlives it; with ``dsn``, on that PostgreSQL database's ``schema``."""

    name: str
    dsn: str | None
    schema: str | None
    data: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    #: Set once the process answers /healthz (empty while it starts or after it is killed).
    url: str = ""
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data / f"{self.name}.log"

    @property
    def up(self) -> bool:
        """Whether the process runs and has answered /healthz."""
        return self.proc is not None and self.proc.poll() is None and bool(self.url)

    @property
    def port(self) -> int:
        """Its port (0 while not up)."""
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    def start(self) -> None:
        """Start the process on a free port; return once it answers /healthz."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.url = ""
        start = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, "MCP_LOCKS_PG_SCHEMA": self.schema} if self.schema else None
        store = ("--store", self.dsn) if self.dsn else ()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mcp_locks", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                 str(self.data), *store, "--insecure-no-auth", "--log-level", "warning", *self.extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        url = ""
        while time.monotonic() < deadline:
            m = re.findall(r"listening on (http://127\.0\.0\.1:\d+)/", self.log.read_bytes()[start:].decode())
            if m:
                url = m[-1]
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-2000:]}")
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    self.url = url  # only now is it up (a proxy sends it connections from here on)
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} never became healthy: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to tidy up."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def cluster(
    dsn: str, schema: str, data: Path, n: int = 3, extra: tuple[str, ...] = (), *, shared_folder: bool = False
) -> Iterator[list[Node]]:
    """``n`` servers on ``dsn``/``schema``, each with a data dir of its own under ``data`` (file content is in
    the database), or all on ``data`` itself with ``shared_folder`` (``--pg-files folder``); stopped on exit."""
    if shared_folder:
        nodes = [Node(f"s{i + 1}", dsn, schema, data, ("--pg-files", "folder", *extra)) for i in range(n)]
    else:
        nodes = [Node(f"s{i + 1}", dsn, schema, data / f"s{i + 1}", extra) for i in range(n)]
    with running(nodes):
        yield nodes


@contextlib.contextmanager
def running(nodes: list[Node]) -> Iterator[list[Node]]:
    """Start ``nodes`` one after the other; stop every one on exit."""
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()
