"""Price-time priority matching with self-trade prevention.

The matcher only walks the book and decides; settlement (balances, fees, order updates,
events, the public tape) is the caller's job through the ``on_trade``/``on_stp`` callbacks,
so the same loop serves users' orders and the simulated participants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from .book import OrderBook, Resting
from .numbers import ZERO

TradeCallback = Callable[[Resting, Decimal, int], None]
StpCallback = Callable[[Resting, Decimal], None]  # (maker, decrement) ; decrement == remaining → cancel


@dataclass(slots=True)
class Taker:
    owner: str | None  # api_key; None for simulated participants (never self-trade)
    side: str
    limit_tick: int | None  # None = market order
    max_qty: Callable[[int], Decimal]  # largest base quantity the taker can still take at a tick
    stp: str = "decrementAndCancel"
    # Outcome.
    stp_cancel_taker: bool = False  # the taker must be canceled for self-trade prevention
    stp_decrement: Decimal = ZERO  # base removed from the taker by decrementAndCancel
    traded: Decimal = ZERO


def crosses(side: str, limit_tick: int | None, best: int) -> bool:
    if limit_tick is None:
        return True
    return best <= limit_tick if side == "buy" else best >= limit_tick


def would_take(book: OrderBook, side: str, limit_tick: int | None) -> bool:
    best = book.opposite(side).best()
    return best is not None and crosses(side, limit_tick, best)


def fillable(book: OrderBook, side: str, limit_tick: int | None, owner: str | None) -> Decimal:
    """Base quantity available to a taker up to its limit, ignoring its own orders (FOK check)."""
    opp = book.opposite(side)
    total = ZERO
    for tick in opp.ticks_best_first():
        if not crosses(side, limit_tick, tick):
            break
        level = opp.levels[tick]
        if owner is None:
            total += level.total
        else:
            total += sum((r.remaining for r in level.orders.values() if r.owner != owner), ZERO)
    return total


def match(book: OrderBook, taker: Taker, on_trade: TradeCallback, on_stp: StpCallback) -> None:
    opp = book.opposite(taker.side)
    while True:
        best = opp.best()
        if best is None or not crosses(taker.side, taker.limit_tick, best):
            return
        maker = next(iter(opp.levels[best].orders.values()))
        # Quantity already removed by decrementAndCancel is no longer the taker's to trade.
        want = taker.max_qty(best) - taker.stp_decrement
        if want <= 0:
            return
        if taker.owner is not None and maker.owner == taker.owner:
            mode = taker.stp
            if mode == "cancelOldest":
                on_stp(maker, maker.remaining)
                continue
            if mode == "cancelNewest":
                taker.stp_cancel_taker = True
                return
            if mode == "cancelBoth":
                on_stp(maker, maker.remaining)
                taker.stp_cancel_taker = True
                return
            # decrementAndCancel: the smaller order is canceled, the larger decremented by it.
            dec = min(want, maker.remaining)
            on_stp(maker, dec)
            taker.stp_decrement += dec
            if dec >= want:
                taker.stp_cancel_taker = True
                return
            continue
        qty = min(want, maker.remaining)
        on_trade(maker, qty, best)
        taker.traded += qty
