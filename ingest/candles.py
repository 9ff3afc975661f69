"""`python -m ingest.candles`: Bitvavo WS candles (+ REST backfill) → bitvavo:candles:<interval>
(each entry marked `closed` once its period is over) and Parquet under candles/<interval>/ (DESIGN §1, §6)."""

from __future__ import annotations

import sys
from typing import Any

from pydantic import Field, field_validator

from ingest.common import METRICS_PREFIX, IngestSettings, wire
from tradestack import streams
from tradestack.bitvavo.candles import CandleFeed
from tradestack.config import CsvList
from tradestack.service import Service, run_service

NAME = "ingest_candles"
WRITES = [streams.candles(i) for i in ("1m", "5m", "15m", "1h")]


class Settings(IngestSettings):
    metrics_port: int = Field(9612, ge=0, le=65535)
    candle_intervals: CsvList = ["1m", "5m", "15m", "1h"]
    candle_close_grace_ms: int = Field(2_000, ge=0)  # wait this long after a period for late updates
    candle_backfill_periods: int = Field(60, ge=1, le=1440)  # how far back a first start fills in
    candle_scan_entries: int = Field(50_000, ge=100)  # stream entries read back on start (restart safety)

    @field_validator("candle_intervals")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for interval in value:
            streams.candles(interval)  # raises on an interval Bitvavo does not have
        return value


def setup(service: Service[Settings]) -> None:
    s = service.settings

    def make_feed(**kw: Any) -> CandleFeed:
        return CandleFeed(intervals=s.candle_intervals, redis=service.redis, close_grace_ms=s.candle_close_grace_ms,
                          backfill_periods=s.candle_backfill_periods, scan_entries=s.candle_scan_entries, **kw)

    wire(service, make_feed)


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup)


if __name__ == "__main__":
    sys.exit(main())
