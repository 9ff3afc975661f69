"""The trading core's fast paths give exactly what the plain ones give (issue 11's speed work).

Not timing tests: each shortcut a decision takes is checked against the construction it replaced,
equal in value *and* byte for byte on the wire (the streams are the audit trail):

- the guard chain's compiled checks (``Guard.compiled``) against each guard's ``check``, over
  random contexts that pass and fail every guard;
- entry intents, and the blocked branch an accepted entry carries to its commit (the decision as
  ``model_copy`` makes it, the event as ``factory.child`` makes it), built without validation,
  against the validated models, for accepted and blocked signals (several reasons at once) under
  every entry type, exit and trailing mode;
- inputs that are not of their validated type still go through validation (and are refused);
- the decision-lag histogram (a ``HotHistogram`` now) scrapes under its old name and buckets.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from services.trading_core.trading_core.core import CoreConfig, TradingCore
from services.trading_core.trading_core.exits import ExitConfig
from services.trading_core.trading_core.guards import NOT_CHECKED, REGISTRY, GuardChain, GuardContext
from services.trading_core.trading_core.service import Metrics
from services.trading_core.trading_core.sizing import RiskConfig
from tests.core import T0, catalog, signal
from tradestack.clock import FakeClock
from tradestack.effects import Effect, IfKey, Output
from tradestack.messages import DecisionMade, EntryIntent, MessageFactory, TradingEvent, decode, encode

D = Decimal
MARKETS = ["BTC-EUR", "ETH-EUR", "SOL-EUR", "DOGE-EUR", "SHIB-EUR", "ADA-EUR", "NOPE-EUR"]
PRICES = {"BTC-EUR": D(60000), "ETH-EUR": D(2500), "SOL-EUR": D(140), "DOGE-EUR": D("0.12"),
          "SHIB-EUR": D("0.000017"), "ADA-EUR": D("0.5"), "NOPE-EUR": D(1)}
EVERY_GUARD: list[dict[str, Any]] = [
    {"method": "KillSwitch"}, {"method": "MarketAllowList", "markets": ["BTC-EUR", "SHIB-EUR"]},
    {"method": "OnePositionPerMarket"}, {"method": "MaxOpenPositions", "max_positions": 2},
    {"method": "MaxAssetExposure", "max_exposure_eur": "150.5"}, {"method": "MaxGlobalExposure", "max_exposure_eur": "300"},
    {"method": "MaxOrderNotional", "max_notional_eur": "80"}, {"method": "DailyLossLimit", "max_loss_eur": "0.5"},
    {"method": "StopOutCooldown", "cooldown_secs": 90}, {"method": "ExchangeRules"},
]
money = st.one_of(*(st.decimals(min_value=D(0), max_value=D(10_000), places=p, allow_nan=False, allow_infinity=False)
                   for p in (0, 2, 10)))


@st.composite
def contexts(draw: st.DrawFn) -> GuardContext:
    market = draw(st.sampled_from(MARKETS))
    cat = catalog()
    rules = cat.get(market)
    price = draw(st.sampled_from([D(0), PRICES[market], PRICES[market] + D("0.013"), D("60000.00")]))
    amount = draw(st.sampled_from([D(0), D("0.001"), D("1.00000000"), D("0.123456789"), D(500000)]))
    stop = draw(st.one_of(st.none(), st.integers(T0 - 200_000, T0 + 1000), st.sampled_from([T0 - 90_000, T0 - 89_999])))
    # Values on the limits of EVERY_GUARD too: a check that is off by one at its limit shows.
    notional = draw(st.one_of(st.just(amount * price), st.sampled_from([D(80), D("80.000"), D("80.01"), D("150.5")])))
    near = st.sampled_from([D("150.5"), D("70.5"), D("70.50"), D("70.49"), D(220), D(300), D("299.99")])
    return GuardContext(
        market=market, asset=market.split("-")[0], kill_switch=draw(st.booleans()), rules=rules, amount=amount,
        price=price, notional=notional, market_has_position=draw(st.booleans()),
        open_positions=draw(st.integers(0, 4)), asset_exposure=draw(st.one_of(money, near)),
        global_exposure=draw(st.one_of(money, near)),
        daily_loss=draw(st.sampled_from([D(0), D("0.5"), D("0.49"), D("12.3400")])), last_stop_out_ms=stop,
        now_ms=T0, catalog_markets=frozenset(cat),
        exchange_reason=draw(st.sampled_from([NOT_CHECKED, None, "below_min_quote", ""])))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctx=contexts(), allow_list=st.booleans())
def test_compiled_guards_answer_as_their_check(ctx: GuardContext, allow_list: bool) -> None:
    specs = [dict(s) for s in EVERY_GUARD]
    if not allow_list:
        specs[1]["markets"] = []  # the catalogue instead
    chain = GuardChain.from_config(specs)
    assert [type(g).__name__ for g in chain.guards] == [s["method"] for s in specs]
    plain = [guard.check(ctx) for guard in chain.guards]
    fast = chain.check(ctx)
    assert fast == plain
    assert [c.model_dump_json() for c in fast] == [c.model_dump_json() for c in plain]


def test_every_registered_guard_has_a_compiled_check_that_is_not_its_plain_one() -> None:
    """A guard added later without ``compiled`` would still be right (it falls back to ``check``);
    this says which ones are sped up, so a new one is a decision, not an accident."""
    chain = GuardChain.from_config([{"method": name} for name in REGISTRY])
    for guard, check in zip(chain.guards, chain._checks, strict=True):
        assert check != guard.check, type(guard).__name__


CONFIGS = {
    "default": CoreConfig(),
    "every_guard_limit_fixed": dataclasses.replace(CoreConfig(), guards=GuardChain.from_config(EVERY_GUARD),
                                                   entry_order_type="limit", risk=RiskConfig("fixed", D("7.5"))),
    "atr_trailing_time_stop": dataclasses.replace(
        CoreConfig(), exits=ExitConfig(mode="atr", trailing="atr", time_stop_secs=600),
        guards=GuardChain.from_config([{"method": "KillSwitch"}, {"method": "ExchangeRules"}])),
    "pct_trailing_no_tp": dataclasses.replace(
        CoreConfig(), exits=ExitConfig(trailing="pct", trailing_pct=D("1.25"), take_profit_pct=None),
        entry_order_type="limit", equity_eur=D("2500.55"),
        guards=GuardChain.from_config([{"method": "KillSwitch"}, {"method": "MaxOrderNotional", "max_notional_eur": "70"},
                                       {"method": "ExchangeRules"}])),
}


def validated(msg: Any) -> Any:
    return type(msg).model_validate(msg.model_dump())


def assert_as_validated(msg: Any) -> None:
    again = validated(msg)
    assert msg == again and encode(msg) == encode(again) and decode(encode(msg)) == msg
    assert msg.model_fields_set == again.model_fields_set


def outputs(effects: list[Effect]) -> list[Output]:
    out: list[Output] = []
    for effect in effects:
        if isinstance(effect, IfKey):
            out += [e for e in (*effect.then, *effect.otherwise) if isinstance(e, Output)]
        elif isinstance(effect, Output):
            out.append(effect)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_intents_and_the_blocked_branch_built_without_validation_are_the_validated_ones(name: str) -> None:
    clock = FakeClock(T0)
    factory = MessageFactory("trading_core", clock)
    core = TradingCore(CONFIGS[name], catalog(), factory, clock)
    intents = branches = multi = 0
    for n in range(80):
        market = MARKETS[n % len(MARKETS)]
        price = PRICES[market] * (1 + D(n % 9 - 4) / 100)
        atr = None if n % 11 == 5 else str(price / 40)
        effects = core.on_signal_gated(signal(n, market=market, price=str(price), atr=atr), kill_switch=n % 13 == 7)
        for out in outputs(effects):
            assert_as_validated(out.msg)
            intents += isinstance(out.msg, EntryIntent)
            if isinstance(out.msg, DecisionMade) and len(out.msg.reasons) > 1:
                multi += 1
        gated = [e for e in effects if isinstance(e, IfKey)]
        if gated:
            branches += 1
            decision = gated[0].otherwise[0].msg
            blocked, event = (e.msg for e in gated[0].then)  # type: ignore[attr-defined]
            # What the plain construction makes of the same decision.
            want = decision.model_copy(update={"accepted": False, "reasons": ["kill_switch"], "intent_id": None,
                                               "checks": blocked.checks})
            assert [c.name for c in blocked.checks] == [c.name for c in decision.checks]
            assert {c.value for c in blocked.checks if c.name == "kill_switch"} == {"on (read at commit)"}
            assert blocked == want and encode(blocked) == encode(want)
            want_event = factory.child(want, TradingEvent, kind="kill_switch", severity="warning",
                                       message=event.message, details=dict(event.details))
            assert event == want_event and encode(event) == encode(want_event)
            assert event.message == (f"entry blocked in {decision.market}: kill_switch (set while the signal was "
                                     f"being decided)")
    assert intents and branches == intents
    if name == "every_guard_limit_fixed":
        assert multi  # blocked decisions with several reasons were among them


def test_intent_fields_not_of_their_validated_type_are_still_refused() -> None:
    clock = FakeClock(T0)
    bad_type = dataclasses.replace(CoreConfig(), entry_order_type="stop",  # type: ignore[arg-type]
                                   guards=GuardChain.from_config([{"method": "KillSwitch"}, {"method": "ExchangeRules"}]))
    with pytest.raises(ValueError):
        TradingCore(bad_type, catalog(), MessageFactory("trading_core", clock), clock).on_signal(signal(1), False)
    endless = dataclasses.replace(CoreConfig(), exits=ExitConfig(trailing="atr", trailing_atr_mult=D("Infinity")),
                                  guards=GuardChain.from_config([{"method": "KillSwitch"}, {"method": "ExchangeRules"}]))
    with pytest.raises(ValueError):
        TradingCore(endless, catalog(), MessageFactory("trading_core", clock), clock).on_signal(signal(2), False)


def test_decision_lag_scrapes_as_the_histogram_it_was() -> None:
    metrics = Metrics()
    for value in (0.0004, 0.001, 0.03, 75.0):
        metrics.decision_lag.observe(value)
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE trader_trading_core_decision_lag_seconds histogram" in text
    assert 'trader_trading_core_decision_lag_seconds_bucket{le="0.001"} 2.0' in text
    assert 'trader_trading_core_decision_lag_seconds_bucket{le="60.0"} 3.0' in text
    assert 'trader_trading_core_decision_lag_seconds_bucket{le="+Inf"} 4.0' in text
    assert "trader_trading_core_decision_lag_seconds_count 4.0" in text
