"""The ``trading`` dataset of the Parquet sink: the trading processes' own messages (decisions,
intents, execution reports, events, PnL snapshots) through ``TradingArchive``, compacted with the
envelope as columns and the message JSON, byte for byte as published, in ``msg``."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.core import T0, report, signal
from tradestack import streams
from tradestack.clock import FakeClock
from tradestack.messages import (
    DecisionMade,
    EntryIntent,
    FillInfo,
    GuardCheck,
    Message,
    MessageFactory,
    OrderExecuted,
    PnlSnapshotTaken,
    Sizing,
    TradingEvent,
    decode,
    encode,
    encode_data,
)
from tradestack.storage import (
    DATASETS,
    TRADING_KINDS,
    ParquetSink,
    TradingArchive,
    dataset_of,
    schema_of,
    trading_kind,
)

HOUR = 3_600_000
DAY = "2023-11-14"  # T0 is 22:13:20 UTC
CLOCK_T = FakeClock(T0)
CORE = MessageFactory("trading_core", CLOCK_T)


def _checks() -> list[GuardCheck]:
    return [GuardCheck(name="kill_switch", passed=True, value="off", limit="off"),
            GuardCheck(name="max_exposure", passed=True, value="120.50", limit="1000"),
            GuardCheck(name="spread", passed=False, value="31.2", limit="25", reason="spread_too_wide")]


def _sizing() -> Sizing:
    return Sizing(equity=Decimal("1000"), risk_mode="percent", risk_value=Decimal("0.5"), risk_eur=Decimal("5"),
                  entry_price=Decimal("60000"), stop_price=Decimal("59100"), stop_distance=Decimal("900"),
                  fee_rate=Decimal("0.0025"), loss_per_unit=Decimal("1197.75"), raw_size=Decimal("0.00417449"),
                  capped_size=Decimal("0.00417449"), capped_by=None, rounded_size=Decimal("0.00417449"))


def _decision(i: int = 0, accepted: bool = True) -> DecisionMade:
    sig = signal(i)
    return CORE.child(sig, DecisionMade, signal_id=sig.id, market=sig.market, strategy=sig.strategy,
                      strategy_params=dict(sig.params), side=sig.side, ref_price=sig.ref_price, atr=sig.atr,
                      accepted=accepted, reasons=[] if accepted else ["spread_too_wide"], checks=_checks(),
                      sizing=_sizing() if accepted else None, stop_price=Decimal("59100"),
                      take_profit_price=Decimal("61800"), intent_id="intent-1" if accepted else None, mode="paper")


def _intent(decision: DecisionMade) -> EntryIntent:
    return CORE.child(decision, EntryIntent, decision_id=decision.id, signal_id=decision.signal_id,
                      market=decision.market, side="buy", order_type="market", amount=Decimal("0.00417449"),
                      price=None, ref_price=Decimal("60000"), stop_price=Decimal("59100"),
                      take_profit_price=Decimal("61800"), trailing_distance=Decimal("900"), time_stop_secs=3600,
                      strategy="momentum", strategy_params={"fast": "12", "slow": "26"}, checks=_checks(),
                      sizing=_sizing(), mode="paper")


def _execution(intent: EntryIntent) -> OrderExecuted:
    base = report(intent.id, "BTC-EUR", "buy", "filled", "0.00417449", "250.4694", fee="0.62617350")
    fills = [FillInfo(fill_id="f1", ts=T0 + 5, amount=Decimal("0.002"), price=Decimal("60000"), taker=True,
                      fee=Decimal("0.3"), fee_currency="EUR"),
             FillInfo(fill_id="f2", ts=T0 + 6, amount=Decimal("0.00217449"), price=Decimal("60001"), taker=True,
                      fee=None, fee_currency=None)]
    return OrderExecuted.model_validate({**base.model_dump(), "position_id": intent.id, "purpose": "entry",
                                         "order_type": "market", "amount": Decimal("0.00417449"), "fills": fills,
                                         "exchange_ts": T0 + 6})


def _event() -> TradingEvent:
    return TradingEvent(id="ev-1", ts=T0, src="trading_core", trace=signal().trace, kind="kill_switch",
                        severity="critical", message="kill switch on — €0 exposure allowed", details={"by": "operator"})


def _pnl() -> PnlSnapshotTaken:
    return PnlSnapshotTaken(id="pnl-1", ts=T0, src="pnl", trace=signal().trace, equity=Decimal("1000.12"),
                            realized=Decimal("-0.5"), unrealized=Decimal("0.00000001"), fees=Decimal("0.62617350"),
                            exposure=Decimal("250.47"), positions={"BTC-EUR": Decimal("0.00417449")})


def _every_message() -> list[tuple[str, Message]]:
    decision = _decision()
    intent = _intent(decision)
    return [(streams.ORDERS_SIGNALS, decision), (streams.ORDERS_SIGNALS, _decision(1, accepted=False)),
            (streams.ORDERS_SHADOW, intent), (streams.ORDERS_EXECUTED, _execution(intent)),
            (streams.TRADING_EVENTS, _event()), (streams.PNL_SNAPSHOTS, _pnl())]


def _by_kind(root: Path, files: list[Path]) -> dict[str, pa.Table]:
    out = {}
    for p in files:
        kind = "/".join(p.parent.relative_to(root).parts[1:])
        assert kind not in out, kind
        out[kind] = pq.read_table(p)
    return out


def test_kinds_map_to_the_trading_dataset() -> None:
    assert TRADING_KINDS == {"orders:signals": "trading/decisions", "orders:shadow": "trading/intents",
                             "orders:executed": "trading/executions", "trading:events": "trading/events",
                             "pnl:snapshots": "trading/pnl"}
    for kind in TRADING_KINDS.values():
        assert dataset_of(kind) == "trading"
    assert dataset_of("candles/1m") == "candles" and dataset_of("ticker24h") == "ticker24h"
    schema = schema_of("trading/decisions")
    assert [(f.name, f.type, f.nullable) for f in schema] == [
        ("recv_ts", pa.int64(), False), ("id", pa.string(), False), ("ts", pa.int64(), False),
        ("src", pa.string(), False), ("trace_id", pa.string(), False), ("trace_ts", pa.int64(), False),
        ("type", pa.string(), False), ("market", pa.string(), True), ("msg", pa.string(), False)]
    assert "trading" in DATASETS


def test_every_trading_message_compacts_and_reads_back_equal(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    archive = TradingArchive(ParquetSink(tmp_path, clock))
    items = _every_message()
    for n, (stream, msg) in enumerate(items):
        clock.advance(1)
        archive.record(stream, msg, encode(msg)[b"data"] if n % 2 else None)  # the published bytes, or made here
    # the JSONL row: recv_ts, type, then the message exactly as published
    first = (tmp_path / DAY / "trading" / "decisions" / "22.jsonl").read_bytes().splitlines()[0]
    assert first == b'{"recv_ts":%d,"type":"decision","msg":%s}' % (T0 + 1, encode_data(items[0][1]))
    assert archive.compact_due() == []  # the hour is not over
    clock.advance(HOUR)
    files = archive.compact_due()
    tables = _by_kind(tmp_path, files)
    assert sorted(tables) == sorted(TRADING_KINDS.values())
    assert all(p.name.startswith("22.") and p.parent.parent.parent.name == DAY for p in files)
    assert not list(tmp_path.glob("*/trading/*/*.jsonl*"))
    for stream, msg in items:
        kind = TRADING_KINDS[stream]
        assert tables[kind].schema.equals(schema_of(kind)), kind
        assert msg.id in tables[kind].column("id").to_pylist(), kind
    rows = {r["id"]: r for t in tables.values() for r in t.to_pylist()}
    assert len(rows) == len(items)
    for n, (_, msg) in enumerate(items):
        row = rows[msg.id]
        assert row["msg"].encode() == encode_data(msg)  # byte for byte as published
        assert decode({"type": row["type"], "data": row["msg"]}) == msg
        assert type(msg).model_validate_json(row["msg"]) == msg
        assert row["type"] == msg.TYPE
        assert row["market"] == getattr(msg, "market", None)
        assert (row["recv_ts"], row["ts"], row["src"]) == (T0 + n + 1, msg.ts, msg.src)
        assert (row["trace_id"], row["trace_ts"]) == (msg.trace.id, msg.trace.ts)
    assert [r["type"] for r in tables["trading/intents"].to_pylist()] == ["intent.entry"]
    assert rows["ev-1"]["market"] is None and rows["pnl-1"]["market"] is None
    execution = orjson.loads(rows[items[3][1].id]["msg"])
    assert [f["fill_id"] for f in execution["fills"]] == ["f1", "f2"] and execution["fills"][1]["fee"] is None
    assert "€" in rows["ev-1"]["msg"]  # UTF-8 kept as published, not re-escaped
    assert archive.sink.fallback_blocks == 0 and archive.sink.bad_lines == 0
    # The files were still open (no row since): compacted all the same, and the next rows reopen.
    archive.record(streams.ORDERS_SIGNALS, items[1][1])  # 23:13: the next hour
    archive.record(streams.ORDERS_SIGNALS, items[0][1], recv_ms=T0)  # late, for hour 22: another part
    clock.advance(1)
    [late] = archive.compact_due()
    assert late.name.startswith("22.") and late not in files
    assert [r["id"] for r in pq.read_table(late).to_pylist()] == [items[0][1].id]
    assert (tmp_path / DAY / "trading" / "decisions" / "23.jsonl").exists()


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    archive = TradingArchive(ParquetSink(tmp_path, clock))
    d0, d1, d2 = _decision(0), _decision(1, accepted=False), _decision(2)
    archive.record(streams.ORDERS_SIGNALS, d0)
    archive.record(streams.ORDERS_SIGNALS, d1)
    archive.close()
    path = tmp_path / DAY / "trading" / "decisions" / "22.jsonl"
    line = path.read_bytes().splitlines()[-1]
    with open(path, "ab") as fh:  # killed mid-write: the row of a message never published
        fh.write(line[: len(line) - 3])
    clock.advance(HOUR)
    sink = ParquetSink(tmp_path, clock)
    [p] = sink.compact_due()
    assert [r["id"] for r in pq.read_table(p).to_pylist()] == [d0.id, d1.id]
    assert sink.bad_lines == 1
    # another process (trading:events has several writers) killed mid-line while this one has
    # the file open: the next row is glued to the torn one, and kept
    archive2 = TradingArchive(ParquetSink(tmp_path, clock))
    archive2.record(streams.ORDERS_SIGNALS, d2, recv_ms=T0)
    with open(path, "ab") as fh:
        fh.write(b'{"recv_ts":1,"type":"decision","msg":{"id":"torn","checks":[{"name"')
    archive2.record(streams.ORDERS_SIGNALS, d0, recv_ms=T0)
    archive2.close()
    clock.advance(1)  # another part name (the compaction time names the part)
    [q] = archive2.compact_due()
    rows = pq.read_table(q).to_pylist()
    assert [r["id"] for r in rows] == [d2.id, d0.id] and rows[1]["msg"].encode() == encode_data(d0)
    assert archive2.sink.bad_lines == 1


def test_unknown_stream_is_rejected_and_writes_nothing(tmp_path: Path) -> None:
    archive = TradingArchive(ParquetSink(tmp_path, FakeClock(T0)))
    with pytest.raises(ValueError, match="bitvavo:book"):
        archive.record(streams.BOOK, _decision())
    with pytest.raises(ValueError):
        trading_kind("signals:baseline")
    with pytest.raises(ValueError):  # a batch with one bad stream: none of it
        archive.record_many([(streams.ORDERS_SIGNALS, _decision(), None), ("nope", _pnl(), None)])
    with pytest.raises(ValueError):  # market-data rows have no message type: not through write
        archive.sink.write([("trading/decisions", T0, encode_data(_decision()))])
    assert not tmp_path.exists() or not list(tmp_path.rglob("*.jsonl"))


def test_record_many_and_blocks(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    archive = TradingArchive(ParquetSink(tmp_path, clock, block_bytes=8192))  # a few rows a row group
    decisions = [_decision(i, accepted=i % 3 == 0) for i in range(200)]
    assert archive.record_many([(streams.ORDERS_SIGNALS, d, None) for d in decisions]) > 0
    archive.close()
    [p] = archive.compact_due(include_current=True)
    assert pq.read_metadata(p).num_row_groups > 10
    rows = pq.read_table(p).to_pylist()
    assert [r["id"] for r in rows] == [d.id for d in decisions]
    assert all(r["msg"].encode() == encode_data(d) for r, d in zip(rows, decisions, strict=True))


def test_a_row_of_another_shape_still_converts_and_a_poison_row_is_set_aside(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sink = ParquetSink(tmp_path, clock)
    d0, d1 = _decision(0), _decision(1)
    reordered = b'{"msg":%s,"type":"decision","recv_ts":%d}\n' % (encode_data(d1), T0)  # msg not last: re-serialized
    no_id = orjson.loads(encode_data(d0))
    del no_id["id"]
    poison = b'{"recv_ts":%d,"type":"decision","msg":%s}\n' % (T0, orjson.dumps(no_id))
    sink.write_lines([("trading/decisions", T0, b'{"recv_ts":%d,"type":"decision","msg":%s}\n' % (T0, encode_data(d0))),
                      ("trading/decisions", T0, reordered), ("trading/decisions", T0, poison)])
    sink.close()
    [p] = sink.compact_due(include_current=True)
    rows = pq.read_table(p).to_pylist()
    assert [r["id"] for r in rows] == [d0.id, d1.id]
    assert decode({"type": "decision", "data": rows[1]["msg"]}) == d1
    assert sink.rejected_rows == 1
    [kept] = [orjson.loads(x) for x in (p.parent / "22.rejected.jsonl").read_bytes().splitlines()]
    assert kept["row"] == {"recv_ts": T0, "type": "decision", "msg": no_id}


def test_replayed_rows_dedupe_by_id_in_duckdb(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    clock = FakeClock(T0)
    archive = TradingArchive(ParquetSink(tmp_path, clock))
    accepted, blocked = _decision(0), _decision(1, accepted=False)
    archive.record(streams.ORDERS_SIGNALS, accepted)
    archive.record(streams.ORDERS_SIGNALS, blocked)
    clock.advance(10)
    archive.record(streams.ORDERS_SIGNALS, accepted)  # crash before the commit, input replayed: same id
    archive.record(streams.ORDERS_SHADOW, _intent(accepted))
    clock.advance(HOUR)
    archive.compact_due()
    con = duckdb.connect()
    glob = f"{tmp_path}/*/trading/decisions/*.parquet"
    assert con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone() == (3,)
    got = con.execute(f"""SELECT id, recv_ts, json_extract_string(msg, '$.reasons[0]'), msg->>'$.accepted',
                                 json_extract_string(msg, '$.checks[2].reason')
                          FROM read_parquet('{glob}')
                          QUALIFY row_number() OVER (PARTITION BY id ORDER BY recv_ts) = 1 ORDER BY id""").fetchall()
    assert sorted(got) == sorted([(accepted.id, T0, None, "true", "spread_too_wide"),
                                  (blocked.id, T0, "spread_too_wide", "false", "spread_too_wide")])
    [(n,)] = con.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/*/trading/*/*.parquet')").fetchall()
    assert n == 4


def test_stream_entries_are_archived_undecoded_as_record_would_and_a_non_message_is_skipped(tmp_path: Path) -> None:
    """record_entries (the archive loop's raw batch): the same JSONL rows as record() of the decoded
    messages, byte for byte, in one flush; an entry that is not a message is skipped, not written."""
    clock = FakeClock(T0)
    items = [(s, m) for s, m in _every_message() if s == streams.ORDERS_SIGNALS][:3]
    assert items
    raw_dir, decoded_dir = tmp_path / "raw", tmp_path / "decoded"
    raw = TradingArchive(ParquetSink(raw_dir, clock))
    entries = [(f"{i}-0", encode(m)) for i, (_, m) in enumerate(items)]
    entries.insert(1, ("9-0", {b"type": b"decision", b"data": b"not json"}))
    entries.insert(2, ("9-1", {b"data": b"{}"}))
    assert raw.record_entries(streams.ORDERS_SIGNALS, entries) == (len(items), 2)
    decoded = TradingArchive(ParquetSink(decoded_dir, clock))
    for stream, msg in items:
        decoded.record(stream, msg)
    raw.close()
    decoded.close()
    rel = Path(DAY) / "trading" / "decisions" / "22.jsonl"
    assert (raw_dir / rel).read_bytes() == (decoded_dir / rel).read_bytes()
    with pytest.raises(ValueError):
        raw.record_entries("bitvavo:book", entries)
