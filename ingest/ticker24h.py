"""`python -m ingest.ticker24h`: Bitvavo WS ticker24h → bitvavo:ticker24h (one entry per market update)
and Parquet under ticker24h/ (DESIGN §1, §6)."""

from __future__ import annotations

import sys
from typing import Any

from pydantic import Field

from ingest.common import METRICS_PREFIX, IngestSettings, wire
from tradestack import streams
from tradestack.bitvavo.feeds import TickerFeed
from tradestack.service import Service, run_service

NAME = "ingest_ticker24h"
WRITES = [streams.TICKER24H]


class Settings(IngestSettings):
    metrics_port: int = Field(9610, ge=0, le=65535)


def setup(service: Service[Settings]) -> None:
    def make_feed(rest: Any, **kw: Any) -> TickerFeed:
        return TickerFeed(**kw)

    wire(service, make_feed)


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup)


if __name__ == "__main__":
    sys.exit(main())
