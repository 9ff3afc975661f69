"""Order-book ingest against the sandbox exchange, with WS drops and nonce gaps injected:
every local book must equal the exchange's book.

The fault schedule is driven by what the ingest has seen, not by the wall clock: each fault is
injected once the books are synced, and the next one waits until the feed has counted this one
and resynced, so the test checks the same thing on a slow machine as on a fast one."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import redis

from ingest.orderbook import Settings
from tests.ingest.helpers import FreezableClock, ingest_service, poll, sandbox
from tradestack import streams
from tradestack.bitvavo.feeds import BookFeed
from tradestack.messages import decode

DROPS = 3
GAPS_PER_DROP = 4


def _settings(sb, redis_url: str, tmp_path: Path, **kw) -> Settings:
    return Settings(redis_url=redis_url, bitvavo_rest_url=sb.rest_url, bitvavo_ws_url=sb.ws_url, metrics_port=0,
                    parquet_dir=str(tmp_path / "parquet"), ingest_markets=kw.pop("markets", ["all"]),
                    rest_points_per_min=900, ws_reconnect_base_s=0.05, ws_reconnect_cap_s=0.5,
                    book_snapshot_every_s=60.0, **kw)  # snapshot rows come from each (re)sync


def _as_dec(levels) -> dict[Decimal, Decimal]:
    return {Decimal(p): Decimal(s) for p, s in levels}


def test_local_books_equal_the_exchange_after_faults(redis_url: str, rclient: redis.Redis, tmp_path: Path) -> None:
    async def main() -> None:
        clock = FreezableClock()
        async with sandbox(clock, seed=7) as sb:
            settings = _settings(sb, redis_url, tmp_path)
            async with ingest_service("ingest_orderbook", settings, lambda service, **kw: BookFeed(**kw)) as (service, feed):
                assert isinstance(feed, BookFeed)
                markets = sb.exchange.market_ids
                await poll(lambda: len(feed.syncs) == len(markets) and all(s.synced for s in feed.syncs.values()),
                           what="all books synced")
                assert service.state == "running"
                metrics, prefix = service.metrics.registry, service.metrics.prefix

                def gaps_seen(m: str) -> float:
                    return metrics.get_sample_value(f"{prefix}_nonce_gaps_total", {"market": m}) or 0.0

                def reconnects() -> float:
                    return metrics.get_sample_value(f"{prefix}_reconnects_total") or 0.0

                def all_synced() -> bool:
                    return feed.connected.is_set() and all(s.synced for s in feed.syncs.values())

                rng = random.Random(3)
                drops = gaps = 0
                for _ in range(DROPS):  # per round: nonce gaps on two markets at a time, then a WS drop
                    for _ in range(GAPS_PER_DROP):
                        pair = rng.sample(markets, 2)
                        before = {m: gaps_seen(m) for m in pair}
                        sb.faults.apply({"nonce_gap": pair})
                        gaps += 1
                        await poll(lambda pair=pair, before=before: all(gaps_seen(m) > before[m] for m in pair)
                                   and all_synced(), 20, f"nonce gaps on {pair} seen and resynced")
                    seen = reconnects()
                    sb.faults.apply({"ws_drop": "all"})
                    drops += 1
                    await poll(lambda seen=seen: reconnects() > seen and all_synced(), 20,
                               "reconnected and resynced after a drop")
                # Stop the markets' time, step every market up to that instant and send its deltas, then
                # wait for every book to catch up. (Frozen, a REST snapshot steps no market any further.)
                clock.freeze()
                await sb.loop.stop()
                sb.exchange.step()
                sb.loop.publish_pending()
                sb.loop.flush_books()
                truth = {m: sb.exchange.book(m, {}) for m in markets}
                await poll(lambda: all(feed.syncs[m].synced and feed.syncs[m].book.nonce == truth[m]["nonce"]
                                       for m in markets), 20, "books caught up")
                for m in markets:
                    book = feed.syncs[m].book
                    assert dict(book.bids) == _as_dec(truth[m]["bids"]), m
                    assert dict(book.asks) == _as_dec(truth[m]["asks"]), m
                assert sum(gaps_seen(m) for m in markets) == feed.gaps >= 2 * gaps
                assert reconnects() >= drops
                assert feed.resyncs >= len(markets) * (1 + drops) + 2 * gaps  # the first sync, each drop, each gap
                await poll(lambda: feed.emitter._idle.is_set(), 5, "emitter drained")
                # The last top of book in the stream is the book's top, for every market.
                tops = {}
                for _, fields in rclient.xrevrange(streams.BOOK, count=5000):
                    msg = decode(fields)
                    tops.setdefault(msg.market, msg)
                for m in markets:
                    bid, bid_size, ask, ask_size = feed.syncs[m].book.top()
                    t = tops[m]
                    assert (t.bid, t.bid_size, t.ask, t.ask_size) == (bid, bid_size, ask, ask_size), m
                    assert t.mid == (bid + ask) / 2
                # Every delta received was published once.
                received = sum(sample.value for family in metrics.collect() if family.name == f"{prefix}_ws_messages"
                               for sample in family.samples
                               if sample.name.endswith("_total") and sample.labels.get("channel") == "book")
                assert received > 0 and rclient.xlen(streams.ORDERBOOK_UPDATE) == received
        # After stop: deltas reached the stream, files are there and compact to the declared schema.
        from tradestack.storage import ParquetSink, schema_of
        sink = ParquetSink(tmp_path / "parquet")
        files = sink.compact_due(include_current=True)
        kinds = {"/".join(p.parent.parts[-2:]) for p in files}
        assert kinds == {"orderbook/update", "orderbook/top", "orderbook/snapshot"}
        for p in files:
            assert pq.read_table(p).schema.equals(schema_of("/".join(p.parent.parts[-2:])))
        n_update = sum(pq.read_metadata(p).num_rows for p in files if p.parent.name == "update")
        assert n_update >= rclient.xlen(streams.ORDERBOOK_UPDATE)

    asyncio.run(main())
