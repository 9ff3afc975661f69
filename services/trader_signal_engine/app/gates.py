"""Gates: whether a strategy's call on a candle may leave as a signal (DESIGN §4).

A call is suppressed, with the first reason that applies, in this order:

- ``stale_candle``: the candle closed more than ``max_candle_age_ms`` ago (a backlog after an
  outage, or the candle ingest's REST backfill): its reference price is history, not a price to
  trade at. The candle still updated the indicators.
- ``no_book``: no book top seen for the market (nothing to judge the spread by).
- ``stale_book``: the newest book top is older than ``max_book_age_ms`` (book ingest down).
- ``spread``: ``spread_bps`` of the newest book top above ``max_spread_bps``.
- ``vol_low`` / ``vol_high``: short-term volatility outside [``min_vol``, ``max_vol``].

Volatility is the candle interval's ATR as a fraction of the close, scaled to one hour by
``sqrt(1 h / interval)`` (a random walk's range grows with the square root of time), so one pair
of thresholds fits every interval: ``vol = ATR / close * sqrt(3_600_000 / interval_ms)``. For a
continuous random walk with hourly sigma ``s`` this is about ``1.6 * s`` (candles built from
trades, as the sandbox's, measure 1.0-1.3 times ``s``). Chosen over the stdev of mid
returns between book tops because book tops arrive when the top changes (hundreds a minute on a
busy market, a few on a quiet one), so per-update returns are not comparable across markets
without resampling; the ATR is sampled on the candle grid, is deterministic on replay, and is the
same ATR the signal carries for stop distances. Ages use the injected clock; a limit of 0 turns
that check off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tradestack.errors import ConfigError, PoisonMessage
from tradestack.messages import BookTopUpdated

HOUR_MS = 3_600_000
_MINUTE = 60_000
# Candle period per Bitvavo interval; "1M" (a calendar month) as 30 days, for volatility scaling only.
INTERVAL_MS: dict[str, int] = {
    "1m": _MINUTE, "5m": 5 * _MINUTE, "15m": 15 * _MINUTE, "30m": 30 * _MINUTE, "1h": 60 * _MINUTE,
    "2h": 120 * _MINUTE, "4h": 240 * _MINUTE, "6h": 360 * _MINUTE, "8h": 480 * _MINUTE, "12h": 720 * _MINUTE,
    "1d": 1440 * _MINUTE, "1W": 7 * 1440 * _MINUTE, "1M": 30 * 1440 * _MINUTE,
}

REASONS = ("stale_candle", "no_book", "stale_book", "spread", "vol_low", "vol_high")


@dataclass(frozen=True, slots=True)
class GateSettings:
    """The gate thresholds (the service fills them from ``SIGNAL_*`` settings)."""

    max_spread_bps: float = 25.0
    min_vol: float = 0.003  # ATR/close per sqrt(hour): below this a move does not pay the fees
    max_vol: float = 0.10  # above this the stop distances get wild
    max_book_age_ms: int = 60_000  # 0 = do not check
    max_candle_age_ms: int = 60_000  # since the candle's close; 0 = do not check

    def __post_init__(self) -> None:
        for name in ("max_spread_bps", "min_vol", "max_vol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"signal gates: {name} must be a finite number >= 0, got {value!r}")
        for name in ("max_book_age_ms", "max_candle_age_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"signal gates: {name} must be an integer >= 0, got {value!r}")
        if self.min_vol > self.max_vol:
            raise ConfigError(f"signal gates: min_vol ({self.min_vol}) must not exceed max_vol ({self.max_vol})")


def vol_scale(interval: str) -> float:
    """The factor that turns ATR/close on ``interval`` candles into the per-hour measure."""
    return math.sqrt(HOUR_MS / INTERVAL_MS[interval])


class Gates:
    """The gate inputs (newest book top per market) and the check."""

    __slots__ = ("_books", "settings")

    def __init__(self, settings: GateSettings) -> None:
        self.settings = settings
        self._books: dict[str, tuple[float, int]] = {}  # market -> (spread_bps, ts of the top)

    def on_book(self, msg: BookTopUpdated) -> None:
        """Keep the newest top of the market; PoisonMessage for a top that cannot be a book."""
        bid, ask = msg.bid, msg.ask
        if not (bid > 0 and ask >= bid):
            raise PoisonMessage(f"book top {msg.market}: bid {bid} / ask {ask} is not a book (need 0 < bid <= ask)")
        spread = float(msg.spread_bps)
        if not (0.0 <= spread < math.inf):
            raise PoisonMessage(f"book top {msg.market}: spread_bps {msg.spread_bps} must be >= 0")
        known = self._books.get(msg.market)
        if known is None or msg.ts >= known[1]:
            self._books[msg.market] = (spread, msg.ts)

    def drop(self, market: str) -> None:
        self._books.pop(market, None)

    def book(self, market: str) -> tuple[float, int] | None:
        """(spread_bps, ts) of the newest top, or None."""
        return self._books.get(market)

    def check(self, market: str, close_ts: int, vol: float, now_ms: int) -> str | None:
        """The reason to suppress a call on a candle of ``market`` that closed at ``close_ts`` with
        volatility ``vol`` (see the module doc), or None to let it through."""
        s = self.settings
        if s.max_candle_age_ms and now_ms - close_ts > s.max_candle_age_ms:
            return "stale_candle"
        book = self._books.get(market)
        if book is None:
            return "no_book"
        spread, ts = book
        if s.max_book_age_ms and now_ms - ts > s.max_book_age_ms:
            return "stale_book"
        if spread > s.max_spread_bps:
            return "spread"
        if vol < s.min_vol:
            return "vol_low"
        if vol > s.max_vol:
            return "vol_high"
        return None
