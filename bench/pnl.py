"""How fast does the PnL orchestrator book? ``python -m bench.pnl``

In one run against the same Redis (our own, AOF everysec, unless BENCH_REDIS_URL):
- ``loop_baseline_per_s``: the bare loop (bench/passthrough.py, duplicate filter on, as bench.loop);
- ``reports_per_s``: the real PnL process booking ``--reports`` execution reports (partial fills of
  buys over ``--markets`` markets, so ``--markets`` positions stay open): each rewrites
  ``trading:positions`` and ``trading:pnl`` and writes a snapshot in its commit; first XADD → the
  group has read and acked the last one;
- ``p50_ms``/``p99_ms``: report entry → its ``pnl:snapshot`` entry (written in the same commit as the
  hashes) at a paced ``--rate`` reports/s, seen by a reader blocked on ``pnl:snapshots``
  (``PNL_FILL_SNAPSHOT_MIN_MS=0`` there: a snapshot per report; the throughput run uses the default,
  which coalesces a burst's snapshots);
- ``marks_per_s``: book tops of the held markets (``--markets`` open positions) handled per second.
Both runs start measuring once the process is ready: its heartbeat says running *and* it has
written ``trading:pnl`` (the first write follows its start hook: the market catalog, whose REST
refresh against the dead exchange URL takes ~0.5 s, and the rebuild). Before, the first reports
waited for that start and counted it as booking time and latency. The archive writes under a
temporary ``PARQUET_DIR``, not ``./data/parquet`` (where an hour of earlier runs would be compacted
in the middle of a measurement).
Targets (issue 13): reports_per_s >= 10k (as a ratio to the bare loop), p99 < 5 ms. Writes
``bench/results/pnl.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.common import (
    bench_redis,
    group_done,
    machine,
    percentile,
    print_table,
    push,
    read_latencies,
    wait_running,
    write_result,
)
from bench.core import market_rules
from bench.loop import make_messages, stop_service, throughput
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import BookTopUpdated, OrderExecuted, Trace, derive_id, encode

GROUP = "trader_pnl_orchestrator"
T0 = 1_700_000_000_000


def report(market: str, i: int, tag: str) -> OrderExecuted:
    """The i-th state of one buy order per market: 0.01 more filled at 100 each time."""
    filled = Decimal("0.01") * (i + 1)
    quote = filled * 100
    coid = derive_id(f"bench/{tag}/{market}")
    msg_id = derive_id(coid, str(i))
    return OrderExecuted(id=msg_id, ts=T0 + i, src="bench", trace=Trace(id=msg_id, ts=T0 + i), intent_id=coid,
                         client_order_id=coid, order_id=None, market=market, side="buy", status="partiallyFilled",
                         filled_amount=filled, filled_quote=quote, avg_price=Decimal(100), fee=Decimal("0.0025") * quote,
                         fee_currency="EUR", mode="paper", reason="entry")


def top(market: str, i: int) -> BookTopUpdated:
    msg_id = derive_id(f"bench/top/{market}/{i}")
    bid = Decimal(100) + Decimal(i % 100) / 100
    return BookTopUpdated(id=msg_id, ts=T0 + i, src="bench", trace=Trace(id=msg_id, ts=T0 + i), market=market,
                          bid=bid, bid_size=Decimal(1), ask=bid + Decimal("0.01"), ask_size=Decimal(1),
                          mid=bid + Decimal("0.005"), spread_bps=Decimal(1), nonce=i, exchange_ts=T0 + i)


ARCHIVE: dict[str, str] = {}  # PARQUET_DIR: the run's temporary directory (main)


def start_pnl(url: str, **extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **ARCHIVE, **extra, REDIS_URL=url, METRICS_PORT=str(free_port()), LOG_LEVEL="WARNING",
               READ_COUNT="500", BITVAVO_REST_URL="http://127.0.0.1:1/v2", PNL_BOOK_HISTORY_S="0",
               PAPER_EUR="1000000000", MAX_DAILY_LOSS_PCT="", MAX_DRAWDOWN_PCT="", PNL_WRITE_SECS="0.2")
    return subprocess.Popen([sys.executable, "-m", "services.trader_pnl_orchestrator"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(client: aioredis.Redis, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Running, active, and past its start hook: ``trading:pnl`` written (``reset`` deleted it)."""
    await wait_running(client, proc, GROUP)
    deadline = time.monotonic() + timeout_s
    while not await client.exists(streams.PNL):
        if proc.poll() is not None:
            raise RuntimeError(f"PnL exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"PnL wrote no {streams.PNL} in {timeout_s:.0f} s")
        await asyncio.sleep(0.01)


async def reset(client: aioredis.Redis, markets: list[str]) -> None:
    keys = [k async for k in client.scan_iter(match=f"dedupe:{GROUP}:*", count=10_000)]
    for i in range(0, len(keys), 10_000):
        await client.delete(*keys[i:i + 10_000])
    await client.delete(streams.ORDERS_EXECUTED, streams.PNL_SNAPSHOTS, streams.BOOK, streams.TRADING_EVENTS,
                        streams.PNL, streams.POSITIONS, f"lease:{GROUP}")
    await client.set(streams.MARKETS, orjson.dumps({"fetched_ms": T0, "markets": market_rules(markets)}))


async def until_done(client: aioredis.Redis, proc: subprocess.Popen[bytes], stream: str, last: bytes) -> None:
    while not await group_done(client, stream, GROUP, last):
        if proc.poll() is not None:
            raise RuntimeError(f"PnL exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        await asyncio.sleep(0.005)


async def booking_and_marks(client: aioredis.Redis, url: str, n: int, markets: list[str],
                            n_marks: int) -> tuple[float, float, int]:
    await reset(client, markets)
    proc = start_pnl(url)
    try:
        await wait_ready(client, proc)
        msgs = [encode(report(m, i, "tp")) for i in range(n // len(markets)) for m in markets]
        started = time.perf_counter()
        last = await push(client, streams.ORDERS_EXECUTED, msgs)
        await until_done(client, proc, streams.ORDERS_EXECUTED, last)
        rate = len(msgs) / (time.perf_counter() - started)
        open_positions = await client.hlen(streams.POSITIONS)
        tops = [encode(top(markets[i % len(markets)], i)) for i in range(n_marks)]
        started = time.perf_counter()
        last = await push(client, streams.BOOK, tops)
        await until_done(client, proc, streams.BOOK, last)
        marks = len(tops) / (time.perf_counter() - started)
    finally:
        stop_service(proc)
    return rate, marks, open_positions


async def latency(client: aioredis.Redis, url: str, count: int, rate: int, markets: list[str]) -> list[float]:
    await reset(client, markets)
    proc = start_pnl(url, PNL_FILL_SNAPSHOT_MIN_MS="0")  # a snapshot per report: the observable
    sent: dict[str, float] = {}
    got: list[float] = []
    try:
        await wait_ready(client, proc)
        task = asyncio.create_task(read_latencies(url, streams.PNL_SNAPSHOTS, sent, count, got))
        await asyncio.sleep(0.2)  # let the reader block before the first report (pacing, not sync)
        interval = 1.0 / rate
        start = time.perf_counter()
        for j in range(count):
            delay = start + j * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load
            msg = report(markets[j % len(markets)], j // len(markets), "lat")
            sent[msg.trace.id] = time.perf_counter()
            await client.xadd(streams.ORDERS_EXECUTED, encode(msg))  # type: ignore[arg-type]
        await asyncio.wait_for(task, timeout=30)
    finally:
        stop_service(proc)
    return got


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    markets = [f"M{i:03d}-EUR" for i in range(args.markets)]
    with bench_redis() as url:
        client = aioredis.Redis.from_url(url)
        info = await client.info("server")
        baseline = await throughput(client, url, [encode(m) for m in make_messages(args.reports)])
        rate, marks, open_positions = await booking_and_marks(client, url, args.reports, markets, args.marks)
        lat = await latency(client, url, args.latency_reports, args.rate, markets)
        await client.aclose()
    return {
        "reports_per_s": round(rate),
        "loop_baseline_per_s": round(baseline),
        "ratio": round(rate / baseline, 3),
        "marks_per_s": round(marks),
        "open_positions": open_positions,
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "latency_samples": len(lat),
        "latency_rate_per_s": args.rate,
        "reports": args.reports,
        "markets": args.markets,
        "redis_version": info.get("redis_version"),
        "machine": machine(),
        "targets": {"reports_per_s": 10000, "p99_ms": 5.0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--markets", type=int, default=50)
    parser.add_argument("--marks", type=int, default=50_000)
    parser.add_argument("--latency-reports", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pnl-parquet-") as parquet:
        ARCHIVE["PARQUET_DIR"] = parquet
        result = asyncio.run(main_async(args))
    print_table("bench.pnl — the PnL orchestrator process, 50 open positions",
                [(k, v) for k, v in result.items() if not isinstance(v, dict)])
    print(f"written {write_result('pnl', result)}")


if __name__ == "__main__":
    main()
