"""Stop-loss / take-profit orders trigger on the configured reference, and not before."""

from __future__ import annotations

from sandbox.engine import OrderEvent

from .helpers import ALICE, BOB, Clock, accounts, check_invariants, order, quiet_exchange, totals

BTC = "BTC-EUR"
CAROL = "carol-key"
RICH = {"EUR": "1000000", "BTC": "10"}


def three() -> object:
    return quiet_exchange(Clock(), accounts=accounts(**{ALICE: RICH, BOB: RICH, CAROL: RICH}))


def status(ex, o):
    return ex.get_order(ALICE, {"market": BTC, "orderId": o["orderId"]})["status"]


def stop(ex, side, order_type, trigger, reference, **kw):
    return order(ex, ALICE, BTC, side, order_type, amount="0.1", triggerAmount=str(trigger), triggerType="price",
                 triggerReference=reference, **kw)


def test_last_trade_reference():
    ex = three()
    before = totals(ex)
    order(ex, BOB, BTC, "buy", amount="0.3", price="49000")
    s = stop(ex, "sell", "stopLoss", 49000, "lastTrade")
    assert s["status"] == "awaitingTrigger" and s["onHold"] == "0.1" and s["triggerPrice"] == "49000"
    order(ex, CAROL, BTC, "sell", "market", amount="0.01")  # prints 49000
    got = ex.get_order(ALICE, {"market": BTC, "orderId": s["orderId"]})
    assert got["status"] == "filled" and got["fills"][0]["price"] == "49000"
    exec_types = [e.order["executionType"] for e in ex.drain_events()
                  if isinstance(e, OrderEvent) and e.order["orderId"] == s["orderId"]]
    assert exec_types[:2] == ["new", "triggered"] and exec_types[-1] == "trade"
    assert totals(ex) == before
    check_invariants(ex)


def test_best_bid_reference():
    ex = three()
    order(ex, BOB, BTC, "buy", amount="0.3", price="48990")
    high = order(ex, BOB, BTC, "buy", amount="0.3", price="49500")
    s = stop(ex, "sell", "stopLossLimit", 49000, "bestBid", price="48990")
    assert status(ex, s) == "awaitingTrigger"
    ex.cancel_order(BOB, {"market": BTC, "orderId": high["orderId"], "operatorId": 1})
    got = ex.get_order(ALICE, {"market": BTC, "orderId": s["orderId"]})
    assert got["status"] == "filled" and got["fills"][0]["price"] == "48990"
    check_invariants(ex)


def test_best_ask_reference():
    ex = three()
    low = order(ex, BOB, BTC, "sell", amount="0.3", price="50500")
    order(ex, BOB, BTC, "sell", amount="0.3", price="51000")
    s = stop(ex, "buy", "stopLoss", 51000, "bestAsk")
    assert status(ex, s) == "awaitingTrigger"
    assert s["onHold"] == "5112.75"  # 0.1 * 51000 * 1.0025 reserved at the trigger price
    ex.cancel_order(BOB, {"market": BTC, "orderId": low["orderId"], "operatorId": 1})
    got = ex.get_order(ALICE, {"market": BTC, "orderId": s["orderId"]})
    assert got["status"] == "filled" and got["fills"][0]["price"] == "51000"
    check_invariants(ex)


def test_mid_price_reference():
    ex = three()
    order(ex, BOB, BTC, "buy", amount="0.3", price="50000")
    ask = order(ex, BOB, BTC, "sell", amount="0.3", price="50200")
    order(ex, CAROL, BTC, "sell", amount="0.3", price="51200")
    s = stop(ex, "sell", "takeProfit", 50500, "midPrice")
    assert status(ex, s) == "awaitingTrigger"  # mid 50100
    ex.cancel_order(BOB, {"market": BTC, "orderId": ask["orderId"], "operatorId": 1})  # mid 50600
    got = ex.get_order(ALICE, {"market": BTC, "orderId": s["orderId"]})
    assert got["status"] == "filled" and got["fills"][0]["price"] == "50000"
    check_invariants(ex)


def test_take_profit_limit_buy_rests_after_trigger():
    ex = three()
    order(ex, BOB, BTC, "buy", amount="0.3", price="48000")
    s = stop(ex, "buy", "takeProfitLimit", 48000, "lastTrade", price="47900")
    assert status(ex, s) == "awaitingTrigger"
    order(ex, CAROL, BTC, "sell", "market", amount="0.01")  # last trade 48000 <= trigger
    got = ex.get_order(ALICE, {"market": BTC, "orderId": s["orderId"]})
    assert got["status"] == "new" and got["visible"] is True
    assert ex.book(BTC, {})["bids"][-1] == ["47900", "0.1"]
    check_invariants(ex)


def test_trigger_waits_until_condition():
    ex = three()
    order(ex, BOB, BTC, "buy", amount="0.3", price="49500")
    s = stop(ex, "sell", "stopLoss", 49000, "bestBid")
    ex.step()
    assert status(ex, s) == "awaitingTrigger"
    ex.cancel_order(ALICE, {"market": BTC, "orderId": s["orderId"], "operatorId": 1})
    assert status(ex, s) == "canceled"
    assert ex.accounts[ALICE].bal("BTC").in_order == 0
