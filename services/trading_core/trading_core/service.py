"""Trading core: settings, streams and wiring (DESIGN §1, §4).

For each signal the core writes a Decision to ``orders:signals`` and, when accepted, an
Intent to ``orders:shadow``. Its guards and sizing arrive with the trading-core issue;
until then it consumes nothing, so no signal is acked unhandled.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pydantic import Field

from tradestack import streams
from tradestack.config import CommonSettings, CsvList
from tradestack.metrics import ServiceMetrics
from tradestack.service import Service, run_service

NAME = "trading_core"
METRICS_PREFIX = "trader_trading_core"
READS = [streams.SIGNALS_BASELINE, streams.BOOK]
WRITES = [streams.ORDERS_SIGNALS, streams.ORDERS_SHADOW, streams.TRADING_EVENTS]
KEYS = [streams.KILL, streams.POSITIONS]


class Settings(CommonSettings):
    metrics_port: int = Field(9602, ge=0, le=65535)
    signal_streams: CsvList = Field(default_factory=lambda: [streams.SIGNALS_BASELINE])


class Metrics(ServiceMetrics):
    """The core's metrics: the standard set plus decisions by outcome and reason."""

    def __init__(self) -> None:
        super().__init__(METRICS_PREFIX)
        self.decisions = self.counter("decisions_total", "Decisions made, by outcome and first reason",
                                      ["outcome", "reason"])


def setup(service: Service) -> None:
    """Register the core's consumer loops (none yet)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trading_core", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="process what is pending, then exit (dry-run smoke test)")
    args = parser.parse_args(argv)
    return run_service(NAME, Settings, METRICS_PREFIX, setup, once=args.once)


if __name__ == "__main__":
    sys.exit(main())
