"""A local order book per market, kept in sync with Bitvavo's documented resync recipe.

``OrderBook`` holds price → size per side in a ``SortedDict`` (O(log n) per changed level,
O(1) for the best level). ``BookSync`` is the recipe (reference §9.3, "Resync recipe"):

1. subscribe ``book`` and buffer its events;
2. fetch a snapshot (``GET /{market}/book``, same nonce space);
3. drop buffered events with ``nonce <= snapshot.nonce``, apply the rest in order;
4. thereafter apply an event only if ``nonce == last + 1``; on any gap or nonce reset,
   go back to 1 (buffer, refetch the snapshot).

Both are pure (no I/O): the feed decides when to fetch a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Iterable, Sequence

from sortedcontainers import SortedDict

Level = Sequence[str]  # ["price", "size"] exactly as Bitvavo sends them
ZERO = Decimal(0)
BPS = Decimal(10_000)
SPREAD_QUANT = Decimal("0.0001")


class OrderBook:
    """Price levels of one market. Sizes are totals at a price; size 0 removes the level."""

    __slots__ = ("market", "bids", "asks", "nonce")

    def __init__(self, market: str) -> None:
        self.market = market
        self.bids: SortedDict = SortedDict()  # ascending; best bid = last
        self.asks: SortedDict = SortedDict()  # ascending; best ask = first
        self.nonce = 0

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self.nonce = 0

    @staticmethod
    def _apply_side(side: SortedDict, levels: Iterable[Level]) -> None:
        for price_s, size_s in levels:
            price = Decimal(price_s)
            size = Decimal(size_s)
            if not price.is_finite() or not size.is_finite() or size < 0:
                raise ValueError(f"bad level {price_s!r}, {size_s!r}")
            if size == 0:
                side.pop(price, None)
            else:
                side[price] = size

    def apply(self, nonce: int, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply one delta event (levels within an event are unordered; each is a new total)."""
        self._apply_side(self.bids, bids)
        self._apply_side(self.asks, asks)
        self.nonce = nonce

    def load(self, nonce: int, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book with a snapshot."""
        self.bids.clear()
        self.asks.clear()
        self._apply_side(self.bids, bids)
        self._apply_side(self.asks, asks)
        self.nonce = nonce

    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        return self.bids.peekitem(-1) if self.bids else None

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        return self.asks.peekitem(0) if self.asks else None

    def top(self) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
        """(bid, bid_size, ask, ask_size), or None while a side is empty."""
        if not self.bids or not self.asks:
            return None
        bid, bid_size = self.bids.peekitem(-1)
        ask, ask_size = self.asks.peekitem(0)
        return bid, bid_size, ask, ask_size

    def depth(self, n: int | None = None) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Best-first levels per side (all when ``n`` is None)."""
        nb = len(self.bids) if n is None else min(n, len(self.bids))
        na = len(self.asks) if n is None else min(n, len(self.asks))
        bid_keys = self.bids.keys()
        ask_keys = self.asks.keys()
        bids = [(bid_keys[-1 - i], self.bids[bid_keys[-1 - i]]) for i in range(nb)]
        asks = [(ask_keys[i], self.asks[ask_keys[i]]) for i in range(na)]
        return bids, asks


def mid_and_spread_bps(bid: Decimal, ask: Decimal) -> tuple[Decimal, Decimal]:
    """Mid price and spread in basis points of the mid (4 decimals)."""
    mid = (bid + ask) / 2
    if mid <= 0:
        return mid, ZERO
    return mid, ((ask - bid) / mid * BPS).quantize(SPREAD_QUANT)


class Status(Enum):
    APPLIED = "applied"  # the event moved the synced book
    BUFFERED = "buffered"  # waiting for a snapshot
    STALE = "stale"  # nonce <= the snapshot's: already in the book, dropped
    SYNCED = "synced"  # a snapshot (plus the buffered tail) made the book current
    GAP = "gap"  # a nonce gap or reset: a (new) snapshot is needed


@dataclass(slots=True)
class _Buffered:
    nonce: int
    bids: Sequence[Level]
    asks: Sequence[Level]


@dataclass
class BookSync:
    """The resync recipe for one market, around its ``OrderBook``."""

    market: str
    max_buffer: int = 10_000
    book: OrderBook = field(init=False)
    synced: bool = field(default=False, init=False)
    _buffer: list[_Buffered] = field(default_factory=list, init=False)
    # Events with nonce <= this are older than the snapshot: drop them. Cleared once an event
    # past the snapshot has been applied, so that from then on a falling nonce means a reset.
    _snapshot_nonce: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.book = OrderBook(self.market)

    def reset(self) -> None:
        """Forget everything (a new connection): buffer until the next snapshot."""
        self.book.clear()
        self.synced = False
        self._buffer.clear()
        self._snapshot_nonce = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def on_event(self, nonce: int, bids: Sequence[Level], asks: Sequence[Level]) -> Status:
        if not self.synced:
            if self._buffer and nonce <= self._buffer[-1].nonce:
                self._buffer.clear()  # the nonce fell (engine restart): only the new sequence counts
            if len(self._buffer) >= self.max_buffer:
                self._buffer.pop(0)  # the snapshot will be newer than what we drop, or we refetch
            self._buffer.append(_Buffered(nonce, bids, asks))
            return Status.BUFFERED
        if self._snapshot_nonce is not None and nonce <= self._snapshot_nonce:
            return Status.STALE
        if nonce == self.book.nonce + 1:
            self.book.apply(nonce, bids, asks)
            self._snapshot_nonce = None
            return Status.APPLIED
        # Gap (nonce jumped) or reset (nonce fell): resync from this event on.
        self.synced = False
        self._snapshot_nonce = None
        self._buffer = [_Buffered(nonce, bids, asks)]
        return Status.GAP

    def on_snapshot(self, nonce: int, bids: Sequence[Level], asks: Sequence[Level]) -> Status:
        """Load a snapshot, then replay the buffered events newer than it, in order."""
        self.book.load(nonce, bids, asks)
        pending = [ev for ev in self._buffer if ev.nonce > nonce]
        self._buffer = []
        for i, ev in enumerate(pending):
            if ev.nonce != self.book.nonce + 1:
                # The snapshot is older than the buffered tail (or the tail has a hole).
                self.synced = False
                self._snapshot_nonce = None
                self._buffer = pending[i:]
                return Status.GAP
            self.book.apply(ev.nonce, ev.bids, ev.asks)
        self.synced = True
        self._snapshot_nonce = nonce if not pending else None
        return Status.SYNCED
