"""CandleFeed closing logic without Redis or an exchange: a stub emitter, a stub REST client and a
fake clock. The races here are the ones the e2e test hits by chance near a reconnect."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tradestack.bitvavo.candles import CandleFeed
from tradestack.clock import FakeClock

M = "BTC-EUR"
MIN = 60_000
T0 = 1_700_000_040_000 // MIN * MIN  # a minute boundary


class StubEmitter:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def emit(self, stream: str | None, mtype: bytes, data: bytes, kind: str, recv_ms: int, t0: float) -> None:
        self.rows.append(orjson.loads(data))

    def closed(self) -> list[tuple[int, str]]:
        return [(r["open_ts"], r["volume"]) for r in self.rows if r["closed"]]


class StubRest:
    """Answers ``candles`` from a list of rows (newest first, like Bitvavo); ``gate`` holds the answer."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.calls: list[tuple[int | None, int | None]] = []
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    async def candles(self, market: str, interval: str, *, start: int | None = None, end: int | None = None,
                      limit: int | None = None) -> Any:
        self.calls.append((start, end))
        answer = [r for r in sorted(self.rows, reverse=True)
                  if (start is None or r[0] >= start) and (end is None or r[0] <= end)]  # taken when asked
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        return answer[:limit]


def row(open_ts: int, volume: str) -> list[Any]:
    return [open_ts, "100", "101", "99", "100.5", volume]


def event(open_ts: int, volume: str) -> dict[str, Any]:
    return {"event": "candle", "market": M, "interval": "1m", "candle": [row(open_ts, volume)]}


def make_feed(clock: FakeClock) -> tuple[CandleFeed, StubEmitter, StubRest]:
    emitter, rest = StubEmitter(), StubRest()
    feed = CandleFeed(rest=rest, intervals=["1m"], close_grace_ms=3_000, backfill_periods=5, src="test",  # type: ignore[arg-type]
                      emitter=emitter, metrics=None, clock=clock)  # type: ignore[arg-type]
    feed.markets = {M}
    feed.last_closed[(M, "1m")] = T0 - MIN
    feed.connected.set()
    return feed, emitter, rest


def test_backfill_inside_the_grace_closes_the_period_a_later_one_follows() -> None:
    """The reconnect comes 1.5 s after a minute ended (inside the 3 s grace): the answer has that
    minute and the new one. The ended minute is over (a later one has trades) and is published."""
    clock = FakeClock(T0 + MIN + 1_500)
    feed, emitter, rest = make_feed(clock)
    rest.rows = [row(T0, "2"), row(T0 + MIN, "0.5")]
    feed.on_event(event(T0, "1"), 0.0)  # seen before the drop
    feed.on_connected()

    async def main() -> None:
        assert await feed.backfill((M, "1m")) == 1

    asyncio.run(main())
    assert emitter.closed() == [(T0, "2")]
    assert feed.last_closed[(M, "1m")] == T0
    assert feed.current[(M, "1m")].open_ts == T0 + MIN
    clock.advance(MIN + 3_000)
    feed.pending.clear()  # what the backfill worker does once this key is done
    assert feed.close_due() == 1
    assert emitter.closed() == [(T0, "2"), (T0 + MIN, "0.5")]


def test_next_period_on_the_ws_during_a_backfill_holds_the_ended_one() -> None:
    """While the backfill's answer is on its way the WS shows the next minute: the ended minute is
    held, then published (in order, once) with the fetched rows; its later state (more volume) wins."""
    clock = FakeClock(T0 + MIN - 500)
    feed, emitter, rest = make_feed(clock)
    rest.rows = [row(T0, "1")]  # asked before the minute ended
    rest.gate = asyncio.Event()

    async def main() -> None:
        feed.on_connected()
        task = asyncio.create_task(feed.backfill((M, "1m")))
        await rest.asked.wait()
        feed.on_event(event(T0, "1.5"), 0.0)  # the last trades of the minute
        clock.advance(1_000)
        feed.on_event(event(T0 + MIN, "0.1"), 0.0)  # the next minute began
        assert emitter.closed() == []  # deferred to the backfill: order
        rest.gate.set()
        assert await task == 1

    asyncio.run(main())
    assert emitter.closed() == [(T0, "1.5")]
    assert feed.current[(M, "1m")].open_ts == T0 + MIN
    assert not feed.held


def test_periods_without_trades_are_not_asked_again_and_not_invented() -> None:
    """A gap (no trades for two minutes) is skipped once; the backfill does not page endlessly."""
    clock = FakeClock(T0 + 4 * MIN + 10_000)
    feed, emitter, rest = make_feed(clock)
    rest.rows = [row(T0, "1"), row(T0 + 3 * MIN, "2"), row(T0 + 4 * MIN, "0.2")]
    feed.on_connected()

    async def main() -> None:
        await feed.backfill((M, "1m"))

    asyncio.run(main())
    assert emitter.closed() == [(T0, "1"), (T0 + 3 * MIN, "2")]
    assert len(rest.calls) == 1
    assert feed.current[(M, "1m")].open_ts == T0 + 4 * MIN


def test_a_reconnect_during_a_backfill_fetches_again() -> None:
    """A backfill asked before a reconnect cannot know what the dropped connection lost: the
    reconnect queues the key again and the worker runs a second backfill before it stops waiting."""
    clock = FakeClock(T0 + 30_000)
    feed, emitter, rest = make_feed(clock)
    rest.gate = asyncio.Event()

    async def main() -> None:
        stop = asyncio.Event()
        feed._loaded.set()
        feed.on_connected()
        worker = asyncio.create_task(feed._backfill_worker(stop))
        await rest.asked.wait()
        feed.on_state(False)
        clock.advance(MIN)  # trades while we were away
        rest.rows = [row(T0, "1"), row(T0 + MIN, "3")]
        feed.on_state(True)
        feed.on_connected()
        rest.gate.set()
        for _ in range(100):
            if not feed.pending:
                break
            await asyncio.sleep(0)
        stop.set()
        feed._work.set()
        await asyncio.wait_for(worker, 1)

    asyncio.run(main())
    assert len(rest.calls) == 2
    assert emitter.closed() == [(T0, "1")]
    assert feed.current[(M, "1m")].open_ts == T0 + MIN
