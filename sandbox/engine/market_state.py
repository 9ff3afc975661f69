"""Everything the exchange keeps per market: spec, book, tape, candles, triggers, ticker cache."""

from __future__ import annotations

from decimal import Decimal

from .book import OrderBook
from .candles import CandleSet
from .markets import MarketSpec
from .numbers import fmt
from .orders import Order
from .simulator import MarketSimulator
from .ticker import TradeTape


class MarketState:
    def __init__(self, spec: MarketSpec, sim: MarketSimulator, trade_cap: int, trade_retention_ms: int,
                 candle_cap: int) -> None:
        self.spec = spec
        self.sim = sim
        self.book = OrderBook()
        self.tape = TradeTape(trade_cap, trade_retention_ms)
        self.candles = CandleSet(candle_cap)
        self.triggers: dict[str, Order] = {}  # awaitingTrigger orders by id
        self.last_ticker: dict[str, str] = {}  # fields last sent in a TickerEvent
        self.last_top_raw: tuple | None = None  # top_raw() when last_ticker was taken
        self.skip_nonce = False
        self.last_step_ms = 0
        self.trade_seq = 0

    @property
    def market(self) -> str:
        return self.spec.market

    def price(self, tick: int) -> Decimal:
        return tick * self.spec.tick

    def last_price(self) -> Decimal | None:
        last = self.tape.last
        return last[2] if last is not None else None

    def top_raw(self) -> tuple:
        """The ticker's inputs, unformatted: cheap to compare on every step."""
        book = self.book
        bid, ask = book.bids.best(), book.asks.best()
        last = self.tape.last
        return (bid, book.bids.levels[bid].total if bid is not None else None,
                ask, book.asks.levels[ask].total if ask is not None else None,
                last[2] if last is not None else None)

    def top(self) -> dict[str, str]:
        """Current ticker fields (bestBid, bestBidSize, bestAsk, bestAskSize, lastPrice)."""
        out: dict[str, str] = {}
        book = self.book
        bid = book.best_bid()
        if bid is not None:
            out["bestBid"] = fmt(self.price(bid))
            out["bestBidSize"] = fmt(book.bids.levels[bid].total)
        ask = book.best_ask()
        if ask is not None:
            out["bestAsk"] = fmt(self.price(ask))
            out["bestAskSize"] = fmt(book.asks.levels[ask].total)
        last = self.last_price()
        if last is not None:
            out["lastPrice"] = fmt(last)
        return out

    def reference_price(self, reference: str) -> Decimal | None:
        if reference == "lastTrade":
            return self.last_price()
        bid = self.book.best_bid()
        ask = self.book.best_ask()
        if reference == "bestBid":
            return self.price(bid) if bid is not None else None
        if reference == "bestAsk":
            return self.price(ask) if ask is not None else None
        if bid is None or ask is None:
            return None
        return (self.price(bid) + self.price(ask)) / 2
