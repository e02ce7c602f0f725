"""``mcp-locks exec``: hold locks while a command runs, like flock(1) for agent teams."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any, Literal

import anyio
import anyio.abc
import click

from mcp_locks.cli.remote.common import client_options, quiet_retries
from mcp_locks.cli.words import CLI_WORDS
from mcp_locks.client.rest import Lease, LeaseLost, LockClient
from mcp_locks.core.errors import Locked, LockError, WaitTimeout

__all__ = ["EXIT_BUSY", "EXIT_LOST", "exec_", "parse_lock_spec"]

#: exit status of ``exec`` when the locks are busy (sysexits' EX_TEMPFAIL: try again later)
EXIT_BUSY = 75
#: exit status of ``exec`` when a lock was lost while the command ran (the command was stopped)
EXIT_LOST = 76


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


def _fences_env(leases: Sequence[Lease]) -> dict[str, str]:
    env = {"MCP_LOCKS_FENCES": ",".join(f"{le.node_id}={le.fence}" for le in leases)}
    if len(leases) == 1:
        env["MCP_LOCKS_FENCE"] = str(leases[0].fence)
    return env


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


async def _run_holding(client: LockClient, items: list[dict[str, str]], command: Sequence[str], **lease: Any) -> int:
    """Take the locks, run ``command`` while they are held (renewed), and return its exit status."""
    async with client as c, c.lock_many(items, **lease) as leases:
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


# Everything after the first argument belongs to the command, never to exec (a --url there is the command's).
@click.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@client_options
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
    was lost while CMD ran (broken, expired, key revoked: CMD is then stopped with SIGTERM
    within a second, as exec follows the workspace's events).

    Example: mcp-locks exec --lock reports/q3.md --lock data:read:tree --wait 30 -- python make_report.py
    """
    items = [parse_lock_spec(s) for s in locks]
    quiet_retries()
    try:
        code = anyio.run(
            lambda: _run_holding(
                LockClient(url, key, workspace_id=workspace_id), items, command, timeout=timeout, wait=wait
            )
        )
    except (Locked, WaitTimeout) as e:
        click.echo(f"mcp-locks exec: {e.text(CLI_WORDS)}", err=True)
        raise SystemExit(EXIT_BUSY) from None
    except LeaseLost as e:
        click.echo(f"mcp-locks exec: {e}; the command was stopped.", err=True)
        raise SystemExit(EXIT_LOST) from None
    except LockError as e:
        raise click.ClickException(e.text(CLI_WORDS)) from None
    except OSError as e:
        click.echo(f"mcp-locks exec: cannot run {command[0]!r}: {e.strerror}.", err=True)
        raise SystemExit(127 if isinstance(e, FileNotFoundError) else 126) from None
    raise SystemExit(code)
