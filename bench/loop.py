"""How fast is the one consumer loop? ``python -m bench.loop``

Measures, in one run against the same Redis (our own, AOF everysec, unless BENCH_REDIS_URL):
- ``raw_xadd_per_s``: the baseline, pipelined XADD of the same encoded messages (1000 a pipeline);
- ``single_xadd_per_s``: one awaited XADD at a time, for scale;
- ``msgs_per_s``: one service process (bench/passthrough.py: the real runtime and loop) reading a
  pre-filled stream: XREADGROUP batch, decode, handle (new message with a derived id), encode,
  commit (XADD outputs + XACK in one atomic script, with the duplicate filter on). Timed from the
  first to the last output entry id, so process start-up is not counted;
  The duplicate filter runs before the handler: one MGET of the batch's markers per batch;
- ``msgs_per_s_no_dedupe``: the same with the duplicate filter off (DEDUPE_TTL_S=0);
- ``msgs_per_s_state_writes``: the same with one hash write per message committed with its output
  and ack (what the trading services do: positions, universe, PnL);
- ``p50_ms``/``p99_ms``: added latency of one hop at a paced 1k msgs/s: XADD of the input to the
  output appearing, seen by a reader blocked on the output stream.
Targets (issues 2 and 9): ratio = msgs_per_s / raw_xadd_per_s >= 0.5 (0.3 at first); p99 < 2 ms.
Results from another machine are not comparable; compare the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from bench.common import bench_redis, machine, percentile, print_table, write_result
from tradestack.embedded_redis import free_port
from tradestack.messages import Trace, TradingEvent, derive_id, encode, new_id

IN, OUT = "test:in", "test:out"


def make_messages(n: int) -> list[TradingEvent]:
    trace = Trace(id="bench", ts=1_700_000_000_000)
    return [TradingEvent(id=new_id(), ts=1_700_000_000_000 + i, src="bench", trace=trace, kind="bench",
                         severity="info", message="pass-through", details={"market": "BTC-EUR", "i": str(i)})
            for i in range(n)]


async def raw_pipelined(client: aioredis.Redis, fields: list[dict[bytes, bytes]]) -> float:
    await client.delete("bench:raw")
    started = time.perf_counter()
    for i in range(0, len(fields), 1000):
        pipe = client.pipeline(transaction=False)
        for f in fields[i:i + 1000]:
            pipe.xadd("bench:raw", f)
        await pipe.execute()
    elapsed = time.perf_counter() - started
    await client.delete("bench:raw")
    return len(fields) / elapsed


async def single(client: aioredis.Redis, fields: list[dict[bytes, bytes]]) -> float:
    started = time.perf_counter()
    for f in fields:
        await client.xadd("bench:single", f)
    elapsed = time.perf_counter() - started
    await client.delete("bench:single")
    return len(fields) / elapsed


def start_service(url: str, **env: str) -> subprocess.Popen[bytes]:
    full = dict(os.environ, REDIS_URL=url, METRICS_PORT=str(free_port()), LOG_LEVEL="WARNING",
                READ_COUNT="500", SERVICE_NAME="bench", **env)
    return subprocess.Popen([sys.executable, "-m", "bench.passthrough"], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def entry_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


async def forget_handled(client: aioredis.Redis) -> None:
    """Each run sends the same message ids: drop the previous run's duplicate markers and state."""
    keys = [k async for k in client.scan_iter(match="dedupe:bench:*", count=10_000)]
    for i in range(0, len(keys), 10_000):
        await client.delete(*keys[i:i + 10_000])
    await client.delete(IN, OUT, "test:state")


async def throughput(client: aioredis.Redis, url: str, fields: list[dict[bytes, bytes]], **env: str) -> float:
    await forget_handled(client)
    for i in range(0, len(fields), 1000):
        pipe = client.pipeline(transaction=False)
        for f in fields[i:i + 1000]:
            pipe.xadd(IN, f)
        await pipe.execute()
    proc = start_service(url, **env)
    try:
        deadline = time.monotonic() + 300
        while await client.xlen(OUT) < len(fields):
            if proc.poll() is not None:
                raise RuntimeError(f"service exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("throughput run did not finish in 300 s")
            await asyncio.sleep(0.05)
    finally:
        stop_service(proc)
    first = await client.xrange(OUT, count=1)
    last = await client.xrevrange(OUT, count=1)
    span_ms = max(1, entry_ms(last[0][0]) - entry_ms(first[0][0]))
    await client.delete(IN, OUT)
    return len(fields) / (span_ms / 1000)


async def latency(client: aioredis.Redis, url: str, count: int, rate: int) -> list[float]:
    await client.delete(IN, OUT)
    proc = start_service(url, BLOCK_MS="1000")
    msgs = make_messages(count)
    sent_at: dict[str, float] = {}
    got: list[float] = []
    try:
        # Wait until the service has its group, so the first messages are not start-up time.
        while True:
            try:
                if await client.xinfo_groups(IN):
                    break
            except aioredis.ResponseError:
                pass
            await asyncio.sleep(0.05)
        reader = aioredis.Redis.from_url(url)

        async def read() -> None:
            last = "$"
            while len(got) < count:
                resp = await reader.xread({OUT: last}, block=2000, count=100)
                now = time.perf_counter()
                for _, entries in resp:
                    for entry_id, f in entries:
                        last = entry_id
                        out_id = f[b"data"][7:43].decode()  # {"id":"<uuid>",...
                        if out_id in sent_at:
                            got.append((now - sent_at[out_id]) * 1000)
                if not resp:
                    break

        reader_task = asyncio.create_task(read())
        await asyncio.sleep(0.2)  # let the reader block on the stream before the first message
        interval = 1.0 / rate
        start = time.perf_counter()
        for i, msg in enumerate(msgs):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not synchronising
            sent_at[derive_id(msg.id, "out")] = time.perf_counter()
            await client.xadd(IN, encode(msg))
        await asyncio.wait_for(reader_task, timeout=30)
        await reader.aclose()
    finally:
        stop_service(proc)
    return got


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with bench_redis() as url:
        client = aioredis.Redis.from_url(url)
        info = await client.info("server")
        fields = [encode(m) for m in make_messages(args.messages)]
        raw = await raw_pipelined(client, fields)
        one = await single(client, fields[: min(5000, len(fields))])
        loop = await throughput(client, url, fields)
        loop_nd = await throughput(client, url, fields, DEDUPE_TTL_S="0")
        loop_sw = await throughput(client, url, fields, STATE_WRITES="1")
        lat = await latency(client, url, args.latency_messages, args.rate)
        await client.aclose()
    return {
        "msgs_per_s": round(loop),
        "msgs_per_s_no_dedupe": round(loop_nd),
        "msgs_per_s_state_writes": round(loop_sw),
        "ratio_state_writes": round(loop_sw / raw, 3),
        "raw_xadd_per_s": round(raw),
        "single_xadd_per_s": round(one),
        "ratio": round(loop / raw, 3),
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "latency_samples": len(lat),
        "latency_rate_per_s": args.rate,
        "messages": args.messages,
        "read_count": 500,
        "redis_version": info.get("redis_version"),
        "machine": machine(),
        "targets": {"ratio": 0.5, "p99_ms": 2.0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--latency-messages", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=1000, help="paced messages per second for the latency run")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    rows = [(k, v) for k, v in result.items() if not isinstance(v, dict)]
    print_table("bench.loop — one consumer process, pass-through handler", rows)
    path = write_result("loop", result)
    print(f"written {path}")


if __name__ == "__main__":
    main()
