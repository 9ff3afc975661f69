"""A reconnect skips the REST backfill of a (market, interval) when no period can have ended
during the outage, and fetches it after all when the WS does not confirm the period. A stub
emitter, a stub REST client and a fake clock: no Redis, no exchange, no sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.ingest.test_candles_feed import StubEmitter, row
from tradestack.bitvavo.candles import CandleFeed
from tradestack.bitvavo.feeds import IngestMetrics
from tradestack.clock import FakeClock
from tradestack.metrics import ServiceMetrics

M = "BTC-EUR"
MIN = 60_000
HOUR = 60 * MIN
T0 = 1_700_000_040_000 // HOUR * HOUR + 20 * MIN  # a minute boundary, 20 minutes into an hour
GRACE = 3_000


class StubRest:
    """Answers ``candles`` per interval from rows (newest first, like Bitvavo) and records each call."""

    def __init__(self) -> None:
        self.rows: dict[str, list[list[Any]]] = {}
        self.calls: list[tuple[str, str]] = []

    async def candles(self, market: str, interval: str, *, start: int | None = None, end: int | None = None,
                      limit: int | None = None) -> Any:
        self.calls.append((market, interval))
        return [r for r in sorted(self.rows.get(interval, []), reverse=True)
                if (start is None or r[0] >= start) and (end is None or r[0] <= end)][:limit]


def event(interval: str, open_ts: int, volume: str) -> dict[str, Any]:
    return {"event": "candle", "market": M, "interval": interval, "candle": [row(open_ts, volume)]}


def make_feed(clock: FakeClock, intervals: list[str], metrics: IngestMetrics | None = None
              ) -> tuple[CandleFeed, StubEmitter, StubRest]:
    emitter, rest = StubEmitter(), StubRest()
    feed = CandleFeed(rest=rest, intervals=intervals, close_grace_ms=GRACE, backfill_periods=5, src="test",  # type: ignore[arg-type]
                      emitter=emitter, metrics=metrics, clock=clock)  # type: ignore[arg-type]
    feed.markets = {M}
    for iv in intervals:
        feed.last_closed[(M, iv)] = T0 - HOUR if iv == "1h" else T0 - MIN  # in step: published up to here
    feed.connected.set()
    feed._loaded.set()
    return feed, emitter, rest


def outage(feed: CandleFeed, clock: FakeClock, ms: int) -> None:
    """The WS drops, ``ms`` pass, it reconnects (``on_connected`` before subscribing, as the client does)."""
    feed.on_state(False)
    clock.advance(ms)
    feed.on_connected()
    feed.on_state(True)


async def backfills_done(feed: CandleFeed) -> None:
    """Run the backfill worker until nothing is pending (it never waits on time: the stubs answer at once)."""
    stop = asyncio.Event()
    worker = asyncio.create_task(feed._backfill_worker(stop))
    for _ in range(1_000):
        if not feed.pending:
            break
        await asyncio.sleep(0)  # a yield to the worker, not a wait on time
    assert not feed.pending
    stop.set()
    feed._work.set()
    await asyncio.wait_for(worker, 1)


def test_short_outage_inside_the_period_skips_the_fetch_and_holds_nothing() -> None:
    """A 5 s drop in the middle of a minute whose candle we had: no REST call; the next WS candle of
    the minute (the whole period, trades of the outage included) confirms it, and the next minute
    closes it at once instead of holding it for a backfill."""
    clock = FakeClock(T0 + 10_000)
    feed, emitter, rest = make_feed(clock, ["1m"])
    feed.on_event(event("1m", T0, "1"), 0.0)
    outage(feed, clock, 5_000)
    assert (M, "1m") not in feed.pending
    assert feed.backfills_skipped == 1

    async def main() -> None:
        await backfills_done(feed)
        feed.on_event(event("1m", T0, "1.4"), 0.0)  # a trade after the reconnect
        clock.set(T0 + MIN + 200)
        feed.on_event(event("1m", T0 + MIN, "0.1"), 0.0)
        await backfills_done(feed)

    asyncio.run(main())
    assert rest.calls == []
    assert emitter.closed() == [(T0, "1.4")]
    assert not feed.held and not feed.pending and not feed.unconfirmed
    assert feed.rechecks == 0


def test_skipped_key_without_a_trade_after_the_reconnect_is_fetched_at_the_period_end() -> None:
    """The minute traded only during the outage after the reconnect: the WS never shows that state, so
    at the period's end (plus grace) the key is fetched instead of closing the stale candle."""
    clock = FakeClock(T0 + 10_000)
    feed, emitter, rest = make_feed(clock, ["1m"])
    feed.on_event(event("1m", T0, "1"), 0.0)
    outage(feed, clock, 5_000)
    rest.rows["1m"] = [row(T0, "2")]  # the outage's trades are in the exchange's candle
    assert (M, "1m") not in feed.pending

    async def main() -> None:
        await backfills_done(feed)
        clock.set(T0 + MIN + GRACE)
        assert feed.close_due() == 0  # not the stale candle: a recheck
        assert (M, "1m") in feed.pending
        await backfills_done(feed)
        clock.advance(MIN)
        assert feed.close_due() == 0  # nothing twice

    asyncio.run(main())
    assert rest.calls == [(M, "1m")]
    assert emitter.closed() == [(T0, "2")]
    assert feed.rechecks == 1


def test_skipped_key_whose_next_period_shows_first_is_fetched() -> None:
    """After the reconnect the WS shows the next minute before any trade of this one: the minute may
    have traded during the outage, so it is held and the backfill publishes the exchange's state."""
    clock = FakeClock(T0 + 40_000)
    feed, emitter, rest = make_feed(clock, ["1m"])
    feed.on_event(event("1m", T0, "1"), 0.0)
    outage(feed, clock, 5_000)
    rest.rows["1m"] = [row(T0, "2"), row(T0 + MIN, "0.3")]

    async def main() -> None:
        await backfills_done(feed)
        clock.set(T0 + MIN + 500)
        feed.on_event(event("1m", T0 + MIN, "0.3"), 0.0)
        assert emitter.closed() == []  # held for the backfill
        await backfills_done(feed)

    asyncio.run(main())
    assert rest.calls == [(M, "1m")]
    assert emitter.closed() == [(T0, "2")]
    assert feed.current[(M, "1m")].open_ts == T0 + MIN
    assert not feed.held


def test_outage_across_a_boundary_fetches_and_publishes_the_missed_candle_once() -> None:
    """A 40 s drop across the end of a minute: the key is fetched; the minute that ended in the
    outage is published once, with its full state, and the next one closes later, once."""
    clock = FakeClock(T0 + 50_000)
    feed, emitter, rest = make_feed(clock, ["1m"])
    feed.on_event(event("1m", T0, "1"), 0.0)
    outage(feed, clock, 40_000)  # now T0 + 90 s
    rest.rows["1m"] = [row(T0, "2"), row(T0 + MIN, "0.5")]
    assert (M, "1m") in feed.pending

    async def main() -> None:
        feed.on_event(event("1m", T0 + MIN, "0.7"), 0.0)  # before the backfill ran
        await backfills_done(feed)
        clock.set(T0 + 2 * MIN + GRACE)
        assert feed.close_due() == 1

    asyncio.run(main())
    assert rest.calls == [(M, "1m")]
    assert emitter.closed() == [(T0, "2"), (T0 + MIN, "0.7")]


def test_90s_outage_fetches_the_1m_key_and_skips_the_1h_key() -> None:
    """One market, 1m and 1h: after 90 s away the minute changed (fetch) but the hour did not (skip,
    counted in trader_ingest_candle_backfills_skipped_total); the hour's next WS candle confirms it."""
    clock = FakeClock(T0 + 30_000)
    service_metrics = ServiceMetrics("trader_ingest")
    feed, emitter, rest = make_feed(clock, ["1m", "1h"], IngestMetrics(service_metrics))
    hour = T0 - T0 % HOUR
    feed.on_event(event("1m", T0, "1"), 0.0)
    feed.on_event(event("1h", hour, "5"), 0.0)
    outage(feed, clock, 90_000)  # now T0 + 2 min: two minutes ended, the hour did not
    rest.rows = {"1m": [row(T0, "1.2"), row(T0 + MIN, "0.4")], "1h": [row(hour, "6.6")]}
    assert (M, "1m") in feed.pending and (M, "1h") not in feed.pending

    async def main() -> None:
        await backfills_done(feed)
        feed.on_event(event("1h", hour, "6.8"), 0.0)  # the hour's next trade confirms it

    asyncio.run(main())
    assert rest.calls == [(M, "1m")]
    assert emitter.closed() == [(T0, "1.2")]  # the minute that ended in the outage
    assert feed.current[(M, "1m")].open_ts == T0 + MIN  # ended just now: closes after the grace
    assert feed.current[(M, "1h")].volume == "6.8"
    assert not feed.unconfirmed
    registry = service_metrics.registry
    assert registry.get_sample_value("trader_ingest_candle_backfills_skipped_total", {"interval": "1h"}) == 1
    assert registry.get_sample_value("trader_ingest_candle_backfills_skipped_total", {"interval": "1m"}) is None


def test_key_without_a_forming_candle_is_fetched_even_after_a_short_outage() -> None:
    """Nothing seen of the running period: nothing tells where the outage began, so it is fetched."""
    clock = FakeClock(T0 + 10_000)
    feed, emitter, rest = make_feed(clock, ["1m"])
    outage(feed, clock, 5_000)
    rest.rows["1m"] = [row(T0, "0.2")]
    assert (M, "1m") in feed.pending

    async def main() -> None:
        await backfills_done(feed)

    asyncio.run(main())
    assert rest.calls == [(M, "1m")]
    assert feed.current[(M, "1m")].open_ts == T0
    assert emitter.closed() == []
