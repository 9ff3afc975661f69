"""Every Redis stream and key name, in one place.

Market-data streams are trimmed by length (``MAXLEN ~``); order, execution, signal and
event streams are never trimmed by length, because trimming skips entries a lagging
consumer group has not read yet (DESIGN §2).
"""

from __future__ import annotations

# Market data (ingest → everyone)
TICKER24H = "bitvavo:ticker24h"
BOOK = "bitvavo:book"  # top of book on change
ORDERBOOK_UPDATE = "bitvavo:orderbook:update"  # book deltas with nonce
CANDLES_PREFIX = "bitvavo:candles:"

# Decisions and orders
SIGNALS_BASELINE = "signals:baseline"  # default SIGNAL_STREAM
ORDERS_SIGNALS = "orders:signals"  # every decision of the trading core
ORDERS_SHADOW = "orders:shadow"  # intents for the executor
ORDERS_EXECUTED = "orders:executed"  # fills and order states from the executor
TRADING_EVENTS = "trading:events"
PNL_SNAPSHOTS = "pnl:snapshots"

# Keys
KILL = "trading:kill"
KILL_REASON = "trading:kill:reason"
UNIVERSE = "trading:universe"  # hash market → JSON
PNL = "trading:pnl"  # hash
POSITIONS = "trading:positions"  # hash
MARKETS = "trading:markets"  # the trading core's copy of /markets (JSON), for a start without the exchange
HEARTBEAT_PREFIX = "trading:heartbeat:"
DEDUPE_PREFIX = "dedupe:"

DLQ_SUFFIX = ":dlq"

CANDLE_INTERVALS = ("1m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1W", "1M")


def candles(interval: str) -> str:
    """``bitvavo:candles:<interval>``; rejects intervals Bitvavo does not have."""
    if interval not in CANDLE_INTERVALS:
        raise ValueError(f"unknown candle interval {interval!r}; expected one of {', '.join(CANDLE_INTERVALS)}")
    return CANDLES_PREFIX + interval


def heartbeat(service: str) -> str:
    return HEARTBEAT_PREFIX + service


def dlq(stream: str) -> str:
    return stream + DLQ_SUFFIX


def is_market_data(stream: str) -> bool:
    return stream in (TICKER24H, BOOK, ORDERBOOK_UPDATE) or stream.startswith(CANDLES_PREFIX)


# Default approximate MAXLEN per market-data stream (entries). Overridable with STREAM_MAXLEN.
DEFAULT_MAXLEN: dict[str, int] = {
    TICKER24H: 200_000,
    BOOK: 500_000,
    ORDERBOOK_UPDATE: 1_000_000,
    **{candles(i): 100_000 for i in CANDLE_INTERVALS},
}


def maxlen_for(stream: str, overrides: dict[str, int] | None = None) -> int:
    """The MAXLEN for a stream: 0 (never trim by length) for everything but market data."""
    if overrides and stream in overrides:
        return overrides[stream] if is_market_data(stream) else 0
    return DEFAULT_MAXLEN.get(stream, 0)
