"""Start and stop a benchmark server process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def bench_server(*args: str) -> Iterator[str]:
    """Run ``python -m bench.server ARGS`` and yield its base URL; stop it by its PID afterwards."""
    log = tempfile.NamedTemporaryFile(prefix="mcp-locks-bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "bench.server", *args], stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            with open(log.name) as f:
                m = re.search(r"listening on (http://\S+)", f.read())
            url = m.group(1) if m else None
            if url is None:
                time.sleep(0.05)
        if url is None:
            raise RuntimeError(f"bench server did not start; see {log.name}")
        time.sleep(0.3)  # let uvicorn finish its start-up after the socket is bound
        yield url
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
