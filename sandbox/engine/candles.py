"""OHLCV candles aggregated from trades, per interval, bounded in memory."""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from decimal import Decimal

from .numbers import fmt

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
_MONDAY_OFFSET = 4 * DAY  # 1970-01-05 was the first Monday after the epoch

INTERVAL_MS: dict[str, int] = {
    "1m": MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE, "30m": 30 * MINUTE, "1h": HOUR,
    "2h": 2 * HOUR, "4h": 4 * HOUR, "6h": 6 * HOUR, "8h": 8 * HOUR, "12h": 12 * HOUR,
    "1d": DAY, "1W": WEEK, "1M": 0,  # 1M is a calendar month
}
INTERVALS = tuple(INTERVAL_MS)


def bucket_start(interval: str, ts: int) -> int:
    if interval == "1M":
        d = datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
        return int(datetime(d.year, d.month, 1, tzinfo=timezone.utc).timestamp() * 1000)
    if interval == "1W":
        return ts - ((ts - _MONDAY_OFFSET) % WEEK)
    width = INTERVAL_MS[interval]
    return ts - ts % width


class CandleSeries:
    """Candles of one interval: starts kept ascending (trades arrive in time order)."""

    __slots__ = ("interval", "starts", "rows", "cap", "_month_end", "_cur_start", "_cur_end", "_cur_row")

    def __init__(self, interval: str, cap: int) -> None:
        self.interval = interval
        self.starts: deque[int] = deque()
        self.rows: dict[int, list] = {}  # start -> [open, high, low, close, volume] (Decimals)
        self.cap = cap
        self._month_end = -1  # cache for 1M bucket lookup
        # The bucket trades currently land in: most adds are a range check and an update.
        self._cur_start = 0
        self._cur_end = -1
        self._cur_row: list | None = None

    def _start(self, ts: int) -> int:
        if self.interval != "1M":
            return bucket_start(self.interval, ts)
        if self.starts and self.starts[-1] <= ts < self._month_end:
            return self.starts[-1]
        start = bucket_start("1M", ts)
        d = datetime.fromtimestamp(start / 1000, tz=timezone.utc)
        nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=timezone.utc)
        self._month_end = int(nxt.timestamp() * 1000)
        return start

    def _end(self, start: int) -> int:
        if self.interval == "1M":
            return self._month_end
        return start + INTERVAL_MS[self.interval]

    def add(self, ts: int, price: Decimal, amount: Decimal) -> list:
        if self._cur_start <= ts < self._cur_end:
            row = self._cur_row
        else:
            start = self._start(ts)
            row = self.rows.get(start)
            if row is not None:
                self._cur_start, self._cur_end, self._cur_row = start, self._end(start), row
        if row is None:
            row = [price, price, price, price, amount]
            self.rows[start] = row
            self.starts.append(start)
            self._cur_start, self._cur_end, self._cur_row = start, self._end(start), row
            if len(self.starts) > self.cap:
                del self.rows[self.starts.popleft()]
        else:
            if price > row[1]:
                row[1] = price
            if price < row[2]:
                row[2] = price
            row[3] = price
            row[4] += amount
        return row

    @staticmethod
    def row_json(start: int, row: list) -> list:
        return [start, fmt(row[0]), fmt(row[1]), fmt(row[2]), fmt(row[3]), fmt(row[4])]

    def query(self, limit: int, start: int | None, end: int | None) -> list[list]:
        """Newest first; start and end inclusive on the candle timestamp."""
        out = []
        for s in reversed(self.starts):
            if end is not None and s > end:
                continue
            if start is not None and s < start:
                break
            out.append(self.row_json(s, self.rows[s]))
            if len(out) >= limit:
                break
        return out


class CandleSet:
    def __init__(self, cap: int) -> None:
        self.series = {iv: CandleSeries(iv, cap) for iv in INTERVALS}
        # interval -> period starts touched since the last drain: a step can span a period boundary,
        # and Bitvavo sends a candle event after every trade, so each touched period gets its event.
        self.dirty: dict[str, set[int]] = {}

    def add(self, ts: int, price: Decimal, amount: Decimal) -> None:
        for iv, series in self.series.items():
            series.add(ts, price, amount)
            self.dirty.setdefault(iv, set()).add(series._cur_start)  # the period this trade fell in

    def take_dirty(self) -> list[tuple[str, int, tuple]]:
        """(interval, period start, (open, high, low, close, volume)) of every period touched since
        the last call; the row is a copy, formatted only if someone subscribed (CandleEvent.to_ws)."""
        out = []
        for iv in INTERVALS:
            starts = self.dirty.get(iv)
            if not starts:
                continue
            rows = self.series[iv].rows
            for start in sorted(starts):
                row = rows.get(start)
                if row is not None:
                    out.append((iv, start, tuple(row)))
        self.dirty.clear()
        return out
