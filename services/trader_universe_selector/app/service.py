"""Universe selector: settings, streams and wiring (DESIGN §1).

Runs the shared runtime (metrics, heartbeat, kill switch, SIGTERM). Its handlers arrive
with the universe issue; until then it consumes nothing, so no message is acked unhandled.
"""

from __future__ import annotations

from pydantic import Field

from tradestack import streams
from tradestack.config import CommonSettings
from tradestack.service import Service, run_service

NAME = "trader_universe_selector"
METRICS_PREFIX = "trader_universe"
READS = [streams.TICKER24H, streams.BOOK]
WRITES = [streams.TRADING_EVENTS]
KEYS = [streams.UNIVERSE]


class Settings(CommonSettings):
    metrics_port: int = Field(9605, ge=0, le=65535)


def setup(service: Service) -> None:
    """Register this process's consumer loops and tasks (none yet)."""


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup)
