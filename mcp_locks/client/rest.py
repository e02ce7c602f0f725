"""A Python client for mcp-locks over its REST API.

    async with LockClient("http://127.0.0.1:8765", key) as c:
        async with c.lock("reports/q3.md", mode="write", timeout=60, wait=30) as lease:
            write_report(fence=lease.fence)

While the body runs, the lease is renewed in the background at about a third of
its length, and the workspace's event stream is followed: when the lease ends
(an admin broke the lock, it expired, the key was revoked) the server's event
reaches the client within a second (:mod:`mcp_locks.client.push`; a failed
renewal says so too, later), the body is cancelled at its next await and
:class:`LeaseLost` is raised from the ``async with``: stop writing, the lock is
no longer yours. The lock is released when the body ends, also on error or
cancellation.

Refusals (``LOCKED``, ``FORBIDDEN``, ...) raise the same :class:`~mcp_locks.LockError`
subclasses the server uses, with their code, hint and details; they are never
retried. Transient failures (connection errors, 502/503/504) are retried with
jittered exponential backoff (`stamina`); every lock request carries a fresh
``request_id``, so a retried grant is the same grant, never a second lock.

:class:`SyncLockClient` wraps the same calls for scripts without an event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote

import anyio
import anyio.abc
import httpx2

from mcp_locks.client.errors import TRANSIENT_STATUS, Transient, error_of
from mcp_locks.client.push import Guard, LeasePush, RestPush
from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import LockBroken, LockError, LockExpired, LockNotFound, Unavailable
from mcp_locks.core.names import check_node_id

if TYPE_CHECKING:
    import ssl

__all__ = ["Lease", "LeaseLost", "LockClient", "SyncLockClient"]

log = logging.getLogger("mcp_locks.client")

#: A held lease is renewed once this fraction of it has passed; failed renewals are retried until it ends.
RENEW_FRACTION = 1 / 3
#: Longest a block's exit spends releasing its locks when the server does not answer (they expire anyway).
RELEASE_WITHIN = 10.0
#: Tokens one unlock_files call takes at most (the server's limit).
_UNLOCK_BATCH = 100


class LeaseLost(Exception):
    """The lease ended while its ``async with`` body ran: another agent may hold the lock now."""

    def __init__(self, lease: Lease, cause: LockError) -> None:
        super().__init__(f"lost the lock on '{lease.node_id}': {cause.text()}")
        self.lease = lease
        self.cause = cause


@dataclass(eq=False)
class Lease:
    """A held lock, as the client tracks it (the token stays out of its repr)."""

    workspace_id: str
    node_id: str
    lock_id: str
    token: str = field(repr=False)
    mode: Literal["read", "write"]
    depth: Literal["node", "tree"]
    fence: int
    expires_at: datetime
    timeout: float
    #: Why the lease ended under the block (set by the background renewal), else None.
    lost: LockError | None = None
    #: When, by the client's own clock, the lease surely ends: the request's send time + its length.
    #: (The server's ``expires_at`` is on the server's clock; the two may disagree.)
    local_deadline: float = field(default=0.0, repr=False)

    @classmethod
    def _of(cls, grant: dict[str, Any], sent_at: float) -> Lease:
        return cls(
            workspace_id=grant["workspace_id"],
            node_id=grant["node_id"],
            lock_id=grant["lock_id"],
            token=grant["token"],
            mode=grant["mode"],
            depth=grant["depth"],
            fence=grant["fence"],
            expires_at=datetime.fromisoformat(grant["expires_at"]),
            timeout=grant["timeout"],
            local_deadline=sent_at + grant["timeout"],
        )


def _error_of(response: httpx2.Response) -> LockError:
    try:
        body = response.json()
    except ValueError:  # not JSON (a proxy's page, say)
        body = None
    return error_of(response.status_code, body)


def _verify_for(url: str) -> ssl.SSLContext | bool:
    """The system's trust store for an https server; for plain http, a TLS context that trusts nothing.

    Loading the system's CA certificates takes ~18 ms (on the 2-vCPU VM of docs/benchmarks.md) on every
    client made, a CLI command's included, and a client of a plain-http server never opens TLS (it follows
    no redirect); should it ever try, verification fails.
    """
    if url[:6].lower() == "https:":
        return True
    import ssl

    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names, trusts no CA


class _MonotonicClock(Clock):
    """Local lease deadlines are only compared with each other: a clock that never jumps."""

    def now(self) -> float:
        return time.monotonic()


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
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.workspace_id = workspace_id
        self.attempts = attempts
        self.clock = clock or _MonotonicClock()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx2.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            trust_env=False,
            verify=_verify_for(self.url),
        )
        self._stack = contextlib.AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self._pusher: LeasePush | None = None

    @property
    def _push(self) -> LeasePush:
        """What follows the guarded leases' ends (made on first use)."""
        if self._pusher is None:
            self._pusher = self._new_push()
        return self._pusher

    def _new_push(self) -> LeasePush:
        """The REST client follows each workspace's event stream."""
        return RestPush(self)

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
        if self._pusher is not None:
            self._pusher.close()  # no stream reconnects while the client closes
        # The caller's exception is not handed to the renewals' task group (it would come back
        # wrapped in an exception group): it goes on as it is once the group has closed.
        await self._stack.__aexit__(None, None, None)

    # ------------------------------------------------------------------ plumbing

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, wait: float = 0
    ) -> Any:
        import stamina  # ~10 ms to import: paid by the first call, not by importing the client

        # A waiting lock call may take `wait` seconds before it answers: the read may take that much longer.
        read = self._http.timeout.read
        per_call = httpx2.Timeout(self._http.timeout.connect, read=read + wait if read is not None else None)
        try:
            async for attempt in stamina.retry_context(on=Transient, attempts=self.attempts, timeout=None):
                with attempt:
                    try:
                        r = await self._http.request(method, path, json=body, headers=headers, timeout=per_call)
                    except httpx2.TransportError as e:
                        raise Transient(str(e)) from e
                    if r.status_code in TRANSIENT_STATUS:
                        raise Transient(f"HTTP {r.status_code}")
        except Transient as e:
            raise Unavailable(
                f"the lock server at {self.url} did not answer: {e}.", hint="Check that it runs, then retry."
            ) from None
        if r.is_success:
            return r.json()
        raise _error_of(r)

    def _nodes(self, workspace_id: str, node_id: str) -> str:
        # Checked here too: an HTTP client would quietly resolve '..' segments into another path.
        node = check_node_id(node_id)
        return f"/v1/workspaces/{quote(workspace_id, safe='')}/nodes/{quote(node, safe='/')}/lock"

    async def _op(self, tool: str, workspace_id: str, args: dict[str, Any], wait: float = 0) -> Any:
        """One operation, named and shaped as its MCP tool, sent over REST (:class:`McpLockClient` calls the tool).

        Every public call below goes through here, so both clients share the lease bookkeeping.
        """
        ws = quote(workspace_id, safe="")
        if tool == "lock_file":
            return await self._call("POST", self._nodes(workspace_id, args.pop("node_id")), args, wait=wait)
        if tool == "lock_files":
            return await self._call("POST", f"/v1/workspaces/{ws}/locks/batch", args, wait=wait)
        if tool == "unlock_files":
            return await self._call("POST", f"/v1/workspaces/{ws}/locks/unlock", args)
        if tool == "renew_lock":
            path = self._nodes(workspace_id, args.pop("node_id")) + "/renew"
            return await self._call("POST", path, args)
        if tool in ("unlock_file", "check_lock_status"):
            token = args.get("token")  # in the Lock-Token header, never in the URL
            headers = {"Lock-Token": token} if token is not None else None
            method = "DELETE" if tool == "unlock_file" else "GET"
            return await self._call(method, self._nodes(workspace_id, args["node_id"]), headers=headers)
        assert tool in ("list_locks", "get_audit_log"), tool
        params = {k: str(v) for k, v in args.items() if v is not None and v != ""}
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return await self._call("GET", f"/v1/workspaces/{ws}/{'locks' if tool == 'list_locks' else 'audit'}?{query}")

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
        agent: str | None = None,
        workspace_id: str | None = None,
    ) -> Lease:
        """Take one lock and return its lease (no background renewal; see :meth:`lock`).

        ``agent`` names a session below the key's agent (a subagent, a host session): the holder is then
        ``<key's agent>/<agent>``, and two sessions of one key exclude each other.
        """
        args = {
            "node_id": check_node_id(node_id),
            "mode": mode,
            "timeout": timeout,
            "wait": wait,
            "depth": depth,
            "note": note,
            "agent": agent,
            "request_id": uuid.uuid4().hex,  # a retried request gets the same grant back
        }
        sent_at = self.clock.now()
        grant = await self._op("lock_file", workspace_id or self.workspace_id, args, wait=wait)
        # A grant after a wait starts its lease when granted, not when asked: count from the answer.
        return Lease._of(grant, self.clock.now() if wait else sent_at)

    async def acquire_many(
        self,
        items: Sequence[tuple[str, Literal["read", "write"]] | dict[str, str]],
        *,
        timeout: float = 300,
        wait: float = 0,
        note: str | None = None,
        agent: str | None = None,
        workspace_id: str | None = None,
    ) -> list[Lease]:
        """Take every lock in ``items`` (``(node_id, mode)`` pairs or ``{node_id, mode, depth}``), all or none.

        ``agent``: the session below the key's agent that holds them (see :meth:`acquire`).
        """
        listed = [i if isinstance(i, dict) else {"node_id": i[0], "mode": i[1]} for i in items]
        for item in listed:
            check_node_id(item.get("node_id"))
        args = {
            "items": listed,
            "timeout": timeout,
            "wait": wait,
            "note": note,
            "agent": agent,
            "request_id": uuid.uuid4().hex,
        }
        sent_at = self.clock.now()
        result = await self._op("lock_files", workspace_id or self.workspace_id, args, wait=wait)
        at = self.clock.now() if wait else sent_at
        return [Lease._of(g, at) for g in result["locks"]]

    async def renew(self, lease: Lease, timeout: float | None = None) -> Lease:
        """Restart ``lease``; updates and returns it."""
        sent_at = self.clock.now()
        args = {"node_id": lease.node_id, "token": lease.token, "timeout": timeout}
        result = await self._op("renew_lock", lease.workspace_id, args)
        lease.expires_at = datetime.fromisoformat(result["expires_at"])
        lease.timeout = result["timeout"]
        lease.local_deadline = sent_at + lease.timeout
        return lease

    async def release(self, lease: Lease) -> None:
        """Release ``lease`` (over REST the token travels in the Lock-Token header, never in the URL).

        Releasing twice is not an error: a retry whose first attempt did release the
        lock (the answer was lost) finds it released, which is what was asked.
        """
        if self._pusher is not None:
            self._pusher.forget(lease.lock_id)  # its `released` event is no loss
        try:
            await self._op("unlock_file", lease.workspace_id, {"node_id": lease.node_id, "token": lease.token})
        except LockNotFound as e:
            if e.details.get("lock_id") != lease.lock_id:  # no record of it at all: say so
                raise

    async def unlock_many(
        self, held: Sequence[Lease | str], *, workspace_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Release several locks (leases, or bare tokens), each on its own; one outcome per item, in order.

        Each outcome is unlock_files's (``released``, and ``lock_id``/``node_id`` or ``error_code``/``error``);
        a token that is no longer valid does not stop the others. Sent 100 tokens per call (the server's limit).
        The workspace: ``workspace_id`` if given, else the first lease's, else the client's.
        """
        tokens = [h.token if isinstance(h, Lease) else h for h in held]
        if self._pusher is not None:
            self._pusher.forget_tokens(tokens)  # their `released` events are no loss
        first = next((h.workspace_id for h in held if isinstance(h, Lease)), None)
        ws = workspace_id or first or self.workspace_id
        outcomes: list[dict[str, Any]] = []
        for start in range(0, len(tokens), _UNLOCK_BATCH):
            result = await self._op("unlock_files", ws, {"tokens": tokens[start : start + _UNLOCK_BATCH]})
            outcomes += [o | {"index": start + int(o["index"])} for o in result["results"]]
        return outcomes

    async def me(self) -> dict[str, Any]:
        """Who this client's key speaks for: ``key_id``, ``agent``, ``role`` and the ``workspaces`` it reaches."""
        result: dict[str, Any] = await self._call("GET", "/v1/me")
        return result

    async def status(
        self, node_id: str, *, workspace_id: str | None = None, lease: Lease | None = None
    ) -> dict[str, Any]:
        """What check_lock_status answers (with ``lease``: also whether you still hold it, as ``yours``)."""
        ws = workspace_id or (lease.workspace_id if lease is not None else None) or self.workspace_id
        args = {"node_id": check_node_id(node_id)} | ({"token": lease.token} if lease is not None else {})
        result: dict[str, Any] = await self._op("check_lock_status", ws, args)
        return result

    async def audit_log(
        self,
        *,
        node_id: str | None = None,
        agent: str | None = None,
        since: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        workspace_id: str | None = None,
    ) -> dict[str, Any]:
        """One page of the event log, newest first (``events`` and ``next_cursor``), as get_audit_log answers."""
        args = {"node_id": node_id, "agent": agent, "since": since, "limit": limit, "cursor": cursor}
        result: dict[str, Any] = await self._op("get_audit_log", workspace_id or self.workspace_id, args)
        return result

    async def events(
        self, *, after: int | None = None, workspace_id: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Live events of the workspace as they are committed (after seq ``after`` first, if given), forever.

        Reconnects by itself after a dropped stream, resuming after the last event it yielded.
        """
        ws = quote(workspace_id or self.workspace_id, safe="")
        last = after
        attempt = 0
        for _ in range(1_000_000):  # bounded; each reconnect waits up to 30 s
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                async with self._http.sse(
                    f"/v1/workspaces/{ws}/events", headers=headers, timeout=httpx2.Timeout(30, read=60)
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                        raise _error_of(source.response)
                    async for sse in source:
                        event: dict[str, Any] = json.loads(sse.data)
                        last = event["seq"]
                        attempt = 0  # a stream that worked: the next reconnect is quick again
                        yield event
            except httpx2.TransportError:  # SSEError too (an answer that is no event stream)
                pass  # dropped (or the read timed out past the 15 s keep-alives): reconnect
            await anyio.sleep(min(30.0, 0.5 * 2 ** min(attempt, 6)))
            attempt += 1

    async def create_webhook(
        self, url: str, events: Sequence[str], *, workspace_id: str | None = None
    ) -> dict[str, Any]:
        """Register a webhook (admin key); the answer holds its signing secret, shown only this once."""
        ws = quote(workspace_id or self.workspace_id, safe="")
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/workspaces/{ws}/webhooks", {"url": url, "events": list(events)}
        )
        return result

    async def list_webhooks(self, *, workspace_id: str | None = None) -> list[dict[str, Any]]:
        """The workspace's webhooks (admin key)."""
        ws = quote(workspace_id or self.workspace_id, safe="")
        result: list[dict[str, Any]] = (await self._call("GET", f"/v1/workspaces/{ws}/webhooks"))["webhooks"]
        return result

    async def delete_webhook(self, webhook_id: str, *, workspace_id: str | None = None) -> dict[str, Any]:
        """Remove a webhook (admin key)."""
        ws = quote(workspace_id or self.workspace_id, safe="")
        result: dict[str, Any] = await self._call(
            "DELETE", f"/v1/workspaces/{ws}/webhooks/{quote(webhook_id, safe='')}"
        )
        return result

    async def list_locks(
        self,
        prefix: str = "",
        *,
        owner: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        workspace_id: str | None = None,
    ) -> dict[str, Any]:
        """One page of held locks (``locks`` and ``next_cursor``), as list_locks answers."""
        args = {"prefix": prefix, "owner": owner, "limit": limit, "cursor": cursor}
        result: dict[str, Any] = await self._op("list_locks", workspace_id or self.workspace_id, args)
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
        agent: str | None = None,
        workspace_id: str | None = None,
    ) -> AsyncIterator[Lease]:
        """Hold a lock for the block: renewed in the background, released at the end, LeaseLost if it ends early."""
        self._entered()
        since = self._push.connects
        lease = await self.acquire(
            node_id,
            mode=mode,
            timeout=timeout,
            wait=wait,
            depth=depth,
            note=note,
            agent=agent,
            workspace_id=workspace_id,
        )
        async with self._held([lease], since):
            yield lease

    @contextlib.asynccontextmanager
    async def lock_many(
        self,
        items: Sequence[tuple[str, Literal["read", "write"]] | dict[str, str]],
        *,
        timeout: float = 300,
        wait: float = 0,
        note: str | None = None,
        agent: str | None = None,
        workspace_id: str | None = None,
    ) -> AsyncIterator[list[Lease]]:
        """:meth:`lock` for several nodes taken together (all or none)."""
        self._entered()
        since = self._push.connects
        leases = await self.acquire_many(
            items, timeout=timeout, wait=wait, note=note, agent=agent, workspace_id=workspace_id
        )
        async with self._held(leases, since):
            yield leases

    def _entered(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("use LockClient as an async context manager: `async with LockClient(...) as c:`")
        return self._tg

    async def _keep(self, lease: Lease, guard: Guard) -> None:
        """Renew ``lease`` a third of the way through each lease until cancelled, or mark it lost."""
        while True:
            due = lease.local_deadline - lease.timeout * (1 - RENEW_FRACTION)
            while self.clock.now() < due:
                await self.clock.wait(anyio.Event(), due)
            while True:  # renew, retrying what may pass, until the lease would be gone by our clock
                left = lease.local_deadline - self.clock.now()
                if left <= 0:
                    err = LockExpired(
                        f"the lease on '{lease.node_id}' ran out while the server could not renew it.",
                        hint="Take the lock again and re-read the file before writing.",
                    )
                    guard.lose(lease, err, definite=False)
                    return
                try:
                    with anyio.fail_after(left):
                        await self.renew(lease)
                    break
                except (LockExpired, LockBroken, LockNotFound) as e:
                    guard.lose(lease, e, definite=True)  # the server says it is over
                    return
                except (LockError, TimeoutError, Exception) as e:
                    # Busy, rate-limited, unreachable, a proxy's junk: the lease may still run. Pause, retry.
                    left = lease.local_deadline - self.clock.now()
                    if left > 0:
                        wait = e.details.get("retry_after", 1.0) if isinstance(e, LockError) else 1.0
                        pause = self.clock.now() + min(float(wait), max(left / 4, 0.05))
                        await self.clock.wait(anyio.Event(), pause)

    @contextlib.asynccontextmanager
    async def _held(self, leases: list[Lease], since: int) -> AsyncIterator[None]:
        """Run the caller's block holding ``leases``: renewed, followed for their end, released after.

        ``since``: the push's connection count before the grant was asked (see :class:`LeasePush`).
        """
        tg = self._entered()
        guard = Guard(leases, anyio.CancelScope())
        keepers = anyio.CancelScope()
        stopped = anyio.Event()

        async def keep_all() -> None:
            try:
                with keepers:
                    async with anyio.create_task_group() as group:
                        for le in leases:
                            group.start_soon(self._keep, le, guard)
            finally:
                stopped.set()

        tg.start_soon(keep_all)
        self._push.add(guard, since)
        try:
            with guard.body:
                yield
        finally:
            self._push.remove(guard)  # before releasing: our own `released` events are no loss
            keepers.cancel()
            with anyio.CancelScope(shield=True):
                await stopped.wait()  # no renewal is in flight from here on
                with anyio.move_on_after(RELEASE_WITHIN):
                    for le in leases:
                        if id(le) not in guard.definite:
                            try:
                                await self.release(le)
                            except LockError as e:  # it ends by its lease anyway
                                log.warning("could not release %s on %s: %s", le.lock_id, le.node_id, e.code)
        if guard.lost:
            raise LeaseLost(*guard.lost[0])


class SyncLockClient:
    """:class:`LockClient` for scripts: the same calls, blocking, on an event loop in a thread of its own.

    One difference: a blocking block cannot be interrupted when its lease is lost,
    but ``lease.lost`` is set within a second of the loss (it is pushed, as for
    :class:`LockClient`). Check it between steps of long work; the block's exit then
    raises :class:`LeaseLost` (unless the block raised something itself).
    """

    def __init__(self, url: str, key: str | None, **options: Any) -> None:
        import anyio.from_thread  # ~20 ms that only a script which wants it pays

        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            # Entered and left in one task of the portal (its renewals' task group lives there).
            self._client_cm = self._portal.wrap_async_context_manager(LockClient(url, key, **options))
            self._client = self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

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
        """See :meth:`LockClient.lock`: renewed in the background while the block runs (see the class note)."""
        with self._portal.wrap_async_context_manager(self._client.lock(node_id, **options)) as lease:
            yield lease

    @contextlib.contextmanager
    def lock_many(self, items: Sequence[tuple[str, Literal["read", "write"]]], **options: Any) -> Iterator[list[Lease]]:
        """See :meth:`LockClient.lock_many`."""
        with self._portal.wrap_async_context_manager(self._client.lock_many(items, **options)) as leases:
            yield leases
