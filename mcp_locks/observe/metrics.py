"""Prometheus metrics, from committed events and from the live actors at scrape time."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcp_locks.core.records import Event
from mcp_locks.observe.events import EventSink

__all__ = ["Metrics", "WorkspaceGauges"]

#: Wait and hold times: 1 ms to 1 day.
_TIME_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
#: Store commits: 50 us to 5 s.
_COMMIT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)


class WorkspaceGauges(NamedTuple):
    """A workspace's state now, as the metrics show it."""

    held: int
    waiters: int
    mailbox: int


class _Live(Collector):
    def __init__(self, gauges: Callable[[], dict[str, WorkspaceGauges]], backlog: Callable[[], int]) -> None:
        self._gauges = gauges
        self._backlog = backlog

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily("mcp_locks_held_locks", "Locks held now.", labels=["workspace"])
        waiting = GaugeMetricFamily("mcp_locks_waiters", "Requests waiting in line now.", labels=["workspace"])
        mailbox = GaugeMetricFamily(
            "mcp_locks_actor_mailbox_depth",
            "Commands queued for the workspace actor's next step.",
            labels=["workspace"],
        )
        for ws, g in sorted(self._gauges().items()):
            held.add_metric([ws], g.held)
            waiting.add_metric([ws], g.waiters)
            mailbox.add_metric([ws], g.mailbox)
        yield held
        yield waiting
        yield mailbox
        yield GaugeMetricFamily(
            "mcp_locks_webhook_backlog",
            "Webhook deliveries waiting: retries, and logged events not yet sent.",
            value=self._backlog(),
        )


class Metrics:
    """One registry per server (tests run many side by side), fed through :meth:`sink`."""

    def __init__(
        self, gauges: Callable[[], dict[str, WorkspaceGauges]], backlog: Callable[[], int] = lambda: 0
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._events = Counter("mcp_locks_events", "Lock, waiter and file events, by kind.", ["kind"], registry=r)
        self._grants = Counter("mcp_locks_grants", "Locks granted (upgrades and downgrades included).", registry=r)
        self._releases = Counter("mcp_locks_releases", "Locks released by their holder.", registry=r)
        self._expiries = Counter("mcp_locks_expiries", "Locks whose lease ran out.", registry=r)
        self._breaks = Counter("mcp_locks_breaks", "Locks broken by an admin.", registry=r)
        self._denials = Counter("mcp_locks_denials", "Lock requests refused, by error code.", ["code"], registry=r)
        self._wait = Histogram(
            "mcp_locks_wait_seconds", "How long granted requests waited in line.", buckets=_TIME_BUCKETS, registry=r
        )
        self._hold = Histogram(
            "mcp_locks_hold_seconds", "How long ended locks were held.", buckets=_TIME_BUCKETS, registry=r
        )
        self._commit = Histogram(
            "mcp_locks_store_commit_seconds", "Store transaction time per actor batch.", buckets=_COMMIT_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.deliveries = Counter(
            "mcp_locks_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"], registry=r
        )
        r.register(_Live(gauges, backlog))
        self._by_kind: dict[str, Counter] = {}
        self._by_code: dict[str, Counter] = {}

    def sink(self) -> EventSink:
        """The callbacks the event hub reports to."""
        return EventSink(self._count, self._commit.observe)

    def _count(self, workspace_id: str, events: Sequence[Event]) -> None:
        # Counters move once per kind per batch (a batch of 100,000 expiries is one step), histograms per event.
        kinds = Tally(ev.kind for ev in events)
        for kind, n in kinds.items():
            c = self._by_kind.get(kind)
            if c is None:
                c = self._by_kind[kind] = self._events.labels(kind)
            c.inc(n)
        if grants := kinds["granted"] + kinds["upgraded"] + kinds["downgraded"]:
            self._grants.inc(grants)
        for kind, counter in (("released", self._releases), ("expired", self._expiries), ("broken", self._breaks)):
            if kinds[kind]:
                counter.inc(kinds[kind])
        for ev in events:
            kind = ev.kind
            if kind in ("granted", "upgraded", "downgraded"):
                if ev.waited_ms is not None:
                    self._wait.observe(ev.waited_ms / 1000)
            elif kind in ("released", "expired", "broken"):
                if ev.held_ms is not None:
                    self._hold.observe(ev.held_ms / 1000)
            elif kind == "denied":
                code = ev.code or "UNKNOWN"
                d = self._by_code.get(code)
                if d is None:
                    d = self._by_code[code] = self._denials.labels(code)
                d.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
