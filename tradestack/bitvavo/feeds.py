"""The three market-data feeds (ticker24h, book, candles) on top of the WS client, the REST
client and the emitter, plus market selection (a list, ``all`` or the live universe).

A feed is driven by WS callbacks (``on_event`` for frames, ``on_connected`` after each
(re)connect) and by its own tasks (book snapshots, candle backfill and closing). Every feed
exposes ``set_markets`` so the universe follower can add and remove markets live.
"""

from __future__ import annotations

import asyncio
from collections import deque
from decimal import Decimal
from time import perf_counter
from typing import Any, Iterable

import orjson
import redis.asyncio as aioredis
from prometheus_client import Histogram

from tradestack import streams
from tradestack.aio import wait_or_stop
from tradestack.bitvavo import parse
from tradestack.bitvavo.book import BookSync, Status, mid_and_spread_bps
from tradestack.bitvavo.emit import Emitter, Row
from tradestack.bitvavo.rest import BitvavoRest, RestError
from tradestack.bitvavo.ws import BitvavoWs
from tradestack.bus import REDIS_DOWN
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.logs import get_logger
from tradestack.messages import derive_id, encode_data
from tradestack.metrics import ServiceMetrics

log = get_logger(__name__)

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PUBLISH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


class IngestMetrics:
    """``trader_ingest_*`` on top of the service's standard set."""

    def __init__(self, m: ServiceMetrics) -> None:
        self.ws_messages = m.hot_counter("ws_messages_total", "WS events received, by channel and market",
                                         ["channel", "market"])
        self.reconnects = m.counter("reconnects_total", "WS (re)connections after the first", [])
        self.ws_connected = m.gauge("ws_connected", "1 while the exchange WS is up", [])
        self.unexpected = m.counter("unexpected_frames_total", "WS frames not understood, by reason", ["reason"])
        self.resyncs = m.counter("resyncs_total", "Book snapshots loaded (initial sync and resyncs)", ["market"])
        self.nonce_gaps = m.counter("nonce_gaps_total", "Book nonce gaps or resets detected", ["market"])
        self.lag = m.histogram("exchange_lag_seconds", "Exchange event time to receive time", ["channel"],
                               buckets=LAG_BUCKETS)
        self.publish_latency = m.hot_histogram("publish_latency_seconds", "Receive to XADD done (disk first)",
                                               buckets=PUBLISH_BUCKETS)
        self.rows = m.counter("rows_written_total", "Rows written to JSONL, by dataset", ["dataset"])
        self.bytes = m.counter("bytes_written_total", "Bytes written to JSONL, by dataset", ["dataset"])
        self.rest = m.counter("rest_requests_total", "REST requests, by endpoint and outcome", ["endpoint", "outcome"])
        self.markets = m.gauge("markets", "Markets subscribed", [])
        self.candles_backfilled = m.counter("candles_backfilled_total", "Candles published from REST backfill", ["interval"])
        self.candles_closed = m.counter("candles_closed_total", "Closed candles published", ["interval"])
        self.candle_backfills_skipped = m.counter("candle_backfills_skipped_total",
                                                  "Reconnect backfills skipped (no period can have ended unseen)",
                                                  ["interval"])
        self.candle_backfill_rechecks = m.counter("candle_backfill_rechecks_total",
                                                  "Skipped keys fetched after all (the WS did not confirm the period)",
                                                  ["interval"])
        self.parquet_files = m.counter("parquet_files_total", "Parquet files written by compaction", [])
        self._pub = m.published
        self._obs = self.publish_latency.observe

    def observe_batch(self, batch: list[Row], now: float) -> None:
        obs = self._obs
        rows: dict[str, list[int]] = {}
        pubs: dict[str, int] = {}
        for stream, _, data, kind, _, t0 in batch:
            r = rows.setdefault(kind, [0, 0])
            r[0] += 1
            r[1] += len(data) + 24
            if stream is not None:
                pubs[stream] = pubs.get(stream, 0) + 1
                obs(now - t0)
        for kind, (n, b) in rows.items():
            self.rows.labels(dataset=kind).inc(n)
            self.bytes.labels(dataset=kind).inc(b)
        for stream, n in pubs.items():
            self._pub.labels(stream=stream).inc(n)


class Feed:
    """Common plumbing: the WS client, the emitter, metrics, the market set."""

    channel = ""

    def __init__(self, *, src: str, emitter: Emitter, metrics: IngestMetrics | None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.src = src
        self.emitter = emitter
        self.metrics = metrics
        self.clock = clock
        self.markets: set[str] = set()
        self.ws: BitvavoWs | None = None
        self.connected = asyncio.Event()

    def attach(self, ws: BitvavoWs) -> None:
        self.ws = ws

    def count(self, channel: str, market: str) -> None:
        if self.metrics is not None:
            self.metrics.ws_messages.inc((channel, market))

    def on_state(self, up: bool) -> None:
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        if self.metrics is not None:
            self.metrics.ws_connected.set(1 if up else 0)

    async def subscribe(self, markets: set[str]) -> None:
        assert self.ws is not None
        await self.ws.subscribe(self.channel, markets)

    async def unsubscribe(self, markets: set[str]) -> None:
        assert self.ws is not None
        await self.ws.unsubscribe(self.channel, markets)

    async def set_markets(self, markets: Iterable[str]) -> None:
        wanted = set(markets)
        added, removed = wanted - self.markets, self.markets - wanted
        if not added and not removed:
            return
        self.markets = wanted
        if removed:
            self.forget(removed)
            await self.unsubscribe(removed)
        if added:
            self.track(added)
            await self.subscribe(added)
        if self.metrics is not None:
            self.metrics.markets.set(len(wanted))
        log.info("markets_changed", channel=self.channel, added=sorted(added), removed=sorted(removed),
                 total=len(wanted))

    def track(self, markets: set[str]) -> None:
        """New markets (before their subscription is sent)."""

    def forget(self, markets: set[str]) -> None:
        """Markets no longer followed."""

    def on_event(self, frame: dict[str, Any], t0: float) -> None:
        """One WS frame of this feed's channel (``t0``: its receive ``perf_counter``)."""
        raise NotImplementedError

    def on_connected(self) -> None:
        """A new connection: per-connection state starts over."""

    async def run(self, stop: asyncio.Event) -> None:
        """The feed's own background work (none by default)."""
        await stop.wait()


# -- ticker24h -------------------------------------------------------------------------------


class TickerFeed(Feed):
    channel = "ticker24h"
    _TYPE = b"market.ticker24h"

    def on_event(self, frame: dict[str, Any], t0: float) -> None:
        if frame.get("event") != "ticker24h":
            raise ValueError(f"unexpected event {frame.get('event')!r} on the ticker24h feed")
        now = self.clock.now_ms()
        for msg in parse.parse_ticker24h(frame, self.src):
            if msg.market not in self.markets:
                continue  # a late frame for a market we just dropped
            self.count("ticker24h", msg.market)
            if self.metrics is not None:
                self.metrics.lag.labels(channel="ticker24h").observe(max(now - msg.exchange_ts, 0) / 1000)
            self.emitter.emit(streams.TICKER24H, self._TYPE, encode_data(msg), "ticker24h", now, t0)


# -- order book ------------------------------------------------------------------------------


class BookFeed(Feed):
    """Local books kept with the resync recipe; deltas, top of book on change, depth snapshots."""

    channel = "book"
    _DELTA = b"market.book_delta"
    _TOP = b"market.book_top"

    def __init__(self, *, rest: BitvavoRest, snapshot_every_s: float = 60.0, snapshot_depth: int = 50,
                 rest_depth: int | None = None, resync_workers: int = 4, **kw: Any) -> None:
        super().__init__(**kw)
        self.rest = rest
        self.snapshot_every_s = snapshot_every_s
        self.snapshot_depth = snapshot_depth
        self.rest_depth = rest_depth
        self.resync_workers = resync_workers
        self.syncs: dict[str, BookSync] = {}
        self.tops: dict[str, tuple[Decimal, Decimal, Decimal, Decimal] | None] = {}
        self.generation = 0
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._work = asyncio.Event()
        self.gaps = 0
        self.resyncs = 0
        self._lag: Histogram | None = None  # the labelled child, looked up once

    # -- markets and connections -------------------------------------------------------------

    def track(self, markets: set[str]) -> None:
        for m in markets:
            self.syncs[m] = BookSync(m)
            self.tops[m] = None
            self.request_snapshot(m)

    def forget(self, markets: set[str]) -> None:
        for m in markets:
            self.syncs.pop(m, None)
            self.tops.pop(m, None)
            self._queued.discard(m)

    def on_connected(self) -> None:
        self.generation += 1
        for m, sync in self.syncs.items():
            sync.reset()
            self.tops[m] = None
            self.request_snapshot(m)

    def request_snapshot(self, market: str) -> None:
        if market not in self._queued:
            self._queued.add(market)
            self._queue.append(market)
            self._work.set()

    # -- events --------------------------------------------------------------------------------

    def on_event(self, frame: dict[str, Any], t0: float) -> None:
        if frame.get("event") != "book":
            raise ValueError(f"unexpected event {frame.get('event')!r} on the book feed")
        ev = parse.parse_book_event(frame)
        sync = self.syncs.get(ev.market)
        if sync is None:
            return  # a late frame for a market we just dropped
        now = self.clock.now_ms()
        self.count("book", ev.market)
        msg_id, data = parse.encode_book_delta(ev, self.src)
        ex_ms = ev.exchange_ms
        if self.metrics is not None:
            if self._lag is None:
                self._lag = self.metrics.lag.labels(channel="book")
            self._lag.observe(max(now - ex_ms, 0) / 1000)
        emit = self.emitter.emit
        emit(streams.ORDERBOOK_UPDATE, self._DELTA, data, "orderbook/update", now, t0)
        status = sync.on_event(ev.nonce, ev.bids, ev.asks)
        if status is Status.APPLIED:
            self._publish_top(sync, msg_id, ex_ms, now, t0)
        elif status is Status.GAP:
            self.gaps += 1
            self.tops[ev.market] = None
            if self.metrics is not None:
                self.metrics.nonce_gaps.labels(market=ev.market).inc()
            log.warning("book_nonce_gap", market=ev.market, nonce=ev.nonce)
            self.request_snapshot(ev.market)

    def _publish_top(self, sync: BookSync, trace_id: str, ex_ms: int, now: int, t0: float) -> None:
        top = sync.book.top()
        market = sync.market
        if top is None or top == self.tops.get(market):
            return
        self.tops[market] = top
        mid, bps = mid_and_spread_bps(top[0], top[2])
        _, data = parse.encode_book_top(market, top, mid, bps, sync.book.nonce, ex_ms, trace_id, self.src)
        self.emitter.emit(streams.BOOK, self._TOP, data, "orderbook/top", now, t0)

    def _snapshot_row(self, sync: BookSync, now: int) -> None:
        bids, asks = sync.book.depth(self.snapshot_depth)
        msg_id = derive_id(f"book-snapshot/{sync.market}/{sync.book.nonce}/{now}")
        data = orjson.dumps({"id": msg_id, "ts": now, "src": self.src, "trace": {"id": msg_id, "ts": now}, "v": 1,
                             "market": sync.market, "nonce": sync.book.nonce, "bids": parse.levels_json(bids),
                             "asks": parse.levels_json(asks), "exchange_ts": now})
        self.emitter.emit(None, b"", data, "orderbook/snapshot", now, perf_counter())

    # -- snapshots -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        workers = [asyncio.create_task(self._resync_worker(stop), name=f"book-resync-{i}")
                   for i in range(self.resync_workers)]
        try:
            while not stop.is_set():
                if await wait_or_stop(stop, self.snapshot_every_s):
                    break
                now = self.clock.now_ms()
                for sync in list(self.syncs.values()):
                    if sync.synced:
                        self._snapshot_row(sync, now)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _resync_worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self._queue or not self.connected.is_set():
                self._work.clear()
                if not self.connected.is_set():
                    await self.connected.wait()
                else:
                    await self._work.wait()
                continue
            market = self._queue.popleft()
            self._queued.discard(market)
            if market not in self.syncs:
                continue
            await self.resync(market)

    async def resync(self, market: str) -> None:
        generation = self.generation
        try:
            answer = await self.rest.book(market, self.rest_depth)
            snap = parse.parse_book_snapshot(answer)
        except (RestError, parse.ParseError) as exc:
            log.warning("book_snapshot_failed", market=market, error=str(exc))
            self.request_snapshot(market)
            await asyncio.sleep(1.0)  # the REST budget paces retries; this avoids a hot loop on errors
            return
        sync = self.syncs.get(market)
        if sync is None or generation != self.generation or not self.connected.is_set():
            if sync is not None:
                self.request_snapshot(market)  # taken for an older connection: take another
            return
        status = sync.on_snapshot(snap.nonce, snap.bids, snap.asks)
        self.resyncs += 1
        if self.metrics is not None:
            self.metrics.resyncs.labels(market=market).inc()
        if status is Status.GAP:
            log.info("book_snapshot_behind", market=market, snapshot_nonce=snap.nonce, buffered=sync.buffered)
            self.request_snapshot(market)
            return
        now = self.clock.now_ms()
        log.info("book_synced", market=market, nonce=sync.book.nonce, snapshot_nonce=snap.nonce)
        self._snapshot_row(sync, now)
        self._publish_top(sync, parse.delta_id(market, snap.nonce, snap.timestamp), snap.exchange_ms or now, now,
                          perf_counter())


# -- markets ---------------------------------------------------------------------------------


async def resolve_markets(spec: list[str], rest: BitvavoRest, stop: asyncio.Event) -> list[str] | None:
    """The fixed market list, every trading market (``all``), or None for ``universe``."""
    if spec == ["universe"]:
        return None
    if spec != ["all"]:
        return list(spec)
    while not stop.is_set():
        try:
            markets = parse.trading_markets(await rest.markets())
            log.info("markets_resolved", spec="all", count=len(markets))
            return markets
        except (RestError, parse.ParseError) as exc:
            log.warning("markets_fetch_failed", error=str(exc))
            await wait_or_stop(stop, 5.0)
    return []


async def follow_universe(redis: aioredis.Redis, feeds: list[Feed], stop: asyncio.Event, poll_s: float = 2.0) -> None:
    """Keep every feed's markets equal to the members of the ``trading:universe`` hash."""
    while not stop.is_set():
        try:
            members = {k.decode() if isinstance(k, bytes) else k for k in await redis.hkeys(streams.UNIVERSE)}
            for feed in feeds:
                await feed.set_markets(members)
        except REDIS_DOWN as exc:
            log.warning("universe_read_failed", error=f"{type(exc).__name__}: {exc}")
        await wait_or_stop(stop, poll_s)
