"""How fast is the signal engine? ``python -m bench.signals``

In one run against the same Redis (our own, AOF everysec, unless BENCH_REDIS_URL):
- ``loop_baseline_per_s``: the bare loop (bench/passthrough.py, as bench.loop measures it);
- ``candles_per_s``: the real signal engine process (both default strategies, every gate
  evaluated) consuming ``--candles`` closed 1m candles of ``--markets`` markets from
  ``bitvavo:candles:1m``: timed from the first XADD to the group having read and acked the last one;
- ``p50_ms``/``p99_ms``: candle entry → signal entry at a paced ``--rate`` candles/s, seen by a
  reader blocked on ``signals:baseline`` (the candles zigzag so an eager 2/3 EMA cross fires often).
Targets (issue 10): candles_per_s >= 20k and ratio = candles_per_s / loop_baseline_per_s >= 0.4;
p99 < 5 ms. Writes ``bench/results/signals.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

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
from bench.loop import make_messages, stop_service, throughput
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import BookTopUpdated, CandleUpdated, Trace, derive_id, encode

GROUP = "trader_signal_engine"
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000


def candle(market: str, i: int, base: float, start: int = T0) -> CandleUpdated:
    close = base * (1 + 0.01 * math.sin(i * math.pi / 3))  # a period of 6 candles: frequent crosses
    prev = base * (1 + 0.01 * math.sin((i - 1) * math.pi / 3))
    hi, lo = max(close, prev) * 1.001, min(close, prev) * 0.999
    open_ts = start + i * 60_000
    msg_id = derive_id(f"bench/{market}/{open_ts}")
    q = Decimal("0.0001")
    return CandleUpdated(id=msg_id, ts=open_ts + 60_000, src="bench", trace=Trace(id=msg_id, ts=open_ts + 60_000),
                         market=market, interval="1m", open_ts=open_ts, open=Decimal(prev).quantize(q),
                         high=Decimal(hi).quantize(q), low=Decimal(lo).quantize(q), close=Decimal(close).quantize(q),
                         volume=Decimal("1"), closed=True)


def book(market: str, base: float) -> BookTopUpdated:
    msg_id = derive_id(f"bench/book/{market}")
    bid, ask = Decimal(str(base)), Decimal(str(base * 1.0001)).quantize(Decimal("0.0001"))
    return BookTopUpdated(id=msg_id, ts=T0, src="bench", trace=Trace(id=msg_id, ts=T0), market=market, bid=bid,
                          bid_size=Decimal(1), ask=ask, ask_size=Decimal(1), mid=(bid + ask) / 2,
                          spread_bps=Decimal("1"), nonce=1, exchange_ts=T0)


def start_engine(url: str, eager: bool) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=url, METRICS_PORT=str(free_port()), LOG_LEVEL="WARNING", READ_COUNT="500",
               SIGNAL_MAX_CANDLE_AGE_MS="0", SIGNAL_MAX_BOOK_AGE_MS="0", SIGNAL_MIN_VOL="0", SIGNAL_MAX_VOL="1e9",
               SIGNAL_MAX_SPREAD_BPS="1e9", SIGNAL_UNIVERSE_POLL_S="3600")
    if eager:
        env["SIGNAL_STRATEGIES"] = '[{"method":"momentum","fast":2,"slow":3,"trend":3}]'
    return subprocess.Popen([sys.executable, "-m", "services.trader_signal_engine"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def reset(client: aioredis.Redis, markets: list[str]) -> None:
    await client.delete(streams.candles("1m"), streams.BOOK, streams.SIGNALS_BASELINE, streams.UNIVERSE)
    await client.hset(streams.UNIVERSE, mapping={m: "{}" for m in markets})
    for i, m in enumerate(markets):
        await client.xadd(streams.BOOK, encode(book(m, 100.0 + i)))  # type: ignore[arg-type]


async def candle_throughput(client: aioredis.Redis, url: str, n: int, markets: list[str]) -> tuple[float, int]:
    await reset(client, markets)
    proc = start_engine(url, eager=False)
    try:
        await wait_running(client, proc, GROUP)
        msgs = [encode(candle(m, i, 100.0 + k)) for i in range(n // len(markets)) for k, m in enumerate(markets)]
        started = time.perf_counter()
        last = await push(client, streams.candles("1m"), msgs)
        while not await group_done(client, streams.candles("1m"), GROUP, last):
            if proc.poll() is not None:
                raise RuntimeError("engine exited")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        signals = await client.xlen(streams.SIGNALS_BASELINE)
    finally:
        stop_service(proc)
    return len(msgs) / elapsed, signals


async def latency(client: aioredis.Redis, url: str, count: int, rate: int, markets: list[str]) -> list[float]:
    await reset(client, markets)
    proc = start_engine(url, eager=True)
    sent: dict[str, float] = {}
    got: list[float] = []
    try:
        await wait_running(client, proc, GROUP)
        task = asyncio.create_task(read_latencies(url, streams.SIGNALS_BASELINE, sent, count, got))
        await asyncio.sleep(0.2)  # let the reader block before the first candle (pacing, not sync)
        interval = 1.0 / rate
        start = time.perf_counter()
        per_market = count // len(markets)
        for i in range(per_market):
            for k, m in enumerate(markets):
                j = i * len(markets) + k
                delay = start + j * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load
                msg = candle(m, i, 100.0 + k)
                sent[msg.trace.id] = time.perf_counter()
                await client.xadd(streams.candles("1m"), encode(msg))  # type: ignore[arg-type]
        await asyncio.wait_for(task, timeout=30)
    finally:
        stop_service(proc)
    return got


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    markets = [f"M{i:03d}-EUR" for i in range(args.markets)]
    with bench_redis() as url:
        client = aioredis.Redis.from_url(url)
        info = await client.info("server")
        baseline = await throughput(client, url, [encode(m) for m in make_messages(args.candles)])
        rate, signals = await candle_throughput(client, url, args.candles, markets)
        lat = await latency(client, url, args.latency_candles, args.rate, markets)
        await client.aclose()
    return {
        "candles_per_s": round(rate),
        "loop_baseline_per_s": round(baseline),
        "ratio": round(rate / baseline, 3),
        "signals_in_throughput_run": signals,
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "latency_samples": len(lat),
        "latency_rate_per_s": args.rate,
        "candles": args.candles,
        "markets": args.markets,
        "redis_version": info.get("redis_version"),
        "machine": machine(),
        "targets": {"candles_per_s": 20000, "ratio": 0.4, "p99_ms": 5.0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=100_000)
    parser.add_argument("--markets", type=int, default=50)
    parser.add_argument("--latency-candles", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print_table("bench.signals — the signal engine process, both strategies, every gate",
                [(k, v) for k, v in result.items() if not isinstance(v, dict)])
    print(f"written {write_result('signals', result)}")


if __name__ == "__main__":
    main()
