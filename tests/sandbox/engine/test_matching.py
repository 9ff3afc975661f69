"""Matching and accounting on a quiet book (two accounts trading with each other)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from sandbox.engine import FillEvent, OrderEvent, TradeEvent

from .helpers import ALICE, BOB, check_invariants, order, totals

BTC = "BTC-EUR"


def bal(ex, key, asset):
    b = ex.accounts[key].bal(asset)
    return b.available, b.in_order


def test_limit_rests_and_reserves_with_taker_fee(ex):
    o = order(ex, ALICE, BTC, "buy", amount="0.1", price="2900")
    assert o["status"] == "new"
    assert o["onHold"] == "290.73" and o["onHoldCurrency"] == "EUR"  # 0.1*2900*1.0025 rounded up
    assert bal(ex, ALICE, "EUR") == (D("1000000") - D("290.73"), D("290.73"))
    book = ex.book(BTC, {})
    assert book["bids"] == [["2900", "0.1"]] and book["asks"] == []


def test_cancel_releases_hold_exactly(ex):
    before = totals(ex)
    o = order(ex, ALICE, BTC, "buy", amount="0.1", price="3000")
    assert o["onHold"] == "300.75"
    r = ex.cancel_order(ALICE, {"market": BTC, "orderId": o["orderId"], "operatorId": "7"})
    assert r == {"orderId": o["orderId"], "operatorId": 7}
    assert bal(ex, ALICE, "EUR") == (D("1000000"), D("0"))
    got = ex.get_order(ALICE, {"market": BTC, "orderId": o["orderId"]})
    assert got["status"] == "canceled" and got["onHold"] == "0"
    assert totals(ex) == before
    check_invariants(ex)


def test_full_fill_fees_and_balances(ex):
    before = totals(ex)
    maker = order(ex, BOB, BTC, "sell", amount="0.5", price="50000")
    assert maker["onHold"] == "0.5" and maker["onHoldCurrency"] == "BTC"
    taker = order(ex, ALICE, BTC, "buy", amount="0.2", price="50100")
    assert taker["status"] == "filled"
    assert taker["filledAmount"] == "0.2" and taker["filledAmountQuote"] == "10000"
    assert taker["feePaid"] == "25" and taker["onHold"] == "0"  # taker 0.25 %
    fill = taker["fills"][0]
    assert fill["price"] == "50000" and fill["taker"] is True and fill["fee"] == "25" and fill["settled"]
    assert bal(ex, ALICE, "EUR") == (D("1000000") - D("10025"), D("0"))
    assert bal(ex, ALICE, "BTC") == (D("10.2"), D("0"))
    m = ex.get_order(BOB, {"market": BTC, "orderId": maker["orderId"]})
    assert m["status"] == "partiallyFilled" and m["amountRemaining"] == "0.3"
    assert m["feePaid"] == "15" and m["fills"][0]["taker"] is False  # maker 0.15 %
    assert bal(ex, BOB, "EUR") == (D("1000000") + D("10000") - D("15"), D("0"))
    assert bal(ex, BOB, "BTC") == (D("9.5"), D("0.3"))
    assert ex.ledger.get("__fees__", "EUR") == D("40")
    assert totals(ex) == before
    check_invariants(ex)


def test_price_time_priority_and_partial_fills(ex, clock):
    a = order(ex, BOB, BTC, "sell", amount="0.1", price="50000")
    clock.advance(1)
    b = order(ex, ALICE, BTC, "sell", amount="0.1", price="50000")
    cheaper = order(ex, BOB, BTC, "sell", amount="0.05", price="49999")
    ex.accounts["carol"] = ex.accounts[ALICE].__class__("carol", "s", D("0.0025"), D("0.0015"))
    ex.accounts["carol"].bal("EUR").available = D("100000")
    t = order(ex, "carol", BTC, "buy", amount="0.2", price="50000")
    prices = [(f["price"], f["amount"]) for f in t["fills"]]
    assert prices == [("49999", "0.05"), ("50000", "0.1"), ("50000", "0.05")]
    assert ex.get_order(BOB, {"market": BTC, "orderId": a["orderId"]})["status"] == "filled"
    assert ex.get_order(BOB, {"market": BTC, "orderId": cheaper["orderId"]})["status"] == "filled"
    got_b = ex.get_order(ALICE, {"market": BTC, "orderId": b["orderId"]})
    assert got_b["status"] == "partiallyFilled" and got_b["amountRemaining"] == "0.05"
    check_invariants(ex)


def test_market_buy_by_amount_quote_includes_fee(ex):
    before = totals(ex)
    order(ex, BOB, BTC, "sell", amount="1", price="50000")
    m = order(ex, ALICE, BTC, "buy", "market", amountQuote="100")
    assert m["status"] == "filled" and "amount" not in m
    spent = D(m["filledAmountQuote"]) + D(m["feePaid"])
    assert spent <= D("100")
    assert D(m["amountQuoteRemaining"]) == D("100") - spent
    assert D(m["filledAmount"]) == D("0.00199501")  # floor(100 / (50000*1.0025), 8 dp)
    assert bal(ex, ALICE, "EUR")[0] == D("1000000") - spent
    assert totals(ex) == before
    check_invariants(ex)


def test_market_sell_sweeps_levels(ex):
    order(ex, BOB, BTC, "buy", amount="0.1", price="50000")
    order(ex, BOB, BTC, "buy", amount="0.1", price="49000")
    m = order(ex, ALICE, BTC, "sell", "market", amount="0.15")
    assert m["status"] == "filled"
    assert [(f["price"], f["amount"]) for f in m["fills"]] == [("50000", "0.1"), ("49000", "0.05")]
    assert m["visible"] is False and m["disableMarketProtection"] is False
    check_invariants(ex)


def test_market_order_without_liquidity_is_canceled(ex):
    order(ex, BOB, BTC, "sell", amount="0.1", price="50000")
    m = order(ex, ALICE, BTC, "buy", "market", amount="0.3")
    assert m["status"] == "canceled" and m["filledAmount"] == "0.1"
    assert bal(ex, ALICE, "EUR")[1] == 0
    check_invariants(ex)


def test_ioc_partial_then_canceled(ex):
    order(ex, BOB, BTC, "sell", amount="0.1", price="50000")
    o = order(ex, ALICE, BTC, "buy", amount="0.3", price="50000", timeInForce="IOC")
    assert o["status"] == "canceledIOC" and o["filledAmount"] == "0.1" and o["onHold"] == "0"
    assert ex.book(BTC, {})["bids"] == []
    check_invariants(ex)


def test_fok_all_or_nothing(ex):
    order(ex, BOB, BTC, "sell", amount="0.1", price="50000")
    o = order(ex, ALICE, BTC, "buy", amount="0.3", price="50000", timeInForce="FOK")
    assert o["status"] == "canceledFOK" and o["filledAmount"] == "0"
    assert ex.book(BTC, {})["asks"] == [["50000", "0.1"]]
    o = order(ex, ALICE, BTC, "buy", amount="0.1", price="50000", timeInForce="FOK")
    assert o["status"] == "filled"
    check_invariants(ex)


def test_post_only(ex):
    order(ex, BOB, BTC, "sell", amount="0.1", price="50000")
    o = order(ex, ALICE, BTC, "buy", amount="0.1", price="50000", postOnly=True)
    assert o["status"] == "canceledPostOnly" and o["filledAmount"] == "0"
    o = order(ex, ALICE, BTC, "buy", amount="0.1", price="49999", postOnly=True)
    assert o["status"] == "new" and o["postOnly"] is True
    check_invariants(ex)


@pytest.mark.parametrize("mode,resting_status,taker_status,resting_left", [
    ("decrementAndCancel", "partiallyFilled", "canceledSelfTradePrevention", "0.2"),
    ("cancelOldest", "canceledSelfTradePrevention", "new", None),
    ("cancelNewest", "new", "canceledSelfTradePrevention", "0.5"),
    ("cancelBoth", "canceledSelfTradePrevention", "canceledSelfTradePrevention", None),
])
def test_self_trade_prevention(ex, mode, resting_status, taker_status, resting_left):
    before = totals(ex)
    resting = order(ex, ALICE, BTC, "sell", amount="0.5", price="50000")
    taker = order(ex, ALICE, BTC, "buy", amount="0.3", price="50000", selfTradePrevention=mode)
    assert taker["status"] == taker_status
    assert taker["filledAmount"] == "0"
    r = ex.get_order(ALICE, {"market": BTC, "orderId": resting["orderId"]})
    if mode == "decrementAndCancel":
        # sell 500 vs buy 300 -> buy canceled, sell becomes 200 (docs example, scaled).
        assert r["status"] == "new" and r["amountRemaining"] == "0.2" and r["amount"] == "0.2"
        assert r["onHold"] == "0.2"
    elif resting_left is None:
        assert r["status"] == resting_status
    else:
        assert r["amountRemaining"] == resting_left
    assert r["filledAmount"] == "0"
    assert totals(ex) == before
    assert not ex.ledger.amounts["__fees__"]
    check_invariants(ex)


def test_cancel_oldest_then_trades_with_others(ex):
    order(ex, ALICE, BTC, "sell", amount="0.1", price="50000")
    order(ex, BOB, BTC, "sell", amount="0.1", price="50001")
    t = order(ex, ALICE, BTC, "buy", amount="0.1", price="50001", selfTradePrevention="cancelOldest")
    assert t["status"] == "filled" and t["fills"][0]["price"] == "50001"
    check_invariants(ex)


def test_events_for_user_orders_only(ex):
    ex.drain_events()
    order(ex, BOB, BTC, "sell", amount="0.1", price="50000")
    order(ex, ALICE, BTC, "buy", amount="0.1", price="50000")
    events = ex.drain_events()
    kinds = [(type(e).__name__, getattr(e, "api_key", None)) for e in events]
    assert ("OrderEvent", BOB) in kinds and ("OrderEvent", ALICE) in kinds
    fills = [e for e in events if isinstance(e, FillEvent)]
    assert {f.api_key for f in fills} == {ALICE, BOB}
    trade = [e for e in events if isinstance(e, TradeEvent)][0].to_ws()
    assert trade["event"] == "trade" and trade["side"] == "buy" and trade["price"] == "50000"
    last_alice = [e for e in events if isinstance(e, OrderEvent) and e.api_key == ALICE][-1].to_ws()
    assert last_alice["event"] == "order" and last_alice["status"] == "filled"
    assert last_alice["executionType"] == "trade" and "fills" not in last_alice
    f = fills[0].to_ws()
    assert set(f) >= {"event", "timestamp", "market", "orderId", "fillId", "side", "amount", "price",
                      "taker", "fee", "feeCurrency"}


def test_update_order_amount_and_price(ex):
    o = order(ex, ALICE, BTC, "buy", amount="1", price="3000")
    assert o["onHold"] == "3007.5"
    u = ex.update_order(ALICE, {"market": BTC, "orderId": o["orderId"], "operatorId": 1, "amount": "1.1"})
    assert u["orderId"] == o["orderId"] and u["onHold"] == "3308.25"  # the docs' example
    assert bal(ex, ALICE, "EUR")[1] == D("3308.25")
    order(ex, BOB, BTC, "sell", amount="0.5", price="3100")
    u = ex.update_order(ALICE, {"market": BTC, "orderId": o["orderId"], "operatorId": 1, "price": "3100"})
    assert u["status"] == "partiallyFilled" and u["filledAmount"] == "0.5" and u["amountRemaining"] == "0.6"
    check_invariants(ex)


def test_own_trades_and_orders_lists(ex, clock):
    order(ex, BOB, BTC, "sell", amount="0.2", price="50000")
    clock.advance(10)
    order(ex, ALICE, BTC, "buy", amount="0.1", price="50000")
    clock.advance(10)
    order(ex, ALICE, BTC, "buy", amount="0.1", price="50000")
    trades = ex.trades(ALICE, {"market": BTC})
    assert len(trades) == 2 and trades[0]["timestamp"] > trades[1]["timestamp"]
    assert set(trades[0]) >= {"id", "orderId", "timestamp", "market", "side", "amount", "price", "taker",
                              "fee", "feeCurrency", "settled"}
    assert len(ex.orders(ALICE, {"market": BTC, "limit": "1"})) == 1
    assert ex.orders_open(BOB, {}) == []
    order(ex, ALICE, BTC, "buy", amount="0.1", price="40000")
    assert len(ex.orders_open(ALICE, {"market": BTC})) == 1
    assert len(ex.cancel_orders(ALICE, {"operatorId": 3})) == 1
    assert ex.orders_open(ALICE, {}) == []


def test_get_order_by_client_order_id(ex):
    coid = "2be7d0df-d8dc-7b93-a550-8876f3b393e9"
    o = order(ex, ALICE, BTC, "buy", amount="0.1", price="40000", clientOrderId=coid)
    got = ex.get_order(ALICE, {"market": BTC, "clientOrderId": coid})
    assert got["orderId"] == o["orderId"] and got["clientOrderId"] == coid
    assert ex.admin_orders(coid)[0]["orderId"] == o["orderId"]
