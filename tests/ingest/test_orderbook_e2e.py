"""Order-book ingest against the sandbox exchange, with WS drops and nonce gaps injected:
every local book must equal the exchange's book."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import redis

from ingest.orderbook import Settings
from tests.ingest.helpers import ingest_service, poll, sandbox
from tradestack import streams
from tradestack.bitvavo.feeds import BookFeed
from tradestack.messages import decode


def _settings(sb, redis_url: str, tmp_path: Path, **kw) -> Settings:
    return Settings(redis_url=redis_url, bitvavo_rest_url=sb.rest_url, bitvavo_ws_url=sb.ws_url, metrics_port=0,
                    parquet_dir=str(tmp_path / "parquet"), ingest_markets=kw.pop("markets", ["all"]),
                    rest_points_per_min=900, ws_reconnect_base_s=0.05, ws_reconnect_cap_s=0.5,
                    book_snapshot_every_s=1.0, **kw)


def _as_dec(levels) -> dict[Decimal, Decimal]:
    return {Decimal(p): Decimal(s) for p, s in levels}


def test_local_books_equal_the_exchange_after_faults(redis_url: str, rclient: redis.Redis, tmp_path: Path) -> None:
    async def main() -> None:
        async with sandbox(seed=7) as sb:
            settings = _settings(sb, redis_url, tmp_path)
            async with ingest_service("ingest_orderbook", settings, lambda service, **kw: BookFeed(**kw)) as (service, feed):
                assert isinstance(feed, BookFeed)
                markets = sb.exchange.market_ids
                await poll(lambda: len(feed.syncs) == len(markets) and all(s.synced for s in feed.syncs.values()),
                           what="all books synced")
                assert service.state == "running"
                rng = random.Random(3)
                loop = asyncio.get_running_loop()
                end = loop.time() + 12.0  # "minutes" of streaming, compressed, with frequent faults
                drops = gaps = i = 0
                while loop.time() < end:
                    i += 1
                    if i % 6 == 0:  # a WS drop every ~2 s, nonce gaps on two markets in between
                        sb.faults.apply({"ws_drop": "all"})
                        drops += 1
                        await poll(lambda: service.state == "degraded" or not feed.connected.is_set(), 5,
                                   "the drop seen")
                    else:
                        sb.faults.apply({"nonce_gap": rng.sample(markets, 2)})
                        gaps += 1
                    await asyncio.sleep(0.3)  # pacing of the fault schedule, not synchronisation
                assert drops >= 3 and gaps >= 15
                # Freeze the exchange, flush its last deltas, and wait for every book to catch up.
                await sb.loop.stop()
                sb.loop.flush_books()
                truth = {m: sb.exchange.book(m, {}) for m in markets}
                await poll(lambda: all(feed.syncs[m].synced and feed.syncs[m].book.nonce == truth[m]["nonce"]
                                       for m in markets), 20, "books caught up")
                for m in markets:
                    book = feed.syncs[m].book
                    assert dict(book.bids) == _as_dec(truth[m]["bids"]), m
                    assert dict(book.asks) == _as_dec(truth[m]["asks"]), m
                assert feed.gaps >= 1 and feed.resyncs > len(markets)
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
                metrics, prefix = service.metrics.registry, service.metrics.prefix
                assert metrics.get_sample_value(f"{prefix}_reconnects_total") >= drops - 1
                assert sum(metrics.get_sample_value(f"{prefix}_nonce_gaps_total", {"market": m}) or 0
                           for m in markets) >= 1
        # After stop: deltas reached the stream, files are there and compact to the declared schema.
        assert rclient.xlen(streams.ORDERBOOK_UPDATE) > 100
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
