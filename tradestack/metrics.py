"""One Prometheus registry per process and the standard set every service exports.

Names are ``<prefix>_<noun>_<unit>`` where the prefix is the service's (DESIGN §1), e.g.
``trader_executor_messages_total``. ``/metrics`` binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STATES = ("starting", "running", "degraded", "stopping", "stopped", "faulted")

# Handle-time buckets from 50 µs to 5 s: most handlers are pure and fast.
HANDLE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


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
        self.handle_seconds = self.histogram("handle_seconds", "Time to handle one message", ["stream"],
                                             buckets=HANDLE_BUCKETS)
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
        self.set_state("starting")

    def counter(self, name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(f"{self.prefix}_{name}", doc, labels, registry=self.registry)

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
