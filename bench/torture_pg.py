"""A PostgreSQL instance of the torture's own: started in a temporary folder, restarted by a nemesis, removed after.

    with OwnPostgres.started() as pg:
        pg.dsn                      # postgresql://postgres@127.0.0.1:<port>/postgres
        pg.restart("immediate")     # the database crashes (no checkpoint) and recovers

The shared database other tests use is never touched: this one listens on a free loopback port, has its unix
socket in its own folder, trusts local connections, and is stopped (by its own ``pg_ctl``, or its postmaster's
PID as a last resort) and deleted at the end. PostgreSQL refuses to run as root, so as root its commands run as
the ``postgres`` user, which then owns the folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: Where the machine's PostgreSQL programs are (the brief of the torture names these).
BIN = Path(os.environ.get("MCP_LOCKS_PG_BIN", "/usr/local/bin"))
#: The user PostgreSQL runs as when we are root.
PG_USER = "postgres"


def available() -> str | None:
    """None if an own instance can be started here, else why not."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BIN / tool).exists():
            return f"{BIN / tool} is missing"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no '{PG_USER}' user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnPostgres:
    """One PostgreSQL cluster in ``root`` (its data, socket and log), on a free loopback port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.sock = root / "sock"
        self.log = root / "postgres.log"
        self.port = _free_port()
        self.restarts = 0

    @property
    def dsn(self) -> str:
        """Where the servers connect (TCP on loopback, trust auth)."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        """Run a PostgreSQL program, as the ``postgres`` user when we are root."""
        cmd = [str(BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout)  # fmt: skip

    def _options(self) -> str:
        # Loopback TCP only; the socket in our folder (never /var/run/postgresql, the shared server's).
        # fsync off: every commit still reaches the kernel before it is acknowledged (synchronous_commit
        # stays on), so a crash of PostgreSQL's processes — what the nemesis does — loses nothing; only a
        # crash of the machine would, and the torture does not crash the machine.
        return (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sock} -c max_connections=200"
                " -c fsync=off")  # fmt: skip

    def start(self) -> None:
        """initdb (trust auth) and start; returns once it accepts connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "--no-instructions", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-w", "-t", "60",
                  "start")  # fmt: skip

    def restart(self, mode: str = "fast") -> None:
        """Restart the database: ``fast`` (clean shut-down) or ``immediate`` (a crash, then recovery)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-m", mode, "-w",
                  "-t", "60", "restart")  # fmt: skip
        self.restarts += 1

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        return None

    def stop(self) -> None:
        """Stop it (immediate: nothing is kept) and delete its folder."""
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pid = self._postmaster_pid()  # the postmaster we started; its children follow it
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[OwnPostgres]:
        """A started instance in a new folder of its own, stopped and removed on exit.

        Not below another temporary folder: as root that one is closed to the ``postgres`` user.
        """
        pg = cls(Path(tempfile.mkdtemp(prefix="mcp-locks-torture-pg-")))
        try:
            pg.start()
            yield pg
        finally:
            pg.stop()
