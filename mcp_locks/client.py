"""A Python client for mcp-locks over its REST API.

    async with LockClient("http://127.0.0.1:8765", key) as c:
        async with c.lock("reports/q3.md", mode="write", timeout=60, wait=30) as lease:
            write_report(fence=lease.fence)

While the body runs, the lease is renewed in the background at about a third of
its length. If a renewal fails for good (the lease expired, an admin broke the
lock), the body is cancelled at its next await and :class:`LeaseLost` is raised
from the ``async with``: stop writing, the lock is no longer yours. The lock is
released when the body ends, also on error or cancellation.

Refusals (``LOCKED``, ``FORBIDDEN``, ...) raise the same :class:`~mcp_locks.LockError`
subclasses the server uses, with their code, hint and details; they are never
retried. Transient failures (connection errors, 502/503/504) are retried with
jittered exponential backoff (`stamina`); every lock request carries a fresh
``request_id``, so a retried grant is the same grant, never a second lock.

:class:`SyncLockClient` wraps the same calls for scripts without an event loop.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import anyio
import anyio.abc
import anyio.from_thread
import httpx
import stamina

from ._clock import Clock
from ._errors import ERROR_TABLE, Internal, LockError, Unavailable

__all__ = ["Lease", "LeaseLost", "LockClient", "SyncLockClient"]

#: A held lease is renewed once this fraction of it has passed (so two renewals can fail before it ends).
RENEW_FRACTION = 1 / 3
_TRANSIENT_STATUS = frozenset({502, 503, 504})


class LeaseLost(Exception):
    """The lease ended while its ``async with`` body ran: another agent may hold the lock now."""

    def __init__(self, lease: Lease, cause: LockError) -> None:
        super().__init__(f"lost the lock on '{lease.node_id}': {cause.text()}")
        self.lease = lease
        self.cause = cause


class _Transient(Exception):
    """A failure worth retrying (the request may or may not have been applied)."""


@dataclass(eq=False)
class Lease:
    """A held lock, as the client tracks it (the token stays out of its repr)."""

    workspace_id: str
    node_id: str
    lock_id: str
    token: str = field(repr=False)
    mode: Literal["read", "write"]
    fence: int
    expires_at: datetime
    timeout: float
    lost: LockError | None = None

    @classmethod
    def _of(cls, grant: dict[str, Any]) -> Lease:
        return cls(
            workspace_id=grant["workspace_id"],
            node_id=grant["node_id"],
            lock_id=grant["lock_id"],
            token=grant["token"],
            mode=grant["mode"],
            fence=grant["fence"],
            expires_at=datetime.fromisoformat(grant["expires_at"]),
            timeout=grant["timeout"],
        )


def _error_of(response: httpx.Response) -> LockError:
    try:
        body = response.json()["error"]
        cls = ERROR_TABLE.get(body["code"], Internal)
        return cls(body["message"], hint=body.get("hint", ""), details=body.get("details") or {})
    except (ValueError, KeyError, TypeError):
        return Internal(f"the server answered {response.status_code} without an error body.")


class LockClient:
    """Locks over the REST API; use as an async context manager (see the module docstring).

    ``workspace_id`` is the default for every call (each also takes ``workspace_id=``).
    ``clock`` paces the background renewals (tests pass a manual one).
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        workspace_id: str = "default",
        timeout: float = 30.0,
        attempts: int = 5,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.workspace_id = workspace_id
        self.attempts = attempts
        self.clock = clock or Clock()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport, trust_env=False
        )
        self._stack = contextlib.AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        self._stack.push_async_callback(self._http.aclose)
        # Renewals run here, beside the caller's blocks: a lost lease cancels its block's scope,
        # so an error in the block is never wrapped in an exception group.
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(self._tg.cancel_scope.cancel)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tg = None
        await self._stack.__aexit__(et, e, tb)

    # ------------------------------------------------------------------ plumbing

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, wait: float = 0
    ) -> Any:
        # A waiting lock call may take `wait` seconds before it answers: the read may take that much longer.
        read = self._http.timeout.read
        per_call = httpx.Timeout(self._http.timeout.connect, read=read + wait if read is not None else None)
        try:
            async for attempt in stamina.retry_context(on=_Transient, attempts=self.attempts, timeout=None):
                with attempt:
                    try:
                        r = await self._http.request(method, path, json=body, headers=headers, timeout=per_call)
                    except httpx.TransportError as e:
                        raise _Transient(str(e)) from e
                    if r.status_code in _TRANSIENT_STATUS:
                        raise _Transient(f"HTTP {r.status_code}")
        except _Transient as e:
            raise Unavailable(
                f"the lock server at {self.url} did not answer: {e}.", hint="Check that it runs, then retry."
            ) from None
        if r.is_success:
            return r.json()
        raise _error_of(r)

    def _nodes(self, workspace_id: str | None, node_id: str) -> str:
        ws = quote(workspace_id or self.workspace_id, safe="")
        return f"/v1/workspaces/{ws}/nodes/{quote(node_id, safe='/')}/lock"

    # ------------------------------------------------------------------ calls

    async def acquire(
        self,
        node_id: str,
        *,
        mode: Literal["read", "write"] = "write",
        timeout: float = 300,
        wait: float = 0,
        depth: Literal["node", "tree"] = "node",
        note: str | None = None,
        workspace_id: str | None = None,
    ) -> Lease:
        """Take one lock and return its lease (no background renewal; see :meth:`lock`)."""
        body = {"mode": mode, "timeout": timeout, "wait": wait, "depth": depth, "note": note}
        body["request_id"] = uuid.uuid4().hex  # a retried request gets the same grant back
        return Lease._of(await self._call("POST", self._nodes(workspace_id, node_id), body, wait=wait))

    async def acquire_many(
        self,
        items: Sequence[tuple[str, Literal["read", "write"]] | dict[str, str]],
        *,
        timeout: float = 300,
        wait: float = 0,
        note: str | None = None,
        workspace_id: str | None = None,
    ) -> list[Lease]:
        """Take every lock in ``items`` (``(node_id, mode)`` pairs or ``{node_id, mode, depth}``), all or none."""
        listed = [i if isinstance(i, dict) else {"node_id": i[0], "mode": i[1]} for i in items]
        body = {"items": listed, "timeout": timeout, "wait": wait, "note": note, "request_id": uuid.uuid4().hex}
        ws = quote(workspace_id or self.workspace_id, safe="")
        result = await self._call("POST", f"/v1/workspaces/{ws}/locks/batch", body, wait=wait)
        return [Lease._of(g) for g in result["locks"]]

    async def renew(self, lease: Lease, timeout: float | None = None) -> Lease:
        """Restart ``lease``; updates and returns it."""
        path = self._nodes(lease.workspace_id, lease.node_id) + "/renew"
        result = await self._call("POST", path, {"token": lease.token, "timeout": timeout})
        lease.expires_at = datetime.fromisoformat(result["expires_at"])
        lease.timeout = result["timeout"]
        return lease

    async def release(self, lease: Lease) -> None:
        """Release ``lease`` (the token travels in the Lock-Token header, never in the URL)."""
        await self._call("DELETE", self._nodes(lease.workspace_id, lease.node_id), headers={"Lock-Token": lease.token})

    async def status(
        self, node_id: str, *, workspace_id: str | None = None, lease: Lease | None = None
    ) -> dict[str, Any]:
        """What check_lock_status answers (with ``lease``: also whether you still hold it, as ``yours``)."""
        headers = {"Lock-Token": lease.token} if lease is not None else None
        result: dict[str, Any] = await self._call("GET", self._nodes(workspace_id, node_id), headers=headers)
        return result

    # ------------------------------------------------------------------ held for a block

    @contextlib.asynccontextmanager
    async def lock(
        self,
        node_id: str,
        *,
        mode: Literal["read", "write"] = "write",
        timeout: float = 300,
        wait: float = 0,
        depth: Literal["node", "tree"] = "node",
        note: str | None = None,
        workspace_id: str | None = None,
    ) -> AsyncIterator[Lease]:
        """Hold a lock for the block: renewed in the background, released at the end, LeaseLost if it ends early."""
        lease = await self.acquire(
            node_id, mode=mode, timeout=timeout, wait=wait, depth=depth, note=note, workspace_id=workspace_id
        )
        async with self._held([lease]):
            yield lease

    @contextlib.asynccontextmanager
    async def lock_many(
        self,
        items: Sequence[tuple[str, Literal["read", "write"]] | dict[str, str]],
        *,
        timeout: float = 300,
        wait: float = 0,
        note: str | None = None,
        workspace_id: str | None = None,
    ) -> AsyncIterator[list[Lease]]:
        """:meth:`lock` for several nodes taken together (all or none)."""
        leases = await self.acquire_many(items, timeout=timeout, wait=wait, note=note, workspace_id=workspace_id)
        async with self._held(leases):
            yield leases

    @contextlib.asynccontextmanager
    async def _held(self, leases: list[Lease]) -> AsyncIterator[None]:
        if self._tg is None:
            raise RuntimeError("use LockClient as an async context manager: `async with LockClient(...) as c:`")
        body = anyio.CancelScope()
        lost: list[tuple[Lease, LockError]] = []

        async def keep(lease: Lease) -> None:
            while True:
                # Due a third of the way through the lease, counted from its deadline: right even if late.
                due = lease.expires_at.timestamp() - lease.timeout * (1 - RENEW_FRACTION)
                await self.clock.wait(anyio.Event(), due)
                try:
                    await self.renew(lease)
                except LockError as err:
                    if isinstance(err, Unavailable) and self.clock.now() < lease.expires_at.timestamp():
                        continue  # the server is away but the lease still runs: try again shortly
                    lease.lost = err
                    lost.append((lease, err))
                    body.cancel()  # the block stops at its next await
                    return

        keepers = anyio.CancelScope()

        async def keep_all() -> None:
            with keepers:
                async with anyio.create_task_group() as tg:
                    for le in leases:
                        tg.start_soon(keep, le)

        self._tg.start_soon(keep_all)
        try:
            with body:
                yield
        finally:
            keepers.cancel()
            with anyio.CancelScope(shield=True):
                for le in leases:
                    if le.lost is None:
                        with contextlib.suppress(LockError):  # already gone: nothing to release
                            await self.release(le)
        if lost:
            raise LeaseLost(*lost[0])


class SyncLockClient:
    """:class:`LockClient` for scripts: the same calls, blocking, on an event loop in a thread of its own."""

    def __init__(self, url: str, key: str | None, **options: Any) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        # Entered and left in one task of the portal (its renewals' task group lives there).
        self._client_cm = self._portal.wrap_async_context_manager(LockClient(url, key, **options))
        self._client = self._client_cm.__enter__()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client and stop the loop thread."""
        try:
            self._client_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def acquire(self, node_id: str, **options: Any) -> Lease:
        """See :meth:`LockClient.acquire`."""
        return self._portal.call(lambda: self._client.acquire(node_id, **options))

    def release(self, lease: Lease) -> None:
        """See :meth:`LockClient.release`."""
        self._portal.call(self._client.release, lease)

    def renew(self, lease: Lease, timeout: float | None = None) -> Lease:
        """See :meth:`LockClient.renew`."""
        return self._portal.call(self._client.renew, lease, timeout)

    def status(self, node_id: str, **options: Any) -> dict[str, Any]:
        """See :meth:`LockClient.status`."""
        return self._portal.call(lambda: self._client.status(node_id, **options))

    @contextlib.contextmanager
    def lock(self, node_id: str, **options: Any) -> Iterator[Lease]:
        """See :meth:`LockClient.lock`: renewed in the background while the block runs."""
        with self._portal.wrap_async_context_manager(self._client.lock(node_id, **options)) as lease:
            yield lease
