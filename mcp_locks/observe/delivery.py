"""The webhook delivery worker: ``python -m mcp_locks.observe.delivery DB``, a process of its own beside the server.

Posting a webhook costs far more CPU than granting a lock (an HTTP request
through httpx2: about 4 ms against 0.1 ms), so a server on the SQLite store
delivers from a second process: it tails the audit log and the retry table
through its own read connection to the same database, on the machine's
other core, while the server's event loop only logs events (which it does
anyway). The server stays the database's one writer: the worker sends it
each batch of outcomes and cursors as a ``settle <json>`` line on stdout
(with one word per delivery outcome, for the metrics). The server pokes it
through stdin when it commits events in a workspace with webhooks (``w``) or
when the webhooks change (``h``). It exits when stdin closes, so it never outlives the
server, and runs at a lower CPU priority (nice 10), so on a busy machine the
lock path gets the processor first.

:class:`DeliveryWorker` is the server's side: it starts the process when a
webhook first needs it, restarts it when it dies, pokes it, and records what
it reports. A store says whether such a process can serve it
(``Store.delivery_worker_args``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import anyio.streams.buffered

from mcp_locks.core.clock import Clock
from mcp_locks.core.records import Delivery, Settle, WebhookRecord
from mcp_locks.observe.logging import JsonFormatter, configure_logging
from mcp_locks.observe.webhooks import Dispatcher, WebhookLimits
from mcp_locks.stores.base import Store
from mcp_locks.stores.sqlite import SqliteStore

__all__ = ["DeliveryWorker"]

log = logging.getLogger("mcp_locks.deliver")
#: The server side logs as the rest of observability does.
server_log = logging.getLogger("mcp_locks.observe")

#: How much lower than the server the worker runs (os.nice): deliveries may wait, locks may not.
NICENESS = 10
#: Least seconds between two pokes of the worker (each costs a pipe write on the lock path's loop).
POKE_EVERY = 0.01
#: Seconds between counts of the webhook backlog (for the metrics) while the worker delivers.
BACKLOG_EVERY = 5.0
#: Longest line the worker may send (a batch of outcomes).
MAX_WORKER_LINE = 64 << 20
#: What the worker reports per delivery (the metrics' outcome label).
OUTCOMES = frozenset({"delivered", "failed", "gave_up"})


class DeliveryWorker:
    """The server's side of the worker process: started when first needed, restarted when it dies, poked on commits.

    ``args`` locate the store for the process (see ``Store.delivery_worker_args``). The server stays the
    database's one writer: the outcomes and cursors the worker reports are recorded in ``store`` here.
    """

    def __init__(
        self, store: Store, args: Sequence[str], limits: WebhookLimits, on_outcome: Callable[[str], None]
    ) -> None:
        self.store = store
        self.args = list(args)
        self.limits = limits
        self.on_outcome = on_outcome
        #: Set once the running process is ready (a new event after each restart).
        self.ready = anyio.Event()
        #: The process id while one runs.
        self.pid: int | None = None
        #: Messages waiting for delivery, counted from the store every few seconds while the worker runs.
        self.backlog = 0
        self._pokes: list[bytes] = []
        self._poked = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called (most servers never need the process)."""
        return self._scope is not None

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Run the process in ``tg`` from now on (restarted whenever it dies) until ``tg`` ends or :meth:`stop`."""
        if self._scope is None:
            self._scope = anyio.CancelScope()
            tg.start_soon(self._run, self._scope)

    def stop(self) -> None:
        """Stop the process (its stdin closes, and it exits) and do not restart it."""
        if self._scope is not None:
            self._scope.cancel()

    def poke(self, what: bytes = b"w") -> None:
        """Tell the worker events were logged (``w``) or the webhooks changed (``h``); a burst becomes one write."""
        if what == b"h" or not self._pokes:
            self._pokes.append(what)
        self._poked.set()

    async def _run(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._count_backlog)
                await self._supervise()

    def _command(self) -> list[str]:
        wl = self.limits
        root = logging.getLogger()
        fmt = "json" if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers) else "text"
        return [
            *[sys.executable, "-m", "mcp_locks.observe.delivery", *self.args],
            *["--concurrency", str(wl.concurrency), "--timeout", str(wl.timeout)],
            *["--log-level", logging.getLevelName(root.level).lower(), "--log-format", fmt],
            *(["--allow-private"] if wl.allow_private else []),
        ]

    async def _supervise(self) -> None:
        """Keep a process running beside the server (restarted if it dies); it ends when we do."""
        cmd = self._command()
        failures = 0
        while True:
            started = anyio.current_time()
            try:
                code = await self._run_once(cmd)
            except Exception:  # could not start it, or it died mid-write: never take the server down with it
                server_log.exception("the webhook delivery worker failed")
                code = None
            self.pid = None
            self.ready = anyio.Event()
            server_log.warning("the webhook delivery worker stopped (exit status %s); restarting it", code)
            failures = 1 if anyio.current_time() - started > 60 else failures + 1
            await anyio.sleep(min(30.0, 0.25 * 2 ** min(failures, 7)))  # a crashing worker: at most every 30 s

    async def _run_once(self, cmd: list[str]) -> int:
        """Run one process until it exits: forward pokes to it, and act on what it reports."""
        async with await anyio.open_process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None) as p:
            assert p.stdin is not None
            assert p.stdout is not None
            self.pid = p.pid
            self._pokes[:] = [b"h"]  # it loads the webhooks itself; then looks at the logs
            self._poked.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward_pokes, p.stdin)
                lines = anyio.streams.buffered.BufferedByteReceiveStream(p.stdout)
                while True:
                    try:
                        line = (await lines.receive_until(b"\n", MAX_WORKER_LINE)).decode()
                    except (anyio.EndOfStream, anyio.IncompleteRead):
                        break
                    if line.startswith("settle "):
                        await self._record(decode_settle(line[7:]))
                    elif line == "ready":
                        self.ready.set()
                    elif line in OUTCOMES:
                        self.on_outcome(line)
                tg.cancel_scope.cancel()
            return await p.wait()

    async def _record(self, settle: Settle) -> None:
        """Write what the worker reports (the server is the database's only writer), retrying until it sticks."""
        for attempt in range(1_000_000):  # bounded; a full disk is retried every few seconds
            try:
                await self.store.settle_deliveries(settle)
                return
            except Exception:
                server_log.warning("could not record webhook outcomes; trying again", exc_info=attempt == 0)
                await anyio.sleep(min(5.0, 0.1 * 2**attempt))

    async def _forward_pokes(self, stdin: anyio.abc.ByteSendStream) -> None:
        while True:
            await self._poked.wait()
            self._poked = anyio.Event()
            pokes, self._pokes = self._pokes, []
            await stdin.send(b"".join(p + b"\n" for p in pokes))
            await anyio.sleep(POKE_EVERY)  # a burst of commits becomes one poke, not one write each

    async def _count_backlog(self) -> None:
        while True:
            try:
                self.backlog, _ = await self.store.delivery_backlog()
            except Exception:  # the gauge keeps its last value
                server_log.debug("could not count the webhook backlog", exc_info=True)
            await anyio.sleep(BACKLOG_EVERY)


def encode_settle(settle: Settle) -> str:
    """A :class:`Settle` as the worker reports it (after ``settle `` on a line of its stdout)."""
    return json.dumps(dataclasses.astuple(settle), separators=(",", ":"))


def decode_settle(text: str) -> Settle:
    """The :class:`Settle` a worker reported with :func:`encode_settle`."""
    done, retry, dead, cursors = json.loads(text)
    return Settle(
        tuple(Delivery(*d) for d in done),
        tuple(Delivery(*d) for d in retry),
        tuple(Delivery(*d) for d in dead),
        tuple((w, c) for w, c in cursors),
    )


async def run(db: str, limits: WebhookLimits) -> None:
    """Deliver ``db``'s webhooks until stdin closes."""
    store = SqliteStore(db, checkpoint=False)
    await store.open()
    hooks: dict[str, WebhookRecord] = {}

    async def reload() -> None:
        nonlocal hooks
        hooks = {h.webhook_id: h for h in await store.list_webhooks()}

    def report(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def record(settle: Settle) -> None:
        # The server is the database's one writer: it records what we send here.
        report("settle " + encode_settle(settle))

    async def deliver(dispatcher: Dispatcher) -> None:
        try:
            await dispatcher.run()
        except Exception:
            log.exception("the webhook dispatcher failed; exiting (the server starts a new worker)")
            os._exit(3)  # stdin's reader sits in a thread that cannot be cancelled

    try:
        await reload()
        dispatcher = Dispatcher(store, Clock(), lambda: hooks, limits, on_outcome=report, record=record)
        async with anyio.create_task_group() as tg:
            tg.start_soon(deliver, dispatcher)
            report("ready")
            async for line in anyio.wrap_file(sys.stdin):
                if line.startswith("h"):
                    await reload()
                dispatcher.wake()
            tg.cancel_scope.cancel()  # stdin closed: the server is gone
    finally:
        await store.close()


def main() -> None:
    """Parse the worker's flags (set by the server) and run it."""
    p = argparse.ArgumentParser(prog="python -m mcp_locks.observe.delivery")
    p.add_argument("db")
    p.add_argument("--allow-private", action="store_true")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="text")
    a = p.parse_args()
    configure_logging(a.log_level, a.log_format)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)  # background work: the server's lock path comes first for the CPU
    limits = WebhookLimits(allow_private=a.allow_private, concurrency=a.concurrency, timeout=a.timeout)
    with contextlib.suppress(KeyboardInterrupt):  # the server stops us by closing stdin; Ctrl-C reaches us too
        anyio.run(run, a.db, limits)


if __name__ == "__main__":
    main()
