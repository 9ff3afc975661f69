"""Signal engine tests (tier 1: pure code, no Redis). Shared builders for candles, books and the
known candle series the strategy and engine tests use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from tradestack.messages import BookTopUpdated, CandleUpdated, Trace, derive_id

MINUTE = 60_000
T0 = 1_699_999_980_000  # a minute boundary
MARKET = "BTC-EUR"


def d(x: float) -> Decimal:
    return Decimal(f"{x:.2f}")


def candle(i: int, o: float, h: float, lo: float, c: float, *, market: str = MARKET, interval: str = "1m",
           closed: bool = True, v: float = 1.0, entry: str = "", start: int = T0) -> CandleUpdated:
    """The closed 1m candle number ``i`` (open_ts = start + i minutes). ``entry`` varies the message id
    (a re-published candle has another entry id, same candle)."""
    open_ts = start + i * MINUTE
    msg_id = derive_id(f"candle/{market}/{interval}/{open_ts}/{closed}/{entry}")
    ts = open_ts + MINUTE
    return CandleUpdated(id=msg_id, ts=ts, src="test", trace=Trace(id=msg_id, ts=ts), market=market,
                         interval=interval, open_ts=open_ts, open=d(o), high=d(h), low=d(lo), close=d(c),
                         volume=Decimal(f"{v}"), closed=closed)


def candles_from_closes(closes: Sequence[float], *, market: str = MARKET, interval: str = "1m",
                        wiggle: float = 0.05, start: int = T0) -> list[CandleUpdated]:
    """Candles whose open is the previous close and whose range reaches ``wiggle`` beyond both."""
    out = []
    prev = closes[0]
    for i, c in enumerate(closes):
        o = prev
        out.append(candle(i, o, max(o, c) + wiggle, min(o, c) - wiggle, c, market=market, interval=interval,
                          start=start))
        prev = c
    return out


def book(market: str = MARKET, *, ts: int, bid: float = 100.0, spread_bps: float = 2.0) -> BookTopUpdated:
    bid_d = Decimal(f"{bid}")
    ask_d = (bid_d * (1 + Decimal(f"{spread_bps}") / 10_000)).quantize(Decimal("0.00000001"))
    mid = (bid_d + ask_d) / 2
    spread = ((ask_d - bid_d) / mid * 10_000).quantize(Decimal("0.0001"))
    msg_id = derive_id(f"book/{market}/{ts}")
    return BookTopUpdated(id=msg_id, ts=ts, src="test", trace=Trace(id=msg_id, ts=ts), market=market, bid=bid_d,
                          bid_size=Decimal(1), ask=ask_d, ask_size=Decimal(1), mid=mid, spread_bps=spread,
                          nonce=1, exchange_ts=ts)


def _ramp(start: float, step: float, n: int) -> list[float]:
    return [round(start + step * (k + 1), 2) for k in range(n)]


def momentum_series() -> list[float]:
    """A steady rise (60 candles), a dip (10), a strong recovery (20): with the default momentum
    (5/13, trend 50) one sell in the dip and one buy in the recovery, above the trend EMA."""
    closes = [100.0 + 0.5 * k for k in range(60)]
    closes += _ramp(closes[-1], -1.0, 10)
    closes += _ramp(closes[-1], 1.5, 20)
    return closes


def falling_v_series() -> list[float]:
    """A long fall then a V: the fast EMA crosses up while the close is still below the trend EMA."""
    closes = [150.0 - 0.5 * k for k in range(70)]
    closes += _ramp(closes[-1], 0.8, 12)
    return closes


def reversion_series() -> list[float]:
    """Flat with a small zigzag (40), a sharp drop (3), back to flat (30), a sharp spike (3), flat
    (10): with the default mean reversion one buy at the drop and one sell at the spike."""
    closes = [100.0 + (0.1 if k % 2 else -0.1) for k in range(40)]
    closes += [99.0, 98.0, 97.0]
    closes += [100.0 + (0.1 if k % 2 else -0.1) for k in range(30)]
    closes += [101.0, 102.0, 103.0]
    closes += [100.0 + (0.1 if k % 2 else -0.1) for k in range(10)]
    return closes


def combined_series() -> list[float]:
    return momentum_series() + reversion_series()[5:]


def opens(msgs: Iterable[CandleUpdated]) -> list[int]:
    return [m.open_ts for m in msgs]
