"""Signal engine: settings, streams and wiring (DESIGN §1).

Runs the shared runtime (metrics, heartbeat, kill switch, SIGTERM). Its handlers arrive
with the signal-engine issue; until then it consumes nothing, so no message is acked unhandled.
"""

from __future__ import annotations

from pydantic import Field

from tradestack import streams
from tradestack.config import CommonSettings
from tradestack.service import Service, run_service

NAME = "trader_signal_engine"
METRICS_PREFIX = "trader_signal_engine"
SIGNAL_STREAM = streams.SIGNALS_BASELINE
READS = [streams.BOOK, streams.candles("1m"), streams.candles("5m"), streams.candles("15m"), streams.candles("1h")]
WRITES = [SIGNAL_STREAM]
KEYS = [streams.UNIVERSE]


class Settings(CommonSettings):
    metrics_port: int = Field(9601, ge=0, le=65535)
    # The stream signals go to (DESIGN §1: SIGNAL_STREAM).
    signal_stream: str = streams.SIGNALS_BASELINE


def setup(service: Service) -> None:
    """Register this process's consumer loops and tasks (none yet)."""


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup)
