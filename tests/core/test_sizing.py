"""Sizing: a stop-out loses the risk amount within fees and rounding; caps; never bumped up."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.trading_core.trading_core.sizing import RiskConfig, size_entry, stop_out_loss
from tests.core import catalog

D = Decimal
NO_CAPS: dict[str, Decimal | None] = {}


def test_percent_risk_example() -> None:
    rules = catalog()["BTC-EUR"]
    out = size_entry(equity=D(10000), risk=RiskConfig("percent", D(1)), entry_price=D("60000.00"),
                     stop_price=D("58800.00"), rules=rules, rooms=NO_CAPS)
    s = out.sizing
    assert s is not None and out.reason is None and out.exchange_reason is None
    assert s.risk_eur == D(100) and s.stop_distance == D("1200.00")
    assert s.loss_per_unit == D("60000.00") * D("1.0025") - D("58800.00") * D("0.9975")  # 1497.00
    assert s.rounded_size == D("0.06680026")  # 100 / 1497 rounded down to 8 decimals
    loss = stop_out_loss(s.rounded_size, D("60000.00"), D("58800.00"), D("0.0025"))
    assert D("99.99") < loss <= D(100)


def test_fixed_risk_and_caps() -> None:
    rules = catalog()["ETH-EUR"]
    out = size_entry(equity=D(0), risk=RiskConfig("fixed", D(20)), entry_price=D("2500.00"),
                     stop_price=D("2450.00"), rules=rules,
                     rooms={"max_order_notional": D(100), "max_asset_exposure": D(80), "max_global_exposure": None})
    s = out.sizing
    assert s is not None and s.capped_by == "max_asset_exposure" and s.rounded_size == D("0.032")
    assert s.rounded_size * D("2500.00") <= D(80)


def test_below_minimum_is_reported_not_bumped_up() -> None:
    rules = catalog()["BTC-EUR"]
    out = size_entry(equity=D(1000), risk=RiskConfig("percent", D("0.01")), entry_price=D("60000.00"),
                     stop_price=D("58800.00"), rules=rules, rooms=NO_CAPS)
    assert out.sizing is not None and out.amount * D(60000) < 5
    assert out.exchange_reason == "below_min_base"
    out = size_entry(equity=D(1000), risk=RiskConfig("fixed", D(10)), entry_price=D("60000.00"),
                     stop_price=D("58800.00"), rules=rules, rooms={"max_order_notional": D(4)})
    assert out.exchange_reason == "below_min_base" and out.sizing is not None and out.sizing.capped_by


def test_bad_inputs() -> None:
    rules = catalog()["BTC-EUR"]
    risk = RiskConfig()
    assert size_entry(equity=D(0), risk=risk, entry_price=D(60000), stop_price=D(59000), rules=rules,
                      rooms=NO_CAPS).reason == "no_equity"
    assert size_entry(equity=D(1000), risk=risk, entry_price=D(60000), stop_price=D(60000), rules=rules,
                      rooms=NO_CAPS).reason == "bad_stop"
    assert size_entry(equity=D(1000), risk=risk, entry_price=D(0), stop_price=D(-1), rules=rules,
                      rooms=NO_CAPS).reason == "bad_price"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["BTC-EUR", "ETH-EUR", "SOL-EUR", "DOGE-EUR"]),
       st.decimals(min_value=D(100), max_value=D(1_000_000), places=2),
       st.decimals(min_value=D("0.1"), max_value=D(5), places=2),
       st.decimals(min_value=D("0.2"), max_value=D(30), places=2),
       st.decimals(min_value=D(0), max_value=D("0.005"), places=4))
def test_a_stop_out_loses_at_most_the_risk_and_close_to_it(market: str, equity: Decimal, risk_pct: Decimal,
                                                           stop_pct: Decimal, fee: Decimal) -> None:
    rules = catalog()[market]
    ref = {"BTC-EUR": D(60000), "ETH-EUR": D(2500), "SOL-EUR": D(140), "DOGE-EUR": D("0.12")}[market]
    entry = rules.round_price(ref, "up")
    stop = rules.round_price(entry * (100 - stop_pct) / 100, "down")
    risk = RiskConfig("percent", risk_pct, fee)
    out = size_entry(equity=equity, risk=risk, entry_price=entry, stop_price=stop, rules=rules, rooms=NO_CAPS)
    assert out.sizing is not None
    risk_eur = equity * risk_pct / 100
    loss = stop_out_loss(out.amount, entry, stop, fee)
    assert loss <= risk_eur  # never more than the risk (rounding is down)
    # and short of it by at most one quantity step's loss
    assert risk_eur - loss <= rules.amount_step * out.sizing.loss_per_unit
