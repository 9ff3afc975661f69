"""Events the engine emits for the server's WebSocket streams; each renders its exact WS JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from .numbers import fmt


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class BookEvent:
    """Changed levels as (tick, new total size); size 0 = level removed. Formatted in ``to_ws``,
    which runs only when someone subscribed to the market's book."""

    market: str
    nonce: int
    bids: list[tuple[int, Decimal]]
    asks: list[tuple[int, Decimal]]
    timestamp_ns: int
    tick_size: Decimal

    def levels_json(self, levels: list[tuple[int, Decimal]]) -> list[list[str]]:
        tick = self.tick_size
        return [[fmt(t * tick), fmt(s)] for t, s in levels]

    def to_ws(self) -> dict:
        return {"event": "book", "market": self.market, "nonce": self.nonce,
                "bids": self.levels_json(self.bids), "asks": self.levels_json(self.asks),
                "timestamp": self.timestamp_ns}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class TradeEvent:
    market: str
    trade: dict  # {"id","timestamp","amount","price","side"}

    def to_ws(self) -> dict:
        return {"event": "trade", "timestamp": self.trade["timestamp"], "market": self.market,
                "id": self.trade["id"], "amount": self.trade["amount"], "price": self.trade["price"],
                "side": self.trade["side"]}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class CandleEvent:
    market: str
    interval: str
    start: int  # period start, ms
    row: tuple  # (open, high, low, close, volume) as Decimals

    def to_ws(self) -> dict:
        return {"event": "candle", "market": self.market, "interval": self.interval,
                "candle": [[self.start, *map(fmt, self.row)]]}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class TickerEvent:
    market: str
    fields: dict = field(default_factory=dict)  # changed of bestBid, bestBidSize, bestAsk, bestAskSize, lastPrice

    def to_ws(self) -> dict:
        return {"event": "ticker", "market": self.market, **self.fields}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class OrderEvent:
    api_key: str
    market: str
    order: dict  # order fields as on the WS account 'order' event (without "event")

    def to_ws(self) -> dict:
        return {"event": "order", **self.order}


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class FillEvent:
    api_key: str
    market: str
    fill: dict  # fill fields as on the WS account 'fill' event (without "event")

    def to_ws(self) -> dict:
        return {"event": "fill", **self.fill}


Event = BookEvent | TradeEvent | CandleEvent | TickerEvent | OrderEvent | FillEvent
