"""One Prometheus registry per process and the standard set every service exports.

Names are ``<prefix>_<noun>_<unit>`` where the prefix is the service's (DESIGN §1), e.g.
``trader_executor_messages_total``. ``/metrics`` binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

STATES = ("starting", "running", "degraded", "stopping", "stopped", "faulted")

# Handle-time buckets from 50 µs to 5 s: most handlers are pure and fast.
HANDLE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class HotCounter:
    """A counter for a per-event hot path: ``inc`` is a plain dict update, where a prometheus
    ``Counter.inc`` takes a lock (8% of ingest's time at 20k events/s). Only the event loop's thread
    may call ``inc``; the scrape (another thread) copies the dict, which holds the GIL throughout."""

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name = name.removesuffix("_total")
        self.doc = doc
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def value(self, *key: str) -> float:
        return self.values.get(key, 0)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.doc, labels=self.labels)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in list(self.values.items()):
            family.add_metric(list(key), value)
        yield family


class HotHistogram:
    """A label-less histogram for a per-event hot path, on the same terms as ``HotCounter``:
    ``observe`` is a bisect and two list updates, no lock."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.doc)]

    def collect(self) -> Iterator[Metric]:
        counts, total = list(self.counts), self.sum
        cumulative, running = [], 0
        for bound, n in zip([*map(floatToGoString, self.bounds), "+Inf"], counts, strict=True):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily(self.name, self.doc, buckets=cumulative, sum_value=total)


class _HotHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class HotHistogramVec:
    """``HotHistogram`` with one label (e.g. the stream of ``handle_seconds``, observed per message):
    ``labels(stream=...)`` gives a child whose ``observe`` takes no lock; the exposition is a
    labelled histogram, as prometheus_client's (without ``_created``)."""

    def __init__(self, name: str, doc: str, label: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.label = label
        self.bounds = sorted(buckets)
        self._children: dict[str, _HotHistogramChild] = {}

    def labels(self, **labels: str) -> _HotHistogramChild:
        (value,) = labels.values()
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = _HotHistogramChild(self.bounds)
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.doc, labels=[self.label])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for value, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum
            cumulative, running = [], 0
            for bound, n in zip([*map(floatToGoString, self.bounds), "+Inf"], counts, strict=True):
                running += n
                cumulative.append((bound, running))
            family.add_metric([value], cumulative, sum_value=total)
        yield family


class ServiceMetrics:
    """The standard metrics of a process; services add their own through ``counter`` etc."""

    def __init__(self, prefix: str, registry: CollectorRegistry | None = None) -> None:
        self.prefix = prefix
        self.registry = registry or CollectorRegistry()
        self._server: Any = None
        self._thread: Any = None
        p = prefix
        self.messages = self.counter("messages_total", "Messages handled, by input stream and outcome "
                                     "(ok, duplicate, dlq, retry, skipped)", ["stream", "outcome"])
        # Observed for every message: lock-free (HotHistogramVec), like the loop's other hot metrics.
        self.handle_seconds = HotHistogramVec(f"{p}_handle_seconds", "Time to handle one message", "stream",
                                              HANDLE_BUCKETS)
        self.registry.register(self.handle_seconds)
        self.published = self.counter("published_total", "Messages written, by output stream", ["stream"])
        self.dlq = self.counter("dlq_total", "Messages dead-lettered, by input stream", ["stream"])
        self.pending = self.gauge("pending_entries", "Entries read but not yet acked by this group", ["stream"])
        self.lag = self.gauge("lag_entries", "Entries in the stream not yet read by this group", ["stream"])
        self.last_event = self.gauge("last_event_timestamp_seconds", "Event time of the newest message handled",
                                     ["stream"])
        self.state = Gauge(f"{p}_state", "Lifecycle state (1 for the current one)", ["state"], registry=self.registry)
        self.kill_switch = Gauge(f"{p}_kill_switch", "1 while trading:kill is set", registry=self.registry)
        self.dry_run = Gauge(f"{p}_dry_run", "1 when DRY_RUN is on", registry=self.registry)
        self.redis_errors = self.counter("redis_errors_total", "Redis connection errors seen", [])
        self.claimed = self.counter("claimed_total", "Entries taken over from idle consumers", ["stream"])
        self.handler_errors = self.counter("handler_errors_total", "Handler bugs (unexpected exceptions): each "
                                           "message is dead-lettered at once", ["stream"])
        self.timer_runs = self.counter("timer_runs_total", "Timer runs, by timer and outcome (ok, error)",
                                       ["timer", "outcome"])
        self.lease_held = Gauge(f"{p}_lease_held", "1 while this process holds its lease and acts; 0 as a "
                                "standby (services without a lease: always 1)", registry=self.registry)
        self.lease_token = Gauge(f"{p}_lease_token", "Fencing token of the lease held (0 = none)",
                                 registry=self.registry)
        self.rebuild_seconds = self.gauge("rebuild_seconds", "Time the last start-up rebuild of state from a "
                                          "stream's history took", ["stream"])
        self.rebuild_entries = self.gauge("rebuild_entries", "Entries folded by the last start-up rebuild",
                                          ["stream"])
        self.set_state("starting")

    def counter(self, name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(f"{self.prefix}_{name}", doc, labels, registry=self.registry)

    def hot_counter(self, name: str, doc: str, labels: list[str]) -> HotCounter:
        counter = HotCounter(f"{self.prefix}_{name}", doc, labels)
        self.registry.register(counter)
        return counter

    def hot_histogram(self, name: str, doc: str, buckets: tuple[float, ...] = HANDLE_BUCKETS) -> HotHistogram:
        histogram = HotHistogram(f"{self.prefix}_{name}", doc, buckets)
        self.registry.register(histogram)
        return histogram

    def gauge(self, name: str, doc: str, labels: list[str]) -> Gauge:
        return Gauge(f"{self.prefix}_{name}", doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...] = HANDLE_BUCKETS) -> Histogram:
        return Histogram(f"{self.prefix}_{name}", doc, labels, buckets=buckets, registry=self.registry)

    def set_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        for s in STATES:
            self.state.labels(state=s).set(1 if s == state else 0)

    def serve(self, addr: str, port: int) -> int:
        """Serve /metrics in a background thread; returns the port (useful with port 0)."""
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
