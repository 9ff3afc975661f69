"""Auctions: limit orders rest without matching (the book may cross), market orders are refused
(425), and the return to trading uncrosses the book at one clearing price, reconciling to the cent."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from sandbox.engine.errors import ExchangeError
from sandbox.engine.exchange import Exchange

from .helpers import ALICE, BOB, Clock, check_invariants, order, quiet_exchange, totals


def _bal(ex: Exchange, key: str, asset: str) -> D:
    b = ex.accounts[key].balances[asset]
    return b.available + b.in_order


def test_crossed_auction_book_uncrosses_at_the_volume_maximising_price() -> None:
    ex = quiet_exchange(Clock())
    before = totals(ex)
    eur0, btc0 = _bal(ex, ALICE, "EUR"), _bal(ex, ALICE, "BTC")
    ex.set_market_status("BTC-EUR", "auction")
    buy = order(ex, ALICE, "BTC-EUR", "buy", amount="1", price="60100")
    s1 = order(ex, BOB, "BTC-EUR", "sell", amount="0.6", price="59900")
    s2 = order(ex, BOB, "BTC-EUR", "sell", amount="0.6", price="60000")
    assert ex.mstates["BTC-EUR"].book.best_bid() > ex.mstates["BTC-EUR"].book.best_ask()  # crossed, nothing traded
    assert ex.public_trades("BTC-EUR", {}) == []
    check_invariants(ex)

    ex.set_market_status("BTC-EUR", "trading")
    trades = ex.public_trades("BTC-EUR", {})
    # 60000 and 60100 both execute 1 BTC with 0.2 left over; the lower wins the tie.
    assert sorted((t["price"], t["amount"]) for t in trades) == [("60000", "0.4"), ("60000", "0.6")]
    assert all(t["side"] == "sell" for t in trades)  # the later orders were the sells
    got = {o["orderId"]: o for o in ex.orders(ALICE, {"market": "BTC-EUR"}) + ex.orders(BOB, {"market": "BTC-EUR"})}
    assert got[buy["orderId"]]["status"] == "filled" and got[s1["orderId"]]["status"] == "filled"
    assert got[s2["orderId"]]["status"] == "partiallyFilled" and got[s2["orderId"]]["filledAmount"] == "0.4"
    # Alice paid the clearing price, not her limit, plus the maker fee; her hold is released.
    fee = D("60000") * D("0.0015")
    assert _bal(ex, ALICE, "EUR") == eur0 - D("60000") - fee
    assert _bal(ex, ALICE, "BTC") == btc0 + 1
    assert ex.accounts[ALICE].balances["EUR"].in_order == 0
    book = ex.mstates["BTC-EUR"].book
    assert book.best_bid() is None and book.best_ask() == 60000  # uncrossed
    assert totals(ex) == before
    check_invariants(ex)


def test_auction_refuses_market_orders_and_never_self_trades_at_the_uncross() -> None:
    ex = quiet_exchange(Clock())
    ex.set_market_status("BTC-EUR", "auction")
    with pytest.raises(ExchangeError) as refused:
        order(ex, ALICE, "BTC-EUR", "buy", "market", amount="0.01")
    assert refused.value.error_code == 425
    first = order(ex, ALICE, "BTC-EUR", "buy", amount="0.5", price="60100")
    second = order(ex, ALICE, "BTC-EUR", "sell", amount="0.5", price="59900")
    ex.set_market_status("BTC-EUR", "trading")
    assert ex.public_trades("BTC-EUR", {}) == []
    status = {o["orderId"]: o["status"] for o in ex.orders(ALICE, {"market": "BTC-EUR"})}
    assert status[second["orderId"]] == "canceledSelfTradePrevention" and status[first["orderId"]] == "new"
    check_invariants(ex)


def test_clearing_tick_is_none_for_an_uncrossed_book() -> None:
    ex = quiet_exchange(Clock())
    order(ex, ALICE, "BTC-EUR", "buy", amount="0.1", price="59000")
    order(ex, BOB, "BTC-EUR", "sell", amount="0.1", price="61000")
    assert Exchange.clearing_tick(ex.mstates["BTC-EUR"].book, None) is None
