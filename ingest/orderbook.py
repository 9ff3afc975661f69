"""`python -m ingest.orderbook`: Bitvavo WS book + REST snapshot → bitvavo:book, bitvavo:orderbook:update (DESIGN §1, §6).

Runs the shared runtime (metrics, heartbeat, kill switch, SIGTERM); the WS feed and the
Parquet sink arrive with the ingest issue.
"""

from __future__ import annotations

import sys

from pydantic import Field

from ingest.common import METRICS_PREFIX, IngestSettings
from tradestack import streams
from tradestack.service import Service, run_service

NAME = "ingest_orderbook"
WRITES = [streams.BOOK, streams.ORDERBOOK_UPDATE]


class Settings(IngestSettings):
    metrics_port: int = Field(9611, ge=0, le=65535)


def setup(service: Service) -> None:
    """Register the feed task (none yet)."""


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup)


if __name__ == "__main__":
    sys.exit(main())
