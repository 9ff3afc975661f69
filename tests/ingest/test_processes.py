"""The real entry points as processes: `python -m ingest.orderbook` killed with SIGKILL loses no
row that reached its streams; `python -m ingest.ticker24h` streams and exits 0 on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
import redis

from tests.conftest import spawn, wait_until
from tradestack import streams
from tradestack.messages import decode
from tradestack.storage import ParquetSink, schema_of


@pytest.fixture
def sandbox_proc():
    proc = spawn(["-m", "sandbox", "--port", "0", "--history-hours", "0.2"], {})
    try:
        urls = {}
        assert proc.stdout is not None
        while len(urls) < 2:
            line = proc.stdout.readline().decode()
            assert line, "sandbox exited: " + (proc.stderr.read().decode() if proc.stderr else "")
            if line.startswith(("REST ", "WS ")):
                kind, url = line.split()
                urls[kind] = url
        yield urls
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _jsonl_ids(root: Path) -> set[str]:
    ids = set()
    for path in root.glob("*/**/*.jsonl"):
        for line in path.read_bytes().splitlines():
            try:
                ids.add(orjson.loads(line)["msg"]["id"])
            except orjson.JSONDecodeError:
                pass  # a torn last line: never XADDed
    return ids


def test_sigkill_loses_no_row_that_reached_the_stream(sandbox_proc, redis_url: str, rclient: redis.Redis,
                                                      tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "BITVAVO_REST_URL": sandbox_proc["REST"], "BITVAVO_WS_URL": sandbox_proc["WS"],
           "METRICS_PORT": "0", "PARQUET_DIR": str(tmp_path / "pq"), "INGEST_MARKETS": "all", "LOG_LEVEL": "WARNING"}
    book = spawn(["-m", "ingest.orderbook"], env)
    ticker = spawn(["-m", "ingest.ticker24h"], env)
    try:
        wait_until(lambda: rclient.xlen(streams.ORDERBOOK_UPDATE) > 1000 and rclient.xlen(streams.BOOK) > 100,
                   30, "book entries")
        wait_until(lambda: rclient.xlen(streams.TICKER24H) > 20, 30, "ticker entries")
        book.send_signal(signal.SIGKILL)  # mid-stream, no chance to flush anything
        assert book.wait(10) == -signal.SIGKILL
        ticker.send_signal(signal.SIGTERM)
        assert ticker.wait(10) == 0, ticker.stderr.read().decode() if ticker.stderr else ""
    finally:
        for p in (book, ticker):
            if p.poll() is None:
                p.kill()
                p.wait(5)
    on_disk = _jsonl_ids(tmp_path / "pq")
    in_redis = {decode(f).id for s in (streams.ORDERBOOK_UPDATE, streams.BOOK, streams.TICKER24H)
                for _, f in rclient.xrange(s)}
    missing = in_redis - on_disk
    assert not missing, f"{len(missing)} rows in Redis but not on disk"
    # Every file compacts and reads back with its declared schema.
    files = ParquetSink(tmp_path / "pq").compact_due(include_current=True)
    kinds = {"/".join(p.parent.relative_to(tmp_path / "pq").parts[1:]) for p in files}
    assert {"ticker24h", "orderbook/update", "orderbook/top"} <= kinds
    total = 0
    for p in files:
        kind = "/".join(p.parent.relative_to(tmp_path / "pq").parts[1:])
        table = pq.read_table(p)
        assert table.schema.equals(schema_of(kind))
        total += table.num_rows
    assert total >= len(in_redis)
