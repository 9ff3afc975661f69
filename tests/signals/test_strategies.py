"""Strategies on known candle series (both strategies, both sides), warm-up, and the registry."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.trader_signal_engine.app.indicators import EMA, WilderATR
from services.trader_signal_engine.app.strategies import (
    DEFAULT_STRATEGIES,
    REGISTRY,
    STRATEGY_MODULES,
    build_strategies,
    load_registry,
)
from services.trader_signal_engine.app.strategies.base import Bar, SignalCall, Strategy, StrategyParams
from services.trader_signal_engine.app.strategies.mean_reversion import MeanReversion, MeanReversionParams
from services.trader_signal_engine.app.strategies.momentum import Momentum, MomentumParams
from tradestack.errors import ConfigError

from . import MARKET, candles_from_closes, falling_v_series, momentum_series, reversion_series

DET = settings(derandomize=True, database=None, deadline=None, max_examples=60)


def bars(closes: list[float], market: str = MARKET) -> list[Bar]:
    """Bars with the engine's ATR (14), as the engine hands them to strategies."""
    atr = WilderATR(14)
    out = []
    for m in candles_from_closes(closes, market=market):
        b = Bar(m.market, m.interval, m.open_ts, float(m.open), float(m.high), float(m.low), float(m.close), 1.0)
        b.atr = atr.update(b.high, b.low, b.close)
        out.append(b)
    return out


def calls(strategy: Strategy, closes: list[float]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for i, b in enumerate(bars(closes)):
        call = strategy.on_candle(b)
        if call is not None:
            out.append((i, call.side))
    return out


def default(method: str) -> Strategy:
    return next(s for s in build_strategies(DEFAULT_STRATEGIES) if s.method == method)


# -- known series -----------------------------------------------------------------------------------


def test_momentum_known_series_sell_in_dip_buy_on_recovery() -> None:
    strategy = default("momentum")
    assert calls(strategy, momentum_series()) == [(64, "sell"), (74, "buy")]


def test_momentum_features_and_strength() -> None:
    strategy = default("momentum")
    got = {}
    for i, b in enumerate(bars(momentum_series())):
        call = strategy.on_candle(b)
        if call is not None:
            got[i] = call
    sell, buy = got[64], got[74]
    assert sell.features["ema_fast"] < sell.features["ema_slow"]
    assert buy.features["ema_fast"] > buy.features["ema_slow"]
    assert buy.features["close"] > buy.features["ema_trend"]  # the trend filter held
    assert set(buy.features) == {"close", "ema_fast", "ema_slow", "ema_trend", "atr"}
    assert buy.features["close"] == 127.0 and sell.features["close"] == 124.5
    assert 0.5 <= sell.strength <= 1.0 and 0.5 <= buy.strength <= 1.0


def test_momentum_trend_filter_blocks_a_buy_below_the_trend() -> None:
    assert [c for c in calls(default("momentum"), falling_v_series()) if c[1] == "buy"] == []
    # The same cross is a buy without the filter.
    no_filter = build_strategies([{"method": "momentum", "trend": 0}])[0]
    assert calls(no_filter, falling_v_series()) == [(75, "buy")]
    trend = EMA(50)
    for close in falling_v_series()[:76]:
        trend.update(close)
    assert trend.value is not None and falling_v_series()[75] < trend.value  # why the default did not buy


def test_mean_reversion_known_series_buy_on_drop_sell_on_spike() -> None:
    strategy = default("mean_reversion")
    assert calls(strategy, reversion_series()) == [(40, "buy"), (73, "sell")]
    # And on the momentum series: the dip's low and the recovery's stretch.
    assert calls(default("mean_reversion"), momentum_series()) == [(67, "buy"), (79, "sell")]


def test_mean_reversion_features_and_strength() -> None:
    strategy = default("mean_reversion")
    got = {}
    for i, b in enumerate(bars(reversion_series())):
        call = strategy.on_candle(b)
        if call is not None:
            got[i] = call
    buy, sell = got[40], got[73]
    assert buy.features["z"] < -2.0 and buy.features["rsi"] < 30.0
    assert sell.features["z"] > 2.0 and sell.features["rsi"] > 70.0
    assert set(buy.features) == {"close", "z", "rsi", "mean", "std"}
    assert buy.strength == pytest.approx(0.5 + 0.5 * min(1.0, (abs(buy.features["z"]) - 2.0) / 2.0))


def test_mean_reversion_calls_once_per_stretch() -> None:
    """Three candles below the band are one call, not three (edge-triggered)."""
    strategy = default("mean_reversion")
    closes = [100.0 + (0.1 if k % 2 else -0.1) for k in range(40)] + [99.0, 98.0, 97.0, 96.0]
    assert calls(strategy, closes) == [(40, "buy")]


# -- properties -------------------------------------------------------------------------------------


@DET
@given(st.integers(0, 2**32), st.sampled_from(["momentum", "mean_reversion"]))
def test_no_call_before_warmup_and_valid_calls(seed: int, method: str) -> None:
    rng = random.Random(seed)
    closes, x = [], 100.0
    for _ in range(300):
        x *= 1 + rng.gauss(0, 0.004)
        closes.append(round(x, 2))
    strategy = default(method)
    for i, b in enumerate(bars(closes)):
        call = strategy.on_candle(b)
        if call is not None:
            assert i + 1 >= strategy.warmup, (i, strategy.warmup)
            assert isinstance(call, SignalCall) and 0.0 <= call.strength <= 1.0


def test_state_is_per_market_and_interval() -> None:
    strategy = default("momentum")
    a = bars(momentum_series(), market="AAA-EUR")
    b = bars(list(reversed(momentum_series())), market="BBB-EUR")
    mixed = []
    for x, y in zip(a, b, strict=True):
        mixed.append(("a", strategy.on_candle(x)))
        mixed.append(("b", strategy.on_candle(y)))
    fresh = Momentum(MomentumParams())
    want_a = [fresh.on_candle(x) for x in a]
    assert [c for k, c in mixed if k == "a"] == want_a
    strategy.drop("AAA-EUR")
    assert ("AAA-EUR", "1m") not in strategy._states and ("BBB-EUR", "1m") in strategy._states


def test_warmup_values() -> None:
    assert Momentum(MomentumParams(fast=5, slow=13, trend=50)).warmup == 50
    assert Momentum(MomentumParams(fast=5, slow=60, trend=50)).warmup == 61
    assert Momentum(MomentumParams(fast=5, slow=13, trend=0)).warmup == 14
    assert MeanReversion(MeanReversionParams(window=20, rsi=7)).warmup == 20
    assert MeanReversion(MeanReversionParams(window=5, rsi=14)).warmup == 15


# -- registry and config --------------------------------------------------------------------------


class _LastCloseParams(StrategyParams):
    above: float = 100.0


class _LastClose(Strategy[_LastCloseParams, list]):
    """A minimal strategy, registered below from this very module (its ``STRATEGY``)."""

    method = "last_close"
    Params = _LastCloseParams

    @property
    def warmup(self) -> int:
        return 1

    def new_state(self) -> list:
        return []

    def step(self, state: list, bar: Bar) -> SignalCall | None:
        state[:] = [bar.close]
        return SignalCall("buy", 1.0, {"close": bar.close}) if bar.close > self.params.above else None


STRATEGY = _LastClose


def test_adding_a_strategy_is_a_module_and_a_registry_line() -> None:
    registry = load_registry(("momentum", "mean_reversion"))
    assert registry == REGISTRY
    # The service's modules plus one more line naming this module: the new method is known.
    registry = {**REGISTRY, **load_registry(("test_strategies",), package="tests.signals")}
    built = build_strategies('[{"method":"momentum"},{"method":"last_close","above":150}]', registry=registry)
    assert [s.name for s in built] == ["momentum", "last_close"]
    assert built[1].param_strings == {"above": "150.0"}
    with pytest.raises(ConfigError, match="unknown method 'last_close'"):
        build_strategies('[{"method":"last_close"}]')  # not in the service's registry
    with pytest.raises(TypeError, match="twice"):
        load_registry(("momentum", "momentum"))


def test_registry_is_one_line_per_module() -> None:
    assert set(REGISTRY) == {"momentum", "mean_reversion"}
    assert len(STRATEGY_MODULES) == len(REGISTRY)
    for method, cls in REGISTRY.items():
        assert cls.method == method and issubclass(cls, Strategy)


def test_default_config_builds_and_matches_model_defaults() -> None:
    strategies = build_strategies(DEFAULT_STRATEGIES)
    assert [s.name for s in strategies] == ["momentum", "mean_reversion"]
    for entry, strategy in zip(json.loads(DEFAULT_STRATEGIES), strategies, strict=True):
        entry = dict(entry)
        entry.pop("method")
        # The constant spells out every parameter, with the model's own defaults.
        assert strategy.params == type(strategy.params)()
        assert set(entry) == set(type(strategy.params).model_fields)
    assert strategies[0].param_strings == {"fast": "5", "slow": "13", "trend": "50"}
    assert strategies[1].param_strings == {"window": "20", "z": "2.0", "rsi": "7", "rsi_low": "30.0",
                                           "rsi_high": "70.0"}
    assert "\n" not in DEFAULT_STRATEGIES and ", " not in DEFAULT_STRATEGIES  # compact JSON


def test_named_instances_of_one_method() -> None:
    strategies = build_strategies('[{"method":"momentum"},{"method":"momentum","name":"momentum_slow","fast":20,'
                                  '"slow":50,"trend":200}]')
    assert [s.name for s in strategies] == ["momentum", "momentum_slow"]
    assert strategies[1].params.slow == 50


@pytest.mark.parametrize("config, words", [
    ('[{"method":"nope"}]', ["strategy #1", "unknown method 'nope'", "momentum"]),
    ('[{"fast":3}]', ["strategy #1", "missing \"method\""]),
    ('[{"method":"momentum","fats":3}]', ["momentum", "unknown parameter 'fats'"]),
    ('[{"method":"momentum","fast":0}]', ["momentum", "parameter 'fast'", "greater than or equal to 1"]),
    ('[{"method":"momentum","fast":"9"}]', ["momentum", "parameter 'fast'", "valid integer"]),
    ('[{"method":"momentum","fast":true}]', ["momentum", "parameter 'fast'"]),
    ('[{"method":"momentum","fast":30}]', ["momentum", "parameter 'fast' (30)", "'slow' (13)"]),
    ('[{"method":"mean_reversion","z":-1}]', ["mean_reversion", "parameter 'z'"]),
    ('[{"method":"mean_reversion","rsi_low":80}]', ["mean_reversion", "parameter 'rsi_low'"]),
    ('[{"method":"momentum"},{"method":"mean_reversion","window":1}]', ["strategy #2", "parameter 'window'"]),
    ('[{"method":"momentum"},{"method":"momentum"}]', ["strategy #2", "'momentum' is used twice"]),
    ('[{"method":"momentum","name":"a/b"}]', ["parameter 'name'"]),
    ('[]', ["non-empty"]),
    ('{"method":"momentum"}', ["list"]),
    ('[{"method":', ["not valid JSON"]),
    ('[3]', ["strategy #1", "expected an object"]),
])
def test_config_errors_are_one_line_naming_strategy_and_parameter(config: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategies(config)
    text = str(info.value)
    assert "\n" not in text
    for word in words:
        assert word in text, (word, text)


def test_config_as_python_list() -> None:
    strategies = build_strategies([{"method": "mean_reversion", "window": 30, "z": 2}])
    assert strategies[0].params.window == 30 and strategies[0].params.z == 2.0
