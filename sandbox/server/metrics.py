"""Prometheus metrics ``sandbox_*`` in a registry of their own (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tradestack.loop_lag import LAG_BUCKETS


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sandbox_requests_total", "REST requests and WS actions by endpoint and HTTP status",
            ["endpoint", "status", "transport"], registry=r,
        )
        self.ws_connections = Gauge("sandbox_ws_connections", "Open WebSocket connections", registry=r)
        self.ws_events = Counter(
            "sandbox_ws_events_sent_total", "WS event frames queued to clients by channel", ["channel"], registry=r
        )
        self.ws_slow_disconnects = Counter(
            "sandbox_ws_slow_client_disconnects_total", "Sockets dropped because their outbound queue was full",
            registry=r,
        )
        self.orders = Counter(
            "sandbox_orders_total", "Order placements by type and outcome", ["type", "outcome"], registry=r
        )
        self.bans = Counter("sandbox_ratelimit_bans_total", "Rate-limit bans by identity kind", ["kind"], registry=r)
        self.faults = Counter("sandbox_faults_injected_total", "Injected faults by kind", ["kind"], registry=r)
        self.step_seconds = Histogram(
            "sandbox_step_duration_seconds", "Duration of one market-loop iteration (step + fan-out)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r,
        )
        self.loop_lag_seconds = Histogram(
            "sandbox_event_loop_lag_seconds", "How late a 5 ms timer fires: the longest a ready request can wait for the "
            "event loop (tradestack/loop_lag.py)", buckets=LAG_BUCKETS, registry=r,
        )
        # Counted in a plain dict on the hot path (a Counter.inc takes a lock), moved into the
        # counter when scraped.
        self._events_pending: dict[str, int] = {}

    def ws_event(self, channel: str, n: int) -> None:
        pending = self._events_pending
        pending[channel] = pending.get(channel, 0) + n

    def render(self) -> bytes:
        pending, self._events_pending = self._events_pending, {}
        for channel, n in pending.items():
            self.ws_events.labels(channel).inc(n)
        return generate_latest(self.registry)
