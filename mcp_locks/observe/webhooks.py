"""Webhook deliveries: signed (Standard Webhooks), at least once, retried for a day.

The audit log is the outbox. Each webhook has a cursor in its workspace's
log; the :class:`Dispatcher` reads the matching events after it and posts
each with its own task (at most ``concurrency`` at a time per webhook), so a
slow or dead receiver holds up only its own messages, never a lock operation
or another receiver. A failed first attempt moves to the retry table; the
cursor then moves past it. Outcomes and cursors are written back in small
batches; whatever was in flight when the process died is delivered again,
which at-least-once allows (receivers de-duplicate by the webhook-id header,
``msg_<webhook>_<seq>``, the same on every attempt).

Receivers must be http(s). Unless ``allow_private``, every address the host
resolves to must be public (no loopback, private, link-local or reserved
address: a guard against server-side request forgery), the request goes to
the address that was checked (so a DNS answer cannot change in between),
and redirects are not followed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
from standardwebhooks import Webhook

from mcp_locks.core.clock import Clock
from mcp_locks.core.errors import InvalidArgument
from mcp_locks.core.records import TYPE_OF, AuditQuery, Delivery, Settle, WebhookRecord, webhook_body
from mcp_locks.stores.base import Store

__all__ = ["Dispatcher", "WebhookLimits", "check_webhook_url", "retry_delay"]

log = logging.getLogger("mcp_locks.webhooks")

#: Most deliveries in flight at once, over all webhooks.
MAX_INFLIGHT = 1024


@dataclass(frozen=True, slots=True)
class WebhookLimits:
    """How deliveries are made and retried."""

    #: Allow receivers on loopback and private addresses (MCP_LOCKS_WEBHOOKS_ALLOW_PRIVATE=1).
    allow_private: bool = False
    #: Deliveries in flight at once to one webhook.
    concurrency: int = 64
    #: Seconds a receiver has to answer one delivery.
    timeout: float = 10.0
    #: Seconds after an event when its delivery is given up (Standard Webhooks suggests about a day).
    max_age: float = 86_400.0
    #: First retry delay in seconds; each later one doubles, up to ``max_delay``.
    first_delay: float = 5.0
    max_delay: float = 3_600.0
    #: Deliver from a worker process of its own where the store allows one (SQLite: see
    #: ``Store.delivery_worker_args``), so posting never takes the server's CPU.
    worker: bool = False


def retry_delay(attempts: int, limits: WebhookLimits, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``attempts`` (1 = after the first failure): exponential, capped, +-20% jitter."""
    base: float = min(limits.first_delay * 2.0 ** min(attempts - 1, 30), limits.max_delay)
    return base * (0.8 + 0.4 * rng())


#: IPv6 ranges that embed or reach IPv4 (or are deprecated site-local) that Python 3.11 calls global.
_NOT_PUBLIC_V6 = tuple(ipaddress.ip_network(n) for n in ("::/96", "64:ff9b::/96", "64:ff9b:1::/48", "fec0::/10"))


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            return _public(inner)
        if any(ip in net for net in _NOT_PUBLIC_V6):
            return False
    return ip.is_global and not ip.is_multicast


def check_webhook_url(url: object, allow_private: bool) -> str:
    """The URL if it may receive webhooks (INVALID_ARGUMENT otherwise); literal addresses are checked here."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise InvalidArgument("url must be an http(s) URL of at most 2048 characters.", details={"field": "url"})
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            "url must be an absolute http:// or https:// URL.",
            hint="For example https://hooks.example.com/mcp-locks.",
            details={"field": "url"},
        )
    if parts.username or parts.password:
        raise InvalidArgument("url must not hold a user name or password.", details={"field": "url"})
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InvalidArgument("url has an invalid port (1-65535).", details={"field": "url"}) from None
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url  # a host name: checked each time it is resolved
    if not allow_private and not _public(ip):
        raise _private(parts.hostname)
    return url


def _private(host: str) -> InvalidArgument:
    return InvalidArgument(
        f"webhook receivers on loopback or private addresses are refused ({host}).",
        hint="Use a public address, or start the server with MCP_LOCKS_WEBHOOKS_ALLOW_PRIVATE=1 if you trust"
        " every admin with access to your private network.",
        details={"field": "url"},
    )


class _Refused(Exception):
    pass


class _LazyClient:
    """The HTTP client, made on the first delivery (building its TLS context costs tens of milliseconds)."""

    def __init__(self, stack: contextlib.AsyncExitStack, limits: WebhookLimits) -> None:
        self._stack = stack
        self._limits = limits
        self._client: httpx2.AsyncClient | None = None

    async def get(self) -> httpx2.AsyncClient:
        if self._client is None:
            pool = httpx2.Limits(max_connections=None, max_keepalive_connections=self._limits.concurrency)
            client = self._client = httpx2.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=self._limits.timeout, limits=pool
            )
            await self._stack.enter_async_context(client)  # set first: concurrent callers share this one
        return self._client


@dataclass(slots=True)
class _Tail:
    """Where one webhook is in its workspace's log: read up to ``fetched``; first attempts in flight."""

    fetched: int
    saved: int
    pending: set[int] = field(default_factory=set)

    @property
    def cursor(self) -> int:
        """Every matching event up to here is delivered or waits in the outbox."""
        return min(self.pending) - 1 if self.pending else self.fetched


class Dispatcher:
    """Delivers webhooks: tails each webhook's workspace log for first attempts, and the outbox for retries.

    Each message gets its own task (at most ``concurrency`` in flight per webhook); outcomes, new
    retry rows and the webhooks' cursors are written back together in small batches.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        hooks: Callable[[], dict[str, WebhookRecord]],
        limits: WebhookLimits,
        *,
        on_outcome: Callable[[str], None] | None = None,
        record: Callable[[Settle], Awaitable[None]] | None = None,
        user_agent: str = "mcp-locks",
    ) -> None:
        self.store = store
        #: Writes outcomes and cursors (the store itself, or the worker's pipe to the server, the one writer).
        self.record = record or store.settle_deliveries
        self.clock = clock
        self.hooks = hooks
        self.limits = limits
        self.on_outcome = on_outcome
        self.user_agent = user_agent
        self.backlog = 0
        self._inflight: set[str] = set()
        self._per_hook: dict[str, int] = {}
        self._tails: dict[str, _Tail] = {}
        self._wake = anyio.Event()
        self._settle: list[tuple[Delivery, bool, bool]] = []  # (the delivery as it now stands, arrived, given up)
        self._flush = anyio.Event()
        #: Set (and replaced) each time a batch of outcomes has been written to the store.
        self.settled = anyio.Event()

    def wake(self) -> None:
        """New events were logged (or a slot freed): look at the logs and the outbox now."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with contextlib.AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            client = _LazyClient(stack, self.limits)
            tg.start_soon(self._flusher)
            counted_at = -1.0
            next_at: float | None = None
            while True:
                self._wake = anyio.Event()
                hooks = self.hooks()
                for gone in self._tails.keys() - hooks.keys():
                    del self._tails[gone]
                await self._start_retries(tg, client, hooks)
                for hook in hooks.values():
                    await self._start_new(tg, client, hook)
                now = self.clock.now()
                if now - counted_at >= 1.0:
                    self.backlog, next_at = await self.store.delivery_backlog()
                    counted_at = now
                # Woken by a commit in a workspace with webhooks, a freed slot, or the next retry's time.
                await self.clock.wait(self._wake, next_at if next_at is not None and next_at > now else now + 1.0)

    def _free(self, webhook_id: str) -> int:
        return self.limits.concurrency - self._per_hook.get(webhook_id, 0)

    def _start(self, tg: anyio.abc.TaskGroup, client: _LazyClient, d: Delivery, hook: WebhookRecord) -> None:
        self._inflight.add(d.delivery_id)
        self._per_hook[d.webhook_id] = self._per_hook.get(d.webhook_id, 0) + 1
        tg.start_soon(self._send, client, d, hook)

    async def _start_retries(
        self, tg: anyio.abc.TaskGroup, client: _LazyClient, hooks: dict[str, WebhookRecord]
    ) -> None:
        # Only webhooks with a free slot: one dead receiver's backlog never stands in front of another's retries.
        open_ids = frozenset(h for h in hooks if self._free(h) > 0)
        room = min(MAX_INFLIGHT - len(self._inflight), sum(self._free(h) for h in open_ids))
        if room <= 0:
            return
        for d in await self.store.due_deliveries(self.clock.now(), room, frozenset(self._inflight), open_ids):
            hook = hooks.get(d.webhook_id)
            if hook is not None and self._free(d.webhook_id) > 0:
                self._start(tg, client, d, hook)

    async def _start_new(self, tg: anyio.abc.TaskGroup, client: _LazyClient, hook: WebhookRecord) -> None:
        """First attempts: the matching events logged after what this webhook has read."""
        tail = self._tails.get(hook.webhook_id)
        if tail is None:
            tail = self._tails[hook.webhook_id] = _Tail(hook.cursor, hook.cursor)
        room = min(self._free(hook.webhook_id), MAX_INFLIGHT - len(self._inflight))
        if room <= 0:
            return
        newest = await self.store.audit(AuditQuery(hook.workspace_id, limit=1))
        top = newest[0].seq if newest else 0
        if top <= tail.fetched:
            return
        events = await self.store.audit(
            AuditQuery(hook.workspace_id, after_seq=tail.fetched, before_seq=top + 1, kinds=hook.kinds, limit=room)
        )
        for ev in events:
            payload = json.dumps([hook.workspace_id, *ev], separators=(",", ":"))
            d = Delivery(f"msg_{hook.webhook_id}_{ev.seq}", hook.webhook_id, TYPE_OF[ev.kind], payload, ev.at, 0,
                         ev.at)  # fmt: skip
            tail.pending.add(ev.seq)
            self._start(tg, client, d, hook)
        # Read past everything up to top, unless the page was full (there may be more matching events).
        tail.fetched = events[-1].seq if len(events) == room else top
        if tail.cursor != tail.saved:
            self._flush.set()

    async def _send(self, client: _LazyClient, d: Delivery, hook: WebhookRecord) -> None:
        error: str | None
        try:
            error = await self._post(client, d, hook)
        except Exception as e:  # never let one delivery take the dispatcher down
            log.warning("webhook delivery %s failed unexpectedly", d.delivery_id, exc_info=True)
            error = f"internal error: {type(e).__name__}"
        self._per_hook[d.webhook_id] -= 1
        tail = self._tails.get(d.webhook_id)
        if not d.row and tail is not None:
            # Settled in the next flush, with the cursor past it (a failure then waits in the outbox).
            tail.pending.discard(json.loads(d.payload)[-1])
        now = self.clock.now()
        if error is None:
            self._settle.append((d, True, False))
            outcome = "delivered"
        else:
            attempts = d.attempts + 1
            at = now + retry_delay(attempts, self.limits)
            dead = at - d.created_at > self.limits.max_age
            self._settle.append((d._replace(attempts=attempts, next_at=at, last_error=error), False, dead))
            outcome = "gave_up" if dead else "failed"
            log.info("webhook %s delivery %s: %s (attempt %d)", d.webhook_id, d.delivery_id, error, attempts)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        self._flush.set()

    async def _post(self, lazy: _LazyClient, d: Delivery, hook: WebhookRecord) -> str | None:
        parts = urlsplit(hook.url)
        host = parts.hostname or ""
        try:
            addr = await self._resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except _Refused as e:
            return str(e)
        netloc = f"[{addr}]" if ":" in addr else addr
        if parts.port:
            netloc += f":{parts.port}"
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        sent_at = datetime.fromtimestamp(self.clock.now(), UTC)
        body = webhook_body(d)
        headers = {
            "host": parts.netloc.rpartition("@")[2],
            "content-type": "application/json",
            "user-agent": self.user_agent,
            "webhook-id": d.delivery_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": Webhook(hook.secret).sign(d.delivery_id, sent_at, body),
        }
        client = await lazy.get()
        try:
            # One deadline for the whole exchange (the client's applies per read: a trickling receiver could hold
            # a slot for ever); the answer's body is never read.
            with anyio.fail_after(self.limits.timeout):
                async with client.stream(
                    "POST", target, content=body.encode(), headers=headers, extensions={"sni_hostname": host}
                ) as r:
                    status = r.status_code
        except TimeoutError:
            return f"no answer within {self.limits.timeout:g} s"
        except httpx2.HTTPError as e:
            return f"{type(e).__name__}: {e}"[:300] or type(e).__name__
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    async def _resolve(self, host: str, port: int) -> str:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise _Refused(f"could not resolve {host}: {e}") from None
        addrs = [str(info[4][0]) for info in infos]
        if not addrs:
            raise _Refused(f"{host} has no address")
        if not self.limits.allow_private:
            for a in addrs:
                if not _public(ipaddress.ip_address(a.split("%")[0])):
                    raise _Refused(f"{host} resolves to a private address ({a}); refused")
        return addrs[0]

    async def _flusher(self) -> None:
        while True:
            await self._flush.wait()
            await anyio.sleep(0.05)  # gather the outcomes of a burst into one transaction
            self._flush = anyio.Event()
            batch, self._settle = self._settle, []
            moved = {k: t.cursor for k, t in self._tails.items() if t.cursor != t.saved}
            settle = Settle(
                done=tuple(d for d, ok, _ in batch if ok),
                retry=tuple(d for d, ok, dead in batch if not ok and not dead),
                dead=tuple(d for d, ok, dead in batch if not ok and dead),
                cursors=tuple(moved.items()),
            )
            try:
                await self.record(settle)
            except Exception:
                # Keep it all: the cursors must not pass a failure that has no retry row yet.
                log.warning("could not record %d webhook outcomes; trying again", len(batch), exc_info=True)
                self._settle[:0] = batch
                await anyio.sleep(1.0)
                self._flush.set()
                continue
            for k, seq in moved.items():
                if k in self._tails:
                    self._tails[k].saved = seq
            # Only now may these rows be read again (a delivered one is gone; a failed one waits its turn).
            for d, _, _ in batch:
                self._inflight.discard(d.delivery_id)
            self.wake()
            done, self.settled = self.settled, anyio.Event()
            done.set()
