"""Every order error code with its exact text and HTTP status."""

from __future__ import annotations

import uuid

import pytest

from sandbox.engine import ExchangeError

from .helpers import ALICE, Clock, accounts, order, quiet_exchange


def err(fn, *args, **kw) -> ExchangeError:
    with pytest.raises(ExchangeError) as info:
        fn(*args, **kw)
    return info.value


def limit(ex, **kw):
    fields = {"amount": "0.01", "price": "50000"}
    fields.update(kw)
    return order(ex, ALICE, "BTC-EUR", fields.pop("side", "buy"), fields.pop("orderType", "limit"), **fields)


def test_operator_id_required(ex):
    e = err(ex.create_order, ALICE, {"market": "BTC-EUR", "side": "buy", "orderType": "limit",
                                     "amount": "0.01", "price": "50000"})
    assert (e.error_code, e.error, e.http_status) == (203, "operatorId parameter is required.", 400)


def test_unknown_market(ex):
    e = err(ex.create_order, ALICE, {"market": "NOPE-EUR", "side": "buy", "orderType": "limit", "operatorId": 1})
    assert (e.error_code, e.error, e.http_status) == (205, "market parameter NOPE-EUR is invalid.", 400)
    e = err(ex.book, "btc-eur", {})
    assert e.error == "market parameter btc-eur is invalid."


def test_missing_market_and_side(ex):
    assert err(ex.create_order, ALICE, {"side": "buy"}).error == "market parameter is required."
    e = err(ex.create_order, ALICE, {"market": "BTC-EUR", "orderType": "limit", "operatorId": 1})
    assert (e.error_code, e.error) == (203, "side parameter is required.")
    e = err(limit, ex, side="hold")
    assert (e.error_code, e.error) == (205, "side parameter is invalid.")


def test_unknown_body_parameter(ex):
    e = err(limit, ex, foo="1")
    assert (e.error_code, e.error) == (204, "foo parameter is not supported.")


def test_tick_size(ex):
    e = err(limit, ex, price="50000.5")
    assert (e.error_code, e.http_status) == (422, 400)
    assert e.error.startswith("Invalid price tick size.")


def test_quantity_decimals(ex):
    e = err(limit, ex, amount="0.000000001")
    assert (e.error_code, e.http_status) == (429, 400)
    e = err(order, ex, ALICE, "BTC-EUR", "buy", "market", amountQuote="10.001")
    assert e.error_code == 429


def test_minimums(ex):
    e = err(limit, ex, amount="0.00001", price="50000")
    assert (e.error_code, e.error) == (212, "Amount is below the minimum allowed amount for this asset.")
    e = err(limit, ex, amount="0.0001", price="40000")  # 4 EUR
    assert (e.error_code, e.error) == (217, "Minimum order size in quote currency is 5 EUR or 0.001 BTC.")
    e = err(order, ex, ALICE, "BTC-EUR", "buy", "market", amountQuote="4.99")
    assert e.error_code == 217


def test_insufficient_balance(clock):
    ex = quiet_exchange(clock, accounts=accounts(**{ALICE: {"EUR": "100"}}))
    e = err(limit, ex, amount="0.01", price="50000")
    assert (e.error_code, e.error, e.http_status) == (
        216, "You do not have sufficient balance to complete this operation.", 400)
    e = err(limit, ex, side="sell", amount="0.01", price="50000")
    assert e.error_code == 216
    assert ex.balance(ALICE, {}) == [{"symbol": "EUR", "available": "100", "inOrder": "0"}]


def test_client_order_id_unique_among_open(ex):
    coid = str(uuid.UUID(int=7))
    first = limit(ex, clientOrderId=coid)
    e = err(limit, ex, clientOrderId=coid)
    assert (e.error_code, e.error) == (220, "clientOrderId conflict within the market.")
    ex.cancel_order(ALICE, {"market": "BTC-EUR", "orderId": first["orderId"], "operatorId": "1"})
    again = limit(ex, clientOrderId=coid)  # free again once the first is closed
    assert again["clientOrderId"] == coid
    assert err(limit, ex, clientOrderId="not-a-uuid").error == "clientOrderId parameter is invalid."


@pytest.mark.parametrize("status,code", [("halted", 423), ("cancelOnly", 424), ("auction", 425),
                                         ("auctionMatching", 426)])
def test_market_status(ex, status, code):
    ex.set_market_status("BTC-EUR", status)
    e = err(order, ex, ALICE, "BTC-EUR", "buy", "market", amount="0.01")
    assert (e.error_code, e.http_status) == (code, 400)


def test_market_data_unavailable_when_halted(ex):
    ex.set_market_status("BTC-EUR", "halted")
    e = err(ex.book, "BTC-EUR", {})
    assert (e.error_code, e.error, e.http_status) == (431, "getBook is not available for BTC-EUR in state HALTED", 409)


def test_cancel_only_allows_cancel(ex):
    o = limit(ex)
    ex.set_market_status("BTC-EUR", "cancelOnly")
    assert err(limit, ex).error_code == 424
    assert ex.cancel_order(ALICE, {"market": "BTC-EUR", "orderId": o["orderId"], "operatorId": "1"})["orderId"]


def test_max_open_orders(ex):
    for i in range(100):
        limit(ex, price=str(40000 + i))
    e = err(limit, ex, price="39000")
    assert (e.error_code, e.error) == (235, "You can only have 100 open orders on each book.")


def test_stop_params_required(ex):
    e = err(order, ex, ALICE, "BTC-EUR", "sell", "stopLoss", amount="0.01", triggerAmount="40000")
    assert e.error_code == 237
    e = err(order, ex, ALICE, "BTC-EUR", "sell", "stopLossLimit", amount="0.01", triggerAmount="40000",
            triggerType="price", triggerReference="lastTrade")
    assert e.error_code == 238
    e = err(order, ex, ALICE, "BTC-EUR", "sell", "takeProfitLimit", amount="0.01", price="60000")
    assert e.error_code == 238


def test_amount_and_amount_quote(ex):
    e = err(order, ex, ALICE, "BTC-EUR", "buy", "market", amount="0.01", amountQuote="100")
    assert (e.error_code, e.error) == (
        206, "Use either amount or amountQuote. The usage of both parameters at the same time is not supported.")
    e = err(order, ex, ALICE, "BTC-EUR", "buy", "limit", amountQuote="100", price="50000")
    assert e.error_code == 202


def test_unknown_order_is_404(ex):
    e = err(ex.get_order, ALICE, {"market": "BTC-EUR", "orderId": str(uuid.UUID(int=1))})
    assert (e.error_code, e.http_status) == (240, 404)
    assert e.error == ("No order found. Please be aware that simultaneously updating the same order "
                       "may return this error.")
    e = err(ex.cancel_order, ALICE, {"market": "BTC-EUR", "orderId": str(uuid.UUID(int=1)), "operatorId": "1"})
    assert (e.error_code, e.http_status) == (240, 404)


def test_other_accounts_order_is_not_found(clock):
    ex = quiet_exchange(clock, accounts=accounts(**{ALICE: {"EUR": "10000"}, "bob-key": {"EUR": "10000"}}))
    o = limit(ex)
    e = err(ex.get_order, "bob-key", {"market": "BTC-EUR", "orderId": o["orderId"]})
    assert e.error_code == 240


def test_cancel_requires_operator_id(ex):
    o = limit(ex)
    e = err(ex.cancel_order, ALICE, {"market": "BTC-EUR", "orderId": o["orderId"]})
    assert (e.error_code, e.error) == (203, "operatorId parameter is required.")
    e = err(ex.cancel_orders, ALICE, {"market": "BTC-EUR"})
    assert e.error_code == 203


def test_update_rules(ex):
    o = limit(ex)
    base = {"market": "BTC-EUR", "orderId": o["orderId"], "operatorId": 1}
    e = err(ex.update_order, ALICE, dict(base))
    assert e.error_code == 232
    assert e.error == ("You must change at least one of amount, amountRemaining, price, timeInForce, "
                       "selfTradePrevention or postOnly.")
    e = err(ex.update_order, ALICE, {**base, "amount": "0.02", "amountRemaining": "0.01"})
    assert (e.error_code, e.error) == (236, "You can only update amount or amountRemaining, not both.")
    e = err(ex.update_order, ALICE, {**base, "amountQuote": "100"})
    assert e.error_code == 239
    e = err(ex.update_order, ALICE, {"market": "BTC-EUR", "orderId": o["orderId"], "price": "49000"})
    assert e.error_code == 203
    ex.cancel_order(ALICE, {"market": "BTC-EUR", "orderId": o["orderId"], "operatorId": 1})
    e = err(ex.update_order, ALICE, {**base, "price": "49000"})
    assert (e.error_code, e.error) == (
        233, "Order must be active (status new or partiallyFilled) to allow updating/cancelling.")


def test_market_order_cannot_be_updated(ex):
    order(ex, "bob-key", "BTC-EUR", "sell", amount="0.1", price="50000")
    m = order(ex, ALICE, "BTC-EUR", "buy", "market", amount="0.01")
    e = err(ex.update_order, ALICE, {"market": "BTC-EUR", "orderId": m["orderId"], "operatorId": 1,
                                     "amount": "0.02"})
    assert (e.error_code, e.error) == (234, "Market orders cannot be updated.")


def test_reject_fault(ex):
    ex.set_reject_next_orders(2)
    for _ in range(2):
        e = err(limit, ex)
        assert (e.error_code, e.error) == (230, "The order is rejected by the matching engine.")
    assert limit(ex)["status"] == "new"


def test_response_required_false(ex, clock):
    coid = str(uuid.UUID(int=3))
    r = limit(ex, responseRequired=False, clientOrderId=coid)
    assert r == {"market": "BTC-EUR", "orderId": r["orderId"], "clientOrderId": coid,
                 "created": clock.t, "updated": clock.t}


def test_public_param_errors(ex):
    e = err(ex.book, "BTC-EUR", {"depth": "0"})
    assert (e.error_code, e.error) == (205, "depth parameter 0 is invalid.")
    assert err(ex.book, "BTC-EUR", {"depth": "1001"}).error_code == 205
    assert err(ex.candles, "BTC-EUR", {}).error == "interval parameter is required."
    assert err(ex.candles, "BTC-EUR", {"interval": "3m"}).error_code == 205
    assert err(ex.candles, "BTC-EUR", {"interval": "1m", "limit": "1441"}).error_code == 205
    assert err(ex.public_trades, "BTC-EUR", {"limit": "1001"}).error_code == 205
    assert err(ex.markets, {"foo": "1"}).error_code == 200


def test_unknown_api_key(ex):
    e = err(ex.balance, "nobody", {})
    assert (e.error_code, e.http_status) == (305, 403)


def test_clock_unused_helper():
    assert Clock(5)() == 5
