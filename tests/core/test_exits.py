"""Exit levels (fixed/ATR, rounded the safe way) and the monitor's exits and trailing amends."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.trading_core.trading_core.exits import (
    AmendAction,
    ExitAction,
    ExitConfig,
    PositionMonitor,
    PositionPlan,
    plan_levels,
)
from tests.core import T0, catalog

D = Decimal


def test_fixed_levels_round_stop_down_and_take_profit_up() -> None:
    rules = catalog()["BTC-EUR"]
    lv = plan_levels(ExitConfig(stop_loss_pct=D("1.5"), take_profit_pct=D("3.3")), D("60001.00"), None, rules)
    assert not isinstance(lv, str)
    assert lv.stop == D("59100.00")  # 59100.985 → down
    assert lv.take_profit == D("61982.00")  # 61981.033 → up
    assert lv.trail_pct is None and lv.trail_distance is None


def test_atr_levels_and_no_atr() -> None:
    rules = catalog()["ETH-EUR"]
    cfg = ExitConfig(mode="atr", stop_atr_mult=D(2), take_profit_atr_mult=D(3), trailing="atr",
                     trailing_atr_mult=D("1.5"))
    lv = plan_levels(cfg, D("2500.00"), D("12.34"), rules)
    assert not isinstance(lv, str)
    assert (lv.stop, lv.take_profit, lv.trail_distance) == (D("2475.30"), D("2537.10"), D("18.510"))
    assert plan_levels(cfg, D("2500.00"), None, rules) == "no_atr"
    assert plan_levels(cfg, D("2500.00"), D(0), rules) == "no_atr"
    assert plan_levels(ExitConfig(mode="atr"), D("2500.00"), D(2000), rules) == "bad_stop"


@given(st.decimals(min_value=D("0.000001"), max_value=D(100000), places=6),
       st.decimals(min_value=D("0.1"), max_value=D(50), places=2),
       st.sampled_from(["BTC-EUR", "ETH-EUR", "DOGE-EUR"]))
def test_stop_never_above_the_intended_stop(price: Decimal, pct: Decimal, market: str) -> None:
    rules = catalog()[market]
    if price < rules.tick_size * 10:
        return
    entry = rules.round_price(price, "up")
    lv = plan_levels(ExitConfig(stop_loss_pct=pct), entry, None, rules)
    intended = entry * (100 - pct) / 100
    if isinstance(lv, str):
        assert lv == "bad_stop"
        return
    assert lv.stop <= intended and intended - lv.stop < rules.tick_size and rules.is_on_tick(lv.stop)
    assert lv.take_profit is not None and lv.take_profit >= entry * (100 + 4) / 100


def plan(cfg: ExitConfig, **over: object) -> PositionPlan:
    rules = catalog()["BTC-EUR"]
    base = dict(position_id="pos-1", market="BTC-EUR", rules=rules, entry_price=D("60000.00"),
                initial_stop=D("58800.00"), stop=D("58800.00"), take_profit=D("62400.00"),
                trail_pct=D(1) if cfg.trailing == "pct" else None, trail_distance=None,
                time_stop_secs=cfg.time_stop_secs, high=D("60000.00"), size=D("0.01"), opened_ms=T0)
    base.update(over)
    return PositionPlan(**base)  # type: ignore[arg-type]


def test_take_profit_and_one_exit_at_a_time() -> None:
    mon = PositionMonitor(ExitConfig())
    mon.open(plan(mon.cfg))
    assert mon.on_book("BTC-EUR", D("62399"), T0) == []
    [act] = mon.on_book("BTC-EUR", D("62400"), T0 + 1)
    assert isinstance(act, ExitAction) and act.reason == "take_profit" and act.level == D("62400.00")
    assert act.amount == D("0.01") and act.attempt == 0
    mon.learn_exit("BTC-EUR", "exit-0", T0 + 1)
    assert mon.on_book("BTC-EUR", D("62500"), T0 + 2) == []  # exit in flight
    mon.exit_done("BTC-EUR", "exit-0")  # its order ended with coins left
    assert mon.on_book("BTC-EUR", D("62500"), T0 + 3) == []  # retry waits EXIT_RETRY_SECS
    [again] = mon.on_book("BTC-EUR", D("62500"), T0 + 10_001)
    assert isinstance(again, ExitAction) and again.attempt == 1


def test_nothing_before_the_entry_fills() -> None:
    mon = PositionMonitor(ExitConfig())
    mon.open(plan(mon.cfg, size=D(0), opened_ms=None))
    assert mon.on_book("BTC-EUR", D("70000"), T0) == []


def test_time_stop() -> None:
    mon = PositionMonitor(ExitConfig(time_stop_secs=3600))
    mon.open(plan(mon.cfg))
    assert mon.on_book("BTC-EUR", D("60100"), T0 + 3_599_999) == []
    [act] = mon.on_time(T0 + 3_600_000, {"BTC-EUR": D("60100")})
    assert isinstance(act, ExitAction) and act.reason == "time_stop" and act.level is None


def test_trailing_moves_up_by_ticks_rate_limited_then_hits() -> None:
    mon = PositionMonitor(ExitConfig(trailing="pct", trailing_min_interval_secs=30))
    mon.open(plan(mon.cfg))
    # high 60000 → trail 59400 > stop 58800: amend
    [a1] = mon.on_book("BTC-EUR", D("60000"), T0)
    assert isinstance(a1, AmendAction) and a1.stop_price == D("59400.00") and a1.previous_stop == D("58800.00")
    mon.learn_amend("BTC-EUR", a1.stop_price, a1.high_price, T0)
    assert mon.on_book("BTC-EUR", D("61000"), T0 + 29_999) == []  # rate limited
    [a2] = mon.on_book("BTC-EUR", D("61000"), T0 + 30_000)
    assert isinstance(a2, AmendAction) and a2.stop_price == D("60390.00")  # 61000 × 0.99
    mon.learn_amend("BTC-EUR", a2.stop_price, a2.high_price, T0 + 30_000)
    # a rise of less than one tick of stop does not amend
    assert mon.on_book("BTC-EUR", D("61001"), T0 + 90_000) == []
    [hit] = mon.on_book("BTC-EUR", D("60390"), T0 + 90_001)
    assert isinstance(hit, ExitAction) and hit.reason == "trailing_stop" and hit.level == D("60390.00")


def test_trailing_below_initial_stop_leaves_it_to_the_resting_stop() -> None:
    mon = PositionMonitor(ExitConfig(trailing="pct", trailing_pct=D(5)))
    mon.open(plan(mon.cfg, trail_pct=D(5)))
    assert mon.on_book("BTC-EUR", D("58000"), T0) == []  # below the initial stop: the exchange's stop acts


def test_a_second_entry_keeps_the_first_plan() -> None:
    mon = PositionMonitor(ExitConfig())
    mon.open(plan(mon.cfg))
    mon.open(plan(mon.cfg, position_id="pos-2"))
    assert mon.plans["BTC-EUR"].position_id == "pos-1"
