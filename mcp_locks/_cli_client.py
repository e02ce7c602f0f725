"""The command line for scripts: ``exec`` (flock(1) for agent teams), ``status`` and ``locks``, over REST."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import click

from ._errors import Locked, LockError, WaitTimeout
from .client import LeaseLost, LockClient

__all__ = ["client_commands"]

#: exit status of ``exec`` when the locks are busy (sysexits' EX_TEMPFAIL: try again later)
EXIT_BUSY = 75
#: exit status of ``exec`` when a lock was lost while the command ran (the command was stopped)
EXIT_LOST = 76

_url = click.option(
    "--url",
    envvar="MCP_LOCKS_URL",
    default="http://127.0.0.1:8765",
    show_default=True,
    help="The server [env MCP_LOCKS_URL].",
)
_key = click.option("--key", envvar="MCP_LOCKS_KEY", default=None, help="Your API key [env MCP_LOCKS_KEY].")
_workspace = click.option("--workspace", "workspace_id", default="default", show_default=True)


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return anyio.run(fn)
    except LockError as e:
        raise click.ClickException(e.text()) from None


def parse_lock_spec(spec: str) -> dict[str, str]:
    """``path[:read|write[:node|tree]]`` as a lock_files item (the mode defaults to write)."""
    parts = spec.split(":")
    mode: Literal["read", "write"] = "write"
    depth = "node"
    if len(parts) >= 3 and parts[-1] in ("node", "tree") and parts[-2] in ("read", "write"):
        depth, mode = parts[-1], "read" if parts[-2] == "read" else "write"
        parts = parts[:-2]
    elif len(parts) >= 2 and parts[-1] in ("read", "write"):
        mode = "read" if parts[-1] == "read" else "write"
        parts = parts[:-1]
    return {"node_id": ":".join(parts), "mode": mode, "depth": depth}


def _fences_env(leases: Sequence[Any]) -> dict[str, str]:
    env = {"MCP_LOCKS_FENCES": ",".join(f"{le.node_id}={le.fence}" for le in leases)}
    if len(leases) == 1:
        env["MCP_LOCKS_FENCE"] = str(leases[0].fence)
    return env


def client_commands(main: click.Group) -> None:
    """Add the client commands to ``main``."""

    # Everything after the first argument belongs to the command, never to exec (a --url there is the command's).
    @main.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    @_url
    @_key
    @_workspace
    @click.option("--lock", "locks", multiple=True, required=True, help="path[:read|write[:node|tree]] (repeatable).")
    @click.option("--timeout", type=float, default=60, show_default=True, help="Lease length; renewed while CMD runs.")
    @click.option("--wait", type=float, default=0, show_default=True, help="Seconds to wait in line for the locks.")
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    def exec_(
        url: str,
        key: str | None,
        workspace_id: str,
        locks: tuple[str, ...],
        timeout: float,
        wait: float,
        command: tuple[str, ...],
    ) -> None:
        """Hold locks while a command runs, like flock(1) for agent teams.

        The locks are taken together (all or none), renewed while CMD runs and released when it
        exits; CMD's exit status is passed through and its environment gets MCP_LOCKS_FENCE (one
        lock) and MCP_LOCKS_FENCES (node=fence,...). Exit 75 if the locks are busy, 76 if a lock
        was lost while CMD ran (CMD is then stopped with SIGTERM).

        Example: mcp-locks exec --lock reports/q3.md --lock data:read:tree --wait 30 -- python make_report.py
        """
        items = [parse_lock_spec(s) for s in locks]

        async def run() -> int:
            async with (
                LockClient(url, key, workspace_id=workspace_id) as c,
                c.lock_many(items, timeout=timeout, wait=wait) as leases,
            ):
                env = {**os.environ, **_fences_env(leases)}
                proc = await anyio.open_process(list(command), stdin=None, stdout=None, stderr=None, env=env)
                # Stopped inside the block: the child is gone before any lock is released.
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_forward_signals, proc)
                        code = await proc.wait()
                        tg.cancel_scope.cancel()
                finally:
                    if proc.returncode is None:  # the lease was lost
                        with anyio.CancelScope(shield=True):
                            await _stop(proc)
                return code if code >= 0 else 128 - code

        try:
            code = anyio.run(run)
        except (Locked, WaitTimeout) as e:
            click.echo(f"mcp-locks exec: {e.text()}", err=True)
            raise SystemExit(EXIT_BUSY) from None
        except LeaseLost as e:
            click.echo(f"mcp-locks exec: {e}; the command was stopped.", err=True)
            raise SystemExit(EXIT_LOST) from None
        except LockError as e:
            raise click.ClickException(e.text()) from None
        except OSError as e:
            click.echo(f"mcp-locks exec: cannot run {command[0]!r}: {e.strerror}.", err=True)
            raise SystemExit(127 if isinstance(e, FileNotFoundError) else 126) from None
        raise SystemExit(code)

    @main.command()
    @_url
    @_key
    @_workspace
    @click.argument("node_id")
    def status(url: str, key: str | None, workspace_id: str, node_id: str) -> None:
        """Print who holds NODE_ID, until when, and who waits.

        Example: mcp-locks status reports/q3.md
        """

        async def run() -> dict[str, Any]:
            async with LockClient(url, key, workspace_id=workspace_id) as c:
                return await c.status(node_id)

        st = _run(run)
        click.echo(f"{st['node_id']}: {'locked (' + st['mode'] + ')' if st['locked'] else 'free'}")
        for kind in ("holders", "covering"):
            for h in st[kind]:
                click.echo("  " + _row(h, "held" if kind == "holders" else "tree above"))
        for w in st["waiters"]:
            label = f" ({w['label']})" if w.get("label") else ""
            click.echo(f"  waiting #{w['position']}: {w['owner']}{label} {w['mode']} since {_when(w['waiting_since'])}")
        if st["locks_below"]:
            click.echo(f"  {st['locks_below']} lock(s) below")

    @main.command(name="locks")
    @_url
    @_key
    @_workspace
    @click.argument("prefix", default="")
    def locks_(url: str, key: str | None, workspace_id: str, prefix: str) -> None:
        """Print the held locks (under PREFIX), one per line.

        Example: mcp-locks locks reports/
        """

        async def run() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            async with LockClient(url, key, workspace_id=workspace_id) as c:
                cursor: str | None = None
                for _ in range(10_000):  # bounded: 10 million locks at most
                    page = await c.list_locks(prefix, cursor=cursor)
                    out += page["locks"]
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
            return out

        for lock in _run(run):
            click.echo(f"{lock['node_id']}\t" + _row(lock, "held"))


async def _forward_signals(proc: anyio.abc.Process) -> None:
    """Pass SIGTERM, SIGINT and SIGHUP to the command: it stops, then its locks are released as usual."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if proc.returncode is None:
                proc.send_signal(signum)


async def _stop(proc: anyio.abc.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    with anyio.move_on_after(10):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%H:%M:%SZ")


def _row(lock: dict[str, Any], what: str) -> str:
    label = f" ({lock['label']})" if lock.get("label") else ""
    return (
        f"{what}: {lock['owner']}{label} {lock['mode']}/{lock['depth']} until {_when(lock['expires_at'])}"
        f" fence {lock['fence']} {lock['lock_id']}"
    )
