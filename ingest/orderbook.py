"""`python -m ingest.orderbook`: Bitvavo WS book + REST snapshot → bitvavo:book (top of book on change),
bitvavo:orderbook:update (deltas with nonce), and Parquet under orderbook/{top,update,snapshot}/ (DESIGN §1, §6)."""

from __future__ import annotations

import sys
from typing import Any

from pydantic import Field

from ingest.common import METRICS_PREFIX, IngestSettings, wire
from tradestack import streams
from tradestack.bitvavo.feeds import BookFeed
from tradestack.service import Service, run_service

NAME = "ingest_orderbook"
WRITES = [streams.BOOK, streams.ORDERBOOK_UPDATE]


class Settings(IngestSettings):
    metrics_port: int = Field(9611, ge=0, le=65535)
    book_snapshot_every_s: float = Field(60.0, gt=0)  # depth snapshots to orderbook/snapshot/
    book_snapshot_depth: int = Field(50, ge=1, le=1000)
    book_rest_depth: int | None = Field(None, ge=1, le=1000)  # REST snapshot depth (None = the exchange's 1000)
    book_resync_workers: int = Field(4, ge=1, le=32)


def setup(service: Service[Settings]) -> None:
    s = service.settings

    def make_feed(**kw: Any) -> BookFeed:
        return BookFeed(snapshot_every_s=s.book_snapshot_every_s, snapshot_depth=s.book_snapshot_depth,
                        rest_depth=s.book_rest_depth, resync_workers=s.book_resync_workers, **kw)

    wire(service, make_feed)


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup)


if __name__ == "__main__":
    sys.exit(main())
