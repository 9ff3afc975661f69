"""Events the engine emits for the server's WebSocket streams; each renders its exact WS JSON."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BookEvent:
    market: str
    nonce: int
    bids: list  # [[price, size], ...] size "0" = level removed
    asks: list
    timestamp_ns: int

    def to_ws(self) -> dict:
        return {"event": "book", "market": self.market, "nonce": self.nonce,
                "bids": self.bids, "asks": self.asks, "timestamp": self.timestamp_ns}


@dataclass(frozen=True, slots=True)
class TradeEvent:
    market: str
    trade: dict  # {"id","timestamp","amount","price","side"}

    def to_ws(self) -> dict:
        return {"event": "trade", "timestamp": self.trade["timestamp"], "market": self.market,
                "id": self.trade["id"], "amount": self.trade["amount"], "price": self.trade["price"],
                "side": self.trade["side"]}


@dataclass(frozen=True, slots=True)
class CandleEvent:
    market: str
    interval: str
    row: list  # [ts, open, high, low, close, volume]

    def to_ws(self) -> dict:
        return {"event": "candle", "market": self.market, "interval": self.interval, "candle": [self.row]}


@dataclass(frozen=True, slots=True)
class TickerEvent:
    market: str
    fields: dict = field(default_factory=dict)  # changed of bestBid, bestBidSize, bestAsk, bestAskSize, lastPrice

    def to_ws(self) -> dict:
        return {"event": "ticker", "market": self.market, **self.fields}


@dataclass(frozen=True, slots=True)
class OrderEvent:
    api_key: str
    market: str
    order: dict  # order fields as on the WS account 'order' event (without "event")

    def to_ws(self) -> dict:
        return {"event": "order", **self.order}


@dataclass(frozen=True, slots=True)
class FillEvent:
    api_key: str
    market: str
    fill: dict  # fill fields as on the WS account 'fill' event (without "event")

    def to_ws(self) -> dict:
        return {"event": "fill", **self.fill}


Event = TradeEvent | CandleEvent | TickerEvent | OrderEvent | FillEvent
