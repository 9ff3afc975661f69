"""Tier-1 tests of the trading core's pure domain, and the stubs they share.

``MARKETS_JSON`` is a realistic ``GET /markets`` answer (wire shapes: ``pricePrecision`` null,
ints for decimals, strings for money; one older entry with strings for ints), matching the
sandbox's default catalogue (sandbox/engine/markets.py) for the markets used here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tradestack.markets import MarketCatalog
from tradestack.messages import BookTopUpdated, OrderExecuted, SignalEmitted, Trace, derive_id

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
TRACE = Trace(id="tick-1", ts=T0)
TYPES = ["market", "limit", "stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"]

MARKETS_JSON: list[dict[str, Any]] = [
    {"market": "BTC-EUR", "status": "trading", "base": "BTC", "quote": "EUR", "pricePrecision": None,
     "minOrderInBaseAsset": "0.00008334", "minOrderInQuoteAsset": "5.00",
     "maxOrderInBaseAsset": "1000000000.00000000", "maxOrderInQuoteAsset": "1000000000.00",
     "quantityDecimals": 8, "notionalDecimals": 2, "tickSize": "1.00", "maxOpenOrders": 100,
     "feeCategory": "A", "orderTypes": TYPES},
    {"market": "ETH-EUR", "status": "trading", "base": "ETH", "quote": "EUR", "pricePrecision": None,
     "minOrderInBaseAsset": "0.00200000", "minOrderInQuoteAsset": "5.00",
     "maxOrderInBaseAsset": "1000000000.00000000", "maxOrderInQuoteAsset": "1000000000.00",
     "quantityDecimals": 8, "notionalDecimals": 2, "tickSize": "0.10", "maxOpenOrders": 100,
     "feeCategory": "A", "orderTypes": TYPES},
    {"market": "SOL-EUR", "status": "trading", "base": "SOL", "quote": "EUR", "pricePrecision": None,
     "minOrderInBaseAsset": "0.03571429", "minOrderInQuoteAsset": "5.00",
     "maxOrderInBaseAsset": "1000000000.00000000", "maxOrderInQuoteAsset": "1000000000.00",
     "quantityDecimals": 8, "notionalDecimals": 2, "tickSize": "0.01", "maxOpenOrders": 100,
     "feeCategory": "A", "orderTypes": TYPES},
    {"market": "DOGE-EUR", "status": "trading", "base": "DOGE", "quote": "EUR", "pricePrecision": None,
     "minOrderInBaseAsset": "41.6667", "minOrderInQuoteAsset": "5.00",
     "maxOrderInBaseAsset": "1000000000.0000", "maxOrderInQuoteAsset": "1000000000.00",
     "quantityDecimals": 4, "notionalDecimals": 2, "tickSize": "0.000001", "maxOpenOrders": 100,
     "feeCategory": "A", "orderTypes": TYPES},
    {"market": "SHIB-EUR", "status": "trading", "base": "SHIB", "quote": "EUR", "pricePrecision": None,
     "minOrderInBaseAsset": "294118", "minOrderInQuoteAsset": "5.00",
     "maxOrderInBaseAsset": "1000000000", "maxOrderInQuoteAsset": "1000000000.00",
     "quantityDecimals": 0, "notionalDecimals": 2, "tickSize": "0.000000010", "maxOpenOrders": 100,
     "feeCategory": "A", "orderTypes": TYPES},
    # docs-style entry: ints quoted, pricePrecision a string (legacy), halted
    {"market": "ADA-EUR", "status": "halted", "base": "ADA", "quote": "EUR", "pricePrecision": "5",
     "minOrderInBaseAsset": "12.5", "minOrderInQuoteAsset": "5", "maxOrderInBaseAsset": "1000000000",
     "maxOrderInQuoteAsset": "1000000000", "quantityDecimals": "6", "notionalDecimals": "2",
     "tickSize": "0.00001", "maxOpenOrders": 100, "feeCategory": "A", "orderTypes": TYPES},
]


def catalog() -> MarketCatalog:
    return MarketCatalog.from_json(MARKETS_JSON, strict=True)


def signal(i: int = 0, market: str = "BTC-EUR", price: str = "60000", side: str = "buy", atr: str | None = "600",
           msg_id: str | None = None, strategy: str = "momentum") -> SignalEmitted:
    return SignalEmitted(id=msg_id or f"sig-{market}-{i}", ts=T0 + i, src="signal_engine", trace=TRACE,
                         market=market, strategy=strategy, side=side,  # type: ignore[arg-type]
                         strength=0.8, ref_price=Decimal(price), atr=Decimal(atr) if atr is not None else None,
                         interval="1m", candle_open_ts=T0 - 60_000 + i, features={"rsi": 61.5},
                         params={"fast": "12", "slow": "26"})


def book(market: str, bid: str, ask: str | None = None, i: int = 0) -> BookTopUpdated:
    ask = ask or bid
    b, a = Decimal(bid), Decimal(ask)
    return BookTopUpdated(id=f"book-{market}-{bid}-{i}", ts=T0 + i, src="ingest", trace=Trace(id=f"t{i}", ts=T0 + i),
                          market=market, bid=b, bid_size=Decimal(1), ask=a, ask_size=Decimal(1), mid=(a + b) / 2,
                          spread_bps=Decimal(0), nonce=i, exchange_ts=T0 + i)


def report(intent_id: str, market: str, side: str, status: str, amount: str, quote: str, fee: str = "0",
           fee_currency: str = "EUR", seq: int = 0, reason: str | None = None, ts: int | None = None,
           client_order_id: str | None = None, msg_id: str | None = None) -> OrderExecuted:
    coid = client_order_id or derive_id(intent_id, "order")
    a = Decimal(amount)
    q = Decimal(quote)
    return OrderExecuted(
        id=msg_id or f"rep-{coid}-{seq}", ts=T0 + seq if ts is None else ts, src="executor", trace=TRACE,
        intent_id=intent_id, client_order_id=coid, order_id=None, market=market, side=side,  # type: ignore[arg-type]
        status=status, filled_amount=a, filled_quote=q, avg_price=(q / a) if a else None, fee=Decimal(fee),
        fee_currency=fee_currency, mode="paper", reason=reason)
