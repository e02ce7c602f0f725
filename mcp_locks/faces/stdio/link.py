"""The bridge's connection to the server: one SDK client at a time, opened and reopened by a task of its own.

The SDK's client lives in the task that entered it, and a failed HTTP request ends
its whole transport (the task that holds it is cancelled). So one keeper task holds
the connection, and the bridge's handlers only borrow it: when the server goes away
the keeper reconnects in the background, pausing between attempts (doubling, jittered,
at most :data:`LAST_PAUSE`), and a call made meanwhile answers UNAVAILABLE at once
instead of waiting for it. A call while the server is away also asks for an attempt
right now and waits a moment for it, so the first call after a restart goes through.

The connection speaks the 2026-07-28 protocol when the server offers it: no session
that a restart would invalidate, so between outages nothing needs reopening.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import httpx2
from anyio.abc import TaskStatus
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT

from mcp_locks.client.errors import decode_error
from mcp_locks.core.errors import LockError, Unavailable

__all__ = ["CALL_BUDGET", "CALL_WAIT", "FIRST_PAUSE", "HELD", "LAST_PAUSE", "Link", "broken", "pause_before"]

log = logging.getLogger("mcp_locks.stdio")

#: The first pause before reconnecting, in seconds; each failed attempt doubles it, up to LAST_PAUSE.
FIRST_PAUSE = 0.25
LAST_PAUSE = 15.0
#: How long a call made while the server is away waits for the attempt it asks for (a refused connection
#: fails at once; this bounds one that is not answered at all).
CALL_WAIT = 1.0
#: A connection (or a listen stream) counts as having lasted, so that the pauses start over, only once it
#: held this long: one that opens and dies at once must not be reopened every FIRST_PAUSE forever.
HELD = LAST_PAUSE
#: How long a forwarded request may go unanswered (unless its caller gives a budget of its own): the HTTP
#: client has no read timeout (listen streams are silent for as long as nothing changes), so this is what
#: ends a call on a connection that stopped answering (half-open).
CALL_BUDGET = 60.0

#: Codes the SDK's client makes up itself when the HTTP exchange failed (the server said nothing of its own).
_TRANSPORT_CODES = frozenset({CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT})

_T = TypeVar("_T")


def pause_before(attempt: int) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1, 2, ...): doubling, capped, jittered.

    The jitter (a uniform half to whole of the pause) keeps bridges that lost the same server
    from all coming back in the same instant.
    """
    pause = min(LAST_PAUSE, FIRST_PAUSE * float(2 ** min(max(attempt - 1, 0), 16)))
    return pause * random.uniform(0.5, 1.0)


def _mcp_errors(exc: BaseException) -> list[MCPError]:
    """The MCPErrors in ``exc`` (the SDK reports a failed connection as nested exception groups)."""
    if isinstance(exc, MCPError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in _mcp_errors(sub)]
    return []


def broken(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the connection itself failed, rather than the server answering."""
    if isinstance(exc, (httpx2.TransportError, anyio.ClosedResourceError, anyio.BrokenResourceError)):
        return True
    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    if isinstance(exc, BaseExceptionGroup):
        return any(broken(e) for e in exc.exceptions)
    return exc.__cause__ is not None and broken(exc.__cause__)


class Link:
    """Keeps a connection to ``endpoint`` open while :meth:`run` runs; :meth:`forward` sends through it.

    ``connect`` makes a new (not yet entered) client; ``on_connect`` runs beside each
    connection for as long as it lasts (it renews the resource subscriptions).
    """

    def __init__(
        self,
        endpoint: str,
        connect: Callable[[], Client],
        on_connect: Callable[[Client], Coroutine[Any, Any, None]],
    ) -> None:
        self.endpoint = endpoint
        self._connect = connect
        self._on_connect = on_connect
        #: The open connection, None while the server is away.
        self.client: Client | None = None
        #: Why the last attempt failed (a refusal of the server's own, or UNAVAILABLE).
        self.error: LockError | None = None
        self._lost = anyio.Event()
        self._wake = anyio.Event()
        self._settled = anyio.Event()  # set (and replaced) whenever an attempt succeeds or fails

    # ------------------------------------------------------------------ the keeper

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, and reconnect whenever the connection is lost, until cancelled.

        Reports started after the first attempt, whatever its outcome (``client`` says which).
        """
        attempt = 0
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            lasted = await self._hold(ready)
            attempt = 1 if lasted else attempt + 1  # one that opened and died at once pauses longer each time
            with anyio.move_on_after(pause_before(attempt)):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _hold(self, ready: Callable[[], None]) -> bool:
        """One connection, held until it is lost (``ready`` once it is open or failed); whether it held HELD s."""
        opened: float | None = None
        try:
            async with self._connect() as client, anyio.create_task_group() as tg:
                self.client, self.error, opened = client, None, anyio.current_time()
                self._lost = anyio.Event()
                self._settle()
                tg.start_soon(self._on_connect, client)
                ready()
                await self._lost.wait()
                tg.cancel_scope.cancel()
        except Exception as e:  # the transport failed or the server refused: try again after a pause
            self.error = self.explain(e)
            log.debug("the connection to %s ended: %r", self.endpoint, e)
        finally:
            self.client = None
            self._settle()
        ready()
        if opened is None:
            return False
        log.warning("lost the mcp-locks server at %s; reconnecting", self.endpoint)
        return anyio.current_time() - opened >= HELD

    def _settle(self) -> None:
        settled, self._settled = self._settled, anyio.Event()
        settled.set()

    def lost(self, client: Client) -> None:
        """``client`` failed: reconnect (a no-op if it is no longer the open connection)."""
        if self.client is client:
            self._lost.set()

    # ------------------------------------------------------------------ calls

    async def current(self) -> Client:
        """The open connection; while there is none, one prompt attempt (bounded by CALL_WAIT), else UNAVAILABLE."""
        if self.client is not None:
            return self.client
        settled = self._settled
        self._wake.set()
        with anyio.move_on_after(CALL_WAIT):
            await settled.wait()
        if self.client is None:
            raise self.error if self.error is not None else self.unavailable("it is reconnecting")
        return self.client

    async def forward(self, send: Callable[[Client], Awaitable[_T]], budget: float = CALL_BUDGET) -> _T:
        """``send`` through the open connection, answered within ``budget`` seconds.

        A refusal that carries the server's error body raises its LockError; a failed
        exchange raises UNAVAILABLE (and reconnects when the connection is gone), and so
        does one unanswered within ``budget`` (the request is cancelled, which cancels it
        on the server if that still hears). Any other JSON-RPC error is the server's own
        answer, raised unchanged.
        """
        client = await self.current()
        try:
            with anyio.move_on_after(budget):
                return await send(client)
        except MCPError as e:
            known = decode_error(e.error.data)
            if known is not None:
                raise known from None
            if e.code not in _TRANSPORT_CODES:
                raise
            if e.code == CONNECTION_CLOSED:
                self.lost(client)
            raise self.unavailable(e.error.message) from None
        except (httpx2.TransportError, anyio.ClosedResourceError, anyio.BrokenResourceError) as e:
            self.lost(client)
            raise self.unavailable(type(e).__name__) from None
        raise self.unavailable(f"no answer within {budget:g} s")

    def explain(self, exc: BaseException) -> LockError:
        """The LockError a failed exchange stands for: the server's refusal if it sent one, else UNAVAILABLE."""
        errors = _mcp_errors(exc)
        for e in errors:
            known = decode_error(e.error.data)
            if known is not None:
                return known
        if isinstance(exc, LockError):
            return exc
        return self.unavailable(errors[0].error.message if errors else (str(exc) or type(exc).__name__))

    def unavailable(self, why: str) -> Unavailable:
        """UNAVAILABLE for the server at this link's endpoint."""
        return Unavailable(
            f"the mcp-locks server at {self.endpoint} does not answer ({why[:200]}).",
            hint="This bridge reconnects by itself: retry in a few seconds; if it persists, check that the server"
            " runs (mcp-locks serve).",
        )
