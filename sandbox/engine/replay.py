"""Replay mode: drive each market's mid price from recorded Parquet (our ingest's layout)
instead of the random walk.

Layout: ``${dir}/YYYY-MM-DD/orderbook/top/*.parquet`` (market, ts, bid, ask, bid_size, ask_size)
and ``${dir}/YYYY-MM-DD/candles/<interval>/*.parquet`` (market, open_ts, open, high, low, close,
volume); ticker24h files are not needed for prices. Top-of-book mids win over candle closes.
The recording is mapped onto the engine clock so its first timestamp is the engine's start.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from bisect import bisect_right
from collections.abc import Callable
from decimal import Decimal

import pyarrow.parquet as pq

from .candles import INTERVAL_MS
from .markets import MarketSpec
from .numbers import fmt, parse_decimal

log = logging.getLogger(__name__)


class Replay:
    def __init__(self, series: dict[str, tuple[list[int], list[float]]], start_ms: int) -> None:
        self.series = series
        firsts = [ts[0] for ts, _ in series.values() if ts]
        self.offset = start_ms - min(firsts) if firsts else 0

    @property
    def markets(self) -> set[str]:
        return set(self.series)

    def mid_source(self, market: str) -> Callable[[int], float | None]:
        times, mids = self.series[market]
        offset = self.offset

        def mid_at(now_ms: int) -> float | None:
            i = bisect_right(times, now_ms - offset)
            return mids[i - 1] if i > 0 else mids[0]

        return mid_at

    def first_prices(self) -> dict[str, Decimal]:
        return {m: Decimal(repr(mids[0])) for m, (_t, mids) in self.series.items() if mids}

    def extra_specs(self, known: dict[str, MarketSpec]) -> dict[str, MarketSpec]:
        """Generic specs (4-5 significant digits of tick) for recorded markets not in the catalogue."""
        out = {}
        for market, (_times, mids) in self.series.items():
            if market in known or "-" not in market or not mids:
                continue
            base, quote = market.split("-", 1)
            exp = math.floor(math.log10(mids[0])) - 4
            tick = Decimal(1).scaleb(exp)
            price = (Decimal(repr(mids[0])) / tick).to_integral_value() * tick
            qd = max(0, min(8, 4 - math.floor(math.log10(mids[0]))))
            tick_str = fmt(tick) if exp < 0 else f"{tick:.2f}"
            out[market] = MarketSpec(market, base, quote, base.title(), tick_str, qd, 2, price, 0.01, 2.0)
        return out


def _read(files: list[str], columns: list[str]) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(files):
        table = pq.read_table(path)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            log.warning("replay_file_skipped", extra={"path": path, "missing": missing})
            continue
        rows.extend(table.select(columns).to_pylist())
    return rows


def load_replay(replay_dir: str, start_ms: int) -> Replay:
    top_files = glob.glob(os.path.join(replay_dir, "*", "orderbook", "top", "*.parquet"))
    points: dict[str, list[tuple[int, float]]] = {}
    for row in _read(top_files, ["market", "ts", "bid", "ask"]):
        bid, ask = parse_decimal(row["bid"]), parse_decimal(row["ask"])
        if bid is None or ask is None or bid <= 0 or ask <= 0 or row["ts"] is None:
            continue
        points.setdefault(row["market"], []).append((int(row["ts"]), float((bid + ask) / 2)))
    # Candles fill in markets without top-of-book recordings, from the finest interval present.
    from_top = set(points)
    done: set[str] = set()
    for interval in sorted(INTERVAL_MS, key=lambda iv: INTERVAL_MS[iv] or 10**12):
        files = glob.glob(os.path.join(replay_dir, "*", "candles", interval, "*.parquet"))
        found: set[str] = set()
        for row in _read(files, ["market", "open_ts", "close"]):
            market = row["market"]
            if market in from_top or market in done:
                continue
            close = parse_decimal(row["close"])
            if close is None or close <= 0 or row["open_ts"] is None:
                continue
            points.setdefault(market, []).append((int(row["open_ts"]), float(close)))
            found.add(market)
        done |= found
    series = {}
    for market, pts in points.items():
        pts.sort()
        series[market] = ([p[0] for p in pts], [p[1] for p in pts])
    log.info("replay_loaded", extra={"dir": replay_dir, "markets": len(series)})
    return Replay(series, start_ms)

