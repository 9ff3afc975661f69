"""Mean reversion: a Bollinger z-score stretched beyond ``z``, confirmed by RSI.

- **buy** when ``z < -z`` (the close below the lower band) and ``RSI < rsi_low``;
- **sell** when ``z > z`` (above the upper band) and ``RSI > rsi_high``.

``z = (close - mean) / std`` over the last ``window`` closes, this one included (population
std, as Bollinger bands). Edge-triggered: it calls once when a condition starts to hold and not
again until that condition has stopped holding, so one stretch is one call, not one per candle.
Strength: 0.5 at the band, growing to 1 at twice the band's distance (``|z| >= 2 * z``).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ..indicators import RollingStats, WilderRSI
from .base import Bar, SignalCall, Strategy, StrategyParams, clamp01


class MeanReversionParams(StrategyParams):
    window: int = Field(default=20, ge=2, le=5000)
    z: float = Field(default=2.0, gt=0.0, le=10.0)
    rsi: int = Field(default=7, ge=1, le=1000)
    rsi_low: float = Field(default=30.0, gt=0.0, lt=100.0)
    rsi_high: float = Field(default=70.0, gt=0.0, lt=100.0)

    @model_validator(mode="after")
    def _order(self) -> MeanReversionParams:
        if self.rsi_low >= self.rsi_high:
            raise ValueError(f"parameter 'rsi_low' ({self.rsi_low}) must be smaller than 'rsi_high' ({self.rsi_high})")
        return self


class _State:
    __slots__ = ("holding", "rsi", "stats")

    def __init__(self, p: MeanReversionParams) -> None:
        self.stats = RollingStats(p.window)
        self.rsi = WilderRSI(p.rsi)
        self.holding = 0  # +1 / -1 while the buy / sell condition holds, else 0


class MeanReversion(Strategy[MeanReversionParams, _State]):
    method = "mean_reversion"
    Params = MeanReversionParams

    @property
    def warmup(self) -> int:
        p = self.params
        return max(p.window, p.rsi + 1)

    def new_state(self) -> _State:
        return _State(self.params)

    def step(self, state: _State, bar: Bar) -> SignalCall | None:
        close = bar.close
        stats = state.stats
        mean = stats.update(close)
        rsi = state.rsi.update(close)
        if mean is None or rsi is None:
            return None
        z = stats.zscore(close)
        if z is None:
            return None
        p = self.params
        k = p.z
        if z < -k and rsi < p.rsi_low:
            now = 1
        elif z > k and rsi > p.rsi_high:
            now = -1
        else:
            now = 0
        before = state.holding
        state.holding = now
        if now == 0 or now == before:
            return None
        std = stats.std
        features = {"close": close, "z": z, "rsi": rsi, "mean": mean, "std": std or 0.0}
        strength = 0.5 + 0.5 * clamp01((abs(z) - k) / k)
        return SignalCall("buy" if now > 0 else "sell", strength, features)


STRATEGY = MeanReversion
