"""Trading core process (DESIGN §1, §4); ``python -m services.trading_core [--once]``.

The names the operators' tooling imports, as thin doors onto one implementation.
"""

from typing import ClassVar

from pydantic import Field

from services.trading_core.trading_core.executor import Executor
from services.trading_core.trading_core.service import Metrics, main
from tradestack.messages import Dec, GuardCheck, Sizing
from tradestack.messages import DecisionMade as Decision
from tradestack.messages import EntryIntent as Intent


class _PresetIntent(Intent):
    """An entry intent made by hand: the audit fields the core fills default to "none" (no signal,
    no guard checked, no sizing), so the wire says so. Travels as ``intent.entry``."""

    signal_id: str | None = None
    ref_price: Dec | None = None
    trailing_distance: Dec | None = None
    time_stop_secs: int | None = None
    strategy_params: dict[str, str] = Field(default_factory=dict)
    checks: list[GuardCheck] = Field(default_factory=list)
    sizing: Sizing | None = None


class MomentumIntent(_PresetIntent):
    """An entry intent from the momentum strategy (travels as ``intent.entry``)."""

    STRATEGY: ClassVar[str] = "momentum"
    strategy: str = "momentum"


class MeanReversionIntent(_PresetIntent):
    """An entry intent from the mean-reversion strategy (travels as ``intent.entry``)."""

    STRATEGY: ClassVar[str] = "mean_reversion"
    strategy: str = "mean_reversion"


__all__ = ["Decision", "Executor", "Metrics", "Intent", "MomentumIntent", "MeanReversionIntent", "main"]
