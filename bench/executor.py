"""How fast does the executor act? ``python -m bench.executor``

In one run against the same Redis (our own, AOF everysec, unless BENCH_REDIS_URL):
- ``loop_baseline_per_s``: the bare loop (bench/passthrough.py, duplicate filter on, as bench.loop);
- ``paper_intents_per_s``: the real executor in paper mode handling ``--intents`` entry intents
  (marketable limit buys over ``--markets`` markets whose book tops were fed first): each is filled
  by the paper broker and gets its simulated resting stop, reports committed with the ack; first
  XADD → the group has acked the last intent;
- on the sandbox exchange (a ``python -m sandbox`` process; the executor in sandbox mode, signed
  REST, account WS): ``ack_p50_ms``/``ack_p99_ms`` (intent XADD → the entry's report carrying the
  exchange's order id) and ``stop_p50_ms``/``stop_p99_ms`` (intent XADD → its ``stopLoss`` reported
  resting) at a paced ``--sandbox-rate``, seen by a reader blocked on ``orders:executed``;
- ``sandbox_burst_intents_per_s``: ``--burst`` intents pushed at once, until every one has its stop
  resting or was refused at the door (``sandbox_burst_refused``: the budget left after the protective
  reserve ran out for longer than ``EXECUTOR_ENTRY_BUDGET_WAIT_S``), with the shared rate-limit budget
  in force; ``sandbox_bans`` (105s the executor saw, from its metrics) must be 0: the budget slows or
  refuses entries instead of running into a ban.
Targets (issue 12): paper >= 5k intents/s; no 105 in sandbox mode. Writes ``bench/results/executor.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from decimal import ROUND_UP, Decimal
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
    wait_running,
    write_result,
)
from bench.core import market_rules
from bench.loop import make_messages, stop_service, throughput
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import BookTopUpdated, EntryIntent, Trace, decode, derive_id, encode

GROUP = "trader_executor"
SANDBOX_MARKETS = ["BTC-EUR", "ETH-EUR", "SOL-EUR", "XRP-EUR", "ADA-EUR"]


def now_ms() -> int:
    return int(time.time() * 1000)


def entry(market: str, tag: str, i: int, *, amount: Decimal, price: Decimal | None, stop: Decimal,
          mode: str) -> EntryIntent:
    msg_id = derive_id(f"bench/{tag}/{market}/{i}")
    ts = now_ms()
    return EntryIntent(id=msg_id, ts=ts, src="bench", trace=Trace(id=msg_id, ts=ts), decision_id=msg_id,
                       signal_id=None, market=market, side="buy", order_type="limit" if price else "market",
                       amount=amount, price=price, ref_price=None, stop_price=stop, take_profit_price=None,
                       trailing_distance=None, time_stop_secs=None, strategy="bench", strategy_params={}, checks=[],
                       sizing=None, mode=mode)  # type: ignore[arg-type]


def top(market: str, bid: Decimal) -> BookTopUpdated:
    msg_id = derive_id(f"bench/top/{market}/{bid}")
    ts = now_ms()
    return BookTopUpdated(id=msg_id, ts=ts, src="bench", trace=Trace(id=msg_id, ts=ts), market=market, bid=bid,
                          bid_size=Decimal(1_000_000), ask=bid + Decimal("0.01"), ask_size=Decimal(1_000_000),
                          mid=bid + Decimal("0.005"), spread_bps=Decimal(1), nonce=1, exchange_ts=ts)


def start_executor(url: str, **extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=url, METRICS_PORT=str(free_port()), LOG_LEVEL="WARNING", READ_COUNT="500",
               PARQUET_DIR="/tmp/bench-executor-parquet")
    env.update(extra)
    return subprocess.Popen([sys.executable, "-m", "services.trader_executor"], env=env,
                            stdout=open(os.environ.get("BENCH_EXECUTOR_LOG", os.devnull), "ab"), stderr=subprocess.STDOUT)


async def reset(client: aioredis.Redis) -> None:
    keys = [k async for k in client.scan_iter(match=f"dedupe:{GROUP}:*", count=10_000)]
    keys += [k async for k in client.scan_iter(match="ratelimit:*", count=1000)]
    for i in range(0, len(keys), 10_000):
        await client.delete(*keys[i:i + 10_000])
    await client.delete(streams.ORDERS_SHADOW, streams.ORDERS_EXECUTED, streams.BOOK, streams.TRADING_EVENTS,
                        "executor:paper", f"lease:{GROUP}", streams.KILL, streams.MARKETS)


async def until_done(client: aioredis.Redis, proc: subprocess.Popen[bytes], stream: str, last: bytes) -> None:
    while not await group_done(client, stream, GROUP, last):
        if proc.poll() is not None:
            raise RuntimeError(f"executor exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        await asyncio.sleep(0.005)


async def paper(client: aioredis.Redis, url: str, n: int, markets: list[str]) -> float:
    await reset(client)
    await client.set(streams.MARKETS, orjson.dumps({"fetched_ms": now_ms(), "markets": market_rules(markets)}))
    proc = start_executor(url, BITVAVO_REST_URL="http://127.0.0.1:1/v2", PAPER_EUR="1000000000",
                          PAPER_BOOK_MAX_AGE_MS="0", DRY_RUN="true")
    try:
        await wait_running(client, proc, GROUP, streams.ORDERS_SHADOW)
        await wait_running(client, proc, GROUP, streams.BOOK)
        last = await push(client, streams.BOOK, [encode(top(m, Decimal(100))) for m in markets])
        await until_done(client, proc, streams.BOOK, last)  # the paper broker has every book
        # Marketable limit buys: filled from the streamed top (a market order would fetch the depth by REST).
        msgs = [encode(entry(markets[i % len(markets)], "paper", i, amount=Decimal("0.1"), price=Decimal("100.01"),
                             stop=Decimal(90), mode="paper")) for i in range(n)]
        started = time.perf_counter()
        last = await push(client, streams.ORDERS_SHADOW, msgs)
        await until_done(client, proc, streams.ORDERS_SHADOW, last)
        rate = n / (time.perf_counter() - started)
        stops = 0
        for _, fields in await client.xrange(streams.ORDERS_EXECUTED):
            r = decode(fields)
            stops += getattr(r, "purpose", None) == "stop" and getattr(r, "status", None) in ("new", "awaitingTrigger")
        if stops < n:
            raise RuntimeError(f"paper: only {stops} of {n} entries got a resting stop")
    finally:
        stop_service(proc)
    return rate


def start_sandbox(key: str, secret: str) -> tuple[subprocess.Popen[bytes], str, str]:
    env = dict(os.environ, SANDBOX_API_KEY=key, SANDBOX_API_SECRET=secret)
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", "0", "--markets", ",".join(SANDBOX_MARKETS),
                             "--eur", "100000000", "--history-hours", "0.05", "--log-level", "WARNING"],
                            env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    urls: dict[str, str] = {}
    assert proc.stdout is not None
    while len(urls) < 2:
        line = proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"the sandbox did not start (exit {proc.poll()})")
        kind, _, found = line.partition(" ")
        if kind in ("REST", "WS"):
            urls[kind] = found
    return proc, urls["REST"], urls["WS"]


def sandbox_intent(rest_url: str, rules: dict[str, Any], market: str, tag: str, i: int) -> EntryIntent:
    with urllib.request.urlopen(f"{rest_url}/{market}/book?depth=1", timeout=5) as resp:
        book = json.loads(resp.read())
    ask = Decimal(book["asks"][0][0])
    tick = Decimal(rules[market]["tickSize"])
    qd = int(rules[market]["quantityDecimals"])
    amount = (Decimal(10) / ask).quantize(Decimal(1).scaleb(-qd), rounding=ROUND_UP)  # ~10 EUR
    stop = (ask * Decimal("0.8") / tick).to_integral_value() * tick
    return entry(market, tag, i, amount=amount, price=None, stop=stop, mode="sandbox")


async def metric(port: int, name: str) -> float:
    def scrape() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    return await asyncio.to_thread(scrape)


async def sandbox(client: aioredis.Redis, url: str, count: int, rate: float, burst: int) -> dict[str, Any]:
    await reset(client)
    key, secret = secrets.token_hex(32), secrets.token_hex(32)
    sb, rest_url, ws_url = start_sandbox(key, secret)
    port = free_port()
    proc = None
    try:
        with urllib.request.urlopen(f"{rest_url}/markets", timeout=5) as resp:
            rules = {m["market"]: m for m in json.loads(resp.read())}
        proc = start_executor(url, DRY_RUN="false", BITVAVO_REST_URL=rest_url, BITVAVO_WS_URL=ws_url,
                              BITVAVO_API_KEY=key, BITVAVO_API_SECRET=secret, BITVAVO_OPERATOR_ID="1",
                              METRICS_PORT=str(port), READ_COUNT="50")
        await wait_running(client, proc, GROUP, streams.ORDERS_SHADOW)
        sent: dict[str, float] = {}
        acks: dict[str, float] = {}
        stops: dict[str, float] = {}
        refused: set[str] = set()  # entries refused at the door (rate_limit_budget): done, nothing to time
        reader_stop = asyncio.Event()

        async def read() -> None:
            reader = aioredis.Redis.from_url(url)
            last = "$"
            try:
                while not reader_stop.is_set():
                    resp = await reader.xread({streams.ORDERS_EXECUTED: last}, block=500, count=200)
                    seen = time.perf_counter()
                    for _, entries in resp or []:
                        for entry_id, fields in entries:
                            last = entry_id
                            r = decode(fields)
                            purpose, pid = getattr(r, "purpose", None), getattr(r, "position_id", None)
                            if purpose == "entry" and r.status == "rejected":  # type: ignore[attr-defined]
                                refused.add(r.intent_id)  # type: ignore[attr-defined]
                            if purpose == "entry" and r.order_id and r.intent_id in sent:  # type: ignore[attr-defined]
                                acks.setdefault(r.intent_id, (seen - sent[r.intent_id]) * 1000)  # type: ignore[attr-defined]
                            elif (purpose == "stop" and pid in sent
                                  and r.status in ("new", "awaitingTrigger")):  # type: ignore[attr-defined]
                                stops.setdefault(pid, (seen - sent[pid]) * 1000)
            finally:
                await reader.aclose()

        task = asyncio.create_task(read())
        await asyncio.sleep(0.2)  # let the reader block before the first intent (pacing, not sync)
        # Paced latency run.
        start = time.perf_counter()
        for j in range(count):
            delay = start + j / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load
            msg = sandbox_intent(rest_url, rules, SANDBOX_MARKETS[j % len(SANDBOX_MARKETS)], "lat", j)
            sent[msg.id] = time.perf_counter()
            await client.xadd(streams.ORDERS_SHADOW, encode(msg))  # type: ignore[arg-type]
        deadline = time.perf_counter() + 60
        while len(stops) < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        ack_ms, stop_ms = list(acks.values()), list(stops.values())
        # Burst: everything at once; the shared budget paces the entries.
        burst_msgs = [sandbox_intent(rest_url, rules, SANDBOX_MARKETS[j % len(SANDBOX_MARKETS)], "burst", j)
                      for j in range(burst)]
        started = time.perf_counter()
        for msg in burst_msgs:
            sent[msg.id] = started
        await push(client, streams.ORDERS_SHADOW, [encode(m) for m in burst_msgs])
        want = {m.id for m in burst_msgs}
        deadline = time.perf_counter() + 300
        while not want <= stops.keys() | refused and time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("executor exited during the burst")
            await asyncio.sleep(0.05)
        burst_s = time.perf_counter() - started
        protected = len(want & stops.keys())
        turned_away = len(want & refused)
        reader_stop.set()
        await task
        bans = await metric(port, "trader_executor_ratelimit_bans_total")
        waits = await metric(port, "trader_executor_ratelimit_waits_total")
    finally:
        if proc is not None:
            stop_service(proc)
        stop_service(sb)
    return {"ack_p50_ms": round(percentile(ack_ms, 50), 1), "ack_p99_ms": round(percentile(ack_ms, 99), 1),
            "stop_p50_ms": round(percentile(stop_ms, 50), 1), "stop_p99_ms": round(percentile(stop_ms, 99), 1),
            "latency_samples": len(stop_ms), "sandbox_rate_per_s": rate,
            "sandbox_burst_intents": burst, "sandbox_burst_protected": protected,
            "sandbox_burst_refused": turned_away,
            "sandbox_burst_intents_per_s": round(protected / burst_s, 2), "sandbox_burst_seconds": round(burst_s, 1),
            "sandbox_bans": int(bans), "sandbox_budget_waits": int(waits)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    markets = [f"M{i:03d}-EUR" for i in range(args.markets)]
    with bench_redis() as url:
        client = aioredis.Redis.from_url(url)
        info = await client.info("server")
        baseline = await throughput(client, url, [encode(m) for m in make_messages(args.intents)])
        paper_rate = await paper(client, url, args.intents, markets)
        sb = await sandbox(client, url, args.sandbox_intents, args.sandbox_rate, args.burst) if args.burst >= 0 else {}
        await client.aclose()
    return {
        "paper_intents_per_s": round(paper_rate),
        "loop_baseline_per_s": round(baseline),
        "ratio": round(paper_rate / baseline, 3),
        **sb,
        "intents": args.intents,
        "markets": args.markets,
        "redis_version": info.get("redis_version"),
        "machine": machine(),
        "targets": {"paper_intents_per_s": 5000, "sandbox_bans": 0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intents", type=int, default=10_000)
    parser.add_argument("--markets", type=int, default=200, help="Bitvavo allows 100 open orders a market: keep "
                        "intents/markets under 100 (every entry leaves a resting stop)")
    parser.add_argument("--sandbox-intents", type=int, default=50)
    parser.add_argument("--sandbox-rate", type=float, default=1.0, help="paced intents/s for the latency run (each "
                        "costs ~5 rate-limit points: keep it under the budget to time orders, not waits)")
    parser.add_argument("--burst", type=int, default=120, help="-1 skips the sandbox part")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print_table("bench.executor — the executor process, paper and sandbox",
                [(k, v) for k, v in result.items() if not isinstance(v, dict)])
    print(f"written {write_result('executor', result)}")


if __name__ == "__main__":
    main()
