"""An asyncio WebSocket client for Bitvavo's public channels (aiohttp ``ws_connect``).

One connection carries every market. The client keeps the *desired* subscriptions and
re-sends them after every (re)connect; ``subscribe``/``unsubscribe`` change them live.

Liveness: aiohttp's protocol heartbeat pings every ``ping_every_s`` and drops a connection
whose pong does not come back; on top of that a feed that sends nothing for ``quiet_s`` is
treated as dead. Half-way through a quiet spell the client probes with ``getTime`` (weight 1),
so a merely idle subscription is not mistaken for a dead one.

While down the client reports ``degraded`` (``on_state(False)``) and reconnects with capped
exponential backoff and jitter (``tradestack.backoff``). Frames that are not JSON, not objects or not understood
are logged (rate-limited) and counted, never fatal; a subscribe error naming an unknown
market drops that market and re-subscribes the rest.
"""

from __future__ import annotations

import asyncio
import re
from time import perf_counter
from typing import Any, Callable, Iterable

import aiohttp
import orjson

from tradestack.aio import wait_or_stop
from tradestack.backoff import Backoff
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.logs import get_logger

log = get_logger(__name__)

SubKey = tuple[str, str | None]  # (channel, interval or None)
_BAD_MARKET = re.compile(r"market parameter (\S+) is invalid")
SUBSCRIBE_CHUNK = 500


class BitvavoWs:
    def __init__(self, url: str, *, on_event: Callable[[dict[str, Any], float], None],
                 on_connected: Callable[[], Any] | None = None,
                 on_state: Callable[[bool], None] | None = None,
                 on_unexpected: Callable[[str], None] | None = None,
                 quiet_s: float = 30.0, ping_every_s: float = 15.0, backoff: Backoff | None = None,
                 clock: Clock = SYSTEM_CLOCK, session: aiohttp.ClientSession | None = None,
                 backpressure: "Callable[[], Any] | None" = None, yield_every: int = 64) -> None:
        self.url = url
        self.on_event = on_event  # (frame, receive perf_counter) for every {"event": ...} frame
        self.on_connected = on_connected
        self.on_state = on_state
        self.on_unexpected = on_unexpected
        self.quiet_s = quiet_s
        self.ping_every_s = ping_every_s
        self.backoff = backoff or Backoff(0.25, 30.0)
        self.clock = clock
        self._session = session
        self.subs: dict[SubKey, set[str]] = {}
        # Called after frames; returns an awaitable while the consumer (the emitter) is full.
        self.backpressure = backpressure
        self.yield_every = yield_every  # let the writer run at least this often under a burst
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = False
        self.connects = 0
        self.unexpected = 0
        self._last_unexpected_log = float("-inf")
        self._last_rx = 0.0
        self._quiet_closed = False

    # -- subscriptions ---------------------------------------------------------------------

    @staticmethod
    def _channel(key: SubKey, markets: Iterable[str]) -> dict[str, Any]:
        ch: dict[str, Any] = {"name": key[0], "markets": sorted(markets)}
        if key[1] is not None:
            ch["interval"] = [key[1]]
        return ch

    async def subscribe(self, channel: str, markets: Iterable[str], interval: str | None = None) -> None:
        key = (channel, interval)
        new = set(markets) - self.subs.get(key, set())
        if not new:
            return
        self.subs.setdefault(key, set()).update(new)
        await self._send_subs("subscribe", {key: new})

    async def unsubscribe(self, channel: str, markets: Iterable[str], interval: str | None = None) -> None:
        key = (channel, interval)
        gone = set(markets) & self.subs.get(key, set())
        if not gone:
            return
        self.subs[key] -= gone
        await self._send_subs("unsubscribe", {key: gone})

    async def _send_subs(self, action: str, subs: dict[SubKey, set[str]]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return  # sent on the next connect
        for key, markets in subs.items():
            ordered = sorted(markets)
            for i in range(0, len(ordered), SUBSCRIBE_CHUNK):
                frame = {"action": action, "channels": [self._channel(key, ordered[i:i + SUBSCRIBE_CHUNK])]}
                try:
                    await ws.send_str(orjson.dumps(frame).decode())
                except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                    log.info("ws_send_failed", action=action, error=str(exc))
                    return

    # -- running ---------------------------------------------------------------------------

    def _set_state(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            if self.on_state is not None:
                self.on_state(up)

    async def run(self, stop: asyncio.Event) -> None:
        own = self._session is None
        session = self._session or aiohttp.ClientSession()
        try:
            while not stop.is_set():
                try:
                    await self._session_once(session, stop)
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as exc:
                    log.warning("ws_connect_failed", url=self.url, error=f"{type(exc).__name__}: {exc}")
                self._ws = None
                self._set_state(False)
                if stop.is_set():
                    break
                delay = self.backoff.next_delay()
                log.info("ws_reconnect_scheduled", delay_s=round(delay, 3), attempt=self.backoff.attempt)
                await wait_or_stop(stop, delay)
        finally:
            if own:
                await session.close()

    async def _session_once(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        async with session.ws_connect(self.url, heartbeat=self.ping_every_s, autoping=True,
                                      max_msg_size=64 * 1024 * 1024, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
            self._ws = ws
            self.connects += 1
            log.info("ws_connected", url=self.url, connects=self.connects,
                     subscriptions={f"{k[0]}:{k[1]}" if k[1] else k[0]: len(v) for k, v in self.subs.items()})
            if self.on_connected is not None:
                result = self.on_connected()  # before subscribing: the feed resets its state
                if asyncio.iscoroutine(result):
                    await result
            await self._send_subs("subscribe", {k: v for k, v in self.subs.items() if v})
            self._set_state(True)
            self._last_rx = self.clock.monotonic()
            watchdog = asyncio.create_task(self._watchdog(ws, stop), name="ws-watchdog")
            got_data = False
            since_yield = 0
            backpressure = self.backpressure
            try:
                while True:
                    msg = await ws.receive()
                    self._last_rx = self.clock.monotonic()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self._on_text(msg.data)
                        since_yield += 1
                        if since_yield >= self.yield_every:
                            # A burst is read from the buffer without suspending: hand over to the
                            # writer now and then (latency), and wait when it is full (memory).
                            since_yield = 0
                            waiter = backpressure() if backpressure is not None else None
                            await (waiter if waiter is not None else asyncio.sleep(0))
                        if not got_data:
                            got_data = True
                            self.backoff.reset()  # a connection that delivered data resets the backoff
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        self._on_text(msg.data.decode("utf-8", "replace"))
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        log.warning("ws_error", error=str(ws.exception()))
                        return
                    else:  # CLOSE, CLOSING, CLOSED
                        if not stop.is_set() and not self._quiet_closed:
                            log.warning("ws_closed_by_server", code=ws.close_code)
                        return
            finally:
                watchdog.cancel()
                self._ws = None
                self._set_state(False)
                if not ws.closed:
                    try:
                        await asyncio.wait_for(ws.close(), 2.0)
                    except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
                        pass

    async def _watchdog(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event) -> None:
        """Close the socket on stop, or when nothing arrived for ``quiet_s`` (probing half-way)."""
        self._quiet_closed = False
        probed_at = None
        tick = min(self.quiet_s / 4, 1.0)
        while not ws.closed:
            if await wait_or_stop(stop, tick):
                await ws.close()
                return
            quiet = self.clock.monotonic() - self._last_rx
            if quiet >= self.quiet_s:
                log.warning("ws_feed_quiet", quiet_s=round(quiet, 3), limit_s=self.quiet_s)
                self._quiet_closed = True
                await ws.close()
                return
            if quiet >= self.quiet_s / 2:
                if probed_at != self._last_rx:
                    probed_at = self._last_rx
                    try:
                        await ws.send_str('{"action":"getTime"}')
                    except (ConnectionError, RuntimeError, aiohttp.ClientError):
                        pass

    def _on_text(self, text: str) -> None:
        t0 = perf_counter()
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._unexpected("not_json", text)
            return
        if not isinstance(frame, dict):
            self._unexpected("not_object", text)
            return
        if "event" in frame:
            event = frame["event"]
            if event in ("subscribed", "unsubscribed"):
                log.debug("ws_subscriptions", event=event, subscriptions=frame.get("subscriptions"))
                return
            try:
                self.on_event(frame, t0)
            except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
                self._unexpected(f"bad_{event}" if isinstance(event, str) else "bad_event", f"{exc}: {text}")
            return
        if "errorCode" in frame:
            self._on_error(frame)
            return
        if frame.get("action") == "getTime":
            return  # our liveness probe
        self._unexpected("unknown_frame", text)

    def _on_error(self, frame: dict[str, Any]) -> None:
        error = str(frame.get("error", ""))
        log.warning("ws_error_frame", action=frame.get("action"), error_code=frame.get("errorCode"), error=error)
        self._count("error_frame")
        m = _BAD_MARKET.search(error)
        if frame.get("action") == "subscribe" and m:
            bad = m.group(1)
            log.warning("ws_market_dropped", market=bad, reason="exchange does not know it")
            resend = {}
            for key, markets in self.subs.items():
                if bad in markets:
                    markets.discard(bad)
                    resend[key] = set(markets)
            if resend:
                asyncio.get_running_loop().create_task(self._send_subs("subscribe", {k: v for k, v in resend.items() if v}))

    def _count(self, reason: str) -> None:
        self.unexpected += 1
        if self.on_unexpected is not None:
            self.on_unexpected(reason)

    def _unexpected(self, reason: str, text: str) -> None:
        self._count(reason)
        now = self.clock.monotonic()
        if now - self._last_unexpected_log >= 1.0:  # at most one line per second
            self._last_unexpected_log = now
            log.warning("ws_unexpected_frame", reason=reason, frame=text[:300], total=self.unexpected)

    async def close(self) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close()
