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


def test_handle_seconds_scrapes_like_a_labelled_prometheus_histogram() -> None:
    """The loop's per-message histogram (HotHistogramVec): the same series as prometheus_client's
    labelled Histogram with the same buckets (less ``_created``)."""
    from tradestack.metrics import HANDLE_BUCKETS

    values = {"s:1": [0.00004, 0.0003, 0.002, 1.5, 9.0], "s:2": [0.0001]}
    hot = ServiceMetrics("b")
    ref = ServiceMetrics("c")
    r = ref.histogram("handle_seconds_ref", "doc", ["stream"], buckets=HANDLE_BUCKETS)
    for stream, vs in values.items():
        for v in vs:
            hot.handle_seconds.labels(stream=stream).observe(v)
            r.labels(stream=stream).observe(v)

    def series(metrics: ServiceMetrics, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(k[0].replace(name, "x"), k[1]): v for k, v in scrape(metrics).items()
                if k[0].startswith(name) and not k[0].endswith("_created")}

    assert series(hot, "b_handle_seconds") == series(ref, "c_handle_seconds_ref")
    assert series(hot, "b_handle_seconds")[("x_count", (("stream", "s:1"),))] == 5
