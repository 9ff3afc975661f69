"""The sandbox exchange engine: pure Python, no I/O besides optional state/replay files.

The server builds a ``SandboxConfig``, constructs ``Exchange(config, now_ms)`` and calls its
methods with the raw request parameters; everything returned is Bitvavo-shaped JSON.
"""

from .config import AccountSpec, SandboxConfig
from .errors import ExchangeError
from .events import BookEvent, CandleEvent, Event, FillEvent, OrderEvent, TickerEvent, TradeEvent
from .exchange import Exchange

__all__ = [
    "AccountSpec", "BookEvent", "CandleEvent", "Event", "Exchange", "ExchangeError", "FillEvent",
    "OrderEvent", "SandboxConfig", "TickerEvent", "TradeEvent",
]
