"""The guard chain: configuration like the universe filters, every guard checked, value and limit."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from services.trading_core.trading_core.guards import DEFAULT_GUARDS, REGISTRY, GuardChain, GuardContext
from tests.core import T0, catalog
from tradestack.errors import ConfigError

D = Decimal


def ctx(**over: object) -> GuardContext:
    cat = catalog()
    base = GuardContext(
        market="BTC-EUR", asset="BTC", kill_switch=False, rules=cat["BTC-EUR"], amount=D("0.001"),
        price=D("60000.00"), notional=D("60.00000"), market_has_position=False, open_positions=0,
        asset_exposure=D(0), global_exposure=D(0), daily_loss=D(0), last_stop_out_ms=None, now_ms=T0,
        catalog_markets=frozenset(cat))
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


def test_defaults_pass_a_plain_order_and_list_every_guard() -> None:
    chain = GuardChain.from_config(None)
    checks = chain.check(ctx())
    assert [c.name for c in checks] == [REGISTRY[s["method"]].NAME for s in DEFAULT_GUARDS]
    assert all(c.passed and c.reason is None for c in checks)
    by = {c.name: c for c in checks}
    assert (by["max_order_notional"].value, by["max_order_notional"].limit) == ("60.00000", "100")
    assert by["kill_switch"].value == "off" and by["exchange_rules"].value == "0.001@60000.00"


def test_every_failing_guard_is_listed_in_chain_order() -> None:
    chain = GuardChain.from_config(None)
    checks = chain.check(ctx(kill_switch=True, market="NOPE-EUR", rules=None, market_has_position=True,
                             open_positions=5, asset_exposure=D(240), global_exposure=D(990),
                             notional=D(150), daily_loss=D(50), last_stop_out_ms=T0 - 1000))
    reasons = [c.reason for c in checks if not c.passed]
    assert reasons == ["kill_switch", "market_not_allowed", "position_open", "asset_exposure",
                       "global_exposure", "order_notional", "daily_loss", "cooldown", "unknown_market"]
    by = {c.name: c for c in checks}
    # the market already counts, so max positions is not exceeded by this order
    assert by["max_open_positions"].passed and by["max_open_positions"].value == "5"
    assert (by["max_asset_exposure"].value, by["max_asset_exposure"].limit) == ("390", "250")
    assert by["stop_out_cooldown"].value == "3599"


def test_no_room_left_blocks_even_a_zero_order() -> None:
    checks = {c.name: c for c in GuardChain.from_config(None).check(
        ctx(asset_exposure=D(250), amount=D(0), notional=D(0)))}
    assert not checks["max_asset_exposure"].passed and checks["exchange_rules"].reason == "no_size"


def test_cooldown_ends() -> None:
    chain = GuardChain.from_config([{"method": "KillSwitch"}, {"method": "StopOutCooldown", "cooldown_secs": 60},
                                    {"method": "ExchangeRules"}])
    assert not chain.check(ctx(last_stop_out_ms=T0 - 59_999))[1].passed
    assert chain.check(ctx(last_stop_out_ms=T0 - 60_000))[1].passed
    assert chain.cooldown_secs == 60 and chain.caps.max_order_notional_eur is None


def test_allow_list_and_caps_from_params() -> None:
    chain = GuardChain.from_config(json.dumps([
        {"method": "KillSwitch"}, {"method": "MarketAllowList", "markets": ["ETH-EUR"]},
        {"method": "MaxOrderNotional", "max_notional_eur": 25.5}, {"method": "MaxGlobalExposure",
                                                                   "max_exposure_eur": "300"},
        {"method": "ExchangeRules"}]))
    by = {c.name: c for c in chain.check(ctx())}
    assert by["market_allow_list"].reason == "market_not_allowed" and by["market_allow_list"].limit == "ETH-EUR"
    assert chain.caps.max_order_notional_eur == D("25.5") and chain.caps.max_global_exposure_eur == D(300)
    assert chain.describe()[2] == {"method": "MaxOrderNotional", "max_notional_eur": "25.5"}


@pytest.mark.parametrize("spec,match", [
    ("not json", "CORE_GUARDS is not valid JSON"),
    ('{"method": "KillSwitch"}', "must be a JSON list"),
    ('[{"method": "KillSwitch"}, {"method": "Nope"}, {"method": "ExchangeRules"}]', "unknown guard 'Nope'"),
    ('[{"method": "KillSwitch"}, {"method": "MaxOrderNotional", "max_notional": 5}, {"method": "ExchangeRules"}]',
     "MaxOrderNotional: max_notional: Extra inputs"),
    ('[{"method": "KillSwitch"}, {"method": "MaxOrderNotional", "max_notional_eur": "-5"},'
     ' {"method": "ExchangeRules"}]', "must be a finite number >= 0"),
    ('[{"method": "KillSwitch"}, {"method": "MaxOpenPositions", "max_positions": "x"}, {"method": "ExchangeRules"}]',
     "max_positions"),
    ('[{"method": "ExchangeRules"}]', "must include KillSwitch"),
    ('[{"method": "KillSwitch"}, {"method": "KillSwitch"}, {"method": "ExchangeRules"}]', "listed twice"),
    ('[{"max_positions": 3}]', "must be an object with a \\\"method\\\""),
])
def test_bad_config_is_one_line(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        GuardChain.from_config(spec)
    assert "\n" not in str(info.value)
