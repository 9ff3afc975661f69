"""The Parquet sink: rows to JSONL as they arrive, compacted per hour into Parquet (DESIGN §6).

Layout: ``${PARQUET_DIR}/YYYY-MM-DD/<kind>/`` (UTC, by the time a row was received), where
kind is ``ticker24h``, ``orderbook/top``, ``orderbook/update``, ``orderbook/snapshot`` or
``candles/<interval>``. In each folder:

- ``HH.jsonl``: the rows of hour HH, one JSON line each: ``{"recv_ts": ms, "msg": {...}}``,
  where ``msg`` is exactly the message as published to its stream;
- ``HH.<part>.parquet``: the compacted rows (zstd, the dataset's explicit schema).

Durability. ``write`` appends the lines and flushes them to the OS before returning; callers
(the ingest emitter) XADD a row only after ``write`` returned, so a row that is in a stream
is in a file the kernel holds, and a SIGKILL of the process loses none of them (``fsync=True``
also survives an OS crash, at a cost). A torn last line (killed mid-write, never XADDed) is
skipped at compaction.

Compaction (an hour is over, the file is no longer written): the JSONL file is first renamed
to ``HH.<part>.jsonl.compacting`` (so a writer that still gets a late row for that hour starts
a fresh ``HH.jsonl``, compacted later as another part), then written to
``HH.<part>.parquet.tmp``, fsynced and renamed to ``HH.<part>.parquet``; only then is the
``.compacting`` file deleted. After a crash at any point, the next ``compact_due`` finishes
the job: a ``.compacting`` file whose parquet exists is deleted, otherwise compacted again.
Readers never see a partial Parquet file (only ``*.parquet`` is final).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.logs import get_logger

log = get_logger(__name__)

DEC = pa.decimal128(38, 18)  # every price/amount: exact; 20 integer digits, 18 decimals
LEVELS = pa.list_(pa.struct([("price", DEC), ("size", DEC)]))
HOUR_MS = 3_600_000
CHUNK_ROWS = 50_000
_HOUR_FILE = re.compile(r"^(\d\d)\.jsonl$")
_COMPACTING = re.compile(r"^(\d\d)\.(\d+)\.jsonl\.compacting$")
_DAY = re.compile(r"^\d{4}-\d\d-\d\d$")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # int, str, dec, bool, levels
    path: tuple[str, ...]  # keys into the row {"recv_ts": .., "msg": {..}}
    nullable: bool = False


_BASE = (
    Column("recv_ts", "int", ("recv_ts",)),
    Column("id", "str", ("msg", "id")),
    Column("ts", "int", ("msg", "ts")),
    Column("src", "str", ("msg", "src")),
    Column("trace_id", "str", ("msg", "trace", "id")),
    Column("trace_ts", "int", ("msg", "trace", "ts")),
)


def _m(name: str, kind: str, nullable: bool = False) -> Column:
    return Column(name, kind, ("msg", name), nullable)


DATASETS: dict[str, tuple[Column, ...]] = {
    "ticker24h": _BASE + (
        _m("market", "str"), *(_m(n, "dec", True) for n in (
            "open", "high", "low", "last", "volume", "volume_quote", "bid", "bid_size", "ask", "ask_size")),
        _m("exchange_ts", "int")),
    "orderbook/top": _BASE + (
        _m("market", "str"), *(_m(n, "dec") for n in ("bid", "bid_size", "ask", "ask_size", "mid", "spread_bps")),
        _m("nonce", "int"), _m("exchange_ts", "int")),
    "orderbook/update": _BASE + (
        _m("market", "str"), _m("nonce", "int"), _m("bids", "levels"), _m("asks", "levels"), _m("exchange_ts", "int")),
    "orderbook/snapshot": _BASE + (
        _m("market", "str"), _m("nonce", "int"), _m("bids", "levels"), _m("asks", "levels"), _m("exchange_ts", "int")),
    "candles": _BASE + (
        _m("market", "str"), _m("interval", "str"), _m("open_ts", "int"),
        *(_m(n, "dec") for n in ("open", "high", "low", "close", "volume")), _m("closed", "bool")),
}

_ARROW = {"int": pa.int64(), "str": pa.string(), "dec": DEC, "bool": pa.bool_(), "levels": LEVELS}


def dataset_of(kind: str) -> str:
    """``candles/1m`` → ``candles``; other kinds are their own dataset."""
    base = kind.split("/", 1)[0] if kind.startswith("candles/") else kind
    if base not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}")
    return base


def schema_of(kind: str) -> pa.Schema:
    cols = DATASETS[dataset_of(kind)]
    return pa.schema([pa.field(c.name, _ARROW[c.kind], nullable=c.nullable) for c in cols])


def day_hour(ms: int) -> tuple[str, int]:
    d = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return d.strftime("%Y-%m-%d"), d.hour


def row_line(recv_ms: int, data: bytes) -> bytes:
    """The JSONL line for one message (``data`` is its JSON, exactly as published)."""
    return b'{"recv_ts":%d,"msg":%s}\n' % (recv_ms, data)


class ParquetSink:
    def __init__(self, root: str | Path, clock: Clock = SYSTEM_CLOCK, retention_days: int = 0,
                 fsync: bool = False) -> None:
        self.root = Path(root)
        self.clock = clock
        self.retention_days = retention_days
        self.fsync = fsync
        self._open: dict[str, tuple[Path, Any]] = {}  # kind → (path, file)
        self._paths: dict[tuple[str, int], Path] = {}
        self._lock = threading.Lock()  # writer (event loop) vs compactor (a worker thread)
        self.rows_written: dict[str, int] = {}
        self.bytes_written: dict[str, int] = {}
        self.bad_lines = 0

    # -- writing ---------------------------------------------------------------------------

    def path_for(self, kind: str, recv_ms: int) -> Path:
        key = (kind, recv_ms // HOUR_MS)
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) > 1000:
                self._paths.clear()
            day, hour = day_hour(recv_ms)
            path = self._paths[key] = self.root / day / kind / f"{hour:02d}.jsonl"
        return path

    def _file(self, kind: str, path: Path) -> Any:
        cur = self._open.get(kind)
        if cur is not None and cur[0] == path:
            return cur[1]
        with self._lock:
            if cur is not None:
                cur[1].close()
                del self._open[kind]
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "ab")
            if fh.tell() > 0:
                with open(path, "rb") as rd:
                    rd.seek(-1, os.SEEK_END)
                    if rd.read(1) != b"\n":
                        fh.write(b"\n")  # a torn line from a killed writer stays on its own line
            self._open[kind] = (path, fh)
            return fh

    def write(self, rows: Iterable[tuple[str, int, bytes]]) -> int:
        """Append (kind, recv_ms, message JSON) rows and flush them to the OS; returns bytes written.

        Returns only once every row is in the kernel: XADD after this, never before."""
        touched: dict[int, Any] = {}
        total = 0
        last_kind, last_path, fh = None, None, None
        for kind, recv_ms, data in rows:
            path = self.path_for(kind, recv_ms)
            if kind != last_kind or path is not last_path:
                fh = self._file(kind, path)
                last_kind, last_path = kind, path
                touched[id(fh)] = fh
            line = row_line(recv_ms, data)
            fh.write(line)  # type: ignore[union-attr]
            total += len(line)
            self.rows_written[kind] = self.rows_written.get(kind, 0) + 1
            self.bytes_written[kind] = self.bytes_written.get(kind, 0) + len(line)
        for f in touched.values():
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        return total

    def close(self) -> None:
        with self._lock:
            for _, fh in self._open.values():
                fh.flush()
                fh.close()
            self._open.clear()

    # -- compaction ------------------------------------------------------------------------

    def _hour_end_ms(self, path: Path) -> int:
        day = path.parent
        while not _DAY.match(day.name):
            day = day.parent
        start = datetime.strptime(day.name, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        hour = int(path.name[:2])
        return int((start + timedelta(hours=hour + 1)).timestamp() * 1000)

    def _kind_of(self, path: Path) -> str:
        rel = path.parent.relative_to(self.root)
        return "/".join(rel.parts[1:])

    def compact_due(self, include_current: bool = False) -> list[Path]:
        """Compact every JSONL file whose hour is over (all files not open when ``include_current``).
        Safe to run in a worker thread while ``write`` runs in the event loop."""
        now = self.clock.now_ms()
        done: list[Path] = []
        if not self.root.exists():
            return done
        for path in sorted(self.root.glob("*/**/*.jsonl.compacting")):
            done.extend(self._finish(path))
        for path in sorted(self.root.glob("*/**/*.jsonl")):
            m = _HOUR_FILE.match(path.name)
            if not m or not _DAY.match(path.relative_to(self.root).parts[0]):
                continue
            if not include_current and self._hour_end_ms(path) > now:
                continue
            with self._lock:
                if any(p == path for p, _ in self._open.values()):
                    if not include_current:
                        continue
                    kind = self._kind_of(path)
                    self._open.pop(kind)[1].close()
                part = path.with_name(f"{m.group(1)}.{self.clock.now_ms()}{os.getpid() % 1000:03d}.jsonl.compacting")
                os.replace(path, part)
            done.extend(self._finish(part))
        return done

    def _finish(self, compacting: Path) -> list[Path]:
        m = _COMPACTING.match(compacting.name)
        if not m:
            return []
        final = compacting.with_name(f"{m.group(1)}.{m.group(2)}.parquet")
        if not final.exists():
            kind = self._kind_of(compacting)
            tmp = final.with_name(final.name + ".tmp")
            rows = self._write_parquet(compacting, tmp, kind)
            if rows == 0:
                tmp.unlink(missing_ok=True)
                compacting.unlink()
                return []
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            log.info("parquet_compacted", path=str(final), rows=rows, kind=kind)
        compacting.unlink()
        return [final]

    def _write_parquet(self, src: Path, dst: Path, kind: str) -> int:
        schema = schema_of(kind)
        cols = DATASETS[dataset_of(kind)]
        rows = 0
        with pq.ParquetWriter(dst, schema, compression="zstd") as writer:
            for chunk in self._chunks(src):
                writer.write_table(build_table(chunk, cols, schema))
                rows += len(chunk)
        with open(dst, "rb+") as fh:
            os.fsync(fh.fileno())
        return rows

    def _chunks(self, src: Path) -> Iterator[list[dict[str, Any]]]:
        chunk: list[dict[str, Any]] = []
        with open(src, "rb") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.bad_lines += 1  # a torn line of a killed writer: it was never XADDed
                    log.warning("jsonl_line_skipped", path=str(src), bytes=len(line))
                    continue
                chunk.append(row)
                if len(chunk) >= CHUNK_ROWS:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    # -- retention -------------------------------------------------------------------------

    def apply_retention(self) -> list[Path]:
        """Delete day folders older than ``retention_days`` (0 keeps everything)."""
        if self.retention_days <= 0 or not self.root.exists():
            return []
        today = datetime.fromtimestamp(self.clock.now_ms() / 1000, tz=timezone.utc).date()
        cutoff = (today - timedelta(days=self.retention_days)).strftime("%Y-%m-%d")
        removed = []
        for day in sorted(self.root.iterdir()):
            if day.is_dir() and _DAY.match(day.name) and day.name < cutoff:
                shutil.rmtree(day)
                removed.append(day)
                log.info("parquet_day_deleted", path=str(day), retention_days=self.retention_days)
        return removed


def _get(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = row
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def build_table(rows: list[dict[str, Any]], cols: tuple[Column, ...], schema: pa.Schema) -> pa.Table:
    """Rows → a table of ``schema``. Decimal strings are cast to decimal128 in Arrow (exact:
    a value that does not fit raises rather than rounds)."""
    arrays = []
    for col, field in zip(cols, schema):
        values = [_get(r, col.path) for r in rows]
        if col.kind == "dec":
            arrays.append(pc.cast(pa.array(values, pa.string()), DEC))
        elif col.kind == "levels":
            offsets = [0]
            prices: list[str] = []
            sizes: list[str] = []
            for levels in values:
                for lvl in levels or ():
                    prices.append(lvl[0])
                    sizes.append(lvl[1])
                offsets.append(len(prices))
            inner = pa.StructArray.from_arrays(
                [pc.cast(pa.array(prices, pa.string()), DEC), pc.cast(pa.array(sizes, pa.string()), DEC)],
                names=["price", "size"])
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner).cast(LEVELS))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
