"""Start and stop a benchmark server process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple


class BenchServer(NamedTuple):
    """A running bench server: its base URL, and its admin key when started with ``--auth``."""

    url: str
    key: str | None = None


@contextmanager
def bench_server(*args: str) -> Iterator[BenchServer]:
    """Run ``python -m bench.server ARGS`` and yield its URL (and key); stop it by its PID afterwards."""
    log = tempfile.NamedTemporaryFile(prefix="mcp-locks-bench-", suffix=".log", delete=False)  # noqa: SIM115
    # A data directory of our own unless the caller names one, removed once the server has stopped.
    data_dir = None if "--data-dir" in args else tempfile.mkdtemp(prefix="mcp-locks-bench-")
    extra = ("--data-dir", data_dir) if data_dir is not None else ()
    proc = subprocess.Popen([sys.executable, "-m", "bench.server", *args, *extra], stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        url = key = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            with open(log.name) as f:
                text = f.read()
            m = re.search(r"listening on (http://\S+)", text)
            url = m.group(1) if m else None
            # The server prints its key before the URL, so once the URL is there, so is any key.
            k = re.search(r"^admin key: (mlk_\S+)$", text, re.MULTILINE)
            key = k.group(1) if k else None
            if url is None:
                time.sleep(0.05)
        if url is None:
            raise RuntimeError(f"bench server did not start; see {log.name}")
        time.sleep(0.3)  # let uvicorn finish its start-up after the socket is bound
        yield BenchServer(url, key)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()
        os.unlink(log.name)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
