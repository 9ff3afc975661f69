"""Public trade tape per market plus the rolling 24 h statistics for /ticker/24h.

The tape is the window: appending a trade adds to running sums, expiring one subtracts, and
monotonic deques give high/low, so a ticker24h row costs O(1) instead of a scan.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal

from .numbers import ZERO

WINDOW_MS = 24 * 3_600_000


class TradeTape:
    __slots__ = ("trades", "volume", "volume_quote", "_max", "_min", "_seq", "cap", "retention_ms")

    def __init__(self, cap: int, retention_ms: int = WINDOW_MS) -> None:
        # (seq, ts, price, amount, taker_side, trade_id)
        self.trades: deque[tuple[int, int, Decimal, Decimal, str, str]] = deque()
        self.volume = ZERO
        self.volume_quote = ZERO
        self._max: deque[tuple[int, Decimal]] = deque()  # (seq, price) decreasing prices
        self._min: deque[tuple[int, Decimal]] = deque()  # (seq, price) increasing prices
        self._seq = 0
        self.cap = cap
        self.retention_ms = retention_ms

    def append(self, ts: int, price: Decimal, amount: Decimal, side: str, trade_id: str) -> None:
        self._seq += 1
        seq = self._seq
        self.trades.append((seq, ts, price, amount, side, trade_id))
        self.volume += amount
        self.volume_quote += amount * price
        while self._max and self._max[-1][1] <= price:
            self._max.pop()
        self._max.append((seq, price))
        while self._min and self._min[-1][1] >= price:
            self._min.pop()
        self._min.append((seq, price))
        if len(self.trades) > self.cap:
            self._pop()

    def _pop(self) -> None:
        seq, _ts, price, amount, _side, _tid = self.trades.popleft()
        self.volume -= amount
        self.volume_quote -= amount * price
        if self._max and self._max[0][0] == seq:
            self._max.popleft()
        if self._min and self._min[0][0] == seq:
            self._min.popleft()

    def expire(self, now_ms: int) -> None:
        cutoff = now_ms - self.retention_ms
        trades = self.trades
        while trades and trades[0][1] < cutoff:
            self._pop()
        if not trades:
            # Guard against accumulated Decimal drift when the window empties.
            self.volume = ZERO
            self.volume_quote = ZERO

    @property
    def last(self) -> tuple[int, int, Decimal, Decimal, str, str] | None:
        return self.trades[-1] if self.trades else None

    def stats(self) -> dict | None:
        if not self.trades:
            return None
        first = self.trades[0]
        last = self.trades[-1]
        return {"open": first[2], "openTimestamp": first[1], "high": self._max[0][1],
                "low": self._min[0][1], "last": last[2], "closeTimestamp": last[1],
                "volume": self.volume, "volumeQuote": self.volume_quote}

    def query(self, limit: int, start: int | None, end: int | None,
              id_from: str | None, id_to: str | None) -> list[tuple]:
        """Newest first. start and end inclusive; tradeIdFrom/To bound by tape position."""
        out = []
        trades = self.trades
        hi = len(trades)
        lo = 0
        if id_to is not None or id_from is not None:
            positions = {t[5]: i for i, t in enumerate(trades) if t[5] in (id_from, id_to)}
            if id_to is not None:
                hi = positions.get(id_to, -1) + 1
            if id_from is not None:
                lo = positions.get(id_from, len(trades))
        for i in range(hi - 1, lo - 1, -1):
            t = trades[i]
            if end is not None and t[1] > end:
                continue
            if start is not None and t[1] < start:
                break
            out.append(t)
            if len(out) >= limit:
                break
        return out
