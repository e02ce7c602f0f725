"""Prometheus metrics, from committed events and from the live actors at scrape time.

The lock path only adds to plain integers and bucket lists (a few hundred nanoseconds an event);
the Prometheus families are built from them when /metrics is scraped. prometheus_client's own
Counter and Histogram take a lock on every change, which cost ~13 µs of each actor step.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mcp_locks.core.records import Event
from mcp_locks.observe.events import EventSink

__all__ = ["Metrics", "WorkspaceGauges"]

#: Wait and hold times: 1 ms to 1 day.
_TIME_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
#: Store commits: 50 us to 5 s.
_COMMIT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)
_GRANTED = frozenset(("granted", "upgraded", "downgraded"))
_ENDED = frozenset(("released", "expired", "broken"))


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


class _Histogram:
    """Observations counted into fixed buckets: the cheap half of a Prometheus histogram."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, n = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            n += count
            cumulative.append((bound, float(n)))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class _Tallies(Collector):
    """What the event sink counted, as Prometheus families (built only when scraped)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}
        self.by_code: dict[str, int] = {}
        self.grants = self.releases = self.expiries = self.breaks = 0
        self.wait = _Histogram(_TIME_BUCKETS)
        self.hold = _Histogram(_TIME_BUCKETS)
        self.commit = _Histogram(_COMMIT_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("mcp_locks_events", "Lock, waiter and file events, by kind.", labels=["kind"])
        for kind, n in sorted(self.by_kind.items()):
            events.add_metric([kind], n)
        yield events
        yield CounterMetricFamily(
            "mcp_locks_grants", "Locks granted (upgrades and downgrades included).", value=self.grants
        )
        yield CounterMetricFamily("mcp_locks_releases", "Locks released by their holder.", value=self.releases)
        yield CounterMetricFamily("mcp_locks_expiries", "Locks whose lease ran out.", value=self.expiries)
        yield CounterMetricFamily("mcp_locks_breaks", "Locks broken by an admin.", value=self.breaks)
        denials = CounterMetricFamily("mcp_locks_denials", "Lock requests refused, by error code.", labels=["code"])
        for code, n in sorted(self.by_code.items()):
            denials.add_metric([code], n)
        yield denials
        yield self.wait.family("mcp_locks_wait_seconds", "How long granted requests waited in line.")
        yield self.hold.family("mcp_locks_hold_seconds", "How long ended locks were held.")
        yield self.commit.family("mcp_locks_store_commit_seconds", "Store transaction time per actor batch.")


class Metrics:
    """One registry per server (tests run many side by side), fed through :meth:`sink`."""

    def __init__(
        self, gauges: Callable[[], dict[str, WorkspaceGauges]], backlog: Callable[[], int] = lambda: 0
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._tallies = _Tallies()
        r.register(self._tallies)
        self.deliveries = Counter(
            "mcp_locks_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"], registry=r
        )
        r.register(_Live(gauges, backlog))

    def sink(self) -> EventSink:
        """The callbacks the event hub reports to."""
        return EventSink(self._count, self._tallies.commit.observe)

    def _count(self, workspace_id: str, events: Sequence[Event]) -> None:
        t = self._tallies
        by_kind = t.by_kind
        for ev in events:
            kind = ev.kind
            by_kind[kind] = by_kind.get(kind, 0) + 1
            if kind in _GRANTED:
                t.grants += 1
                if ev.waited_ms is not None:
                    t.wait.observe(ev.waited_ms / 1000)
            elif kind in _ENDED:
                if kind == "released":
                    t.releases += 1
                elif kind == "expired":
                    t.expiries += 1
                else:
                    t.breaks += 1
                if ev.held_ms is not None:
                    t.hold.observe(ev.held_ms / 1000)
            elif kind == "denied":
                code = ev.code or "UNKNOWN"
                t.by_code[code] = t.by_code.get(code, 0) + 1

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
