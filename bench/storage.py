"""The Parquet sink at the scale of the full feed: ``python -m bench.storage [--seconds 60] [--hour]``.

The feed of all three ingest processes with every market followed (``--markets`` 438), as rows
per second of recv time (flags; the defaults are our estimate of the real full feed):

- ``orderbook/update`` ``--update-rate`` 3000/s: book deltas, 0-3 levels a side (as bench/ingest.py);
- ``orderbook/top`` one in ``--top-every`` 3 deltas moves the top of its book: 1000/s;
- ``orderbook/snapshot`` every market's 50-level depth every 60 s: 7.3/s;
- ``ticker24h`` at most once a second per market, taken as every market every second: 438/s;
- ``candles/<interval>`` ``--candle-rate`` 200/s over 1m/5m/15m/1h (one row per trade event and interval).

Rows are made by the ingest encoders (``encode_book_delta``, ``encode_book_top``, the message
models) and appended through ``ParquetSink.write`` in emitter-sized batches (``--batch``), one sink
per ingest process, so the orderbook sink interleaves deltas, tops and snapshots; only the time
inside ``write`` counts. ``--seconds`` of feed (default 60) land in one hour file per dataset;
each file is then compacted in a fresh process, by ``ParquetSink.compact_due`` run as the ingest
maintenance task runs it (``asyncio.to_thread``), while a probe task on the event loop measures
how late a 1 ms sleep wakes up (the loop of an ingest process during compaction). That process
reports the compaction time, its peak RSS (VmHWM; the RSS after imports as the baseline), and
then reads the file back with pyarrow (``read_table``; schema and row count checked) and DuckDB
(if installed: ``SELECT *`` streamed as Arrow batches).

Extrapolation to one hour (``*_hour`` keys): rows, bytes and times scale by 3600 / seconds
(compaction is linear in rows; its memory is bounded by the block size, not the file: compare
a run with ``--seconds 240``, or ``--hour``, the whole hour: ~6 GB of JSONL, ~8 minutes on two
cores; the default takes ~15 s). Prints a table and writes ``bench/results/storage.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import orjson

from bench.common import machine, percentile, write_result
from tradestack.loop_lag import run_probe

ROOT = Path(__file__).resolve().parent.parent
HOUR_MS = 3_600_000
T0 = int(datetime(2026, 1, 1, 10, tzinfo=timezone.utc).timestamp() * 1000)  # an hour's start
SNAPSHOT_EVERY_S = 60
SNAPSHOT_DEPTH = 50
INTERVALS = ("1m", "5m", "15m", "1h")
PROCESSES = {"orderbook": ("orderbook/update", "orderbook/top", "orderbook/snapshot"),
             "ticker24h": ("ticker24h",),
             "candles": tuple(f"candles/{i}" for i in INTERVALS)}

Batch = list[tuple[str, int, bytes]]


# -- the feed (rows as the ingest processes write them) ------------------------------------------


def markets_for(n: int) -> list[str]:
    return [f"M{i:03d}-EUR" for i in range(n)]


def _price(cents: int) -> str:
    return f"{cents / 100:.2f}"


def orderbook_rows(args: argparse.Namespace, rng: random.Random) -> Iterator[Batch]:
    """Deltas, a top every ``top_every`` deltas, a depth snapshot of every market each 60 s."""
    from tradestack.bitvavo.book import mid_and_spread_bps
    from tradestack.bitvavo.parse import encode_book_delta, encode_book_top, levels_json, parse_book_event
    from tradestack.messages import derive_id

    markets = markets_for(args.markets)
    mids = {m: rng.randint(1_000, 9_000_000) for m in markets}
    nonce = dict.fromkeys(markets, 0)
    src = "ingest.orderbook"
    batch: Batch = []
    n = 0
    for second in range(args.seconds):
        if second % SNAPSHOT_EVERY_S == 0:
            now = T0 + second * 1000
            for m in markets:
                mid = mids[m]
                bids = [(Decimal(mid - i) / 100, Decimal(rng.randint(1, 10**8)) / 10**8) for i in range(1, SNAPSHOT_DEPTH + 1)]
                asks = [(Decimal(mid + i) / 100, Decimal(rng.randint(1, 10**8)) / 10**8) for i in range(1, SNAPSHOT_DEPTH + 1)]
                msg_id = derive_id(f"book-snapshot/{m}/{nonce[m]}/{now}")
                data = orjson.dumps({"id": msg_id, "ts": now, "src": src, "trace": {"id": msg_id, "ts": now}, "v": 1,
                                     "market": m, "nonce": nonce[m], "bids": levels_json(bids),
                                     "asks": levels_json(asks), "exchange_ts": now})
                batch.append(("orderbook/snapshot", now, data))
        for i in range(args.update_rate):
            recv = T0 + second * 1000 + i * 1000 // args.update_rate
            m = markets[rng.randrange(args.markets)]
            nonce[m] += 1
            mid = mids[m] = max(200, mids[m] + rng.randint(-2, 2))
            sides = [[[_price(mid + sign * rng.randint(1, 40)),
                       "0" if rng.random() < 0.25 else f"{rng.random() * 3:.8f}"] for _ in range(rng.randint(0, 3))]
                     for sign in (-1, 1)]
            ev = parse_book_event({"market": m, "nonce": nonce[m], "bids": sides[0], "asks": sides[1],
                                   "timestamp": recv * 1_000_000})
            msg_id, data = encode_book_delta(ev, src)
            batch.append(("orderbook/update", recv, data))
            n += 1
            if n % args.top_every == 0:
                bid, ask = Decimal(mid - 1) / 100, Decimal(mid + 1) / 100
                top = (bid, Decimal(rng.randint(1, 10**8)) / 10**8, ask, Decimal(rng.randint(1, 10**8)) / 10**8)
                mid_d, bps = mid_and_spread_bps(bid, ask)
                _, data = encode_book_top(m, top, mid_d, bps, nonce[m], recv, msg_id, src)
                batch.append(("orderbook/top", recv, data))
            if len(batch) >= args.batch:
                yield batch
                batch = []
    if batch:
        yield batch


def ticker_rows(args: argparse.Namespace, rng: random.Random) -> Iterator[Batch]:
    from tradestack.bitvavo.parse import parse_ticker24h
    from tradestack.messages import encode_data

    markets = markets_for(args.markets)
    batch: Batch = []
    for second in range(args.seconds):
        now = T0 + second * 1000
        data = []
        for m in markets:
            last = rng.randint(100, 9_000_000)
            data.append({"market": m, "open": _price(last + 50), "high": _price(last + 100), "low": _price(last - 100),
                         "last": _price(last), "volume": f"{rng.random() * 1e6:.8f}",
                         "volumeQuote": f"{rng.random() * 1e8:.2f}", "bid": _price(last - 1),
                         "bidSize": f"{rng.random() * 10:.8f}", "ask": _price(last + 1),
                         "askSize": f"{rng.random() * 10:.8f}", "timestamp": now - rng.randint(0, 999)})
        for msg in parse_ticker24h({"event": "ticker24h", "data": data}, "ingest.ticker24h"):
            batch.append(("ticker24h", now, encode_data(msg)))
            if len(batch) >= args.batch:
                yield batch
                batch = []
    if batch:
        yield batch


def candle_rows(args: argparse.Namespace, rng: random.Random) -> Iterator[Batch]:
    from tradestack.bitvavo.parse import candle_message, parse_candle_event
    from tradestack.messages import encode_data

    markets = markets_for(args.markets)
    period = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}
    per_interval = max(1, args.candle_rate // len(INTERVALS))
    batch: Batch = []
    for second in range(args.seconds):
        for i in range(per_interval):
            recv = T0 + second * 1000 + i * 1000 // per_interval
            m = markets[rng.randrange(args.markets)]
            p = rng.randint(100, 9_000_000)
            for interval in INTERVALS:
                open_ts = recv - recv % period[interval]
                [c] = parse_candle_event({"event": "candle", "market": m, "interval": interval, "candle": [
                    [open_ts, _price(p), _price(p + 30), _price(p - 30), _price(p + 5), f"{rng.random() * 100:.8f}"]]})
                batch.append((f"candles/{interval}", recv, encode_data(candle_message(c, False, recv, "ingest.candles"))))
            if len(batch) >= args.batch:
                yield batch
                batch = []
    if batch:
        yield batch


FEEDS = {"orderbook": orderbook_rows, "ticker24h": ticker_rows, "candles": candle_rows}


def write_feed(process: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One ingest process's rows through its own sink; only the time inside ``write`` counts."""
    from tradestack.clock import FakeClock
    from tradestack.storage import ParquetSink

    sink = ParquetSink(root, FakeClock(T0), fsync=args.fsync)
    spent = 0.0
    started = time.perf_counter()
    for batch in FEEDS[process](args, random.Random(f"{args.seed}/{process}")):
        t = time.perf_counter()
        sink.write(batch)
        spent += time.perf_counter() - t
    sink.close()
    rows = sum(sink.rows_written.values())
    return {"process": process, "rows": rows, "write_s": spent, "rows_per_s": rows / spent,
            "generate_s": time.perf_counter() - started - spent,
            "rows_by_kind": dict(sink.rows_written), "jsonl_bytes_by_kind": dict(sink.bytes_written)}


# -- compaction and read-back (in a fresh process per dataset) -----------------------------------


def _status_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KB (a peak either way)


async def _compact_with_probe(sink: Any) -> tuple[list[Path], float, list[float]]:
    """``compact_due`` in a worker thread, as the ingest maintenance task runs it, while the
    loop-lag probe (tradestack/loop_lag.py) records how late a 1 ms timer fires."""
    lags: list[float] = []
    task = asyncio.create_task(run_probe(lags.append, interval_s=0.001))
    await asyncio.sleep(0.01)
    t = time.perf_counter()
    files = await asyncio.to_thread(sink.compact_due)
    elapsed = time.perf_counter() - t
    task.cancel()
    return files, elapsed, lags


def compact_main(root: Path, kind: str, rows: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from tradestack.clock import FakeClock
    from tradestack.storage import ParquetSink, schema_of

    jsonl = sum(p.stat().st_size for p in root.rglob("*.jsonl"))
    base_kb = _status_kb("VmRSS")
    cpu = time.process_time()
    sink = ParquetSink(root, FakeClock(T0 + HOUR_MS))
    files, elapsed, lags = asyncio.run(_compact_with_probe(sink))
    cpu = time.process_time() - cpu
    peak_kb = _status_kb("VmHWM")
    parquet = sum(p.stat().st_size for p in files)
    t = time.perf_counter()
    n, groups = 0, 0
    for p in files:
        table = pq.read_table(p)
        if not table.schema.equals(schema_of(kind)):
            raise SystemExit(f"{p}: schema differs from the declared one")
        n += table.num_rows
        groups += pq.ParquetFile(p).num_row_groups
        del table
    read_s = time.perf_counter() - t
    if n != rows:
        raise SystemExit(f"{kind}: {rows} rows written, {n} read back")
    result: dict[str, Any] = {
        "kind": kind, "rows": rows, "files": len(files), "row_groups": groups, "jsonl_bytes": jsonl,
        "parquet_bytes": parquet, "ratio": jsonl / parquet if parquet else float("nan"),
        "compact_s": elapsed, "compact_cpu_s": cpu, "compact_rows_per_s": rows / elapsed,
        "baseline_rss_mb": base_kb / 1024, "peak_rss_mb": peak_kb / 1024, "peak_rss_over_baseline_mb": (peak_kb - base_kb) / 1024,
        "loop_lag_p99_ms": percentile(lags, 99) * 1000, "loop_lag_max_ms": max(lags, default=0.0) * 1000,
        "loop_lags_over_100ms": sum(1 for x in lags if x > 0.1),
        "read_pyarrow_s": read_s, "read_duckdb_s": None}
    try:
        import duckdb
    except ImportError:
        return result
    t = time.perf_counter()
    n = 0
    con = duckdb.connect()
    for p in files:
        cur = con.execute("SELECT * FROM read_parquet(?)", [str(p)])
        to_reader = getattr(cur, "to_arrow_reader", None) or cur.fetch_record_batch  # DuckDB 2 / 1.x
        reader = to_reader(100_000)
        n += sum(b.num_rows for b in reader)
    result["read_duckdb_s"] = time.perf_counter() - t
    if n != rows:
        raise SystemExit(f"{kind}: DuckDB read {n} rows of {rows}")
    return result


def run_compaction(root: Path, kind: str, rows: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.storage", "--compact-root", str(root), "--kind", kind,
                          "--rows", str(rows)], cwd=ROOT, capture_output=True, timeout=7200)
    lines = [ln for ln in out.stdout.decode().splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        print(out.stderr.decode()[-3000:], file=sys.stderr)
        raise SystemExit(f"compaction of {kind} failed")
    return json.loads(lines[-1][7:])


# -- the driver ------------------------------------------------------------------------------------


def _mb(n: float) -> float:
    return n / 1e6


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=60, help="seconds of feed to write (one hour file each)")
    p.add_argument("--hour", action="store_true", help="a whole hour of feed (--seconds 3600; ~15 min)")
    p.add_argument("--markets", type=int, default=438)
    p.add_argument("--update-rate", type=int, default=3000, help="book deltas per second, all markets")
    p.add_argument("--top-every", type=int, default=3, help="one top-of-book row per this many deltas")
    p.add_argument("--candle-rate", type=int, default=200, help="candle rows per second, all intervals")
    p.add_argument("--batch", type=int, default=50, help="rows per ParquetSink.write (an emitter batch)")
    p.add_argument("--fsync", action="store_true", help="the sink with fsync=True (PARQUET_FSYNC)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", help="work here (kept) instead of a temporary directory")
    p.add_argument("--compact-root", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compact_root:
        print("RESULT " + json.dumps(compact_main(Path(args.compact_root), args.kind, args.rows)), flush=True)
        return 0
    if args.hour:
        args.seconds = 3600
    if not 0 < args.seconds <= 3600:
        raise SystemExit("--seconds must be in 1..3600 (one hour file)")
    factor = 3600 / args.seconds

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="bench-storage-")
    work = Path(args.dir or tmp.name)  # type: ignore[union-attr]
    try:
        writes, compactions = [], []
        day = datetime.fromtimestamp(T0 / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
        for process, kinds in PROCESSES.items():
            root = work / process
            w = write_feed(process, root, args)
            writes.append(w)
            print(f"wrote {process}: {w['rows']:,} rows, {w['rows_per_s']:,.0f} rows/s in write", flush=True)
            for kind in kinds:  # one root per dataset, so each compacts in a process of its own
                rows = w["rows_by_kind"].get(kind, 0)
                if not rows:
                    continue
                own = work / "compact" / kind.replace("/", "-")
                (own / day / kind).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(root / day / kind), str(own / day / kind))
                c = run_compaction(own, kind, rows)
                c.update(rows_hour=round(rows * factor), jsonl_bytes_hour=round(c["jsonl_bytes"] * factor),
                         parquet_bytes_hour=round(c["parquet_bytes"] * factor), compact_s_hour=c["compact_s"] * factor,
                         read_pyarrow_s_hour=c["read_pyarrow_s"] * factor,
                         read_duckdb_s_hour=None if c["read_duckdb_s"] is None else c["read_duckdb_s"] * factor)
                compactions.append(c)
                print(f"compacted {kind}: {c['compact_s']:.2f} s, peak RSS {c['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    command = "python -m bench.storage" + ("" if not argv else " " + " ".join(argv))
    result: dict[str, Any] = {
        "command": command,
        "feed": {"seconds": args.seconds, "hour_factor": factor, "markets": args.markets,
                 "rows_per_s": {"orderbook/update": args.update_rate,
                                "orderbook/top": args.update_rate / args.top_every,
                                "orderbook/snapshot": args.markets / SNAPSHOT_EVERY_S,
                                "ticker24h": args.markets,
                                "candles (4 intervals)": max(1, args.candle_rate // len(INTERVALS)) * len(INTERVALS)},
                 "batch": args.batch, "fsync": args.fsync},
        "machine": machine(),
        "write": writes,
        "compaction": compactions,
        "totals_hour": {"jsonl_bytes": sum(c["jsonl_bytes_hour"] for c in compactions),
                        "parquet_bytes": sum(c["parquet_bytes_hour"] for c in compactions),
                        "compact_s": sum(c["compact_s_hour"] for c in compactions),
                        "compact_s_by_process": {proc: sum(c["compact_s_hour"] for c in compactions if c["kind"] in kinds)
                                                 for proc, kinds in PROCESSES.items()}},
        "notes": "*_hour = measured x 3600/seconds (rows, bytes, times); peak RSS is measured, not scaled",
    }

    print(f"\nbench.storage — {args.seconds} s of the full feed ({args.markets} markets), x{factor:g} to one hour")
    print(f"{'process':<10} {'rows':>10} {'write rows/s':>13} {'write s/hour':>13}")
    for w in writes:
        print(f"{w['process']:<10} {w['rows']:>10,} {w['rows_per_s']:>13,.0f} {w['write_s'] * factor:>13.1f}")
    print(f"\n{'dataset':<19} {'rows/hour':>11} {'JSONL MB/h':>11} {'Parquet MB/h':>12} {'ratio':>6} "
          f"{'compact s/h':>11} {'rows/s':>9} {'peak RSS MB':>11} {'lag max ms':>10} {'read pa s/h':>11} {'read duck s/h':>13}")
    for c in compactions:
        duck = "-" if c["read_duckdb_s_hour"] is None else f"{c['read_duckdb_s_hour']:.1f}"
        print(f"{c['kind']:<19} {c['rows_hour']:>11,} {_mb(c['jsonl_bytes_hour']):>11,.0f} "
              f"{_mb(c['parquet_bytes_hour']):>12,.0f} {c['ratio']:>6.1f} {c['compact_s_hour']:>11.1f} "
              f"{c['compact_rows_per_s']:>9,.0f} {c['peak_rss_mb']:>11.0f} {c['loop_lag_max_ms']:>10.1f} "
              f"{c['read_pyarrow_s_hour']:>11.1f} {duck:>13}")
    t = result["totals_hour"]
    print(f"\nper hour: JSONL {_mb(t['jsonl_bytes']):,.0f} MB → Parquet {_mb(t['parquet_bytes']):,.0f} MB; compaction "
          + ", ".join(f"{k} {v:.0f} s" for k, v in t["compact_s_by_process"].items()))
    path = write_result("storage", result)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
