"""The Parquet sink: JSONL rows, hourly compaction with explicit schemas, torn lines, retention;
every file read back with pyarrow and DuckDB; compaction in blocks through Arrow's JSON reader."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradestack.bitvavo.book import mid_and_spread_bps
from tradestack.bitvavo.parse import (
    candle_message,
    encode_book_delta,
    encode_book_top,
    levels_json,
    parse_book_event,
    parse_candle_event,
    parse_ticker24h,
)
from tradestack.clock import FakeClock
from tradestack.messages import encode_data
from tradestack.storage import DATASETS, ParquetSink, _json_schema, build_table, dataset_of, schema_of, table_from_json

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


def test_a_row_that_fits_no_schema_is_set_aside_and_the_hour_still_compacts(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock)
    poison = orjson.loads(_delta(2))
    poison["bids"] = [["not-a-price", "1"]]  # valid JSON, no decimal
    sink.write([("orderbook/update", T0, _delta(1)), ("orderbook/update", T0, orjson.dumps(poison)),
                ("orderbook/update", T0, _delta(3))])
    sink.close()
    [p] = sink.compact_due(include_current=True)
    assert [r["nonce"] for r in pq.read_table(p).to_pylist()] == [1, 3]
    assert sink.rejected_rows == 1
    [kept] = [orjson.loads(line) for line in (p.parent / "22.rejected.jsonl").read_bytes().splitlines()]
    assert kept["row"]["msg"] == poison and kept["error"]
    assert sink.compact_due(include_current=True) == []  # nothing left to fail again


def test_a_row_missing_a_required_field_is_set_aside_not_failing_the_hour(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock)
    missing = orjson.loads(_delta(2))
    del missing["nonce"]  # valid JSON, every type right: Arrow reads it as a null in a non-nullable column
    sink.write([("orderbook/update", T0, _delta(1)), ("orderbook/update", T0, orjson.dumps(missing)),
                ("orderbook/update", T0, _delta(3))])
    sink.close()
    [p] = sink.compact_due(include_current=True)
    assert [r["nonce"] for r in pq.read_table(p).to_pylist()] == [1, 3]
    assert sink.rejected_rows == 1 and sink.fallback_blocks == 1


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


# -- every dataset, read back with pyarrow and DuckDB ------------------------------------------------


def _every_kind() -> list[tuple[str, int, bytes]]:
    """A row or two of every dataset, with the awkward values: nulls, an empty book side, the
    smallest and largest decimals the schema holds, a missing optional key."""
    [tick] = parse_ticker24h({"data": [{"market": "ETH-EUR", "open": None, "high": "2", "low": "1", "last": "1.5",
                                        "volume": "3", "volumeQuote": "4.5", "bid": "1", "bidSize": "1", "ask": "2",
                                        "askSize": "1", "timestamp": T0}]}, "t")
    wide = parse_book_event({"market": "BTC-EUR", "nonce": 7, "bids": [["99999999999999999999.999999999999999999", "1"]],
                             "asks": [], "timestamp": T0 * 1_000_000})
    top = (Decimal("100.5"), Decimal("0.00000001"), Decimal("100.6"), Decimal("3"))
    mid, bps = mid_and_spread_bps(top[0], top[2])
    snapshot = {"id": "s1", "ts": T0, "src": "t", "trace": {"id": "s1", "ts": T0}, "v": 1, "market": "BTC-EUR",
                "nonce": 9, "bids": levels_json([(Decimal("100.5"), Decimal("2"))]), "asks": [], "exchange_ts": T0}
    [c] = parse_candle_event({"market": "BTC-EUR", "interval": "1m", "candle": [[T0, "1", "2", "0.5", "1.5", "10"]]})
    return [
        ("ticker24h", T0, encode_data(tick)),
        ("orderbook/update", T0, _delta(1)),
        ("orderbook/update", T0 + 1, encode_book_delta(wide, "t")[1]),
        ("orderbook/top", T0, encode_book_top("BTC-EUR", top, mid, bps, 7, T0, "trace-1", "t")[1]),
        ("orderbook/snapshot", T0, orjson.dumps(snapshot)),
        ("candles/1m", T0, encode_data(candle_message(c, True, T0, "t"))),
    ]


def _duck_type(t: pa.DataType) -> str:
    """The DuckDB type a Parquet column of Arrow type ``t`` must read back as."""
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f"{f.name} {_duck_type(f.type)}" for f in t) + ")"
    raise AssertionError(f"no DuckDB type for {t}")


def _kind(root: Path, p: Path) -> str:
    return "/".join(p.parent.relative_to(root).parts[1:])


def test_every_parquet_file_reads_back_with_duckdb(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    rows = _every_kind()
    sink = ParquetSink(tmp_path, FakeClock(T0))
    sink.write(rows)
    sink.close()
    files = sink.compact_due(include_current=True)
    assert sorted(_kind(tmp_path, p) for p in files) == sorted({k for k, _, _ in rows})
    con = duckdb.connect()
    for p in files:
        kind = _kind(tmp_path, p)
        schema = schema_of(kind)
        table = pq.read_table(p)
        assert table.schema.equals(schema), kind
        described = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(p)]).fetchall()
        assert [(name, type_) for name, type_, *_ in described] == [(f.name, _duck_type(f.type)) for f in schema], kind
        got = con.execute("SELECT * FROM read_parquet(?)", [str(p)]).fetchall()
        assert len(got) == sum(1 for k, _, _ in rows if k == kind)
        assert got == [tuple(r.values()) for r in table.to_pylist()], kind  # the same values as pyarrow reads
    # ... and they are the values written (DuckDB's Decimals carry the 18-digit scale; equal as numbers).
    glob = f"{tmp_path}/*/orderbook/update/*.parquet"
    [(bids,)] = con.execute(f"SELECT bids FROM read_parquet('{glob}') WHERE nonce = 7").fetchall()
    assert bids == [{"price": Decimal("99999999999999999999.999999999999999999"), "size": Decimal(1)}]
    [(open_, vq)] = con.execute(f"SELECT open, volume_quote FROM read_parquet('{tmp_path}/*/ticker24h/*.parquet')").fetchall()
    assert open_ is None and vq == Decimal("4.5")
    [(n,)] = con.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/**/*.parquet', union_by_name = true)").fetchall()
    assert n == len(rows)


# -- compaction in blocks (Arrow's JSON reader; the line-by-line path only for a bad block) --------


def test_compaction_in_blocks_loses_no_row_and_skips_only_the_torn_line(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock, block_bytes=4096)  # ~12 rows a block, one row group each
    sink.write([("orderbook/update", T0, _delta(n)) for n in range(1, 501)])
    path = sink.path_for("orderbook/update", T0)
    sink.close()
    with open(path, "ab") as fh:
        fh.write(b'{"recv_ts":1,"msg":{"id":"torn')  # killed mid-write, mid-file once appends resume
    sink2 = ParquetSink(tmp_path, clock, block_bytes=4096)
    sink2.write([("orderbook/update", T0, _delta(n)) for n in range(501, 1001)])
    sink2.close()
    [p] = sink2.compact_due(include_current=True)
    meta = pq.read_metadata(p)
    assert meta.num_row_groups > 50 and meta.num_rows == 1000
    rows = pq.read_table(p).to_pylist()
    assert [r["nonce"] for r in rows] == list(range(1, 1001))
    assert rows[0]["bids"] == [{"price": Decimal("100.5"), "size": Decimal(1)}, {"price": Decimal(99), "size": Decimal(0)}]
    assert sink2.bad_lines == 1 and sink2.fallback_blocks == 1  # only the block with the torn line


def test_a_line_longer_than_a_block_is_read_whole(tmp_path: Path) -> None:
    levels = [[f"{100 + i}.5", "1"] for i in range(200)]  # a ~4 KB snapshot row
    snap = {"id": "s", "ts": T0, "src": "t", "trace": {"id": "s", "ts": T0}, "market": "BTC-EUR", "nonce": 1,
            "bids": levels, "asks": levels, "exchange_ts": T0}
    sink = ParquetSink(tmp_path, FakeClock(T0), block_bytes=256)
    sink.write([("orderbook/snapshot", T0, orjson.dumps(snap))] * 3)
    sink.close()
    [p] = sink.compact_due(include_current=True)
    rows = pq.read_table(p).to_pylist()
    assert len(rows) == 3 and all(len(r["bids"]) == 200 for r in rows) and sink.fallback_blocks == 0


def _both_ways(kind: str, rows: list[tuple[int, bytes]]) -> tuple[pa.Table, pa.Table]:
    cols = DATASETS[dataset_of(kind)]
    schema = schema_of(kind)
    lines = b"".join(b'{"recv_ts":%d,"msg":%s}\n' % (ms, data) for ms, data in rows)
    parsed = pj.read_json(pa.BufferReader(lines), parse_options=pj.ParseOptions(
        explicit_schema=_json_schema(cols), unexpected_field_behavior="ignore"))
    return table_from_json(parsed, cols, schema), build_table([orjson.loads(x) for x in lines.splitlines()], cols, schema)


def test_arrow_reader_and_line_path_agree_on_every_dataset() -> None:
    by_kind: dict[str, list[tuple[int, bytes]]] = {}
    for kind, ms, data in _every_kind():
        by_kind.setdefault(kind, []).append((ms, data))
    for kind, rows in by_kind.items():
        fast, slow = _both_ways(kind, rows)
        assert fast.schema.equals(schema_of(kind)) and fast.equals(slow), kind


_dec = st.integers(0, 18).flatmap(  # any decimal of the schema: up to 20 integer digits, 18 decimals
    lambda scale: st.builds(lambda i, f: f"{i}.{f:0{scale}d}" if scale else str(i),
                            st.integers(0, 10**20 - 1), st.integers(0, 10**scale - 1)))
_side = st.one_of(st.none(), st.lists(st.tuples(_dec, _dec).map(list), max_size=4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_side, _side), min_size=1, max_size=20))
def test_arrow_reader_matches_line_path_for_any_levels(sides: list[tuple[Any, Any]]) -> None:
    rows = []
    for n, (bids, asks) in enumerate(sides):
        msg: dict[str, Any] = {"id": f"d{n}", "ts": T0, "src": "t", "trace": {"id": f"d{n}", "ts": T0}, "v": 1,
                               "market": "BTC-EUR", "nonce": n, "exchange_ts": T0}
        if bids is not None:
            msg["bids"] = bids
        if asks is not None:
            msg["asks"] = asks
        rows.append((T0 + n, orjson.dumps(msg)))
    fast, slow = _both_ways("orderbook/update", rows)
    assert fast.equals(slow)
