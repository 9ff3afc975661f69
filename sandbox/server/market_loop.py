"""The one task that drives the engine and fans its events out to subscribed sockets.

Every ``step_ms``: ``exchange.step()`` over the markets in slices of about ``SLICE_S`` of work, each
slice's events drained and published before the event loop gets a turn, so that a request never waits
behind a whole step of 400 markets; every ``book_flush_ms`` (if not 0, i.e. batched books):
``flush_book_events()``; every ``ticker24h_ms``: one ``ticker24h`` frame per socket with the
markets that socket subscribed. Each event is serialised once and the same text is queued to
every subscriber (see ``ws.Hub.publish``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sandbox.engine.events import BookEvent, CandleEvent, FillEvent, OrderEvent, TickerEvent, TradeEvent
from sandbox.server.faults import FaultInjector
from sandbox.server.metrics import Metrics
from sandbox.server.ws import Hub, _dumps
from tradestack.gc_tuning import GcTuner
from tradestack.logs import get_logger

log = get_logger(__name__)

STEP_SLICE = 4  # markets per engine call
SLICE_S = 0.0005  # engine work between two turns of the event loop (order round trips wait for it)
FLUSH_S = 0.004  # market data leaves at least this often; meanwhile frames gather into one write
# Event-loop turns given away between two slices. On Python 3.11 a REST request takes four turns
# from socket to answer (read -> aiohttp's connection task -> handler task -> the connection task
# writes the answer); with one turn per slice it waited behind a slice at every step. Order round
# trip p99 at 21.8k events/s: 7.4-9 ms with one turn, 2.1-2.6 ms with four (docs/sandbox.md).
# An idle turn costs one epoll call (~10 us).
TURNS_PER_SLICE = 4


def event_route(ev: Any) -> tuple[tuple[str, ...], str]:
    """(subscription key, metrics channel) of an engine event."""
    cls = type(ev)
    if cls is BookEvent:
        return ("book", ev.market), "book"
    if cls is TradeEvent:
        return ("trades", ev.market), "trades"
    if cls is TickerEvent:
        return ("ticker", ev.market), "ticker"
    if cls is CandleEvent:
        return ("candles", ev.interval, ev.market), "candles"
    if cls is OrderEvent or cls is FillEvent:
        return ("account", ev.api_key, ev.market), "account"
    raise TypeError(f"unknown engine event {cls.__name__}")


class MarketLoop:
    def __init__(
        self,
        exchange: Any,
        hub: Hub,
        metrics: Metrics,
        faults: FaultInjector,
        *,
        step_ms: int = 50,
        book_flush_ms: int = 0,
        ticker24h_ms: int = 1000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.exchange = exchange
        self.hub = hub
        self.metrics = metrics
        self.faults = faults
        self.step_s = step_ms / 1000
        self.book_s = book_flush_ms / 1000
        self.t24_s = ticker24h_ms / 1000
        self._mono = monotonic
        self._task: asyncio.Task[None] | None = None
        self.iterations = 0
        self.gc = GcTuner(monotonic=monotonic)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sandbox-market-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def publish_pending(self) -> None:
        """Fan out whatever the engine has queued; also called right after each API call. Order
        and fill events (channel ``account``) leave at once; market data waits for the next
        flush (at most ``FLUSH_S``), so a request does not also pay for writing everybody's
        queued market data before its own answer."""
        publish = self.hub.publish
        for ev in self.exchange.drain_events():
            key, channel = event_route(ev)
            publish(key, channel, ev.to_ws)
        if self.hub.unflushed:
            self.hub.flush_soon(FLUSH_S)  # also between two steps of the market loop

    def flush_books(self) -> None:
        publish = self.hub.publish
        for ev in self.exchange.flush_book_events():
            publish(("book", ev.market), "book", ev.to_ws)
        self.hub.flush()

    def send_ticker24h(self) -> None:
        markets = sorted({k[1] for k in self.hub.index if k[0] == "ticker24h"})
        if not markets:
            return
        rows = {r["market"]: r for r in self.exchange.ticker24h_rows(markets)}
        frames: dict[tuple[str, ...], str] = {}  # one serialisation per distinct market set
        sent = 0
        for s in list(self.hub.sessions.values()):
            mine = s.subs.get("ticker24h")
            if not mine:
                continue
            wanted = tuple(m for m in mine if m in rows)
            if not wanted:
                continue
            data = frames.get(wanted)
            if data is None:
                data = frames[wanted] = _dumps({"event": "ticker24h", "data": [rows[m] for m in wanted]})
            s.send(data)
            sent += 1
        if sent:
            self.metrics.ws_event("ticker24h", sent)

    async def _run(self) -> None:
        mono = self._mono
        next_book = next_t24 = mono()
        next_drop = None
        while True:
            t0 = mono()
            try:
                states = list(self.exchange.mstates.values())
                i = 0
                last_flush = t0
                while i < len(states):
                    # Markets until ~SLICE_S of work, then requests get their turn.
                    t_slice = mono()
                    while i < len(states) and mono() - t_slice < SLICE_S:
                        self.exchange.step(states[i:i + STEP_SLICE])
                        self.publish_pending()
                        i += STEP_SLICE
                    if i < len(states):
                        if t_slice - last_flush >= FLUSH_S:
                            self.hub.flush()
                            last_flush = t_slice
                        for _ in range(TURNS_PER_SLICE):
                            await asyncio.sleep(0)
                        if self.gc.tick():  # a pause of its own, not added to a slice
                            for _ in range(TURNS_PER_SLICE):
                                await asyncio.sleep(0)
                self.hub.flush()
                if self.book_s and t0 >= next_book:
                    self.flush_books()
                    next_book = t0 + self.book_s
                if t0 >= next_t24:
                    self.send_ticker24h()
                    next_t24 = t0 + self.t24_s
                wd = self.faults.ws_disconnect
                if wd is not None and wd.every_secs:
                    if next_drop is None:
                        next_drop = t0 + wd.every_secs
                    elif t0 >= next_drop:
                        n = self.hub.drop("all", wd.mode)
                        self.faults._count("ws_drop", n)
                        next_drop = t0 + wd.every_secs
                else:
                    next_drop = None
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must survive one bad step; logged with traceback
                log.exception("market_step_failed")
            self.gc.tick()  # between ticks: its pauses never split a step
            dt = mono() - t0
            self.metrics.step_seconds.observe(dt)
            self.iterations += 1
            await asyncio.sleep(max(self.step_s - dt, 0.0))
