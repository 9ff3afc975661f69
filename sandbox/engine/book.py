"""Limit order book: price levels keyed by integer tick, FIFO within a level.

Prices are integer multiples of the market tickSize so comparisons are int-fast and the
sorted price lists are kept with ``bisect``. Changed levels are tracked for book deltas.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from decimal import Decimal

from .numbers import ZERO


class Resting:
    """One resting order's presence in the book (users' orders and liquidity providers' quotes)."""

    __slots__ = ("order_id", "owner", "side", "tick", "remaining", "seq", "order")

    def __init__(self, order_id: str, owner: str | None, side: str, tick: int, remaining: Decimal,
                 seq: int, order: object | None = None) -> None:
        self.order_id = order_id
        self.owner = owner  # api_key, or None for simulated participants
        self.side = side
        self.tick = tick
        self.remaining = remaining
        self.seq = seq
        self.order = order  # the user's Order, None for simulated participants


class Level:
    __slots__ = ("orders", "total")

    def __init__(self) -> None:
        self.orders: dict[str, Resting] = {}  # insertion order = time priority
        self.total = ZERO


class BookSide:
    def __init__(self, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.levels: dict[int, Level] = {}
        self.ticks: list[int] = []  # ascending

    def __len__(self) -> int:
        return len(self.ticks)

    def best(self) -> int | None:
        if not self.ticks:
            return None
        return self.ticks[-1] if self.is_bid else self.ticks[0]

    def ticks_best_first(self) -> Iterator[int]:
        return reversed(self.ticks) if self.is_bid else iter(self.ticks)

    def add(self, r: Resting) -> None:
        level = self.levels.get(r.tick)
        if level is None:
            level = Level()
            self.levels[r.tick] = level
            insort(self.ticks, r.tick)
        level.orders[r.order_id] = r
        level.total += r.remaining

    def remove(self, r: Resting) -> None:
        level = self.levels[r.tick]
        del level.orders[r.order_id]
        level.total -= r.remaining
        if not level.orders:
            del self.levels[r.tick]
            del self.ticks[bisect_left(self.ticks, r.tick)]

    def reduce(self, r: Resting, qty: Decimal) -> None:
        """Take ``qty`` off a resting order; removes it when nothing remains."""
        if qty >= r.remaining:
            self.remove(r)
            r.remaining = ZERO
            return
        r.remaining -= qty
        self.levels[r.tick].total -= qty


class OrderBook:
    def __init__(self) -> None:
        self.bids = BookSide(True)
        self.asks = BookSide(False)
        self.index: dict[str, Resting] = {}
        self.changed_bids: set[int] = set()
        self.changed_asks: set[int] = set()
        self.nonce = 0
        self._seq = 0
        self.version = 0  # bumped by every add/remove/reduce (cheap "did anything change" check)
        # Where a changed book registers itself (the exchange's set of books with unsent changes).
        self.dirty_sink: dict | None = None
        self.owner: object = None  # the key registered in dirty_sink

    def side(self, side: str) -> BookSide:
        return self.bids if side == "buy" else self.asks

    def opposite(self, side: str) -> BookSide:
        return self.asks if side == "buy" else self.bids

    def _touch(self, side: str, tick: int) -> None:
        self.version += 1
        (self.changed_bids if side == "buy" else self.changed_asks).add(tick)
        if self.dirty_sink is not None:
            self.dirty_sink[self.owner] = None

    def add(self, order_id: str, owner: str | None, side: str, tick: int, qty: Decimal,
            order: object | None = None) -> Resting:
        self._seq += 1
        r = Resting(order_id, owner, side, tick, qty, self._seq, order)
        self.side(side).add(r)
        self.index[order_id] = r
        self._touch(side, tick)
        return r

    def remove(self, r: Resting) -> None:
        self.side(r.side).remove(r)
        del self.index[r.order_id]
        self._touch(r.side, r.tick)

    def reduce(self, r: Resting, qty: Decimal) -> None:
        self.side(r.side).reduce(r, qty)
        if r.remaining <= 0:
            del self.index[r.order_id]
        self._touch(r.side, r.tick)

    def best_bid(self) -> int | None:
        return self.bids.best()

    def best_ask(self) -> int | None:
        return self.asks.best()

    def depth(self, side: str, n: int) -> list[tuple[int, Decimal]]:
        book_side = self.side(side)
        out = []
        for tick in book_side.ticks_best_first():
            out.append((tick, book_side.levels[tick].total))
            if len(out) >= n:
                break
        return out

    def has_changes(self) -> bool:
        return bool(self.changed_bids or self.changed_asks)

    def take_changes(self) -> tuple[list[tuple[int, Decimal]], list[tuple[int, Decimal]]]:
        """Changed levels with their new total size (0 = removed); clears the change set."""
        bl, al = self.bids.levels, self.asks.levels
        bids = [(t, bl[t].total if t in bl else ZERO) for t in self.changed_bids]
        asks = [(t, al[t].total if t in al else ZERO) for t in self.changed_asks]
        self.changed_bids = set()
        self.changed_asks = set()
        return bids, asks
