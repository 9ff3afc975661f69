"""Candle feed: WS ``candles`` updates, closed when their period is over, REST backfill at start
and after every reconnect.

Per (market, interval) the feed keeps the newest closed candle published (``last_closed``) and
the candle still forming (``current``). A candle is published ``closed`` exactly once:

- when the WS shows the next period's candle, or when the clock passes its period end plus a
  grace (no trade since: Bitvavo sends nothing for a period without trades);
- or by the backfill, which asks ``GET /{market}/candles`` from ``last_closed`` + one period to now.
  A fetched candle is over when a later period has a candle (trades come in time order), or when
  its period ended a grace before the request; the newest one still open becomes ``current``.

While a (market, interval) waits for its backfill, WS closes for it are deferred to the
backfill, so closed candles are published in order and ``last_closed`` never jumps a hole. A
candle the WS shows to be over meanwhile is held (``held``), not dropped: the backfill publishes
it with the rows it fetched (of two states of one period, the one with more volume is the later).

No endless re-fetch: a period without trades simply has no candle; each backfill pass asks
each (market, interval) once (a full page pages backwards, always moving ``end`` back), and only
a reconnect starts a new pass. Requests go through the REST client's rate budget.

A reconnect skips the fetch for a (market, interval) that was in step when the WS dropped (no
backfill pending) and whose forming candle is of the period still running: a candle of period P
was delivered, and trades of a market come in order, so whatever the outage lost came after a
trade of P, and no period boundary lies between. Only P's state may lack trades of the outage, so
the key is ``unconfirmed`` until the WS shows P again (Bitvavo sends the whole candle of the
period on each trade: nothing is missing any more) or, if first the WS shows a later period or
the clock passes P's end plus the grace, until a backfill fetched it (a ``recheck``: P may have
had trades only during the outage, which the WS never shows). Any other key is fetched at once:
a period boundary may lie in the outage, or there is no candle to tell where we were.

On start, the newest entries of each ``bitvavo:candles:<interval>`` stream are read back to
learn ``last_closed`` per market, so a restart publishes no closed candle twice and misses none.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import datetime, timezone
from decimal import Decimal
from time import perf_counter
from typing import Any

import redis.asyncio as aioredis

from tradestack import streams
from tradestack.aio import wait_or_stop
from tradestack.bitvavo import parse
from tradestack.bitvavo.feeds import Feed
from tradestack.bitvavo.rest import BitvavoRest, RestError
from tradestack.bus import REDIS_DOWN
from tradestack.errors import PoisonMessage
from tradestack.logs import get_logger
from tradestack.messages import CandleUpdated, decode, encode_data

log = get_logger(__name__)

MINUTE = 60_000
WIDTH_MS = {"1m": MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE, "30m": 30 * MINUTE, "1h": 60 * MINUTE,
            "2h": 120 * MINUTE, "4h": 240 * MINUTE, "6h": 360 * MINUTE, "8h": 480 * MINUTE, "12h": 720 * MINUTE,
            "1d": 1440 * MINUTE, "1W": 7 * 1440 * MINUTE}
_MONDAY = 4 * 1440 * MINUTE  # 1970-01-05 was a Monday
REST_LIMIT = 1440
Key = tuple[str, str]  # (market, interval)


def period_start(interval: str, ts: int) -> int:
    if interval == "1M":
        d = datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
        return int(datetime(d.year, d.month, 1, tzinfo=timezone.utc).timestamp() * 1000)
    if interval == "1W":
        return ts - (ts - _MONDAY) % WIDTH_MS["1W"]
    return ts - ts % WIDTH_MS[interval]


def period_end(interval: str, open_ts: int) -> int:
    """The first millisecond after the period that starts at ``open_ts``."""
    if interval == "1M":
        d = datetime.fromtimestamp(open_ts / 1000, tz=timezone.utc)
        nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=timezone.utc)
        return int(nxt.timestamp() * 1000)
    return open_ts + WIDTH_MS[interval]


def _later(a: parse.Candle | None, b: parse.Candle) -> parse.Candle:
    """Of two states of one period, the later: volume only grows as trades come in (ties: ``b``)."""
    if a is None or Decimal(b.volume) >= Decimal(a.volume):
        return b
    return a


def periods_back(interval: str, now: int, n: int) -> int:
    start = period_start(interval, now)
    for _ in range(n):
        start = period_start(interval, start - 1)
    return start


class CandleFeed(Feed):
    channel = "candles"
    _TYPE = CandleUpdated.TYPE.encode()

    def __init__(self, *, rest: BitvavoRest, intervals: list[str], redis: aioredis.Redis | None = None,
                 close_grace_ms: int = 2_000, backfill_periods: int = 60, scan_entries: int = 50_000,
                 close_check_s: float = 0.5, **kw: Any) -> None:
        super().__init__(**kw)
        self.rest = rest
        self.intervals = list(intervals)
        self.redis = redis
        self.close_grace_ms = close_grace_ms
        self.backfill_periods = backfill_periods
        self.scan_entries = scan_entries
        self.close_check_s = close_check_s
        self.last_closed: dict[Key, int] = {}
        self.current: dict[Key, parse.Candle] = {}
        self.pending: set[Key] = set()  # waiting for a backfill
        self.held: dict[Key, dict[int, parse.Candle]] = {}  # over while pending: the backfill publishes them
        # Skipped at a reconnect: ``current`` may lack trades of the outage until the WS shows its period
        # again; never pending at the same time (a backfill request drops the key from here).
        self.unconfirmed: set[Key] = set()
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._work = asyncio.Event()
        self._loaded = asyncio.Event()
        self.backfill_requests = 0
        self.backfills_skipped = 0  # at reconnects
        self.rechecks = 0  # skipped keys fetched after all

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, markets: set[str]) -> None:
        assert self.ws is not None
        for iv in self.intervals:
            await self.ws.subscribe("candles", markets, iv)

    async def unsubscribe(self, markets: set[str]) -> None:
        assert self.ws is not None
        for iv in self.intervals:
            await self.ws.unsubscribe("candles", markets, iv)

    def track(self, markets: set[str]) -> None:
        for m in sorted(markets):
            for iv in self.intervals:
                self._request_backfill((m, iv))

    def forget(self, markets: set[str]) -> None:
        for key in [k for k in self.current if k[0] in markets]:
            del self.current[key]
        for key in [k for k in self.held if k[0] in markets]:
            del self.held[key]
        self.pending = {k for k in self.pending if k[0] not in markets}
        self.unconfirmed = {k for k in self.unconfirmed if k[0] not in markets}

    def on_connected(self) -> None:
        # Whatever happened while we were away is fetched again, per (market, interval), once, unless
        # the outage cannot have hidden a closed candle (see the module doc).
        now = self.clock.now_ms()
        fetch: dict[str, int] = {}
        skipped: dict[str, int] = {}
        for m in sorted(self.markets):
            for iv in self.intervals:
                key = (m, iv)
                cur = self.current.get(key)
                if key not in self.pending and cur is not None and cur.open_ts == period_start(iv, now):
                    self.unconfirmed.add(key)
                    skipped[iv] = skipped.get(iv, 0) + 1
                else:
                    self._request_backfill(key)
                    fetch[iv] = fetch.get(iv, 0) + 1
        n_skipped = sum(skipped.values())
        self.backfills_skipped += n_skipped
        if self.metrics is not None:
            for iv, n in skipped.items():
                self.metrics.candle_backfills_skipped.labels(interval=iv).inc(n)
        if self.markets:
            log.info("candle_backfills_planned", fetch=sum(fetch.values()), skipped=n_skipped,
                     fetch_by_interval=fetch, skipped_by_interval=skipped)

    def _recheck(self, key: Key) -> None:
        """A skipped key's period may hold trades of the outage the WS will not show: fetch it."""
        self.rechecks += 1
        if self.metrics is not None:
            self.metrics.candle_backfill_rechecks.labels(interval=key[1]).inc()
        self._request_backfill(key)

    def _request_backfill(self, key: Key) -> None:
        # Queued again even while a backfill for it runs: that one may have asked before a reconnect.
        self.unconfirmed.discard(key)  # the backfill covers the forming candle too
        self.pending.add(key)
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._work.set()

    # -- publishing ------------------------------------------------------------------------

    def _publish(self, c: parse.Candle, closed: bool, t0: float) -> None:
        now = self.clock.now_ms()
        msg = parse.candle_message(c, closed, now, self.src)
        self.emitter.emit(streams.candles(c.interval), self._TYPE, encode_data(msg), f"candles/{c.interval}", now, t0)
        if closed:
            self.last_closed[(c.market, c.interval)] = c.open_ts
            if self.metrics is not None:
                self.metrics.candles_closed.labels(interval=c.interval).inc()

    def on_event(self, frame: dict[str, Any], t0: float) -> None:
        if frame.get("event") != "candle":
            raise ValueError(f"unexpected event {frame.get('event')!r} on the candles feed")
        for c in parse.parse_candle_event(frame):
            key = (c.market, c.interval)
            if c.market not in self.markets or c.interval not in self.intervals:
                continue
            self.count(f"candles:{c.interval}", c.market)
            if c.open_ts <= self.last_closed.get(key, -1):
                continue  # already closed and published
            cur = self.current.get(key)
            if cur is not None and c.open_ts < cur.open_ts:
                continue  # an older period's late update
            if key in self.unconfirmed:
                if cur is not None and c.open_ts == cur.open_ts:
                    self.unconfirmed.discard(key)  # the period's whole candle, trades of the outage included
                else:
                    self._recheck(key)  # `cur` may lack trades of the outage: held below, fetched
            if cur is not None and c.open_ts > cur.open_ts:  # the next period started: the previous one is over
                if key in self.pending:
                    self._hold(key, cur)  # published in order by the backfill
                else:
                    self._publish(cur, True, t0)
            self.current[key] = c
            self._publish(c, False, t0)

    def close_due(self) -> int:
        """Close forming candles whose period (plus grace) is over (no WS update since)."""
        if not self.connected.is_set():
            return 0  # while down we may have missed trades: the backfill after reconnect closes them
        now = self.clock.now_ms()
        closed = rechecked = 0
        for key, c in list(self.current.items()):
            if key in self.pending:
                continue
            if period_end(c.interval, c.open_ts) + self.close_grace_ms <= now:
                if key in self.unconfirmed:  # no trade since the reconnect: the outage may have had some
                    self._recheck(key)
                    rechecked += 1
                    continue
                self._publish(c, True, perf_counter())
                del self.current[key]
                closed += 1
        if rechecked:
            log.info("candle_backfill_rechecks", count=rechecked)
        return closed

    def _hold(self, key: Key, c: parse.Candle) -> None:
        held = self.held.setdefault(key, {})
        held[c.open_ts] = _later(held.get(c.open_ts), c)

    # -- backfill --------------------------------------------------------------------------

    async def backfill(self, key: Key) -> int:
        market, iv = key
        now = self.clock.now_ms()  # the answer is at least this recent
        last = self.last_closed.get(key)
        start = period_end(iv, last) if last is not None else periods_back(iv, now, self.backfill_periods)
        published = 0
        rows: list[parse.Candle] = []
        end = now
        while start <= end:  # newest first, `limit` per page: page backwards until the range is covered
            answer = await self.rest.candles(market, iv, start=start, end=end, limit=REST_LIMIT)
            self.backfill_requests += 1
            page = parse.parse_rest_candles(market, iv, answer)
            rows.extend(page)
            if len(page) < REST_LIMIT:
                break
            end = page[0].open_ts - 1  # always moves back: finite, even across periods without trades
        # What is known of each period after `last_closed`: the rows, the candles the WS showed to be
        # over while we waited (held), and the one forming. Trades come in time order, so a period
        # is over as soon as a later one has a candle; the newest is over once its period ended a
        # grace before the request was made.
        known: dict[int, parse.Candle] = {}
        for c in rows:
            known[c.open_ts] = _later(known.get(c.open_ts), c)
        for c in self.held.pop(key, {}).values():
            known[c.open_ts] = _later(known.get(c.open_ts), c)
        cur = self.current.get(key)
        if cur is not None:
            known[cur.open_ts] = _later(known.get(cur.open_ts), cur)
        done = self.last_closed.get(key, -1)
        opens = sorted(ts for ts in known if ts > done)
        t0 = perf_counter()
        for i, ts in enumerate(opens):
            c = known[ts]
            if i + 1 < len(opens) or period_end(iv, ts) + self.close_grace_ms <= now:
                self._publish(c, True, t0)
                published += 1
                if self.metrics is not None:
                    self.metrics.candles_backfilled.labels(interval=iv).inc()
                if cur is not None and cur.open_ts <= ts:
                    del self.current[key]
                    cur = None
            else:
                if c is not cur:
                    self.current[key] = c
                    self._publish(c, False, t0)
        return published

    async def _backfill_worker(self, stop: asyncio.Event) -> None:
        await self._loaded.wait()
        while not stop.is_set():
            if not self._queue or not self.connected.is_set():
                self._work.clear()
                await (self.connected.wait() if not self.connected.is_set() else self._work.wait())
                continue
            # Shortest interval first: its candles are due soonest.
            key = min(self._queue, key=lambda k: WIDTH_MS.get(k[1], 10**12))
            self._queue.remove(key)
            self._queued.discard(key)
            if key[0] not in self.markets:
                self.pending.discard(key)
                self.held.pop(key, None)
                continue
            try:
                await self.backfill(key)
            except (RestError, parse.ParseError) as exc:
                log.warning("candle_backfill_failed", market=key[0], interval=key[1], error=str(exc))
                self._request_backfill(key)  # once more in this pass, after the others
                await asyncio.sleep(1.0)
                continue
            if key not in self._queued:
                self.pending.discard(key)

    async def load_published(self) -> None:
        """Learn the newest closed candle per (market, interval) from the streams (restart safety)."""
        if self.redis is None:
            return
        for iv in self.intervals:
            stream = streams.candles(iv)
            end = b"+"
            seen = 0
            while seen < self.scan_entries:
                entries = await self.redis.xrevrange(stream, max=end, min=b"-", count=2000)
                if not entries:
                    break
                for _, fields in entries:
                    try:
                        msg = decode(fields)
                    except PoisonMessage:
                        continue
                    if isinstance(msg, CandleUpdated) and msg.closed:
                        key = (msg.market, msg.interval)
                        if msg.open_ts > self.last_closed.get(key, -1):
                            self.last_closed[key] = msg.open_ts
                seen += len(entries)
                last_id = entries[-1][0]
                end = b"(" + (last_id if isinstance(last_id, bytes) else str(last_id).encode())
                if self.markets and all((m, iv) in self.last_closed for m in self.markets):
                    break
        log.info("candles_resumed", known=len(self.last_closed))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.load_published()
                break
            except REDIS_DOWN as exc:
                log.warning("candles_resume_failed", error=f"{type(exc).__name__}: {exc}")
                await wait_or_stop(stop, 1.0)
        self._loaded.set()
        worker = asyncio.create_task(self._backfill_worker(stop), name="candle-backfill")
        try:
            while not stop.is_set():
                await wait_or_stop(stop, self.close_check_s)
                self.close_due()
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
