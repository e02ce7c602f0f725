"""The webhook delivery worker: ``python -m mcp_locks.observe.delivery DB``, a process of its own beside the server.

Posting a webhook costs far more CPU than granting a lock (an HTTP request
through httpx: about 4 ms against 0.1 ms), so a server on the SQLite store
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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys

import anyio

from mcp_locks.core.clock import Clock
from mcp_locks.core.records import Settle, WebhookRecord
from mcp_locks.observe.logging import configure_logging
from mcp_locks.observe.webhooks import Dispatcher, WebhookLimits
from mcp_locks.stores.sqlite import SqliteStore

__all__: list[str] = []

log = logging.getLogger("mcp_locks.deliver")

#: How much lower than the server the worker runs (os.nice): deliveries may wait, locks may not.
NICENESS = 10


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
        report("settle " + json.dumps(dataclasses.astuple(settle), separators=(",", ":")))

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
