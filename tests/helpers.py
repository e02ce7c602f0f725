"""Event-driven waiting for tests: no sleeps, every wait bounded."""

from __future__ import annotations

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from mcp_locks.core.records import Event

# Upper bound on any single wait in a test; a correct run never gets near it.
STEP = 10

Events = MemoryObjectReceiveStream[tuple[str, Event]]


async def until_event(
    events: Events, kind: str, node_id: str | None = None, *, count: int = 1, owner: str | None = None
) -> Event:
    """Return the ``count``-th committed event of ``kind`` (on ``node_id``, by ``owner``) from the stream."""
    seen = 0
    with anyio.fail_after(STEP):
        async for _, ev in events:
            if ev.kind == kind and node_id in (None, ev.node_id) and owner in (None, ev.owner):
                seen += 1
                if seen == count:
                    return ev
    raise AssertionError("event stream closed")
