"""Incremental indicators: O(1) work per new candle, nothing recomputed over the window.

Each indicator has ``update(...)``, ``value`` (``None`` until ``ready``) and ``ready``. They
compute in float: they are features that decide *whether* to trade, never amounts. Where a value
leaves the process as a price (the ATR a signal carries) the engine turns it into a ``Decimal``
with 12 significant digits (see ``engine.py``).

Definitions (the textbook ones, so a chart platform shows the same numbers):

- ``EMA(n)``: seeded with the simple mean of the first ``n`` values (ready after ``n``), then
  ``ema += alpha * (x - ema)`` with ``alpha = 2 / (n + 1)``.
- ``WilderRSI(n)``: changes of consecutive closes; the first average gain/loss is the simple mean
  of the first ``n`` changes (ready after ``n + 1`` closes), then Wilder's smoothing
  ``avg = (avg * (n - 1) + x) / n``. ``RSI = 100 - 100 / (1 + avg_gain / avg_loss)``; 100 when
  there were no losses, 50 when the price did not move at all.
- ``WilderATR(n)``: true range ``max(high - low, |high - prev_close|, |low - prev_close|)`` (the
  first candle, having no previous close, counts ``high - low``); the first ATR is the simple
  mean of the first ``n`` true ranges, then Wilder's smoothing.
- ``RollingStats(n)``: mean and *population* standard deviation (ddof=0, as Bollinger bands) of
  the last ``n`` values, from a ring buffer with running sums; ``zscore(x)`` and ``bands(k)``.
"""

from __future__ import annotations

import math

__all__ = ["EMA", "RollingStats", "WilderATR", "WilderRSI"]


def _check_period(period: int, minimum: int = 1) -> int:
    if isinstance(period, bool) or not isinstance(period, int) or period < minimum:
        raise ValueError(f"period must be an integer >= {minimum}, got {period!r}")
    return period


class EMA:
    """Exponential moving average, seeded with the simple mean of the first ``period`` values."""

    __slots__ = ("_ema", "_n", "_sum", "alpha", "period")

    def __init__(self, period: int) -> None:
        self.period = _check_period(period)
        self.alpha = 2.0 / (period + 1)
        self._n = 0
        self._sum = 0.0
        self._ema: float | None = None

    def update(self, x: float) -> float | None:
        ema = self._ema
        if ema is not None:
            ema += self.alpha * (x - ema)
            self._ema = ema
            return ema
        self._n += 1
        self._sum += x
        if self._n == self.period:
            self._ema = self._sum / self.period
        return self._ema

    @property
    def value(self) -> float | None:
        return self._ema

    @property
    def ready(self) -> bool:
        return self._ema is not None


class WilderRSI:
    """Relative strength index with Wilder's smoothing (ready after ``period + 1`` closes)."""

    __slots__ = ("_gain", "_loss", "_n", "_prev", "_value", "period")

    def __init__(self, period: int = 14) -> None:
        self.period = _check_period(period)
        self._prev: float | None = None
        self._n = 0  # changes seen while seeding
        self._gain = 0.0  # while seeding: sums; then: Wilder averages
        self._loss = 0.0
        self._value: float | None = None

    def update(self, close: float) -> float | None:
        prev = self._prev
        self._prev = close
        if prev is None:
            return None
        change = close - prev
        gain = max(0.0, change)
        loss = -change if change < 0.0 else 0.0
        n = self.period
        if self._value is None:
            self._gain += gain
            self._loss += loss
            self._n += 1
            if self._n < n:
                return None
            self._gain /= n
            self._loss /= n
        else:
            self._gain = (self._gain * (n - 1) + gain) / n
            self._loss = (self._loss * (n - 1) + loss) / n
        avg_gain, avg_loss = self._gain, self._loss
        if avg_loss == 0.0:
            value = 100.0 if avg_gain > 0.0 else 50.0
        else:
            value = 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
        self._value = value
        return value

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None


class WilderATR:
    """Average true range with Wilder's smoothing (ready after ``period`` candles)."""

    __slots__ = ("_n", "_prev_close", "_sum", "_value", "period")

    def __init__(self, period: int = 14) -> None:
        self.period = _check_period(period)
        self._prev_close: float | None = None
        self._n = 0
        self._sum = 0.0
        self._value: float | None = None

    def update(self, high: float, low: float, close: float) -> float | None:
        prev = self._prev_close
        self._prev_close = close
        tr = high - low
        if prev is not None:
            up = high - prev if high > prev else prev - high
            down = low - prev if low > prev else prev - low
            tr = max(tr, up)
            tr = max(tr, down)
        value = self._value
        n = self.period
        if value is not None:
            value = (value * (n - 1) + tr) / n
            self._value = value
            return value
        self._n += 1
        self._sum += tr
        if self._n == n:
            self._value = self._sum / n
        return self._value

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None


class RollingStats:
    """Mean and population standard deviation of the last ``period`` values.

    A ring buffer with running sums of ``x - k`` and ``(x - k)**2`` around a shift ``k`` (the
    window's mean at the last resync): shifting keeps the variance exact for prices far from zero
    with a tiny spread (60000 +- 0.5), where raw sums of squares would cancel catastrophically.
    Every time the ring wraps (every ``period`` updates) the sums are recomputed exactly from the
    buffer with ``math.fsum``, so rounding drift never accumulates: O(1) amortised per update.
    """

    __slots__ = ("_buf", "_i", "_k", "_s1", "_s2", "period")

    def __init__(self, period: int = 20) -> None:
        self.period = _check_period(period, 2)
        self._buf: list[float] = []
        self._i = 0  # next slot to overwrite once full
        self._k = 0.0
        self._s1 = 0.0
        self._s2 = 0.0

    def update(self, x: float) -> float | None:
        buf = self._buf
        n = self.period
        if len(buf) < n:
            if not buf:
                self._k = x
            buf.append(x)
            d = x - self._k
            self._s1 += d
            self._s2 += d * d
            if len(buf) == n:
                self._resync()
                return self._k + self._s1 / n
            return None
        i = self._i
        k = self._k
        d_new = x - k
        d_old = buf[i] - k
        buf[i] = x
        self._s1 += d_new - d_old
        self._s2 += d_new * d_new - d_old * d_old
        i += 1
        if i == n:
            i = 0
            self._resync()
        self._i = i
        return self._k + self._s1 / n

    def _resync(self) -> None:
        buf = self._buf
        n = len(buf)
        k = math.fsum(buf) / n
        self._k = k
        self._s1 = math.fsum([x - k for x in buf])
        self._s2 = math.fsum([(x - k) * (x - k) for x in buf])

    @property
    def ready(self) -> bool:
        return len(self._buf) == self.period

    @property
    def value(self) -> float | None:
        """The mean of the window."""
        if len(self._buf) < self.period:
            return None
        return self._k + self._s1 / self.period

    @property
    def std(self) -> float | None:
        """Population standard deviation (ddof=0) of the window."""
        if len(self._buf) < self.period:
            return None
        n = self.period
        m1 = self._s1 / n
        var = self._s2 / n - m1 * m1
        return math.sqrt(var) if var > 0.0 else 0.0

    def zscore(self, x: float) -> float | None:
        """``(x - mean) / std``; 0 when the window is flat (no spread, no deviation to speak of)."""
        if len(self._buf) < self.period:
            return None
        n = self.period
        m1 = self._s1 / n
        var = self._s2 / n - m1 * m1
        # A variance that is rounding noise relative to the level counts as flat.
        mean = self._k + m1
        if var <= 1e-24 * (mean * mean + 1e-300):
            return 0.0
        return (x - mean) / math.sqrt(var)

    def bands(self, k: float) -> tuple[float, float, float] | None:
        """Bollinger bands ``(mean - k*std, mean, mean + k*std)``."""
        mean, std = self.value, self.std
        if mean is None or std is None:
            return None
        return mean - k * std, mean, mean + k * std
