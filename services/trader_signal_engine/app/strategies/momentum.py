"""Momentum: a fast/slow EMA cross, buys only with the trend.

- **buy** when the fast EMA crosses above the slow EMA and the close is above the trend EMA
  (``trend = 0`` turns the filter off);
- **sell** when the fast EMA crosses below the slow EMA (an exit call; spot cannot short, so it
  needs no trend filter).

A cross is a change of the sign of ``fast - slow`` (a candle where they are exactly equal keeps
the previous sign), so one cross is one call. Strength: 0.5 at the cross, growing to 1 as the
close stands one ATR or more beyond the slow EMA (0.5 when there is no ATR).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ..indicators import EMA
from .base import Bar, Side, SignalCall, Strategy, StrategyParams, clamp01


class MomentumParams(StrategyParams):
    fast: int = Field(default=5, ge=1, le=1000)
    slow: int = Field(default=13, ge=2, le=1000)
    trend: int = Field(default=50, ge=0, le=5000)  # 0 = no trend filter

    @model_validator(mode="after")
    def _order(self) -> MomentumParams:
        if self.fast >= self.slow:
            raise ValueError(f"parameter 'fast' ({self.fast}) must be smaller than 'slow' ({self.slow})")
        return self


class _State:
    __slots__ = ("fast", "sign", "slow", "trend")

    def __init__(self, p: MomentumParams) -> None:
        self.fast = EMA(p.fast)
        self.slow = EMA(p.slow)
        self.trend = EMA(p.trend) if p.trend else None
        self.sign = 0  # sign of fast - slow on the last candle where it was not 0; 0 = not known yet


class Momentum(Strategy[MomentumParams, _State]):
    method = "momentum"
    Params = MomentumParams

    @property
    def warmup(self) -> int:
        # The slow EMA is ready at candle `slow`; a cross needs the sign of one candle before.
        p = self.params
        return max(p.slow + 1, p.trend)

    def new_state(self) -> _State:
        return _State(self.params)

    def step(self, state: _State, bar: Bar) -> SignalCall | None:
        close = bar.close
        fast = state.fast.update(close)
        slow = state.slow.update(close)
        trend = state.trend.update(close) if state.trend is not None else None
        if fast is None or slow is None:
            return None
        diff = fast - slow
        before = state.sign
        if diff > 0.0:
            state.sign = 1
        elif diff < 0.0:
            state.sign = -1
        else:
            return None
        if before == 0 or before == state.sign:
            return None
        if state.trend is not None and trend is None:
            return None  # the trend filter is not ready: no call of either side
        side: Side
        if state.sign > 0:
            if trend is not None and not close > trend:
                return None
            side = "buy"
        else:
            side = "sell"
        atr = bar.atr
        features = {"close": close, "ema_fast": fast, "ema_slow": slow}
        if trend is not None:
            features["ema_trend"] = trend
        if atr:
            features["atr"] = atr
            strength = 0.5 + 0.5 * clamp01(abs(close - slow) / atr)
        else:
            strength = 0.5
        return SignalCall(side, strength, features)


STRATEGY = Momentum
