"""Progress for a lock call that waits in line: where it stands, every few seconds, to clients that asked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import Context

from mcp_locks.core.errors import LockError
from mcp_locks.core.keys import Identity
from mcp_locks.engine.lock_service import LockService

__all__ = ["PROGRESS_EVERY", "with_progress"]

#: Seconds between progress notifications while a lock call waits in line (the clients' idle timeouts are longer).
PROGRESS_EVERY = 5.0

_R = TypeVar("_R")


async def with_progress(
    service: LockService,
    ctx: Context[Any, Any] | None,
    workspace_id: str | None,
    node_id: str,
    caller: Identity,
    agent: str | None,
    wait: float,
    call: Callable[[], Awaitable[_R]],
) -> _R:
    """Run a lock call; while it waits, tell a client that asked for progress where it stands, every 5 s.

    The message gives the place in line, the current holders and the seconds waited;
    ``progress`` is the seconds waited and ``total`` the ``wait`` asked for. Clients
    that did not ask for progress get nothing (the SDK drops it).
    """
    if ctx is None or wait <= 0:
        return await call()
    clock = service.clock
    start = clock.now()
    me = caller.agent if caller.authenticated else agent

    async def report() -> None:
        while True:
            await clock.wait(anyio.Event(), clock.now() + PROGRESS_EVERY)
            waited = clock.now() - start
            try:
                st = await service.status(workspace_id, node_id, caller=caller)
            except LockError:
                continue
            mine = [w.position for w in st.waiters if me is not None and w.owner == me]
            place = f"position {mine[0]} in line" if mine else f"{len(st.waiters)} waiting"
            holders = ", ".join(f"{h.owner} until {h.expires_at:%H:%M:%SZ}" for h in (st.holders + st.covering)[:3])
            msg = f"waiting for '{node_id}': {place}; held by {holders or 'nobody'}; waited {waited:.0f} s of {wait:g}"
            await ctx.report_progress(waited, wait, msg)

    # The reporter runs in the service's task group, not a local one: leaving a local group is
    # a point where a cancellation could land after the grant came back (and lose it), and a
    # failing report must never cut the wait short. Cancelling its scope does not wait.
    scope = service.background(report, "progress report")
    try:
        return await call()
    finally:
        scope.cancel()
