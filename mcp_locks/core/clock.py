"""The one source of time, injected everywhere so expiry is testable without sleeping."""

from __future__ import annotations

import time

import anyio

__all__ = ["Clock", "ManualClock"]


class Clock:
    """Wall-clock time in seconds since the epoch; leases are stored as absolute deadlines in it."""

    def now(self) -> float:
        """The current time."""
        return time.time()

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        """Return when ``event`` is set or the clock reaches ``deadline`` (None: no deadline)."""
        if deadline is None:
            await event.wait()
            return
        with anyio.move_on_after(max(0.0, deadline - self.now())):
            await event.wait()


class ManualClock(Clock):
    """A clock that moves only when a test calls :meth:`advance`; waits wake at once when it does."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._sleepers: set[anyio.Event] = set()

    def now(self) -> float:
        """The current (manual) time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every waiter so each re-checks its deadline."""
        self._now += seconds
        for event in list(self._sleepers):
            event.set()

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        """Return when ``event`` is set, or at the next :meth:`advance` (callers re-check their deadline)."""
        if deadline is not None and deadline <= self._now:
            return
        self._sleepers.add(event)
        try:
            await event.wait()
        finally:
            self._sleepers.discard(event)
