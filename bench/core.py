"""How fast does the trading core decide? ``python -m bench.core``

In one run against the same Redis (our own, AOF everysec, unless BENCH_REDIS_URL):
- ``loop_baseline_per_s``: the bare loop (bench/passthrough.py, duplicate filter on, as bench.loop);
- ``signals_per_s``: the real core process with every guard of the default chain on, deciding
  ``--signals`` buy signals over ``--markets`` markets (each a decision to ``orders:signals``; the
  accepted ones an intent; blocked ones rate-limited events): first XADD → the group has read and
  acked the last one;
- ``p50_ms``/``p99_ms``: signal entry → entry intent entry at a paced ``--rate`` signals/s, seen by a
  reader blocked on ``orders:shadow`` (a chain without position limits, so every signal is accepted);
- ``kill_latency_ms``: during a paced storm, ``SET trading:kill 1``; the entry id (Redis time) of the
  last entry intent minus the Redis time of the SET, measured from outside the process (<= 0: no
  intent after the switch at all).
Targets (issue 11): signals_per_s >= 10k (reported as a ratio to the bare loop), p99 < 5 ms,
kill_latency_ms < 100. Writes ``bench/results/core.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
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
from bench.loop import make_messages, stop_service, throughput
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import EntryIntent, SignalEmitted, Trace, decode, derive_id, encode

GROUP = "trading_core"
T0 = 1_700_000_000_000
TYPES = ["market", "limit", "stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"]
OPEN_CHAIN = '[{"method":"KillSwitch"},{"method":"MaxOrderNotional","max_notional_eur":"100"},{"method":"ExchangeRules"}]'


def market_rules(markets: list[str]) -> list[dict[str, Any]]:
    return [{"market": m, "status": "trading", "base": m.split("-")[0], "quote": "EUR", "pricePrecision": None,
             "minOrderInBaseAsset": "0.0001", "minOrderInQuoteAsset": "5.00", "maxOrderInBaseAsset": "1000000000",
             "maxOrderInQuoteAsset": "1000000000.00", "quantityDecimals": 8, "notionalDecimals": 2,
             "tickSize": "0.01", "maxOpenOrders": 100, "feeCategory": "A", "orderTypes": TYPES} for m in markets]


def signal(market: str, i: int, tag: str) -> SignalEmitted:
    msg_id = derive_id(f"bench/{tag}/{market}/{i}")
    return SignalEmitted(id=msg_id, ts=T0 + i, src="bench", trace=Trace(id=msg_id, ts=T0 + i), market=market,
                         strategy="momentum", side="buy", strength=0.8, ref_price=Decimal("100"), atr=Decimal("1"),
                         interval="1m", candle_open_ts=T0, features={"rsi": 60.0}, params={"fast": "5"})


def start_core(url: str, guards: str | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=url, METRICS_PORT=str(free_port()), LOG_LEVEL="WARNING", READ_COUNT="500",
               BITVAVO_REST_URL="http://127.0.0.1:1/v2", CORE_BOOK_HISTORY_S="0")
    if guards is not None:
        env["CORE_GUARDS"] = guards
    return subprocess.Popen([sys.executable, "-m", "services.trading_core"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def reset(client: aioredis.Redis, markets: list[str]) -> None:
    keys = [k async for k in client.scan_iter(match="dedupe:trading_core:*", count=10_000)]
    for i in range(0, len(keys), 10_000):
        await client.delete(*keys[i:i + 10_000])
    await client.delete(streams.SIGNALS_BASELINE, streams.ORDERS_SIGNALS, streams.ORDERS_SHADOW,
                        streams.TRADING_EVENTS, streams.ORDERS_EXECUTED, streams.BOOK, streams.KILL,
                        "lease:trading_core")
    await client.set(streams.MARKETS, orjson.dumps({"fetched_ms": T0, "markets": market_rules(markets)}))


async def warm_up(client: aioredis.Redis, markets: list[str]) -> None:
    """One signal through the core and its decision seen: the loop is reading, so the measurement
    does not include the first read after start."""
    await client.xadd(streams.SIGNALS_BASELINE, encode(signal(markets[0], -1, "warm")))  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while await client.xlen(streams.ORDERS_SIGNALS) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("no decision on the warm-up signal in 30 s")
        await asyncio.sleep(0.01)


async def decide_throughput(client: aioredis.Redis, url: str, n: int, markets: list[str]) -> tuple[float, int, int]:
    await reset(client, markets)
    await client.xgroup_create(streams.SIGNALS_BASELINE, GROUP, id="0", mkstream=True)
    proc = start_core(url)  # the default chain: every guard on
    try:
        await wait_running(client, proc, GROUP, streams.SIGNALS_BASELINE)
        await warm_up(client, markets)
        msgs = [encode(signal(m, i, "tp")) for i in range(n // len(markets)) for m in markets]
        started = time.perf_counter()
        last = await push(client, streams.SIGNALS_BASELINE, msgs)
        while not await group_done(client, streams.SIGNALS_BASELINE, GROUP, last):
            if proc.poll() is not None:
                raise RuntimeError("core exited")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        decisions = await client.xlen(streams.ORDERS_SIGNALS)
        intents = await client.xlen(streams.ORDERS_SHADOW)
    finally:
        stop_service(proc)
    decisions -= 1  # the warm-up's
    if decisions != len(msgs):
        raise RuntimeError(f"{decisions} decisions for {len(msgs)} signals")
    return len(msgs) / elapsed, decisions, intents


async def paced(client: aioredis.Redis, count: int, rate: int, markets: list[str], tag: str,
                sent: dict[str, float], kill_at: int | None = None) -> int | None:
    """XADD ``count`` signals at ``rate``/s; with ``kill_at``, SET trading:kill 1 before that one and
    return the Redis time (ms) of the SET."""
    interval = 1.0 / rate
    start = time.perf_counter()
    kill_ms = None
    for j in range(count):
        delay = start + j * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the load
        if kill_at is not None and j == kill_at:
            pipe = client.pipeline(transaction=True)
            pipe.set(streams.KILL, "1")
            pipe.time()
            _, (secs, micros) = await pipe.execute()
            kill_ms = secs * 1000 + micros // 1000
        msg = signal(markets[j % len(markets)], j, tag)
        sent[msg.trace.id] = time.perf_counter()
        await client.xadd(streams.SIGNALS_BASELINE, encode(msg))  # type: ignore[arg-type]
    return kill_ms


async def intent_latency(client: aioredis.Redis, url: str, count: int, rate: int,
                         markets: list[str]) -> list[float]:
    await reset(client, markets)
    proc = start_core(url, OPEN_CHAIN)
    sent: dict[str, float] = {}
    got: list[float] = []
    try:
        await wait_running(client, proc, GROUP, streams.SIGNALS_BASELINE)
        await warm_up(client, markets)
        task = asyncio.create_task(read_latencies(url, streams.ORDERS_SHADOW, sent, count, got))
        await asyncio.sleep(0.2)  # let the reader block before the first signal (pacing, not sync)
        await paced(client, count, rate, markets, "lat", sent)
        await asyncio.wait_for(task, timeout=30)
    finally:
        stop_service(proc)
    return got


async def kill_latency(client: aioredis.Redis, url: str, count: int, rate: int, markets: list[str]) -> dict[str, Any]:
    await reset(client, markets)
    proc = start_core(url, OPEN_CHAIN)
    try:
        await wait_running(client, proc, GROUP, streams.SIGNALS_BASELINE)
        await warm_up(client, markets)
        kill_ms = await paced(client, count, rate, markets, "kill", {}, kill_at=count // 2)
        assert kill_ms is not None
        # the core has decided every signal once its group has read the last and has nothing pending
        last = (await client.xrevrange(streams.SIGNALS_BASELINE, count=1))[0][0]
        deadline = time.monotonic() + 30
        while not await group_done(client, streams.SIGNALS_BASELINE, GROUP, last):
            if time.monotonic() > deadline:
                raise RuntimeError("the core did not finish the storm in 30 s")
            await asyncio.sleep(0.01)
    finally:
        stop_service(proc)
    entries = await client.xrange(streams.ORDERS_SHADOW)
    entry_ms = [int(eid.split(b"-")[0]) for eid, f in entries
                if isinstance(msg := decode(f), EntryIntent) and msg.signal_id != signal(markets[0], -1, "warm").id]
    after = [ms for ms in entry_ms if ms > kill_ms]
    decisions = [decode(f) for _, f in await client.xrange(streams.ORDERS_SIGNALS)]
    killed = sum(1 for d in decisions if "kill_switch" in d.reasons)
    return {"kill_latency_ms": (max(entry_ms) - kill_ms) if entry_ms else None,
            "intents_after_kill": len(after), "intents_before_kill": len(entry_ms) - len(after),
            "blocked_kill_switch": killed}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    markets = [f"M{i:03d}-EUR" for i in range(args.markets)]
    with bench_redis() as url:
        client = aioredis.Redis.from_url(url)
        info = await client.info("server")
        baseline = await throughput(client, url, [encode(m) for m in make_messages(args.signals)])
        rate, decisions, intents = await decide_throughput(client, url, args.signals, markets)
        lat = await intent_latency(client, url, args.latency_signals, args.rate, markets)
        kill = await kill_latency(client, url, args.latency_signals, args.rate, markets)
        await client.aclose()
    return {
        "signals_per_s": round(rate),
        "loop_baseline_per_s": round(baseline),
        "ratio": round(rate / baseline, 3),
        "decisions": decisions,
        "intents_in_throughput_run": intents,
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "latency_samples": len(lat),
        "latency_rate_per_s": args.rate,
        **kill,
        "signals": args.signals,
        "markets": args.markets,
        "redis_version": info.get("redis_version"),
        "machine": machine(),
        "targets": {"signals_per_s": 10000, "p99_ms": 5.0, "kill_latency_ms": 100},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=50_000)
    parser.add_argument("--markets", type=int, default=50)
    parser.add_argument("--latency-signals", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print_table("bench.core — the trading core process, every guard on",
                [(k, v) for k, v in result.items() if not isinstance(v, dict)])
    print(f"written {write_result('core', result)}")


if __name__ == "__main__":
    main()
