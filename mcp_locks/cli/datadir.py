"""One server per data directory: the claim a server holds on ``<data-dir>/server.lock``, and its shared form."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import click

__all__ = ["SERVER_LOCK", "claim_data_dir", "without_server"]

#: The file a server (or an embedded stdio engine) holds locked for as long as it runs.
SERVER_LOCK = "server.lock"


def claim_data_dir(data_dir: Path) -> int:
    """Hold ``<data-dir>/server.lock`` for the life of this process: one server per data dir.

    Two servers on one SQLite database would each run an actor per workspace and
    grant the same lock twice; the kernel drops the claim when the process dies, kill -9 included.
    """
    import fcntl

    fd = os.open(data_dir / SERVER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise click.ClickException(
            f"another mcp-locks server (pid {pid}) or command is using {data_dir}."
            " Stop it or let it finish, or pass another --data-dir."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


@contextlib.contextmanager
def without_server(data_dir: Path, instead: str) -> Iterator[None]:
    """Hold the data dir's claim shared while a command changes what a server would cache.

    Refuses (with ``instead``) if a server holds it; a server starting meanwhile waits its turn.
    """
    import fcntl

    try:
        fd = os.open(data_dir / SERVER_LOCK, os.O_RDONLY | os.O_CREAT, 0o600)
    except OSError as e:
        raise click.ClickException(f"cannot open {data_dir / SERVER_LOCK}: {e.strerror}.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(f"a server is running on {data_dir}: {instead}") from None
        yield
    finally:
        os.close(fd)
