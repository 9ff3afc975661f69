"""WebSocket sessions: authenticate, subscribe/unsubscribe, action requests, bounded outbound queues.

Every frame to a client (action replies and market events) goes through the socket's own
bounded queue drained by its own writer task, so one slow client never blocks the others: when
its queue is full it is disconnected.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from sandbox.server import auth
from sandbox.server.dispatch import API_ERRORS, Dispatcher
from sandbox.server.endpoints import BY_WS_ACTION, ws_market
from sandbox.server.errors import ApiError, auth_required, invalid_json
from sandbox.server.metrics import Metrics
from sandbox.server.ws_frames import FrameBatcher
from tradestack.logs import get_logger

log = get_logger(__name__)

CANDLE_INTERVALS = ("1m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1W", "1M")
MARKET_CHANNELS = ("ticker", "ticker24h", "trades", "book", "account")
WRITES_PER_TURN = 64  # frames per turn of the event loop on aiohttp's own (compressed) path
SubKey = tuple[str, ...]  # ("book", m) | ("candles", interval, m) | ("account", api_key, m) | ...


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)  # UTF-8 JSON: a text frame's payload as is


def _query_value(v: Any) -> str:
    # WS params of GET/DELETE twins are handed to the engine as REST query strings would be.
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class Session:
    _ids = itertools.count(1)

    def __init__(self, ws: web.WebSocketResponse, ip: str, transport: Any, max_queue: int, hub: "Hub") -> None:
        self.id = next(self._ids)
        self.ws = ws
        self.ip = ip
        self.transport = transport
        self.api_key: str | None = None
        self.max_queue = max_queue
        self.hub = hub
        # channel -> markets (candles: interval -> markets); insertion-ordered for the acks
        self.subs: dict[str, Any] = {}
        self._q: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.closed = False
        self.writer_task: asyncio.Task[None] | None = None

    # -- outbound ------------------------------------------------------------------------

    def send(self, data: bytes, wake: bool = True) -> None:
        """Queue one frame. ``wake=False`` (market-data fan-out): the writer runs at the hub's
        next ``flush``, so that a few milliseconds of events leave in one write."""
        if self.closed:
            return
        if len(self._q) >= self.max_queue:
            self.hub.metrics.ws_slow_disconnects.inc()
            log.warning("ws_client_too_slow", session=self.id, peer=self.ip, queued=len(self._q))
            self.drop("abort")
            return
        self._q.append(data)
        if wake:
            self._wake.set()
        else:
            self.hub.unflushed.add(self)

    def send_json(self, obj: Any) -> None:
        self.send(_dumps(obj))

    async def run_writer(self) -> None:
        q, ws = self._q, self.ws
        batcher = FrameBatcher.for_response(ws)
        try:
            while not self.closed:
                while q:
                    if batcher is not None:
                        await batcher.write(q)
                    else:
                        for _ in range(min(len(q), WRITES_PER_TURN)):
                            await ws.send_frame(q.popleft(), WSMsgType.TEXT)
                    if q:  # a backlog goes out a batch per turn of the event loop, not in one go
                        await asyncio.sleep(0)
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError) as exc:  # peer went away mid-send
            log.info("ws_send_failed", session=self.id, peer=self.ip, error=str(exc))
            self.closed = True

    def drop(self, mode: str = "close") -> None:
        """Disconnect now: 'close' sends a close frame, 'abort' cuts the TCP connection."""
        if self.closed:
            return
        self.closed = True
        self._q.clear()
        self._wake.set()
        if mode == "abort" and self.transport is not None:
            self.transport.abort()
        else:
            asyncio.get_running_loop().create_task(self.ws.close(code=1001, message=b"server going away"))

    # -- subscriptions -------------------------------------------------------------------

    def subscriptions_view(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ch, v in self.subs.items():
            if ch == "candles":
                view = {iv: list(ms) for iv, ms in v.items() if ms}
                if view:
                    out[ch] = view
            elif v:
                out[ch] = list(v)
        return out


class Hub:
    """All sessions and the subscription index used by the market-loop fan-out."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.sessions: dict[int, Session] = {}
        self.index: dict[SubKey, set[Session]] = {}
        self.unflushed: set[Session] = set()  # sessions with frames queued but their writer not woken
        self._flush_timer: asyncio.TimerHandle | None = None

    def add(self, s: Session) -> None:
        self.sessions[s.id] = s
        self.metrics.ws_connections.set(len(self.sessions))

    def remove(self, s: Session) -> None:
        self.sessions.pop(s.id, None)
        for key in list(self._keys(s)):
            self._unindex(key, s)
        self.metrics.ws_connections.set(len(self.sessions))

    def _keys(self, s: Session) -> Iterable[SubKey]:
        for ch, v in s.subs.items():
            if ch == "candles":
                for iv, ms in v.items():
                    for m in ms:
                        yield ("candles", iv, m)
            elif ch == "account":
                for m in v:
                    yield ("account", s.api_key or "", m)
            else:
                for m in v:
                    yield (ch, m)

    def index_add(self, key: SubKey, s: Session) -> None:
        self.index.setdefault(key, set()).add(s)

    def _unindex(self, key: SubKey, s: Session) -> None:
        subs = self.index.get(key)
        if subs is not None:
            subs.discard(s)
            if not subs:
                del self.index[key]

    def publish(self, key: SubKey, channel: str, payload: Callable[[], Any]) -> None:
        """Serialise once (only if someone listens) and queue the same text to every subscriber."""
        subs = self.index.get(key)
        if not subs:
            return
        data = _dumps(payload())
        wake = channel == "account"  # a client's own orders and fills are not held back
        for s in tuple(subs):
            s.send(data, wake=wake)
        self.metrics.ws_event(channel, len(subs))

    def flush(self) -> None:
        """Start the writers of sockets with market data queued since the last flush."""
        for s in self.unflushed:
            s._wake.set()
        self.unflushed.clear()

    def flush_soon(self, delay_s: float) -> None:
        """``flush`` within ``delay_s`` (one timer at a time)."""
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(delay_s, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flush_timer = None
        self.flush()

    def drop(self, which: str | int, mode: str = "close") -> int:
        victims = list(self.sessions.values())
        if which == "one":
            victims = victims[:1]
        elif isinstance(which, int):
            victims = victims[:which]
        for s in victims:
            log.info("ws_client_dropped", session=s.id, peer=s.ip, mode=mode, reason="fault")
            s.drop(mode)
        return len(victims)

    def close_all(self) -> None:
        for s in list(self.sessions.values()):
            s.drop("close")


class WsHandler:
    """Handles one socket's inbound frames."""

    def __init__(
        self,
        hub: Hub,
        dispatcher: Dispatcher,
        exchange: Any,
        now_ms: Callable[[], int],
        *,
        max_queue: int,
        heartbeat_secs: float,
    ) -> None:
        self.hub = hub
        self.dispatcher = dispatcher
        self.exchange = exchange
        self.now_ms = now_ms
        self.max_queue = max_queue
        self.heartbeat_secs = heartbeat_secs

    async def __call__(self, request: web.Request) -> web.WebSocketResponse:
        # Server pings every heartbeat_secs (real Bitvavo: 50 s); client pings are auto-answered.
        ws = web.WebSocketResponse(heartbeat=self.heartbeat_secs, autoping=True, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        ip = request.remote or "?"
        s = Session(ws, ip, request.transport, self.max_queue, self.hub)
        self.hub.add(s)
        s.writer_task = asyncio.create_task(s.run_writer(), name=f"ws-writer-{s.id}")
        log.info("ws_client_connected", session=s.id, peer=ip)
        try:
            async for msg in ws:
                if s.closed:
                    break
                if msg.type == WSMsgType.TEXT:
                    await self.on_text(s, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self.on_text(s, msg.data.decode("utf-8", errors="replace"))
                elif msg.type == WSMsgType.ERROR:
                    log.info("ws_client_error", session=s.id, error=str(ws.exception()))
                    break
        finally:
            self.hub.remove(s)
            if not s.closed:
                s.closed = True
                s._wake.set()
            if s.writer_task is not None:
                s.writer_task.cancel()
            if not ws.closed:
                await ws.close()
            log.info("ws_client_disconnected", session=s.id, peer=ip, close_code=ws.close_code)
        return ws

    async def on_text(self, s: Session, text: str) -> None:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            s.send_json(invalid_json().body())  # socket stays open
            return
        if not isinstance(msg, dict):
            s.send_json(invalid_json().body())
            return
        action = msg.get("action")
        request_id = msg.get("requestId")
        try:
            if action == "authenticate":
                self._authenticate(s, msg)
            elif action in ("subscribe", "unsubscribe"):
                self._charge(s, 1)
                self._subscribe(s, msg, unsubscribe=action == "unsubscribe")
            elif isinstance(action, str) and action in BY_WS_ACTION:
                await self._action(s, action, request_id, msg)
            else:
                raise ApiError(415, "Invalid action. Please check the request.", 404)
        except API_ERRORS as exc:
            s.send_json(self._error(action, request_id, exc, msg.get("market")))

    @staticmethod
    def _error(action: Any, request_id: Any, exc: Any, market: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {"action": action if isinstance(action, str) else "unknown"}
        if request_id is not None:
            out["requestId"] = request_id
        if isinstance(market, str) and market:
            out["market"] = market
        out["errorCode"] = exc.error_code
        out["error"] = exc.error
        return out

    def _charge(self, s: Session, weight: int) -> None:
        limiter = self.dispatcher.limiter
        ident, is_key = limiter.identity(s.api_key, s.ip)
        limiter.charge(ident, weight, is_key)

    def _authenticate(self, s: Session, msg: dict[str, Any]) -> None:
        key = auth.verify_ws(msg, secret_for=self.exchange.secret_for, now_ms=self.now_ms())
        if s.api_key is not None and s.api_key != key:
            # Account subscriptions of the old key must not leak events of the new one.
            self.hub.remove(s)
            s.subs.pop("account", None)
            self.hub.add(s)
        s.api_key = key
        log.info("ws_client_authenticated", session=s.id, peer=s.ip)
        s.send_json({"event": "authenticate", "authenticated": True})

    def _subscribe(self, s: Session, msg: dict[str, Any], *, unsubscribe: bool) -> None:
        channels = msg.get("channels")
        if not isinstance(channels, list) or not channels:
            raise ApiError(203, "channels parameter is required.", 400)
        valid = set(self.exchange.market_ids)
        plan: list[tuple[str, list[str], list[str]]] = []  # (channel, intervals, markets)
        for ch in channels:
            if not isinstance(ch, dict):
                raise ApiError(205, "channels parameter is invalid.", 400)
            name = ch.get("name")
            if name not in MARKET_CHANNELS and name != "candles":
                raise ApiError(205, "channel.name parameter is invalid.", 400)
            markets = ch.get("markets")
            if not isinstance(markets, list) or not markets:
                raise ApiError(203, "channel.markets parameter is required.", 400)
            for m in markets:
                if not isinstance(m, str) or (m not in valid and not unsubscribe):
                    raise ApiError(205, f"market parameter {m} is invalid.", 400)
            intervals: list[str] = []
            if name == "candles":
                iv = ch.get("interval")
                intervals = iv if isinstance(iv, list) else [iv]
                if not intervals or any(i not in CANDLE_INTERVALS for i in intervals):
                    raise ApiError(205, "channel.interval parameter is invalid.", 400)
            if name == "account" and s.api_key is None and not unsubscribe:
                raise auth_required()
            plan.append((name, intervals, markets))
        for name, intervals, markets in plan:
            self._apply(s, name, intervals, markets, unsubscribe)
        s.send_json({"event": "unsubscribed" if unsubscribe else "subscribed", "subscriptions": s.subscriptions_view()})

    def _apply(self, s: Session, name: str, intervals: list[str], markets: list[str], unsubscribe: bool) -> None:
        if name == "candles":
            by_iv = s.subs.setdefault("candles", {})
            for iv in intervals:
                ms = by_iv.setdefault(iv, {})
                for m in markets:
                    self._toggle(s, ms, m, ("candles", iv, m), unsubscribe)
            return
        ms = s.subs.setdefault(name, {})
        for m in markets:
            key: tuple[str, ...] = ("account", s.api_key or "", m) if name == "account" else (name, m)
            self._toggle(s, ms, m, key, unsubscribe)

    def _toggle(self, s: Session, ms: dict[str, None], m: str, key: SubKey, unsubscribe: bool) -> None:
        if unsubscribe:
            ms.pop(m, None)
            self.hub._unindex(key, s)
        else:
            ms[m] = None  # dict as an ordered set: re-subscribing is idempotent
            self.hub.index_add(key, s)

    async def _action(self, s: Session, action: str, request_id: Any, msg: dict[str, Any]) -> None:
        ep = BY_WS_ACTION[action]
        params = {k: v for k, v in msg.items() if k not in ("action", "requestId") and v is not None}
        if ep.private and s.api_key is None:
            raise auth_required()
        if ep.method in ("GET", "DELETE"):
            params = {k: _query_value(v) for k, v in params.items()}
        market = ws_market(ep, params)
        out = await self.dispatcher.execute(ep, api_key=s.api_key, ip=s.ip, market=market, params=params, is_ws=True)
        if out.lost is not None:
            if out.lost.mode == "drop":
                log.info("ws_response_lost", session=s.id, action=action, mode="drop")
                s.drop("abort")
                return
            out.error = self.dispatcher.faults.lost_error(out.lost)
        if out.error is not None:
            s.send_json(self._error(action, request_id, out.error, market or msg.get("market")))
            return
        reply: dict[str, Any] = {"action": action}
        if request_id is not None:
            reply["requestId"] = request_id
        reply["response"] = out.result
        s.send_json(reply)
