"""MarketRules: parsing /markets as Bitvavo sends it, rounding to its grid, its minimums."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core import MARKETS_JSON, catalog
from tradestack.errors import ConfigError
from tradestack.markets import MarketCatalog, MarketRules

D = Decimal


def test_parses_wire_and_docs_shapes() -> None:
    cat = catalog()
    btc = cat["BTC-EUR"]
    assert (btc.tick_size, btc.quantity_decimals, btc.min_quote, btc.min_base) == (D("1.00"), 8, D("5.00"),
                                                                                    D("0.00008334"))
    assert btc.base == "BTC" and btc.quote == "EUR" and btc.status == "trading" and btc.max_base == D("1000000000")
    ada = cat["ADA-EUR"]  # ints as strings, pricePrecision "5" ignored
    assert ada.quantity_decimals == 6 and ada.tick_size == D("0.00001") and ada.status == "halted"
    assert "ADA-EUR" in cat and "NOPE-EUR" not in cat and len(cat) == len(MARKETS_JSON)
    assert cat.trading() == ["BTC-EUR", "ETH-EUR", "SOL-EUR", "DOGE-EUR", "SHIB-EUR"]


def test_single_object_and_bad_entries() -> None:
    one = MarketCatalog.from_json(MARKETS_JSON[0])
    assert list(one) == ["BTC-EUR"]
    bad = dict(MARKETS_JSON[1], tickSize=None)
    float_money = dict(MARKETS_JSON[2], minOrderInQuoteAsset=5.0)
    cat = MarketCatalog.from_json([MARKETS_JSON[0], bad, float_money])
    assert list(cat) == ["BTC-EUR"]
    assert "tickSize is missing" in cat.rejected["ETH-EUR"] and "decimal string" in cat.rejected["SOL-EUR"]
    with pytest.raises(ConfigError, match="ETH-EUR: tickSize is missing"):
        MarketCatalog.from_json([bad], strict=True)
    with pytest.raises(ConfigError):
        MarketCatalog.from_json("nope")


@pytest.mark.parametrize("market,price,down,up,nearest", [
    ("BTC-EUR", "60123.50", "60123.00", "60124.00", "60124.00"),  # half-even: 60123.5 → 60124
    ("BTC-EUR", "60122.50", "60122.00", "60123.00", "60122.00"),
    ("BTC-EUR", "60123", "60123.00", "60123.00", "60123.00"),
    ("ETH-EUR", "2500.07", "2500.00", "2500.10", "2500.10"),
    ("DOGE-EUR", "0.1234567", "0.123456", "0.123457", "0.123457"),
    ("SHIB-EUR", "0.0000170149", "0.000017010", "0.000017020", "0.000017010"),
])
def test_round_price(market: str, price: str, down: str, up: str, nearest: str) -> None:
    rules = catalog()[market]
    got = [rules.round_price(D(price), "down"), rules.round_price(D(price), "up"),
           rules.round_price(D(price), "nearest")]
    assert [str(g) for g in got] == [down, up, nearest]


def test_round_price_refuses_floats_and_non_positive() -> None:
    rules = catalog()["BTC-EUR"]
    for bad in (0.1, D(0), D(-1), D("NaN")):
        with pytest.raises(ValueError):
            rules.round_price(bad, "down")  # type: ignore[arg-type]


@given(st.decimals(min_value=D("0.000000001"), max_value=D("1e9"), places=10, allow_nan=False, allow_infinity=False),
       st.sampled_from(["BTC-EUR", "ETH-EUR", "DOGE-EUR", "SHIB-EUR"]))
def test_round_price_is_on_grid_and_brackets(price: Decimal, market: str) -> None:
    rules = catalog()[market]
    if price < rules.tick_size:
        return
    down, up = rules.round_price(price, "down"), rules.round_price(price, "up")
    assert rules.is_on_tick(down) and rules.is_on_tick(up)
    assert down <= price <= up and up - down in (0, rules.tick_size)
    assert rules.round_price(price, "nearest") in (down, up)


@given(st.decimals(min_value=0, max_value=D("1e6"), places=12, allow_nan=False, allow_infinity=False))
def test_round_amount_down_never_rounds_up(amount: Decimal) -> None:
    for market in ("BTC-EUR", "DOGE-EUR", "SHIB-EUR"):
        rules = catalog()[market]
        got = rules.round_amount_down(amount)
        assert got <= amount and amount - got < rules.amount_step and rules.amount_fits(got)


def test_check_order_reasons() -> None:
    cat = catalog()
    btc = cat["BTC-EUR"]
    assert btc.check_order(D("0.001"), D("60000.00")) is None
    assert btc.check_order(D("0.00008"), D("60000")) == "below_min_base"
    assert btc.check_order(D("0.00009"), D("50000")) == "below_min_quote"  # 4.50 EUR
    assert btc.check_order(D("0.000000001"), D("60000")) == "amount_precision"
    assert btc.check_order(D("0.001"), D("60000.5")) == "price_tick"
    assert btc.check_order(D(0), D("60000")) == "no_size"
    assert btc.check_order(D("2000000000"), D("60000")) == "above_max_base"
    assert cat["ADA-EUR"].check_order(D(100), D("0.4")) == "market_not_trading"
    # exactly the minimum notional passes (inclusive)
    assert cat["DOGE-EUR"].check_order(D("41.6667"), D("0.120000")) is None  # 5.000004
    assert cat["SHIB-EUR"].check_order(D(294118), D("0.000017")) is None  # 5.000006
    assert cat["SHIB-EUR"].check_order(D(294117), D("0.000017")) == "below_min_base"


def test_min_amount_at() -> None:
    btc = catalog()["BTC-EUR"]
    amount = btc.min_amount_at(D("60000"))
    assert btc.check_order(amount, D("60000")) is None
    assert btc.check_order(amount - btc.amount_step, D("60000")) is not None


def test_rules_are_frozen() -> None:
    rules = MarketRules.from_json(MARKETS_JSON[0])
    with pytest.raises(AttributeError):
        rules.tick_size = D(1)  # type: ignore[misc]
