"""The Parquet sink: JSONL rows, hourly compaction with explicit schemas, torn lines, retention."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tradestack.bitvavo.parse import candle_message, encode_book_delta, parse_book_event, parse_candle_event, parse_ticker24h
from tradestack.clock import FakeClock
from tradestack.messages import encode_data
from tradestack.storage import ParquetSink, schema_of

T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
HOUR = 3_600_000


def _delta(nonce: int) -> bytes:
    ev = parse_book_event({"market": "BTC-EUR", "nonce": nonce, "bids": [["100.50", "1"], ["99", "0"]],
                           "asks": [["0.000000010", "123456789.12345678"]], "timestamp": T0 * 1_000_000})
    return encode_book_delta(ev, "t")[1]


def _read_all(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        rows += pq.read_table(p).to_pylist()
    return rows


def test_rows_compact_per_hour_with_declared_schema(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock)
    sink.write([("orderbook/update", T0, _delta(1)), ("orderbook/update", T0 + 1, _delta(2))])
    sink.write([("orderbook/update", T0 + HOUR, _delta(3))])  # next hour: rotates
    assert sink.compact_due() == []  # the clock is still in the first hour
    clock.advance(HOUR)
    [first] = sink.compact_due()  # hour 22 is over and closed; hour 23 is still open
    assert first.parent == tmp_path / "2023-11-14" / "orderbook" / "update" and first.name.startswith("22.")
    table = pq.read_table(first)
    assert table.schema.equals(schema_of("orderbook/update"))
    rows = table.to_pylist()
    assert [r["nonce"] for r in rows] == [1, 2]
    assert rows[0]["bids"] == [{"price": Decimal("100.5"), "size": Decimal(1)}, {"price": Decimal(99), "size": Decimal(0)}]
    assert rows[0]["asks"][0]["price"] == Decimal("1E-8")
    assert rows[0]["recv_ts"] == T0 and rows[0]["trace_id"] == rows[0]["id"]
    assert not list(first.parent.glob("22.jsonl*"))
    sink.close()
    clock.advance(HOUR)
    [second] = sink.compact_due()
    assert [r["nonce"] for r in pq.read_table(second).to_pylist()] == [3]
    try:
        import duckdb  # type: ignore[import-not-found]
    except ImportError:
        return
    assert duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/*/*/*/*.parquet')").fetchone() == (3,)


def test_all_datasets_roundtrip(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock)
    [tick] = parse_ticker24h({"data": [{"market": "ETH-EUR", "open": None, "high": "2", "low": "1", "last": "1.5",
                                        "volume": "3", "volumeQuote": "4.5", "bid": "1", "bidSize": "1", "ask": "2",
                                        "askSize": "1", "timestamp": T0}]}, "t")
    [c] = parse_candle_event({"market": "BTC-EUR", "interval": "1m", "candle": [[T0, "1", "2", "0.5", "1.5", "10"]]})
    sink.write([("ticker24h", T0, encode_data(tick)), ("candles/1m", T0, encode_data(candle_message(c, True, T0, "t")))])
    sink.close()
    paths = sink.compact_due(include_current=True)
    assert len(paths) == 2
    for p in paths:
        kind = "ticker24h" if "ticker24h" in str(p) else "candles/1m"
        t = pq.read_table(p)
        assert t.schema.equals(schema_of(kind))
    rows = {p.parent.name: pq.read_table(p).to_pylist()[0] for p in paths}
    assert rows["ticker24h"]["open"] is None and rows["ticker24h"]["volume_quote"] == Decimal("4.5")
    assert rows["1m"]["closed"] is True and rows["1m"]["low"] == Decimal("0.5")


def test_torn_line_is_skipped_and_appends_continue_on_a_new_line(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock)
    sink.write([("orderbook/update", T0, _delta(1))])
    path = sink.path_for("orderbook/update", T0)
    sink.close()
    with open(path, "ab") as fh:
        fh.write(b'{"recv_ts":1,"msg":{"id":"torn')  # killed mid-write
    sink2 = ParquetSink(tmp_path, clock)
    sink2.write([("orderbook/update", T0, _delta(2))])
    sink2.close()
    [p] = sink2.compact_due(include_current=True)
    assert [r["nonce"] for r in pq.read_table(p).to_pylist()] == [1, 2]
    assert sink2.bad_lines == 1


def test_crash_between_rename_and_delete_does_not_duplicate(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock)
    sink.write([("orderbook/update", T0, _delta(1))])
    sink.close()
    [p] = sink.compact_due(include_current=True)
    # Simulate a crash after the parquet rename but before the .compacting file was deleted.
    leftover = p.with_name(p.name.replace(".parquet", ".jsonl.compacting"))
    leftover.write_bytes(b'{"recv_ts":1,"msg":{}}\n')
    assert sink.compact_due() == [p]
    assert not leftover.exists()
    assert len(pq.read_table(p)) == 1
    # A crash while writing the tmp file: only *.parquet is final, the job is redone.
    sink.write([("orderbook/update", T0, _delta(2))])
    sink.close()
    path = sink.path_for("orderbook/update", T0)
    compacting = path.with_name("22.5.jsonl.compacting")
    path.rename(compacting)
    compacting.with_name("22.5.parquet.tmp").write_bytes(b"garbage")
    [q] = sink.compact_due()
    assert q.name == "22.5.parquet" and len(pq.read_table(q)) == 1


def test_retention_deletes_old_days(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock, retention_days=2)
    for d in range(5):
        sink.write([("orderbook/update", T0 - d * 24 * HOUR, _delta(d + 1))])
    sink.close()
    removed = sink.apply_retention()
    assert sorted(p.name for p in removed) == ["2023-11-10", "2023-11-11"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2023-11-12", "2023-11-13", "2023-11-14"]


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError):
        schema_of("nope")
