"""The Parquet sink: rows to JSONL as they arrive, compacted per hour into Parquet (DESIGN §6).

Layout: ``${PARQUET_DIR}/YYYY-MM-DD/<kind>/`` (UTC, by the time a row was received), where
kind is ``ticker24h``, ``orderbook/top``, ``orderbook/update``, ``orderbook/snapshot``,
``candles/<interval>`` (market data, ingest) or ``trading/<what>`` (the trading processes' own
messages, see ``TradingArchive``). In each folder:

- ``HH.jsonl``: the rows of hour HH, one JSON line each: ``{"recv_ts": ms, "msg": {...}}``,
  where ``msg`` is exactly the message as published to its stream (a ``trading/*`` row also
  names the message type: ``{"recv_ts": ms, "type": "decision", "msg": {...}}``);
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

Cost (bench/storage.py). The file is converted in blocks of ``BLOCK_BYTES`` (one row group
each) by Arrow's JSON reader and compute kernels, which release the GIL: the compactor's memory
is bounded by the block, not the hour (an hour of the full book feed is ~11M rows, ~4 GB of
JSONL), and the event loop beside it keeps running. A block Arrow refuses (a torn line) is
converted line by line instead, with the same values.

Trading messages (dataset ``trading``: decisions, intents, execution reports, events, PnL
snapshots) differ in shape from one type to the next (nested ``checks``, ``fills``, ``sizing``),
so their schema is the envelope (the base columns, ``type``, ``market``) plus ``msg``: the whole
message JSON as a string, byte for byte as published (a ``json`` column; DuckDB's
``json_extract`` reads any field of it). Arrow's JSON reader cannot read an object as its text,
so these files are always converted line by line (orjson; the ``msg`` text is the slice of the
line it was written as, not a re-serialization), in blocks of at most ``JSON_BLOCK_BYTES``: memory
stays bounded by the block, and at a few rows a second an hour is a few MB, compacted in
milliseconds. Market-data kinds never take that path.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from tradestack import streams
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.logs import get_logger

if TYPE_CHECKING:  # not imported at run time: a compactor of market data needs no pydantic
    from tradestack.messages import Message

log = get_logger(__name__)

DEC = pa.decimal128(38, 18)  # every price/amount: exact; 20 integer digits, 18 decimals
LEVELS = pa.list_(pa.struct([("price", DEC), ("size", DEC)]))
HOUR_MS = 3_600_000
# JSONL bytes parsed at a time at compaction, one Parquet row group each (~45k book deltas):
# what bounds the compactor's memory, whatever the size of the hour.
BLOCK_BYTES = 16 << 20
# The same for a dataset with a ``json`` column (converted line by line in Python, where a parsed
# row costs ~10x its bytes): ~2-3k trading messages a row group.
JSON_BLOCK_BYTES = 4 << 20
_HOUR_FILE = re.compile(r"^(\d\d)\.jsonl$")
_COMPACTING = re.compile(r"^(\d\d)\.(\d+)\.jsonl\.compacting$")
_DAY = re.compile(r"^\d{4}-\d\d-\d\d$")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # int, str, dec, bool, levels, json (the JSON text of the sub-object at path)
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
    # Every message a trading process publishes: the envelope as columns, the message as its JSON
    # text (``msg``, exactly the published bytes); ``market`` is null for events and PnL snapshots.
    "trading": _BASE + (
        Column("type", "str", ("type",)), _m("market", "str", True), Column("msg", "json", ("msg",))),
}

_ARROW = {"int": pa.int64(), "str": pa.string(), "dec": DEC, "bool": pa.bool_(), "levels": LEVELS,
          "json": pa.string()}
_PREFIXED = ("candles/", "trading/")  # datasets whose kinds are <dataset>/<something>
_TYPED = ("trading/",)  # kinds whose rows name their message type: written by write_lines only


def dataset_of(kind: str) -> str:
    """``candles/1m`` → ``candles``, ``trading/decisions`` → ``trading``; other kinds are their own dataset."""
    base = kind.split("/", 1)[0] if kind.startswith(_PREFIXED) else kind
    if base not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}")
    return base


def _line_by_line(cols: tuple[Column, ...]) -> bool:
    """A dataset with a ``json`` column: converted line by line (see the module docstring)."""
    return any(c.kind == "json" for c in cols)


def schema_of(kind: str) -> pa.Schema:
    cols = DATASETS[dataset_of(kind)]
    return pa.schema([pa.field(c.name, _ARROW[c.kind], nullable=c.nullable) for c in cols])


def day_hour(ms: int) -> tuple[str, int]:
    d = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return d.strftime("%Y-%m-%d"), d.hour


def row_line(recv_ms: int, data: bytes) -> bytes:
    """The JSONL line for one message (``data`` is its JSON, exactly as published)."""
    return b'{"recv_ts":%d,"msg":%s}\n' % (recv_ms, data)


def typed_row_line(recv_ms: int, mtype: str, data: bytes) -> bytes:
    """The JSONL line of a ``trading/*`` row: the message type, then the message JSON (``data``,
    exactly as published) as the last key, so compaction keeps its bytes (``_parse_with_text``)."""
    return b'{"recv_ts":%d,"type":%s,"msg":%s}\n' % (recv_ms, orjson.dumps(mtype), data)


class ParquetSink:
    def __init__(self, root: str | Path, clock: Clock = SYSTEM_CLOCK, retention_days: int = 0,
                 fsync: bool = False, block_bytes: int = BLOCK_BYTES) -> None:
        self.root = Path(root)
        self.block_bytes = block_bytes
        self.clock = clock
        self.retention_days = retention_days
        self.fsync = fsync
        self._open: dict[str, tuple[Path, Any]] = {}  # kind → (path, file)
        self._paths: dict[tuple[str, int], Path] = {}
        self._lock = threading.Lock()  # writer (event loop) vs compactor (a worker thread)
        self.rows_written: dict[str, int] = {}
        self.bytes_written: dict[str, int] = {}
        self.bad_lines = 0
        self.fallback_blocks = 0  # blocks compacted line by line (see ``_block_table``)
        self.rejected_rows = 0  # rows that fit no schema, kept in <hour>.rejected.jsonl

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
            return self._open_file(kind, path)

    def _open_file(self, kind: str, path: Path) -> Any:
        """The file of ``kind`` at ``path``, opened (the previous one of the kind closed); holding ``_lock``."""
        cur = self._open.get(kind)
        if cur is not None:
            if cur[0] == path:
                return cur[1]
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
                if kind.startswith(_TYPED):
                    raise ValueError(f"{kind}: a trading row names its message type: use write_lines (TradingArchive)")
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

    def write_lines(self, rows: Iterable[tuple[str, int, bytes]]) -> int:
        """Append (kind, recv_ms, JSONL line) rows, each line already made (``typed_row_line``),
        and flush them to the OS, as ``write`` does; returns bytes written. The only writer of
        ``trading/*`` kinds. Unlike ``write`` (the market-data hot path) it holds the lock while it
        writes, so ``compact_due`` may close and compact the file of an hour that is over even
        while it is still open (trading rows are rare: the file of an hour would otherwise wait
        for the next row)."""
        batch = list(rows)
        if not all(line.endswith(b"\n") for _, _, line in batch):
            raise ValueError("a JSONL line ends with a newline")
        touched: dict[int, Any] = {}
        total = 0
        with self._lock:
            for kind, recv_ms, line in batch:
                fh = self._open_file(kind, self.path_for(kind, recv_ms))
                touched[id(fh)] = fh
                fh.write(line)
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
                    kind = self._kind_of(path)
                    # Open and its hour over: ``write`` may be using it (no lock), so it waits for
                    # the writer to rotate; ``write_lines`` (trading kinds) writes under the lock.
                    if not include_current and not kind.startswith(_TYPED):
                        continue
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
        """Stream ``src`` into ``dst`` one block (one row group) at a time: memory is bounded by
        ``BLOCK_BYTES``, not by the hour, and the work runs in Arrow's C++ JSON reader and
        kernels, which release the GIL, so the event loop keeps running beside it."""
        schema = schema_of(kind)
        cols = DATASETS[dataset_of(kind)]
        line_by_line = _line_by_line(cols)
        json_schema = None if line_by_line else _json_schema(cols)
        rows = 0
        with pq.ParquetWriter(dst, schema, compression="zstd") as writer:
            for block in _blocks(src, min(self.block_bytes, JSON_BLOCK_BYTES) if line_by_line else self.block_bytes):
                if json_schema is None:
                    table = self._line_table(block, src, cols, schema)
                else:
                    table = self._block_table(block, src, cols, schema, json_schema)
                if table.num_rows:
                    writer.write_table(table)
                    rows += table.num_rows
        with open(dst, "rb+") as fh:
            os.fsync(fh.fileno())
        return rows

    def _block_table(self, block: pa.Buffer, src: Path, cols: tuple[Column, ...], schema: pa.Schema,
                     json_schema: pa.Schema) -> pa.Table:
        try:
            parsed = pj.read_json(pa.BufferReader(block),
                                  read_options=pj.ReadOptions(use_threads=False, block_size=max(block.size, 1 << 20)),
                                  parse_options=pj.ParseOptions(explicit_schema=json_schema,
                                                                unexpected_field_behavior="ignore"))
            return table_from_json(parsed, cols, schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            # A line Arrow's reader refuses (a torn line of a killed writer, a value of an
            # unexpected JSON type): this block line by line, skipping torn lines; a value that
            # fits no schema raises there as well.
            self.fallback_blocks += 1
            log.info("parquet_block_line_by_line", path=str(src), bytes=block.size, reason=str(exc)[:200])
            return self._line_table(block, src, cols, schema)

    def _line_table(self, block: pa.Buffer, src: Path, cols: tuple[Column, ...], schema: pa.Schema) -> pa.Table:
        """A block line by line (orjson, then ``build_table``): torn lines skipped, rows that fit
        no schema set aside. The only path of a dataset with a ``json`` column."""
        json_keys = tuple(c.path[0] for c in cols if c.kind == "json")
        rows = list(self._rows(block.to_pybytes(), src, json_keys))
        try:
            return build_table(rows, cols, schema)
        except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError):
            return build_table(self._without_rejects(rows, src, cols, schema), cols, schema)

    def _without_rejects(self, rows: list[dict[str, Any]], src: Path, cols: tuple[Column, ...],
                         schema: pa.Schema) -> list[dict[str, Any]]:
        """The rows that convert; each one that fits no schema (a poison row) is appended to
        ``<hour file>.rejected.jsonl`` beside the Parquet with the reason, never dropped silently
        and never left to stop compaction of the rest of the hour."""
        good = []
        rejected = src.with_name(src.name.split(".", 1)[0] + ".rejected.jsonl")
        for row in rows:
            try:
                build_table([row], cols, schema)
            except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError) as exc:
                self.rejected_rows += 1
                log.error("parquet_row_rejected", path=str(src), file=str(rejected), error=f"{type(exc).__name__}: {exc}"[:300])
                kept = {k: v for k, v in row.items() if k != _RAW}
                with open(rejected, "ab") as fh:
                    fh.write(orjson.dumps({"error": f"{type(exc).__name__}: {exc}"[:300], "row": kept}) + b"\n")
                continue
            good.append(row)
        return good

    def _rows(self, data: bytes, src: Path, json_keys: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
        for line in data.split(b"\n"):
            line = line.strip()
            if not line:
                continue
            try:
                yield _parse_with_text(line, json_keys[0]) if json_keys else orjson.loads(line)
            except orjson.JSONDecodeError:
                self.bad_lines += 1  # a torn line of a killed writer: it was never XADDed
                log.warning("jsonl_line_skipped", path=str(src), bytes=len(line))
                # A row appended right after it by another process that had the file open (a
                # trading kind has several writers) is glued to it: keep that row.
                start = line.find(b'{"recv_ts":', 1)
                if start > 0:
                    try:
                        yield _parse_with_text(line[start:], json_keys[0]) if json_keys else orjson.loads(line[start:])
                    except orjson.JSONDecodeError:
                        pass

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


# Where ``_parse_with_text`` keeps, in the parsed row, the text of its ``json`` sub-object: a key
# no writer makes (``row_line``/``typed_row_line`` write recv_ts, type and msg only).
_RAW = "\x00json"


def _parse_with_text(line: bytes, key: str) -> dict[str, Any]:
    """A JSONL line whose last key is ``key`` (``typed_row_line``): the row, with the text of
    ``row[key]`` exactly as it is in the line kept beside it (``row[_RAW]``), so the Parquet
    column holds the published bytes rather than a re-serialization of them. The line is parsed
    once, in two parts (the envelope, the sub-object); a line of another shape falls back to one
    parse and a re-serialization. A torn line raises ``orjson.JSONDecodeError``."""
    marker = b',"%s":' % key.encode()
    i = line.find(marker)
    if i > 0 and line.endswith(b"}"):
        text = line[i + len(marker):-1]
        try:
            row = orjson.loads(line[:i] + b"}")
            sub = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(row, dict) and key not in row:
                row[key] = sub
                row[_RAW] = text.decode()
                return row
    row = orjson.loads(line)
    if not isinstance(row, dict):
        raise orjson.JSONDecodeError("a row is a JSON object", line.decode("utf-8", "replace"), 0)
    return row


def _json_text(row: dict[str, Any], path: tuple[str, ...]) -> str | None:
    """A ``json`` column's value: the sub-object's text as the line held it, else its JSON."""
    raw = row.get(_RAW)
    if raw is not None and len(path) == 1:
        return str(raw)
    value = _get(row, path)
    return None if value is None else orjson.dumps(value).decode()


def build_table(rows: list[dict[str, Any]], cols: tuple[Column, ...], schema: pa.Schema) -> pa.Table:
    """Rows → a table of ``schema``. Decimal strings are cast to decimal128 in Arrow (exact:
    a value that does not fit raises rather than rounds)."""
    arrays = []
    for col, field in zip(cols, schema, strict=True):
        values = [_get(r, col.path) for r in rows]
        if col.kind == "dec":
            arrays.append(pc.cast(pa.array(values, pa.string()), DEC))
        elif col.kind == "json":
            arrays.append(pa.array([_json_text(r, col.path) for r in rows], pa.string()))
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
    return _checked(pa.Table.from_arrays(arrays, schema=schema))


_JSON = {"int": pa.int64(), "str": pa.string(), "dec": pa.string(), "bool": pa.bool_(),
         "levels": pa.list_(pa.list_(pa.string()))}


def _json_schema(cols: tuple[Column, ...]) -> pa.Schema:
    """The JSONL row as Arrow's JSON reader should type it (nested as written; decimals and
    levels as the strings they are on the wire); fields not named here are ignored."""
    tree: dict[str, Any] = {}
    for col in cols:
        node = tree
        for key in col.path[:-1]:
            node = node.setdefault(key, {})
        node[col.path[-1]] = _JSON[col.kind]

    def struct(node: dict[str, Any]) -> list[pa.Field]:
        return [pa.field(k, pa.struct(struct(v)) if isinstance(v, dict) else v) for k, v in node.items()]

    return pa.schema(struct(tree))


def _levels(lists: pa.ListArray) -> pa.Array:
    """``[["price", "size"], ...]`` per row → ``list<struct<price, size>>`` (a missing side: [])."""
    if lists.null_count:
        lists = pc.fill_null(lists, pa.scalar([], lists.type))
    pairs = lists.values
    if pairs.null_count or (len(pairs) and pc.min(pc.list_value_length(pairs)).as_py() < 2):
        raise pa.ArrowInvalid("a level is not [price, size]")
    inner = pa.StructArray.from_arrays([pc.cast(pc.list_element(pairs, 0), DEC), pc.cast(pc.list_element(pairs, 1), DEC)],
                                       names=["price", "size"])
    return pa.ListArray.from_arrays(lists.offsets, inner).cast(LEVELS)


def table_from_json(parsed: pa.Table, cols: tuple[Column, ...], schema: pa.Schema) -> pa.Table:
    """What Arrow's JSON reader made of a block (``_json_schema``) → a table of ``schema``; the
    same values as ``build_table`` of the same rows."""
    while any(pa.types.is_struct(f.type) for f in parsed.schema):
        parsed = parsed.flatten()
    arrays = []
    for col in cols:
        values = parsed.column(".".join(col.path))
        if col.kind == "dec":
            values = pc.cast(values, DEC)
        elif col.kind == "levels":
            values = pa.chunked_array([_levels(chunk) for chunk in values.chunks], LEVELS)
        arrays.append(values)
    return _checked(pa.Table.from_arrays(arrays, schema=schema))


def _checked(table: pa.Table) -> pa.Table:
    """``table``, or ArrowInvalid if a non-nullable column holds a null (a row missing a field):
    raised here, the block goes line by line and the row is set aside; left to the Parquet
    writer, it would fail the whole hour, again at every retry."""
    for field, column in zip(table.schema, table.columns, strict=True):
        if not field.nullable and column.null_count:
            raise pa.ArrowInvalid(f"column {field.name!r} is null in {column.null_count} row(s)")
    return table


def _blocks(path: Path, size: int) -> Iterator[pa.Buffer]:
    """The file in blocks of about ``size`` bytes, each ending at a line end (the last one
    may not: a torn last line)."""
    with open(path, "rb") as fh:
        pos = 0
        want = size
        while True:
            fh.seek(pos)
            data = fh.read(want)
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            if len(data) < want:  # the end of the file
                cut = len(data)
            elif cut == 0:  # one line longer than a block: read more
                want *= 2
                continue
            yield pa.py_buffer(data)[:cut]
            pos += cut
            want = size


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the trading processes' archive --------------------------------------------------------------

# The stream a trading message is published to → its kind (``${PARQUET_DIR}/YYYY-MM-DD/<kind>/``).
TRADING_KINDS: dict[str, str] = {
    streams.ORDERS_SIGNALS: "trading/decisions",
    streams.ORDERS_SHADOW: "trading/intents",
    streams.ORDERS_EXECUTED: "trading/executions",
    streams.TRADING_EVENTS: "trading/events",
    streams.PNL_SNAPSHOTS: "trading/pnl",
}


def trading_kind(stream: str) -> str:
    """``orders:signals`` → ``trading/decisions`` (``TRADING_KINDS``); any other stream: ValueError."""
    try:
        return TRADING_KINDS[stream]
    except KeyError:
        raise ValueError(f"stream {stream!r} is not archived as trading data "
                         f"(one of {', '.join(sorted(TRADING_KINDS))})") from None



def _is_json_object(data: bytes) -> bool:
    """Shaped like one (the committer wrote it from a message; a torn or foreign row is set aside at
    compaction anyway): a full parse of every archived message cost more than writing it."""
    stripped = data.strip()
    return stripped.startswith(b"{") and stripped.endswith(b"}")

class TradingArchive:
    """The trading processes' (core, executor, PnL) own messages, kept in Parquet: decisions,
    intents, execution reports, trading events and PnL snapshots, under
    ``${PARQUET_DIR}/YYYY-MM-DD/trading/{decisions,intents,executions,events,pnl}/``.

    Call ``record`` (or ``record_many``) with the messages of a batch *before* the commit that
    publishes them (the XADD/transaction), as the ingest emitter does: ``record`` returns once the
    rows are flushed to the OS (``ParquetSink(fsync=True)`` also survives an OS crash). So every
    published message has its row; the converse does not hold: a crash between the write and the
    commit leaves a row whose message was never published, and when the input is replayed the
    message is made again with the same ``id`` (ids derive from the input's, ``derive_id``) and
    written again. Readers dedupe by ``id`` (keep the first row)::

        SELECT * FROM read_parquet('<PARQUET_DIR>/*/trading/decisions/*.parquet')
        QUALIFY row_number() OVER (PARTITION BY id ORDER BY recv_ts) = 1

    One row per message, columns: ``recv_ts`` (when it was recorded, which picks its hour file),
    ``id``, ``ts``, ``src``, ``trace_id``, ``trace_ts``, ``type`` (``decision``, ``intent.entry``,
    ``order.executed``, ...), ``market`` (null for events and PnL snapshots) and ``msg``: the
    message JSON exactly as published (the stream entry's ``data`` field). Any field of it:
    ``json_extract_string(msg, '$.reasons[0]')``, ``msg->>'$.accepted'`` in DuckDB; the message
    itself: ``messages.decode({"type": type, "data": msg})``. The current hour is still JSONL
    (``HH.jsonl``, ``{"recv_ts", "type", "msg"}`` a line) until ``compact_due`` after the hour.

    The wrapped sink is the process's own; run ``compact_due`` (and ``apply_retention``) from a
    maintenance task (``asyncio.to_thread``), as ingest does. A file stays open between rows, yet
    is compacted once its hour is over (``write_lines`` writes under the sink's lock). Several
    processes may append to one kind (``trading:events`` has the core, the executor and the
    universe selector): each flush appends whole lines (``O_APPEND``), a row glued to another
    process's torn line is recovered, and any process's ``compact_due`` compacts any hour that is
    over. ``apply_retention`` deletes whole day folders under the root, market data included (as
    ingest's does trading data): give every process the same ``retention_days``."""

    def __init__(self, sink: ParquetSink) -> None:
        self.sink = sink

    def line(self, msg: Message, data: bytes | None = None, recv_ms: int | None = None) -> tuple[int, bytes]:
        """(recv_ms, the JSONL line) of a message; ``data`` is its published JSON (``encode``'s
        ``data`` field; made here when None)."""
        if data is None:
            from tradestack.messages import encode_data  # the message's own module: already loaded

            data = encode_data(msg)
        recv = self.sink.clock.now_ms() if recv_ms is None else recv_ms
        return recv, typed_row_line(recv, msg.TYPE, data)

    def record(self, stream: str, msg: Message, data: bytes | None = None, recv_ms: int | None = None) -> int:
        """Write the row of ``msg`` published to ``stream`` and flush it; bytes written. ``data`` is
        the message's JSON as published (``messages.encode(msg)[b"data"]``), encoded here when None;
        ``recv_ms`` defaults to now on the sink's clock (pass an earlier hour only in tests: rows
        of an hour already compacted start another part). Unknown stream: ValueError."""
        kind = trading_kind(stream)
        recv, line = self.line(msg, data, recv_ms)
        return self.sink.write_lines([(kind, recv, line)])

    def record_many(self, items: Iterable[tuple[str, Message, bytes | None]], recv_ms: int | None = None) -> int:
        """``record`` for a batch of (stream, message, data or None), one flush for all of them;
        nothing is written if one of the streams is not archived."""
        rows = []
        for stream, msg, data in items:
            kind = trading_kind(stream)
            recv, line = self.line(msg, data, recv_ms)
            rows.append((kind, recv, line))
        return self.sink.write_lines(rows) if rows else 0

    def record_entries(self, stream: str, entries: Iterable[tuple[str, Mapping[Any, Any]]],
                       recv_ms: int | None = None) -> tuple[int, int]:
        """Rows for stream entries exactly as published (``type`` and ``data`` fields), without
        decoding the messages, in one flush; (rows written, entries skipped). An entry whose fields
        are not a message (no ``type``/``data``, or ``data`` not a JSON object) is skipped and
        logged: it was dead-lettered by the stream's own consumers, and a row of it would break the
        hour's file."""
        kind = trading_kind(stream)
        recv = self.sink.clock.now_ms() if recv_ms is None else recv_ms
        rows: list[tuple[str, int, bytes]] = []
        skipped = 0
        for entry_id, fields in entries:
            mtype = fields.get(b"type", fields.get("type"))
            data = fields.get(b"data", fields.get("data"))
            if isinstance(mtype, bytes):
                mtype = mtype.decode("utf-8", "replace")
            if isinstance(data, str):
                data = data.encode()
            if not isinstance(mtype, str) or not isinstance(data, bytes) or not _is_json_object(data):
                skipped += 1
                log.warning("archive_entry_skipped", stream=stream, entry_id=entry_id,
                            reason="not a message (type/data missing or data not a JSON object)")
                continue
            rows.append((kind, recv, typed_row_line(recv, mtype, data)))
        if rows:
            self.sink.write_lines(rows)
        return len(rows), skipped

    def compact_due(self, include_current: bool = False) -> list[Path]:
        return self.sink.compact_due(include_current)

    def apply_retention(self) -> list[Path]:
        return self.sink.apply_retention()

    def close(self) -> None:
        self.sink.close()
