"""Settings shared by the three ingest processes."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from tradestack.config import CommonSettings, CsvList, split_csv

METRICS_PREFIX = "trader_ingest"


class IngestSettings(CommonSettings):
    # A list (BTC-EUR,ETH-EUR), `all` (every trading market) or `universe` (follow trading:universe).
    ingest_markets: CsvList = ["BTC-EUR", "ETH-EUR"]

    @field_validator("ingest_markets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("ingest_markets")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name markets (BTC-EUR,ETH-EUR), or be 'all' or 'universe'")
        if len(value) > 1 and any(v in ("all", "universe") for v in value):
            raise ValueError("'all' and 'universe' stand alone, not in a list")
        for market in value:
            if market not in ("all", "universe") and (market.upper() != market or "-" not in market):
                raise ValueError(f"{market!r} is not a market id like BTC-EUR")
        return value
