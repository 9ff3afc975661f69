"""HotCounter and HotHistogram: plain updates on the hot path, scraped like prometheus' own."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tradestack.metrics import ServiceMetrics


def scrape(m: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counts_by_label_and_scrapes_as_a_counter() -> None:
    m = ServiceMetrics("trader_ingest")
    c = m.hot_counter("ws_messages_total", "WS events received", ["channel", "market"])
    c.inc(("book", "BTC-EUR"))
    c.inc(("book", "BTC-EUR"))
    c.inc(("trades", "ETH-EUR"), 3)
    got = scrape(m)
    assert got[("trader_ingest_ws_messages_total", (("channel", "book"), ("market", "BTC-EUR")))] == 2
    assert got[("trader_ingest_ws_messages_total", (("channel", "trades"), ("market", "ETH-EUR")))] == 3
    assert c.value("book", "BTC-EUR") == 2
    assert "# TYPE trader_ingest_ws_messages_total counter" in generate_latest(m.registry).decode()


def test_a_name_can_be_registered_once() -> None:
    m = ServiceMetrics("trader_ingest")
    m.hot_counter("ws_messages_total", "x", ["channel"])
    with pytest.raises(ValueError):
        m.counter("ws_messages_total", "x", ["channel"])


def test_hot_histogram_scrapes_like_a_prometheus_histogram() -> None:
    buckets = (0.001, 0.005, 0.01)
    values = [0.0005, 0.001, 0.003, 0.005, 0.0051, 0.2, 0.009]
    hot = ServiceMetrics("a")
    h = hot.hot_histogram("lat_seconds", "doc", buckets=buckets)
    ref = ServiceMetrics("a")
    r = ref.histogram("lat_seconds", "doc", [], buckets=buckets)
    for v in values:
        h.observe(v)
        r.observe(v)
    want = {k: v for k, v in scrape(ref).items() if k[0].startswith("a_lat_seconds") and not k[0].endswith("_created")}
    got = {k: v for k, v in scrape(hot).items() if k[0].startswith("a_lat_seconds")}
    assert got == want
    assert got[("a_lat_seconds_bucket", (("le", "0.005"),))] == 4  # le: a value on the bound counts in it
    assert got[("a_lat_seconds_count", ())] == len(values)
