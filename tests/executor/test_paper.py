"""Tier-1 tests of the executor's paper broker: pure, no Redis, no clock.

Numbers are worked by hand from the rules the sandbox exchange applies (fee per fill rounded
half-up to the cent, buys hold amount × price × 1.0025 rounded up to the cent)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.trader_executor.app.paper import PaperBroker, PaperOrderError
from tradestack.bitvavo.orders import OrderRequest, OrderState
from tradestack.markets import MarketCatalog
from tradestack.messages import BookTopUpdated, Trace, derive_id

T0 = 1_700_000_000_000
TYPES = ["market", "limit", "stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"]
MARKETS = [
    {"market": "BTC-EUR", "status": "trading", "base": "BTC", "quote": "EUR", "pricePrecision": None,
     "minOrderInBaseAsset": "0.00010000", "minOrderInQuoteAsset": "5.00", "maxOrderInBaseAsset": "1000.00000000",
     "maxOrderInQuoteAsset": "1000000000.00", "quantityDecimals": 8, "notionalDecimals": 2, "tickSize": "1.00",
     "maxOpenOrders": 100, "feeCategory": "A", "orderTypes": TYPES},
    {"market": "DOGE-EUR", "status": "trading", "base": "DOGE", "quote": "EUR", "pricePrecision": None,
     "minOrderInBaseAsset": "41.6667", "minOrderInQuoteAsset": "5.00", "maxOrderInBaseAsset": "1000000000.0000",
     "maxOrderInQuoteAsset": "1000000000.00", "quantityDecimals": 4, "notionalDecimals": 2, "tickSize": "0.000001",
     "maxOpenOrders": 100, "feeCategory": "A", "orderTypes": TYPES},
    {"market": "ADA-EUR", "status": "halted", "base": "ADA", "quote": "EUR", "pricePrecision": None,
     "minOrderInBaseAsset": "12.5", "minOrderInQuoteAsset": "5", "maxOrderInBaseAsset": "1000000000",
     "maxOrderInQuoteAsset": "1000000000", "quantityDecimals": 6, "notionalDecimals": 2, "tickSize": "0.00001",
     "maxOpenOrders": 100, "feeCategory": "A", "orderTypes": TYPES},
]
CATALOG = MarketCatalog.from_json(MARKETS, strict=True)
D = Decimal


def levels(*pairs: tuple[str, str]) -> list[tuple[Decimal, Decimal]]:
    return [(D(p), D(q)) for p, q in pairs]


def make(eur: str = "10000", btc: str = "0", **kwargs: Any) -> PaperBroker:
    balances = {"EUR": D(eur)}
    if btc != "0":
        balances["BTC"] = D(btc)
    return PaperBroker(CATALOG, balances=balances, **kwargs)


def book(b: PaperBroker, bids: list[tuple[str, str]], asks: list[tuple[str, str]], ts: int = T0,
         market: str = "BTC-EUR") -> list[OrderState]:
    return b.set_book(market, levels(*bids), levels(*asks), ts)


def order(side: str, kind: str, coid: str = "c1", market: str = "BTC-EUR", **kwargs: Any) -> OrderRequest:
    for key in ("amount", "amount_quote", "price", "trigger_price"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = D(kwargs[key])
    return OrderRequest(market=market, side=side, order_type=kind, client_order_id=coid,  # type: ignore[arg-type]
                        **kwargs)


def bal(b: PaperBroker, asset: str) -> tuple[Decimal, Decimal]:
    return b.balances().get(asset, (D(0), D(0)))


def error_code(fn: Callable[[], object]) -> int:
    with pytest.raises(PaperOrderError) as info:
        fn()
    return info.value.error_code


# ---- market orders -----------------------------------------------------------------------------

def test_market_buy_within_the_top() -> None:
    b = make()
    book(b, [("59990", "1")], [("60000", "1")])
    s = b.place(order("buy", "market", amount="0.01"), T0 + 5)
    assert s.status == "filled" and s.order_type == "market" and s.client_order_id == "c1"
    assert s.order_id == derive_id("paper/BTC-EUR/c1", "order")
    assert (s.filled_amount, s.filled_quote, s.fee_paid, s.fee_currency) == (D("0.01"), D("600"), D("1.50"), "EUR")
    assert s.amount_remaining == 0 and s.created == s.updated == T0 + 5
    (f,) = s.fills
    assert (f.amount, f.price, f.taker, f.fee, f.fee_currency, f.ts) == (D("0.01"), D("60000"), True, D("1.50"), "EUR",
                                                                         T0 + 5)
    assert f.fill_id == derive_id(s.order_id, "fill/1") and f.order_id == s.order_id and f.side == "buy"
    assert bal(b, "EUR") == (D("9398.50"), 0)
    assert bal(b, "BTC") == (D("0.01"), 0)
    assert b.open_orders() == []


def test_market_buy_walks_three_levels_fee_per_fill_rounded_half_up() -> None:
    b = make()
    book(b, [("59990", "1")], [("60000", "0.01"), ("60200", "0.01"), ("60300", "1")])
    s = b.place(order("buy", "market", amount="0.025"), T0)
    assert s.status == "filled"
    assert [(f.amount, f.price, f.fee) for f in s.fills] == [
        (D("0.01"), D("60000"), D("1.50")),   # 600.00 × 0.25 % = 1.50
        (D("0.01"), D("60200"), D("1.51")),   # 602.00 → 1.505 → 1.51 (half-up, not half-even)
        (D("0.005"), D("60300"), D("0.75")),  # 301.50 → 0.75375 → 0.75
    ]
    assert s.filled_quote == D("1503.5") and s.fee_paid == D("3.76") and s.avg_price == D("60140")
    assert len({f.fill_id for f in s.fills}) == 3
    assert bal(b, "EUR") == (D("10000") - D("1503.5") - D("3.76"), 0)
    assert bal(b, "BTC") == (D("0.025"), 0)


def test_market_buy_depth_exhausted_is_canceled_with_the_partial_fill() -> None:
    b = make()
    book(b, [("59990", "1")], [("60000", "0.01"), ("60100", "0.01")])
    s = b.place(order("buy", "market", amount="0.05"), T0)
    assert s.status == "canceled"
    assert s.filled_amount == D("0.02") and s.amount_remaining == D("0.03")
    assert s.filled_quote == D("1201") and s.fee_paid == D("3.00")  # 1.50 + 1.5025 → 1.50
    assert bal(b, "EUR") == (D("10000") - D("1204"), 0)  # hold released
    # the paper fills took that depth: until the next book there is nothing left to buy
    s2 = b.place(order("buy", "market", "c2", amount="0.01"), T0 + 1)
    assert s2.status == "canceled" and s2.filled_amount == 0 and s2.fills == ()
    assert bal(b, "EUR") == (D("8796"), 0)
    # the next book brings liquidity back
    book(b, [("59990", "1")], [("60000", "1")], ts=T0 + 2)
    assert b.place(order("buy", "market", "c3", amount="0.01"), T0 + 3).status == "filled"


def test_market_buy_by_amount_quote_spends_exactly_the_quote_fee_included() -> None:
    b = make()
    book(b, [("59990", "1")], [("60000", "1")])
    s = b.place(order("buy", "market", amount_quote="100"), T0)
    # 100 / (60000 × 1.0025) → 0.00166251; notional 99.7506; fee 0.2494 (0.25 cut to what the quote leaves)
    assert s.status == "filled" and s.amount is None and s.amount_quote == D("100")
    assert s.filled_amount == D("0.00166251") and s.filled_quote == D("99.7506") and s.fee_paid == D("0.2494")
    assert bal(b, "EUR") == (D("9900"), 0)
    assert bal(b, "BTC") == (D("0.00166251"), 0)


def test_market_buy_by_amount_quote_depth_exhausted_is_canceled() -> None:
    b = make()
    book(b, [("59990", "1")], [("60000", "0.001")])
    s = b.place(order("buy", "market", amount_quote="100"), T0)
    assert s.status == "canceled" and s.filled_amount == D("0.001") and s.fee_paid == D("0.15")
    assert bal(b, "EUR") == (D("10000") - D("60.15"), 0)


def test_market_sell_and_sell_by_amount_quote() -> None:
    b = make(btc="1")
    book(b, [("59990", "0.01"), ("59980", "1")], [("60000", "1")])
    s = b.place(order("sell", "market", amount="0.02"), T0)
    assert s.status == "filled" and [(f.amount, f.price) for f in s.fills] == [(D("0.01"), D("59990")),
                                                                               (D("0.01"), D("59980"))]
    assert s.fee_paid == D("1.50") + D("1.50")  # 599.90 → 1.49975 → 1.50; 599.80 → 1.4995 → 1.50
    assert bal(b, "EUR") == (D("10000") + D("1199.70") - D("3.00"), 0)
    assert bal(b, "BTC") == (D("0.98"), 0)
    s2 = b.place(order("sell", "market", "c2", amount_quote="59.98"), T0 + 1)
    assert s2.status == "filled" and s2.filled_amount == D("0.001") and s2.filled_quote == D("59.98")
    assert bal(b, "BTC") == (D("0.979"), 0)


def test_slippage_is_adverse_and_on_the_tick() -> None:
    b = make(btc="1", slippage_bps=D("10"))
    book(b, [("59999", "1")], [("60001", "1")])
    buy = b.place(order("buy", "market", amount="0.01"), T0)
    assert buy.fills[0].price == D("60062")  # 60001 × 1.001 = 60061.001 → up to the tick
    sell = b.place(order("sell", "market", "c2", amount="0.01"), T0)
    assert sell.fills[0].price == D("59939")  # 59999 × 0.999 = 59939.001 → down to the tick
    # a limit order never fills past its price
    lim = b.place(order("buy", "limit", "c3", amount="0.01", price="60010"), T0)
    assert lim.status == "filled" and lim.fills[0].price == D("60010")


# ---- limit orders ------------------------------------------------------------------------------

def test_limit_buy_rests_then_fills_as_maker_partially_then_fully() -> None:
    b = make()
    book(b, [("59990", "1")], [("60010", "1")])
    s = b.place(order("buy", "limit", amount="0.02", price="60000"), T0)
    assert s.status == "new" and s.fills == () and s.amount_remaining == D("0.02")
    assert bal(b, "EUR") == (D("10000") - D("1203.00"), D("1203.00"))  # 0.02 × 60000 × 1.0025
    assert book(b, [("60000", "5")], [("60010", "1")], ts=T0 + 1) == []  # a touching bid fills nothing
    (p,) = book(b, [("59980", "1")], [("60000", "0.005"), ("60005", "1")], ts=T0 + 2)
    assert p.status == "partiallyFilled" and p.filled_amount == D("0.005") and p.amount_remaining == D("0.015")
    assert (p.fills[0].price, p.fills[0].taker, p.fills[0].fee, p.fills[0].ts) == (D("60000"), False, D("0.45"), T0 + 2)
    assert p.updated == T0 + 2 and p.created == T0
    assert b.get("BTC-EUR", client_order_id="c1") == p
    (f,) = book(b, [("59900", "1")], [("59950", "0.05")], ts=T0 + 3)
    assert f.status == "filled" and f.filled_amount == D("0.02")
    assert f.fills[1].price == D("60000") and f.fills[1].fee == D("1.35")  # at the limit, not at the ask
    assert f.filled_quote == D("1200") and f.fee_paid == D("1.80")
    assert bal(b, "EUR") == (D("10000") - D("1201.80"), 0)
    assert bal(b, "BTC") == (D("0.02"), 0)


def test_limit_buy_marketable_part_takes_then_rests() -> None:
    b = make()
    book(b, [("59990", "1")], [("60000", "0.01"), ("60100", "1")])
    s = b.place(order("buy", "limit", amount="0.03", price="60050"), T0)
    assert s.status == "partiallyFilled" and s.filled_amount == D("0.01") and s.fills[0].taker
    assert [o.order_id for o in b.open_orders("BTC-EUR")] == [s.order_id]
    # the remainder's hold: 1.0025 × 0.03 × 60050 = 1806.00375 → 1806.01, less what the fill spent
    assert bal(b, "EUR")[1] == D("1806.01") - D("601.50")


def test_resting_orders_served_best_price_first_and_sells_too() -> None:
    b = make(btc="1")
    book(b, [("59000", "1")], [("61000", "1")])
    low = b.place(order("buy", "limit", "low", amount="0.01", price="59500"), T0)
    high = b.place(order("buy", "limit", "high", amount="0.01", price="59600"), T0 + 1)
    ask = b.place(order("sell", "limit", "ask", amount="0.01", price="60500"), T0 + 2)
    changed = book(b, [("60600", "0.01")], [("59400", "0.015")], ts=T0 + 3)
    by_id = {s.order_id: s for s in changed}
    assert by_id[high.order_id].status == "filled"
    assert by_id[low.order_id].filled_amount == D("0.005")
    assert by_id[ask.order_id].status == "filled" and by_id[ask.order_id].fills[0].price == D("60500")


def test_post_only_that_would_take_is_canceled_post_only() -> None:
    b = make()
    book(b, [("59990", "1")], [("60010", "1")])
    s = b.place(order("buy", "limit", amount="0.01", price="60010", post_only=True), T0)
    assert s.status == "canceledPostOnly" and s.fills == ()
    assert bal(b, "EUR") == (D("10000"), 0)
    rest = b.place(order("buy", "limit", "c2", amount="0.01", price="60009", post_only=True), T0)
    assert rest.status == "new"


def test_ioc_remainder_canceled_and_fok_all_or_nothing() -> None:
    b = make()
    asks = [("60000", "0.01"), ("60001", "0.01"), ("60002", "1")]
    book(b, [("59990", "1")], asks)
    ioc = b.place(order("buy", "limit", amount="0.05", price="60001", time_in_force="IOC"), T0)
    assert ioc.status == "canceledIOC" and ioc.filled_amount == D("0.02")
    assert bal(b, "EUR")[1] == 0
    book(b, [("59990", "1")], asks, ts=T0 + 1)
    fok = b.place(order("buy", "limit", "c2", amount="0.05", price="60001", time_in_force="FOK"), T0 + 1)
    assert fok.status == "canceledFOK" and fok.fills == ()
    ok = b.place(order("buy", "limit", "c3", amount="0.05", price="60002", time_in_force="FOK"), T0 + 1)
    assert ok.status == "filled" and ok.filled_amount == D("0.05")


# ---- trigger orders ----------------------------------------------------------------------------

def test_stop_loss_sell_waits_then_triggers_at_equal_bid() -> None:
    b = make(btc="0.1")
    book(b, [("60000", "1")], [("60010", "1")])
    s = b.place(order("sell", "stopLoss", amount="0.05", trigger_price="59000"), T0)
    assert s.status == "awaitingTrigger" and s.trigger_price == D("59000") and s.fills == ()
    assert bal(b, "BTC") == (D("0.05"), D("0.05"))
    assert book(b, [("59001", "1")], [("59010", "1")], ts=T0 + 1) == []
    (f,) = book(b, [("59000", "1")], [("59010", "1")], ts=T0 + 2)
    assert f.status == "filled" and f.order_id == s.order_id and f.updated == T0 + 2
    assert (f.fills[0].price, f.fills[0].taker, f.fills[0].fee) == (D("59000"), True, D("7.38"))  # 7.375 → 7.38
    assert bal(b, "BTC") == (D("0.05"), 0)
    assert bal(b, "EUR") == (D("10000") + D("2950") - D("7.38"), 0)


def test_stop_loss_sell_gap_fills_at_the_book_not_at_the_trigger() -> None:
    b = make(btc="0.1")
    book(b, [("60000", "1")], [("60010", "1")])
    b.place(order("sell", "stopLoss", amount="0.05", trigger_price="59000"), T0)
    (f,) = book(b, [("58000", "0.02"), ("57900", "1")], [("58010", "1")], ts=T0 + 1)
    assert f.status == "filled" and [(x.amount, x.price) for x in f.fills] == [(D("0.02"), D("58000")),
                                                                               (D("0.03"), D("57900"))]


def test_take_profit_sell() -> None:
    b = make(btc="0.1")
    book(b, [("60000", "1")], [("60010", "1")])
    s = b.place(order("sell", "takeProfit", amount="0.05", trigger_price="62000"), T0)
    assert s.status == "awaitingTrigger"
    assert book(b, [("61999", "1")], [("62010", "1")], ts=T0 + 1) == []
    (f,) = book(b, [("62500", "1")], [("62510", "1")], ts=T0 + 2)
    assert f.status == "filled" and f.fills[0].price == D("62500")


def test_buy_stops_mirrored() -> None:
    b = make()
    book(b, [("59990", "1")], [("60000", "1")])
    stop = b.place(order("buy", "stopLoss", "sl", amount="0.01", trigger_price="61000",
                         trigger_reference="bestAsk"), T0)
    tp = b.place(order("buy", "takeProfit", "tp", amount="0.01", trigger_price="59000",
                       trigger_reference="bestAsk"), T0)
    # holds: 0.01 × trigger × 1.0025 each
    assert bal(b, "EUR")[1] == D("611.53") + D("591.48")  # 611.525 → up; 591.475 → up
    assert book(b, [("60490", "1")], [("60500", "1")], ts=T0 + 1) == []
    (f,) = book(b, [("60990", "1")], [("61000", "1")], ts=T0 + 2)
    assert f.order_id == stop.order_id and f.status == "filled" and f.fills[0].price == D("61000")
    (g,) = book(b, [("58700", "1")], [("58800", "1")], ts=T0 + 3)
    assert g.order_id == tp.order_id and g.status == "filled" and g.fills[0].price == D("58800")
    assert bal(b, "EUR")[1] == 0


def test_mid_price_and_last_trade_proxy() -> None:
    b = make(btc="0.1")
    book(b, [("60000", "1")], [("60010", "1")])
    mid = b.place(order("sell", "stopLoss", "mid", amount="0.01", trigger_price="59000",
                        trigger_reference="midPrice"), T0)
    last = b.place(order("sell", "stopLoss", "last", amount="0.01", trigger_price="59000",
                         trigger_reference="lastTrade"), T0)
    assert book(b, [("58990", "1")], [("59020", "1")], ts=T0 + 1) == []  # mid 59005
    changed = book(b, [("58980", "1")], [("59010", "1")], ts=T0 + 2)  # mid 58995
    assert [s.order_id for s in changed] == [mid.order_id, last.order_id]
    assert all(s.fills[0].price == D("58980") for s in changed)


def test_trigger_already_hit_at_placement_fires_at_once() -> None:
    b = make(btc="0.1")
    book(b, [("58000", "1")], [("58010", "1")])
    s = b.place(order("sell", "stopLoss", amount="0.01", trigger_price="59000"), T0)
    assert s.status == "filled" and s.fills[0].price == D("58000")


def test_trigger_order_needs_no_book() -> None:
    b = make(btc="0.1")
    s = b.place(order("sell", "stopLoss", amount="0.01", trigger_price="59000"), T0)
    assert s.status == "awaitingTrigger"
    (f,) = book(b, [("58000", "1")], [("58010", "1")])
    assert f.status == "filled"


def test_stop_loss_limit_triggers_takes_and_rests() -> None:
    b = make(btc="0.1")
    book(b, [("60000", "1")], [("60010", "1")])
    s = b.place(order("sell", "stopLossLimit", amount="0.05", price="58900", trigger_price="59000"), T0)
    (f,) = book(b, [("59000", "0.01"), ("58800", "1")], [("59010", "1")], ts=T0 + 1)
    assert f.order_id == s.order_id and f.status == "partiallyFilled" and f.filled_amount == D("0.01")
    assert bal(b, "BTC") == (D("0.05"), D("0.04"))
    (g,) = book(b, [("58950", "1")], [("58960", "1")], ts=T0 + 2)
    assert g.status == "filled" and g.fills[-1].price == D("58900") and not g.fills[-1].taker


def test_cancel_the_stop_then_sell_the_coins() -> None:
    b = make(btc="0.1")
    book(b, [("60000", "1")], [("60010", "1")])
    stop = b.place(order("sell", "stopLoss", "stop", amount="0.1", trigger_price="59000"), T0)
    assert error_code(lambda: b.place(order("sell", "market", "tp", amount="0.1"), T0 + 1)) == 216
    assert error_code(lambda: b.place(order("sell", "limit", "tp", amount="0.1", price="61000"), T0 + 1)) == 216
    c = b.cancel("BTC-EUR", order_id=stop.order_id, now_ms=T0 + 2)
    assert c.status == "canceled" and c.updated == T0 + 2
    assert bal(b, "BTC") == (D("0.1"), 0)
    sold = b.place(order("sell", "market", "tp", amount="0.1"), T0 + 3)
    assert sold.status == "filled"
    assert bal(b, "BTC") == (0, 0)


def test_update_stop_trigger_and_amount() -> None:
    b = make(btc="0.1")
    book(b, [("60000", "1")], [("60010", "1")])
    s = b.place(order("sell", "stopLoss", amount="0.05", trigger_price="59000"), T0)
    u = b.update("BTC-EUR", client_order_id="c1", trigger_price=D("58500"), now_ms=T0 + 1)
    assert u.trigger_price == D("58500") and u.status == "awaitingTrigger" and u.updated == T0 + 1
    assert u.order_id == s.order_id and u.created == T0
    u = b.update("BTC-EUR", order_id=s.order_id, amount=D("0.04"), now_ms=T0 + 2)
    assert u.amount == D("0.04") and bal(b, "BTC") == (D("0.06"), D("0.04"))
    assert error_code(lambda: b.update("BTC-EUR", order_id=s.order_id, amount=D("0.2"), now_ms=T0 + 3)) == 216
    assert bal(b, "BTC") == (D("0.06"), D("0.04"))  # a refused update changes nothing
    assert error_code(lambda: b.update("BTC-EUR", order_id=s.order_id, trigger_price=D("58500.5"),
                                       now_ms=T0 + 3)) == 422
    assert error_code(lambda: b.update("BTC-EUR", order_id=s.order_id, price=D("58000"), now_ms=T0 + 3)) == 202
    assert book(b, [("58600", "1")], [("58610", "1")], ts=T0 + 4) == []
    (f,) = book(b, [("58500", "1")], [("58510", "1")], ts=T0 + 5)
    assert f.status == "filled" and f.filled_amount == D("0.04")
    assert bal(b, "BTC") == (D("0.06"), 0)


def test_update_limit_price_reenters_as_taker() -> None:
    b = make()
    book(b, [("59990", "1")], [("60010", "1")])
    s = b.place(order("buy", "limit", amount="0.01", price="60000"), T0)
    u = b.update("BTC-EUR", order_id=s.order_id, price=D("60010"), now_ms=T0 + 1)
    assert u.status == "filled" and u.fills[0].taker and u.fills[0].price == D("60010")
    assert bal(b, "EUR") == (D("10000") - D("600.10") - D("1.50"), 0)


def test_update_errors() -> None:
    b = make()
    book(b, [("59990", "1")], [("60010", "1")])
    filled = b.place(order("buy", "limit", "f", amount="0.01", price="60010"), T0)
    assert filled.status == "filled"
    assert error_code(lambda: b.update("BTC-EUR", order_id=filled.order_id, price=D("60000"), now_ms=T0)) == 233
    mkt = b.place(order("buy", "market", "m", amount="0.01"), T0)
    assert error_code(lambda: b.update("BTC-EUR", order_id=mkt.order_id, price=D("60000"), now_ms=T0)) == 234
    rest = b.place(order("buy", "limit", "r", amount="0.01", price="59000"), T0)
    assert error_code(lambda: b.update("BTC-EUR", order_id=rest.order_id, now_ms=T0)) == 232
    assert error_code(lambda: b.update("BTC-EUR", order_id="nope", price=D("1"), now_ms=T0)) == 240
    assert error_code(lambda: b.update("BTC-EUR", order_id=rest.order_id, amount=D("0.00001"), now_ms=T0)) == 212
    assert error_code(lambda: b.update("BTC-EUR", order_id=rest.order_id, trigger_price=D("1"), now_ms=T0)) == 202
    aq = b.place(order("buy", "stopLoss", "aq", amount_quote="50", trigger_price="61000"), T0)
    assert error_code(lambda: b.update("BTC-EUR", order_id=aq.order_id, amount=D("0.01"), now_ms=T0)) == 239


def test_cancel_unknown_closed_or_without_id() -> None:
    b = make()
    book(b, [("59990", "1")], [("60010", "1")])
    assert error_code(lambda: b.cancel("BTC-EUR", order_id="nope", now_ms=T0)) == 240
    assert error_code(lambda: b.cancel("BTC-EUR", client_order_id="nope", now_ms=T0)) == 240
    filled = b.place(order("buy", "market", amount="0.01"), T0)
    assert error_code(lambda: b.cancel("BTC-EUR", order_id=filled.order_id, now_ms=T0)) == 240
    assert error_code(lambda: b.cancel("BTC-EUR", now_ms=T0)) == 203
    assert error_code(lambda: b.cancel("NOPE-EUR", order_id="x", now_ms=T0)) == 205
    assert error_code(lambda: b.cancel("ADA-EUR", order_id="x", now_ms=T0)) == 423


def test_duplicate_open_client_order_id_then_reuse_after_close() -> None:
    b = make()
    book(b, [("59990", "1")], [("60010", "1")])
    first = b.place(order("buy", "limit", "dup", amount="0.01", price="59000"), T0)
    assert error_code(lambda: b.place(order("buy", "limit", "dup", amount="0.01", price="59001"), T0)) == 220
    b.cancel("BTC-EUR", client_order_id="dup", now_ms=T0 + 1)
    again = b.place(order("buy", "limit", "dup", amount="0.01", price="59001"), T0 + 2)
    assert again.order_id != first.order_id and again.status == "new"
    got = b.get("BTC-EUR", client_order_id="dup")
    assert got is not None and got.order_id == again.order_id  # the open one wins
    got_first = b.get("BTC-EUR", order_id=first.order_id)
    assert got_first is not None and got_first.status == "canceled"
    assert b.get("BTC-EUR", order_id="nope") is None
    assert b.get("DOGE-EUR", order_id=first.order_id) is None


@pytest.mark.parametrize(("request_", "code"), [
    (lambda: order("buy", "market", market="NOPE-EUR", amount="0.01"), 205),
    (lambda: order("buy", "limit", amount="0.01", price="60000.5"), 422),
    (lambda: order("sell", "stopLoss", amount="0.01", trigger_price="59000.5"), 422),
    (lambda: order("buy", "limit", amount="0.000000001", price="60000"), 429),
    (lambda: order("buy", "limit", amount="0.00005", price="60000"), 212),
    (lambda: order("buy", "limit", amount="2000", price="60000"), 210),
    (lambda: order("buy", "limit", amount="0.0001", price="40000"), 217),
    (lambda: order("buy", "market", amount_quote="10.001"), 429),
    (lambda: order("buy", "market", amount_quote="4.99"), 217),
    (lambda: order("buy", "market", amount="0.01", price="60000"), 202),
    (lambda: order("buy", "limit", amount_quote="100", price="60000"), 202),
    (lambda: order("buy", "market", amount="0.01", post_only=True), 202),
    (lambda: order("buy", "limit", market="ADA-EUR", amount="100", price="0.4"), 423),
    (lambda: order("buy", "limit", amount="1", price="60000"), 216),
    (lambda: order("buy", "market", amount="1"), 216),
    (lambda: order("sell", "market", amount="0.01"), 216),
])
def test_validation_like_the_exchange(request_: Callable[[], OrderRequest], code: int) -> None:
    b = make()
    book(b, [("39990", "1")], [("40000", "1")])
    assert error_code(lambda: b.place(request_(), T0)) == code
    assert bal(b, "EUR") == (D("10000"), 0) and b.open_orders() == []


def test_market_order_below_min_notional_by_book_estimate() -> None:
    b = make()
    book(b, [("39990", "1")], [("40000", "1")])
    assert error_code(lambda: b.place(order("buy", "market", amount="0.0001"), T0)) == 217  # 4 EUR


def test_no_book_is_a_definite_rejection() -> None:
    b = make()
    err = pytest.raises(PaperOrderError, b.place, order("buy", "market", amount="0.01"), T0).value
    assert (err.error_code, err.http_status) == (431, 409)
    assert err.to_json()["errorCode"] == 431
    book(b, [("59990", "1")], [("60010", "1")])
    assert b.book_ts("BTC-EUR") == T0
    b.drop_book("BTC-EUR")
    assert b.book_ts("BTC-EUR") is None
    assert error_code(lambda: b.place(order("buy", "limit", amount="0.01", price="59000"), T0)) == 431


def test_max_open_orders_per_market() -> None:
    b = make(eur="1000000")
    book(b, [("59990", "1")], [("60010", "1")])
    for i in range(100):
        b.place(order("buy", "limit", f"c{i}", amount="0.0001", price=str(50000 + i)), T0)
    assert error_code(lambda: b.place(order("buy", "limit", "c100", amount="0.0001", price="50000"), T0)) == 235


def test_on_top_is_a_one_level_book() -> None:
    b = make(btc="0.1")
    top = BookTopUpdated(id="t1", ts=T0, src="ingest", trace=Trace(id="t1", ts=T0), market="BTC-EUR",
                         bid=D("60000"), bid_size=D("0.01"), ask=D("60010"), ask_size=D("0.5"), mid=D("60005"),
                         spread_bps=D("1.67"), nonce=1, exchange_ts=T0 - 3)
    assert b.on_top(top) == []
    assert b.book_ts("BTC-EUR") == T0 - 3
    s = b.place(order("sell", "market", amount="0.02"), T0)
    assert s.status == "canceled" and s.filled_amount == D("0.01")  # only the top level exists


def test_halted_market_book_matches_nothing() -> None:
    b = make()
    assert b.set_book("ADA-EUR", levels(("0.4", "100")), levels(("0.41", "100")), T0) == []
    assert b.set_book("NOPE-EUR", levels(("1", "1")), levels(("2", "1")), T0) == []


def test_keep_closed_drops_the_oldest_closed_orders() -> None:
    b = make(keep_closed=1)
    book(b, [("59990", "1")], [("60010", "10")])
    first = b.place(order("buy", "market", "a", amount="0.01"), T0)
    second = b.place(order("buy", "market", "b", amount="0.01"), T0)
    assert b.get("BTC-EUR", order_id=first.order_id) is None
    assert b.get("BTC-EUR", order_id=second.order_id) == second


def test_ids_are_deterministic() -> None:
    def run() -> list[OrderState]:
        b = make(btc="0.1")
        book(b, [("59990", "1")], [("60010", "1")])
        out = [b.place(order("buy", "market", "x", amount="0.01"), T0),
               b.place(order("sell", "stopLoss", "y", amount="0.01", trigger_price="59000"), T0)]
        out += book(b, [("58000", "1")], [("58010", "1")], ts=T0 + 1)
        return out

    first, second = run(), run()
    assert first == second
    assert first[0].fills[0].fill_id == derive_id(first[0].order_id, "fill/1")


def test_amounts_and_fees_balance_exactly() -> None:
    b = make(eur="20000", btc="0.5")
    book(b, [("59990", "0.3"), ("59900", "1")], [("60010", "0.2"), ("60100", "1")])
    states = [
        b.place(order("buy", "market", "a", amount="0.25"), T0),
        b.place(order("sell", "market", "b", amount="0.4"), T0),
        b.place(order("buy", "market", "c", amount_quote="777.77"), T0),
    ]
    spent = sum((s.filled_quote + s.fee_paid for s in states if s.side == "buy"), D(0))
    got = sum((s.filled_quote - s.fee_paid for s in states if s.side == "sell"), D(0))
    bought = sum((s.filled_amount for s in states if s.side == "buy"), D(0))
    sold = sum((s.filled_amount for s in states if s.side == "sell"), D(0))
    assert all(s.status == "filled" for s in states)
    assert sum(bal(b, "EUR")) == D("20000") - spent + got
    assert sum(bal(b, "BTC")) == D("0.5") + bought - sold
    for s in states:
        assert s.filled_amount == sum((f.amount for f in s.fills), D(0))
        assert s.filled_quote == sum((f.amount * f.price for f in s.fills), D(0))
        assert s.fee_paid == sum((f.fee or D(0) for f in s.fills), D(0))


# ---- snapshot / restore ------------------------------------------------------------------------

Step = Callable[[PaperBroker], object]


def _scenario() -> list[Step]:
    def catch(fn: Callable[[PaperBroker], object]) -> Step:
        def step(b: PaperBroker) -> object:
            try:
                return fn(b)
            except PaperOrderError as exc:
                return ("error", exc.error_code)
        return step

    return [
        catch(lambda b: book(b, [("59990", "0.5")], [("60010", "0.05"), ("60020", "1")])),
        catch(lambda b: b.place(order("buy", "market", "e1", amount="0.1"), T0 + 1)),
        catch(lambda b: b.place(order("sell", "stopLoss", "s1", amount="0.1", trigger_price="59000"), T0 + 2)),
        catch(lambda b: b.place(order("buy", "limit", "l1", amount="0.05", price="59500"), T0 + 3)),
        catch(lambda b: b.place(order("sell", "market", "x", amount="0.1"), T0 + 4)),  # 216: the stop holds it
        # --- restart here ---
        catch(lambda b: book(b, [("59600", "1")], [("59500", "0.02")], ts=T0 + 5)),
        catch(lambda b: b.update("BTC-EUR", client_order_id="s1", trigger_price=D("59200"), now_ms=T0 + 6)),
        catch(lambda b: book(b, [("59100", "0.04"), ("59000", "1")], [("59400", "1")], ts=T0 + 7)),
        catch(lambda b: b.place(order("buy", "market", "e2", amount_quote="250"), T0 + 8)),
        catch(lambda b: b.cancel("BTC-EUR", client_order_id="l1", now_ms=T0 + 9)),
        catch(lambda b: b.open_orders()),
        catch(lambda b: b.balances()),
    ]


def test_snapshot_restore_round_trip_continues_identically() -> None:
    steps = _scenario()
    straight = make(slippage_bps=D("3"))
    expected = [step(straight) for step in steps]
    assert ("error", 216) in expected

    b = make(slippage_bps=D("3"))
    results = [step(b) for step in steps[:5]]
    data = json.loads(json.dumps(b.snapshot()))
    restored = PaperBroker.restore(data, CATALOG)
    assert restored.snapshot() == data
    assert restored.open_orders() == b.open_orders() and restored.balances() == b.balances()
    results += [step(restored) for step in steps[5:]]
    assert results == expected
    assert restored.snapshot() == straight.snapshot()


def test_incremental_saves_restore_the_same_broker_as_a_full_snapshot() -> None:
    """take_changes after every step, applied to a dict as the service applies them to its Redis hash
    (meta replaced, changed orders written, dropped ones deleted), restores what snapshot() holds;
    keep_closed=1 makes closed orders drop out along the way."""
    steps = _scenario()
    b = make(slippage_bps=D("3"), keep_closed=1)
    saved: dict[str, object] = {}
    for i, step in enumerate(steps):
        step(b)
        meta, balances, changed, dropped = b.take_changes()
        saved["meta"] = json.loads(json.dumps(meta))
        saved.update({f"b:{a}": json.loads(json.dumps(v)) for a, v in balances.items()})
        saved.update({f"o:{oid}": json.loads(json.dumps(o)) for oid, o in changed.items()})
        for oid in dropped:
            saved.pop(f"o:{oid}")
        restored = PaperBroker.restore_parts(
            saved["meta"], {k[2:]: v for k, v in saved.items() if k.startswith("b:")},  # type: ignore[arg-type]
            [v for k, v in saved.items() if k.startswith("o:")], CATALOG)  # type: ignore[misc]
        assert restored.snapshot(books=False) == json.loads(json.dumps(b.snapshot(books=False))), f"after step {i}"
    assert b.take_changes()[1:] == ({}, {}, [])  # nothing changed since the last take
    assert len([k for k in saved if k.startswith("o:")]) < len(steps)  # closed orders did drop out


def test_snapshot_without_books_and_bad_snapshots() -> None:
    b = make(btc="0.1")
    book(b, [("59990", "1")], [("60010", "1")])
    b.place(order("sell", "stopLoss", amount="0.05", trigger_price="59000"), T0)
    data = b.snapshot(books=False)
    assert "books" not in data
    restored = PaperBroker.restore(data, CATALOG, taker_fee=D("0.002"))
    assert restored.taker_fee == D("0.002") and restored.maker_fee == D("0.0015")
    assert restored.book_ts("BTC-EUR") is None and len(restored.open_orders()) == 1
    with pytest.raises(ValueError):
        PaperBroker.restore({**data, "v": 99}, CATALOG)
    with pytest.raises(ValueError):
        PaperBroker.restore({"v": 1}, CATALOG)


# ---- property: funds are conserved and never negative ------------------------------------------

_price = st.integers(min_value=58_000, max_value=62_000)
_size = st.sampled_from(["0.0005", "0.002", "0.01", "0.03", "0.1"])
_amount = st.sampled_from(["0.0001", "0.0003", "0.001", "0.004", "0.02", "0.05", "0.2"])
_op = st.one_of(
    st.tuples(st.just("book"), _price, st.integers(1, 40), st.lists(_size, max_size=3), st.lists(_size, max_size=3)),
    st.tuples(st.just("market"), st.sampled_from(["buy", "sell"]), _amount,
              st.sampled_from([None, "5", "37.5", "400"])),
    st.tuples(st.just("limit"), st.sampled_from(["buy", "sell"]), _amount, st.integers(-300, 300),
              st.sampled_from(["GTC", "GTC", "IOC", "FOK"]), st.sampled_from([False, False, True])),
    st.tuples(st.just("trigger"), st.sampled_from(["buy", "sell"]),
              st.sampled_from(["stopLoss", "takeProfit", "stopLossLimit", "takeProfitLimit"]), _amount,
              st.integers(-800, 800), st.sampled_from(["bestBid", "bestAsk", "midPrice", "lastTrade"])),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("update"), st.integers(0, 20), st.sampled_from([None, "0.001", "0.02", "0.3"]),
              st.integers(-500, 500)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=1, max_size=40))
def test_property_balances_never_negative_and_conserved(ops: list[tuple[Any, ...]]) -> None:
    b = make(eur="5000", btc="0.2")
    last: dict[str, OrderState] = {}
    mid = D(60000)
    now = T0
    b.set_book("BTC-EUR", levels(("59995", "0.01"), ("59990", "0.1")), levels(("60005", "0.01"), ("60010", "0.1")), now)

    def seen(states: list[OrderState]) -> None:
        for s in states:
            prev = last.get(s.order_id)
            if prev is not None and prev.is_final:
                assert s == prev, "a final order changed"
            last[s.order_id] = s

    for op in ops:
        now += 1
        kind = op[0]
        try:
            if kind == "book":
                _, p, spread, bid_sizes, ask_sizes = op
                mid = D(p)
                bids = [(D(p - i * 7), D(q)) for i, q in enumerate(bid_sizes)]
                asks = [(D(p + spread + i * 7), D(q)) for i, q in enumerate(ask_sizes)]
                seen(b.set_book("BTC-EUR", bids, asks, now))
            elif kind == "market":
                _, side, amount, quote = op
                req = order(side, "market", f"o{now}", **({"amount_quote": quote} if quote else {"amount": amount}))
                seen([b.place(req, now)])
            elif kind == "limit":
                _, side, amount, off, tif, post = op
                seen([b.place(order(side, "limit", f"o{now}", amount=amount, price=str(mid + off),
                                    time_in_force=tif, post_only=post), now)])
            elif kind == "trigger":
                _, side, typ, amount, off, ref = op
                extra = {"price": str(mid + off // 2)} if typ.endswith("Limit") else {}
                seen([b.place(order(side, typ, f"o{now}", amount=amount, trigger_price=str(mid + off),
                                    trigger_reference=ref, **extra), now)])
            elif kind == "cancel":
                opened = b.open_orders()
                if opened:
                    seen([b.cancel("BTC-EUR", order_id=opened[op[1] % len(opened)].order_id, now_ms=now)])
            else:
                _, i, amount, off = op
                opened = b.open_orders()
                if opened:
                    target = opened[i % len(opened)]
                    price = mid + off if target.price is not None else None
                    trig = mid + off if target.trigger_price is not None and price is None else None
                    seen([b.update("BTC-EUR", order_id=target.order_id, amount=D(amount) if amount else None,
                                   price=price, trigger_price=trig, now_ms=now)])
        except PaperOrderError as exc:
            assert exc.error_code in {202, 205, 212, 216, 217, 230, 232, 233, 431}, exc

        balances = b.balances()
        for asset, (available, in_order) in balances.items():
            assert available >= 0 and in_order >= 0, (asset, available, in_order)
        fills = [(s.side, f) for s in last.values() for f in s.fills]
        eur = D(5000) + sum(((f.amount * f.price - (f.fee or 0)) if side == "sell" else -(f.amount * f.price + (f.fee or 0))
                             for side, f in fills), D(0))
        btc = D("0.2") + sum((f.amount if side == "buy" else -f.amount for side, f in fills), D(0))
        assert sum(balances["EUR"]) == eur
        assert sum(balances.get("BTC", (D(0), D(0)))) == btc
        for s in last.values():
            assert s.filled_amount == sum((f.amount for f in s.fills), D(0))
            assert s.fee_paid == sum((f.fee or D(0) for f in s.fills), D(0))
            if s.amount is not None:
                assert s.filled_amount <= s.amount
        open_ids = {s.order_id for s in b.open_orders()}
        assert all(s.is_open == (s.order_id in open_ids) for s in last.values())

    for s in b.open_orders():
        b.cancel("BTC-EUR", order_id=s.order_id, now_ms=now + 1)
    assert all(in_order == 0 for _, in_order in b.balances().values())
