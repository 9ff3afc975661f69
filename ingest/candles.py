"""`python -m ingest.candles`: Bitvavo WS candles (+ REST backfill) → bitvavo:candles:<interval> (DESIGN §1, §6).

Runs the shared runtime (metrics, heartbeat, kill switch, SIGTERM); the WS feed and the
Parquet sink arrive with the ingest issue.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import Field, field_validator

from ingest.common import METRICS_PREFIX, IngestSettings
from tradestack.config import CsvList, split_csv
from tradestack import streams
from tradestack.service import Service, run_service

NAME = "ingest_candles"
WRITES = [streams.candles(i) for i in ("1m", "5m", "15m", "1h")]


class Settings(IngestSettings):
    metrics_port: int = Field(9612, ge=0, le=65535)
    candle_intervals: CsvList = ["1m", "5m", "15m", "1h"]

    @field_validator("candle_intervals", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("candle_intervals")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for interval in value:
            streams.candles(interval)  # raises on an interval Bitvavo does not have
        return value


def setup(service: Service) -> None:
    """Register the feed task (none yet)."""


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup)


if __name__ == "__main__":
    sys.exit(main())
