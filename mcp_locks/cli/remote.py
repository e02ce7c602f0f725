"""The command line for scripts: ``exec`` (flock(1) for agent teams), ``status`` and ``locks``, over REST."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import click

from mcp_locks.client.rest import LeaseLost, LockClient
from mcp_locks.core.errors import Locked, LockError, WaitTimeout
from mcp_locks.core.records import WEBHOOK_EVENTS

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

    @main.group()
    def audit() -> None:
        """Read a workspace's event log."""

    @audit.command(name="tail")
    @_url
    @_key
    @_workspace
    @click.option("-n", "lines", type=click.IntRange(1, 1000), default=20, show_default=True, help="Events to show.")
    @click.option("--node", "node_id", default=None, help="Only this node's events.")
    @click.option("--agent", default=None, help="Only this agent's events.")
    @click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen (Ctrl-C to stop).")
    def audit_tail(
        url: str, key: str | None, workspace_id: str, lines: int, node_id: str | None, agent: str | None, follow: bool
    ) -> None:
        """Print the last events of the log, oldest first; with -f, follow it live.

        Example: mcp-locks audit tail -f --node reports/q3.md
        """

        async def run() -> None:
            async with LockClient(url, key, workspace_id=workspace_id) as c:
                page = await c.audit_log(node_id=node_id, agent=agent, limit=lines)
                events = list(reversed(page["events"]))
                for ev in events:
                    click.echo(format_event(ev))
                if not follow:
                    return
                last = max((ev["seq"] for ev in events), default=None)
                if last is None:  # an empty (or filtered-out) log: follow from its current end
                    newest = await c.audit_log(limit=1)
                    last = newest["events"][0]["seq"] if newest["events"] else 0
                async for ev in c.events(after=last):
                    if (node_id is None or ev["node_id"] == node_id) and (agent is None or ev["agent"] == agent):
                        click.echo(format_event(ev))

        with contextlib.suppress(KeyboardInterrupt):
            _run(run)

    @main.group()
    def webhooks() -> None:
        """Send a workspace's events to URLs (admin key)."""

    @webhooks.command(name="create")
    @_url
    @_key
    @_workspace
    @click.argument("url_to")
    @click.option("--event", "events", multiple=True, required=True, type=click.Choice(list(WEBHOOK_EVENTS)),
                  help="An event type to send (repeatable).")  # fmt: skip
    def webhooks_create(url: str, key: str | None, workspace_id: str, url_to: str, events: tuple[str, ...]) -> None:
        """POST the workspace's EVENTS to URL_TO, signed (Standard Webhooks); prints the id and the secret once.

        Example: mcp-locks webhooks create https://hooks.example.com/locks --event lock.granted --event lock.expired
        """

        async def run() -> dict[str, Any]:
            async with LockClient(url, key, workspace_id=workspace_id) as c:
                return await c.create_webhook(url_to, events)

        hook = _run(run)
        click.echo(f"{hook['webhook_id']}\t{hook['url']}\t{','.join(hook['events'])}")
        click.echo(f"secret: {hook['secret']}  (shown only now: verify webhook-signature with it)")

    @webhooks.command(name="list")
    @_url
    @_key
    @_workspace
    def webhooks_list(url: str, key: str | None, workspace_id: str) -> None:
        """Print the workspace's webhooks, one per line."""

        async def run() -> list[dict[str, Any]]:
            async with LockClient(url, key, workspace_id=workspace_id) as c:
                return await c.list_webhooks()

        for hook in _run(run):
            click.echo(f"{hook['webhook_id']}\t{hook['url']}\t{','.join(hook['events'])}")

    @webhooks.command(name="delete")
    @_url
    @_key
    @_workspace
    @click.argument("webhook_id")
    def webhooks_delete(url: str, key: str | None, workspace_id: str, webhook_id: str) -> None:
        """Stop sending to WEBHOOK_ID (its undelivered messages are dropped)."""

        async def run() -> dict[str, Any]:
            async with LockClient(url, key, workspace_id=workspace_id) as c:
                return await c.delete_webhook(webhook_id)

        hook = _run(run)
        click.echo(f"deleted {hook['webhook_id']}")


def format_event(ev: dict[str, Any]) -> str:
    """One log line for an event: time, seq, kind, node, agent, then what else it says."""
    agent = ev["agent"] + (f" ({ev['label']})" if ev.get("label") else "")
    extra = [
        f"{k}={ev[k]}"
        for k in ("mode", "fence", "version", "waited_ms", "held_ms", "code", "by", "reason", "lock_id")
        if ev.get(k) is not None
    ]
    return f"{ev['at']}  #{ev['seq']:<6} {ev['kind']:<10} {ev['node_id']}  {agent}  {' '.join(extra)}".rstrip()


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
