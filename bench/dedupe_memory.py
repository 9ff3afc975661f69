"""What does the duplicate filter cost Redis on market data? ``python -m bench.dedupe_memory``

Before issue 9 every consumed entry of every stream got a ``dedupe:<group>:<id>`` key with a 24 h
TTL. This bench consumes ``--entries`` book-top messages from ``bitvavo:book`` through the real
consumer loop twice, in the same run against the same Redis: once with the marker forced on (the
old behaviour, the baseline) and once with the default (no marker on market data). After each run
the input stream is trimmed to zero, so what remains in ``used_memory`` is what the filter left
behind. It reports bytes per entry and scales them to an hour of the feed at ``--rate`` entries/s
per consumer group (the default is the book-top rate of the full Bitvavo feed measured by
bench.ingest's sandbox run: each of the ~400 markets changes its top a few to ten times a second),
and a day (the keys live 24 h). Writes ``bench/results/dedupe_memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis

from bench.common import bench_redis, machine, print_table, write_result
from tradestack import streams
from tradestack.bus import ConsumerLoop, Delivery, LoopConfig, StreamSpec
from tradestack.messages import BookTopUpdated, Message, Trace, derive_id, encode
from tradestack.metrics import ServiceMetrics


def book_tops(n: int) -> list[dict[bytes, bytes]]:
    out = []
    for i in range(n):
        ts = 1_700_000_000_000 + i
        msg_id = derive_id(f"book/BTC-EUR/{i}", "top")
        out.append(encode(BookTopUpdated(
            id=msg_id, ts=ts, src="bench", trace=Trace(id=msg_id, ts=ts), market="BTC-EUR",
            bid=Decimal("50000"), bid_size=Decimal("1"), ask=Decimal("50001"), ask_size=Decimal("1"),
            mid=Decimal("50000.5"), spread_bps=Decimal("0.2"), nonce=i, exchange_ts=ts)))
    return out


async def consume(url: str, entries: list[dict[bytes, bytes]], dedupe: bool, group: str) -> int:
    """Bytes of used_memory the run left behind once the input stream is trimmed away."""
    client = aioredis.Redis.from_url(url)
    await client.delete(streams.BOOK)
    await client.execute_command("MEMORY", "PURGE")
    before = int((await client.info("memory"))["used_memory"])

    def handle(msg: Message, delivery: Delivery) -> list[Any]:
        return []

    loop = ConsumerLoop(client, group=group, streams_in=[StreamSpec(streams.BOOK, start="0", dedupe=dedupe)],
                        handler=handle, metrics=ServiceMetrics(f"bench_{group}"),
                        config=LoopConfig(read_count=500, dedupe_ttl_s=86_400, maxlen={streams.BOOK: 10**9}))
    for i in range(0, len(entries), 1000):
        pipe = client.pipeline(transaction=False)
        for f in entries[i:i + 1000]:
            pipe.xadd(streams.BOOK, f)  # type: ignore[arg-type]
        await pipe.execute()
    await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
    await client.xgroup_destroy(streams.BOOK, group)
    await client.delete(streams.BOOK)
    await client.execute_command("MEMORY", "PURGE")
    after = int((await client.info("memory"))["used_memory"])
    await client.aclose()
    return after - before


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    entries = book_tops(args.entries)
    with bench_redis() as url:
        old = await consume(url, entries, dedupe=True, group="before")
        new = await consume(url, entries, dedupe=False, group="after")
        client = aioredis.Redis.from_url(url)
        keys_left = await client.dbsize()
        version = (await client.info("server")).get("redis_version")
        await client.aclose()
    per_hour = args.rate * 3600
    old_per_entry, new_per_entry = old / args.entries, new / args.entries
    return {
        "entries": args.entries,
        "rate_per_s": args.rate,
        "bytes_per_entry_before": round(old_per_entry, 1),
        "bytes_per_entry_after": round(new_per_entry, 1),
        "mb_per_hour_per_group_before": round(old_per_entry * per_hour / 1e6, 1),
        "mb_per_hour_per_group_after": round(max(0.0, new_per_entry) * per_hour / 1e6, 1),
        "gb_per_day_per_group_before": round(old_per_entry * per_hour * 24 / 1e9, 2),
        "keys_per_day_per_group_before": per_hour * 24,
        "keys_left_after_both_runs": keys_left,
        "redis_version": version,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=3000, help="book-top entries per second of the full feed")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print_table("bench.dedupe_memory — Redis memory left by the duplicate filter on bitvavo:book",
                [(k, v) for k, v in result.items() if not isinstance(v, dict)])
    print(f"written {write_result('dedupe_memory', result)}")


if __name__ == "__main__":
    main()
