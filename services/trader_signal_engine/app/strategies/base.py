"""The strategy interface: what a strategy module implements (see docs/strategies.md).

A strategy is configured once (its ``Params``, validated at start) and keeps one small state
object per (market, interval). For every closed candle the engine calls ``step(state, bar)``
exactly once, in candle order, and the strategy answers with a ``SignalCall`` or ``None``. The
engine owns the states (it creates them with ``new_state()`` and drops them when a market leaves
the universe), so a strategy holds no market bookkeeping of its own; ``on_candle(bar)`` does that
bookkeeping for tests and tools that drive a strategy alone.

Per-candle work must stay O(1) and allocation-light: update incremental indicators
(``indicators.py``), compare, and build a ``SignalCall`` only when calling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

Side = Literal["buy", "sell"]


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: frozen, strict (JSON types as written: ``9``, not ``"9"`` or
    ``true``; an int is fine where a float is expected), and an unknown parameter is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Bar:
    """One closed candle as strategies see it: floats (features, not money) plus the engine's ATR
    of the same (market, interval), already updated with this candle (``None`` before it is ready)."""

    __slots__ = ("atr", "close", "high", "interval", "low", "market", "open", "open_ts", "volume")

    def __init__(self, market: str, interval: str, open_ts: int, open: float, high: float, low: float,
                 close: float, volume: float, atr: float | None = None) -> None:
        self.market = market
        self.interval = interval
        self.open_ts = open_ts
        self.open = open
        self.high = high
        self.low = low
        self.close = close
        self.volume = volume
        self.atr = atr

    def __repr__(self) -> str:
        return (f"Bar({self.market} {self.interval} {self.open_ts} o={self.open} h={self.high} l={self.low} "
                f"c={self.close} v={self.volume} atr={self.atr})")


@dataclass(frozen=True, slots=True)
class SignalCall:
    """A strategy's call on one candle: a side, a strength in [0, 1] and the features it used."""

    side: Side
    strength: float
    features: dict[str, float]

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise ValueError(f"side must be 'buy' or 'sell', got {self.side!r}")
        if not (0.0 <= self.strength <= 1.0):  # also rejects NaN
            raise ValueError(f"strength must be within [0, 1], got {self.strength!r}")
        for key, value in self.features.items():
            if not math.isfinite(value):
                raise ValueError(f"feature {key!r} is not finite: {value!r}")


def clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else min(x, 1.0)


P = TypeVar("P", bound=StrategyParams)
S = TypeVar("S")


class Strategy(Generic[P, S]):
    """Subclass with: ``method`` (the registry name, also the default strategy name), ``Params``
    (a ``StrategyParams`` model), ``warmup`` (candles before the first possible call),
    ``new_state()`` and ``step(state, bar)``.

    ``name`` is the instance's name in signals (``method`` unless the config gives ``name``, so
    one method can run twice with different parameters). ``param_strings`` are the parameters as
    strings, as ``SignalEmitted.params`` carries them (computed once, not per candle).
    """

    method: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, params: P, name: str | None = None) -> None:
        self.params: P = params
        self.name: str = name or self.method
        self.param_strings: dict[str, str] = {k: _param_str(v) for k, v in params.model_dump().items()}
        self._states: dict[tuple[str, str], S] = {}

    @classmethod
    def from_config(cls, name: str | None = None, **params: Any) -> Strategy[Any, Any]:
        """Validate ``params`` (pydantic ``ValidationError`` on a bad one) and build the strategy."""
        return cls(cls.Params(**params), name=name)  # type: ignore[arg-type]

    @property
    def warmup(self) -> int:
        """Closed candles needed before ``step`` may return a call."""
        raise NotImplementedError

    def new_state(self) -> S:
        """Fresh state for one (market, interval)."""
        raise NotImplementedError

    def step(self, state: S, bar: Bar) -> SignalCall | None:
        """Update ``state`` with one closed candle (always) and return a call or ``None``."""
        raise NotImplementedError

    # -- standalone use (tests, tools); the engine keeps its own states and calls ``step`` --------

    def on_candle(self, bar: Bar) -> SignalCall | None:
        key = (bar.market, bar.interval)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self.new_state()
        return self.step(state, bar)

    def drop(self, market: str) -> None:
        for key in [k for k in self._states if k[0] == market]:
            del self._states[key]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, params={self.param_strings})"


def _param_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
