"""Trading core process (DESIGN §1, §4); ``python -m services.trading_core [--once]``.

The names the operators' tooling imports, as thin doors onto one implementation.
"""

from typing import ClassVar

from services.trading_core.trading_core.executor import Executor
from services.trading_core.trading_core.service import Metrics, main
from tradestack.messages import DecisionMade as Decision
from tradestack.messages import EntryIntent as Intent


class MomentumIntent(Intent):
    """An entry intent from the momentum strategy (travels as ``intent.entry``)."""

    STRATEGY: ClassVar[str] = "momentum"
    strategy: str = "momentum"


class MeanReversionIntent(Intent):
    """An entry intent from the mean-reversion strategy (travels as ``intent.entry``)."""

    STRATEGY: ClassVar[str] = "mean_reversion"
    strategy: str = "mean_reversion"


__all__ = ["Decision", "Executor", "Metrics", "Intent", "MomentumIntent", "MeanReversionIntent", "main"]
