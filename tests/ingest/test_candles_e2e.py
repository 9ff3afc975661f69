"""Candle ingest against the sandbox on a fast clock (1 real second = 1 minute): closed candles
have no holes except periods without trades, and a restart mid-stream neither duplicates nor
misses a closed candle, with WS drops where the races are (around the end of a minute)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import redis

from ingest.candles import Settings
from tests.ingest.helpers import FastClock, ingest_service, poll, sandbox
from tradestack import streams
from tradestack.bitvavo.candles import CandleFeed
from tradestack.messages import decode

INTERVALS = ["1m", "5m"]
# WS drops, in simulated ms from the end of a minute (one per minute): just before it (the WS may
# show the next minute while the backfill is pending), just after it (the reconnect's backfill then
# runs inside the close grace, and its answer often holds the ended minute and the new one: the
# race that used to leave a hole), and mid-minute. The 10 s grace widens that
# window so the new minute has trades before the backfill asks (about 12 a minute per market).
DROP_OFFSETS_MS = (-1_500, 1_000, 3_000, 5_000, 25_000)


def _feed(service, **kw) -> CandleFeed:
    s = service.settings
    return CandleFeed(intervals=s.candle_intervals, redis=service.redis, close_grace_ms=s.candle_close_grace_ms,
                      backfill_periods=s.candle_backfill_periods, close_check_s=0.05, **kw)


def test_candles_no_holes_no_duplicates_across_restart(redis_url: str, rclient: redis.Redis, tmp_path: Path) -> None:
    clock = FastClock(speed=60.0)

    async def main() -> None:
        async with sandbox(clock=clock, seed=11, markets="BTC-EUR,ETH-EUR,SOL-EUR,ADA-EUR") as sb:
            markets = sb.exchange.market_ids
            settings = Settings(redis_url=redis_url, bitvavo_rest_url=sb.rest_url, bitvavo_ws_url=sb.ws_url,
                                metrics_port=0, parquet_dir=str(tmp_path / "pq"), ingest_markets=list(markets),
                                candle_intervals=INTERVALS, candle_close_grace_ms=10_000, candle_backfill_periods=30,
                                rest_points_per_min=900, ws_reconnect_base_s=0.05, ws_reconnect_cap_s=0.3)
            first_start = clock.now_ms()
            for _run in range(2):  # the second run is the restart mid-stream
                async with ingest_service("ingest_candles", settings, _feed, clock) as (service, feed):
                    await poll(lambda: feed._loaded.is_set() and not feed.pending and feed.connected.is_set(), 20,
                               "backfill done")
                    base = clock.now_ms() - clock.now_ms() % 60_000
                    for k, offset in enumerate(DROP_OFFSETS_MS):  # about five minutes of trading
                        at = base + (k + 1) * 60_000 + offset
                        await poll(lambda at=at: clock.now_ms() >= at, 10, "drop time", every_s=0.002)
                        sb.faults.apply({"ws_drop": "all"})
                    await poll(lambda: not feed.pending and feed.connected.is_set(), 20, "backfill after drops")
                    # Let the minute in progress close (clock-driven close after the grace).
                    last_open = clock.now_ms() - clock.now_ms() % 60_000 - 60_000
                    await poll(lambda t=last_open: all(feed.last_closed.get((m, "1m"), 0) >= t for m in markets), 10,
                               "last minute closed")
            await sb.loop.stop()
            closed: dict[tuple[str, str], list] = {}
            for iv in INTERVALS:
                for _, fields in rclient.xrange(streams.candles(iv)):
                    msg = decode(fields)
                    if msg.closed:
                        closed.setdefault((msg.market, iv), []).append(msg)
            for m in markets:
                for iv in INTERVALS:
                    got = closed.get((m, iv), [])
                    opens = [c.open_ts for c in got]
                    dupes = [ts for ts, n in Counter(opens).items() if n > 1]
                    assert not dupes, f"{m} {iv}: closed twice: {dupes}"
                    assert opens == sorted(opens), f"{m} {iv}: out of order"
                    if iv != "1m":
                        continue
                    assert len(opens) >= 30, (m, len(opens))
                    lo, hi = min(opens), max(opens)
                    truth = sb.exchange.candles(m, {"interval": iv, "start": str(lo), "end": str(hi), "limit": "1440"})
                    assert sorted(r[0] for r in truth) == opens, f"{m} {iv}: holes or extras"
                    # candles closed after the first start cover the whole run (none missing at the restart)
                    assert hi >= first_start + 8 * 60_000

    asyncio.run(main())
