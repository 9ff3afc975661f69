"""Bitvavo's private API for the executor: signed REST (``BitvavoPrivate``) and the authenticated WS
``account`` channel (``AccountStream``). The same code talks to the real exchange and to the sandbox.

REST: ``BitvavoPrivate`` wraps a ``BitvavoRest`` and shares its session and its ``RateBudget`` (one
budget per process); every call goes through ``BitvavoRest.request``. Money is ``Decimal`` end to
end. Error semantics, which keep money safe:

- **Order-mutating calls** (``place_order``, ``update_order``, ``cancel_order``: POST/PUT/DELETE
  /order) are **never retried automatically** on a timeout, a connection error or a 5xx: the
  request may have run. They raise ``RestUnavailable`` (a ``TransientError``) whose message says
  the outcome is unknown; the caller looks the order up by clientOrderId (``get_order``) before
  it sends anything again.
- Reads (GET) keep ``BitvavoRest``'s behaviour: timeouts and 5xx retry with capped backoff, then
  ``RestUnavailable``.
- Rate limit (HTTP 429 / errorCode 105), for every method: the exchange refused the request before
  running it (the order was *not* placed), so the client waits until the ban expires and sends it
  again, like a GET. The ban blocks every other request of the key anyway.
- A 4xx with an errorCode raises ``RestError`` (``.status``, ``.error_code``, ``.message``), or a
  subclass where the executor branches: ``OrderNotFound`` (240), ``InsufficientBalance`` (216),
  ``DuplicateClientOrderId`` (220), ``AuthError`` (300..320: key, signature, window, permission).
  ``get_order`` and ``cancel_order`` turn 240 into ``None`` (no such order / nothing left to cancel).
- An answer of the wrong shape raises ``ParseError`` (``OrderState.from_json`` and the parsers here).

WS: ``AccountStream`` is a ``BitvavoWs`` (reconnect with capped backoff, liveness, live subscription
changes) that authenticates on every connect before it subscribes the ``account`` channel, and turns
``order``/``fill`` events into ``OrderState``/``Fill``. See its docstring.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal, InvalidOperation
from typing import Any, Awaitable, Callable, Iterable

import aiohttp
import orjson

from tradestack.backoff import Backoff
from tradestack.bitvavo.auth import DEFAULT_WINDOW_MS, Credentials
from tradestack.bitvavo.orders import Fill, OrderRequest, OrderState, plain
from tradestack.bitvavo.parse import ParseError
from tradestack.bitvavo.rest import BitvavoRest, OrderNotFound
from tradestack.bitvavo.ws import BitvavoWs
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.errors import ConfigError
from tradestack.logs import get_logger

log = get_logger(__name__)

def _decimal(row: dict[str, Any], key: str, what: str) -> Decimal:
    raw = row.get(key)
    if raw is None or isinstance(raw, bool):
        raise ParseError(f"{what}: field {key!r} is missing")
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        raise ParseError(f"{what}: field {key!r} is not a number: {raw!r}") from None
    if not value.is_finite():
        raise ParseError(f"{what}: field {key!r} is not finite: {raw!r}")
    return value


def _list(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise ParseError(f"{what} must be a list, got {type(data).__name__}")
    return data


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ParseError(f"{what} must be an object, got {type(data).__name__}")
    return data


def _order_ref(client_order_id: str | None, order_id: str | None) -> dict[str, str]:
    if client_order_id is None and order_id is None:
        raise ValueError("give client_order_id or order_id")
    # Bitvavo: clientOrderId wins when both are given; send only that one.
    return {"clientOrderId": client_order_id} if client_order_id is not None else {"orderId": order_id or ""}


class BitvavoPrivate:
    """Signed REST calls of one API key; ``operator_id`` goes on every order-mutating call."""

    def __init__(self, rest: BitvavoRest, api_key: str, api_secret: str, operator_id: int,
                 window_ms: int = DEFAULT_WINDOW_MS) -> None:
        if not rest.base_url.endswith("/v2"):
            raise ConfigError(f"the REST base URL must end in /v2 (the signed path starts there), got {rest.base_url}")
        try:
            self.credentials = Credentials(api_key, api_secret, window_ms)
        except ValueError as exc:
            raise ConfigError(f"Bitvavo credentials: {exc}") from None
        self.rest = rest
        self.operator_id = operator_id

    async def _call(self, method: str, endpoint: str, path: str, params: dict[str, Any] | None = None,
                    body: dict[str, Any] | None = None) -> Any:
        return await self.rest.request(method, endpoint, path, params, body, credentials=self.credentials)

    # -- orders --------------------------------------------------------------------------

    async def place_order(self, req: OrderRequest) -> OrderState:
        """POST /order. ``RestUnavailable``: outcome unknown (look it up by clientOrderId)."""
        data = await self._call("POST", "order_post", "/order", body=req.to_body(self.operator_id))
        return OrderState.from_json(data)

    async def get_order(self, market: str, *, client_order_id: str | None = None,
                        order_id: str | None = None) -> OrderState | None:
        """GET /order; None when the exchange has no such order (240)."""
        try:
            data = await self._call("GET", "order_get", "/order", {"market": market, **_order_ref(client_order_id, order_id)})
        except OrderNotFound:
            return None
        return OrderState.from_json(data)

    async def update_order(self, market: str, *, client_order_id: str | None = None, order_id: str | None = None,
                           amount: Decimal | None = None, price: Decimal | None = None,
                           trigger_price: Decimal | None = None) -> OrderState:
        """PUT /order (limit and untriggered trigger orders). ``RestUnavailable``: outcome unknown."""
        body: dict[str, Any] = {"market": market, **_order_ref(client_order_id, order_id), "operatorId": self.operator_id}
        for key, value in (("amount", amount), ("price", price), ("triggerAmount", trigger_price)):
            if value is not None:
                if not (value.is_finite() and value > 0):
                    raise ValueError(f"{key} must be a positive number, got {value}")
                body[key] = plain(value)
        if len(body) == 3:
            raise ValueError("update_order needs at least one of amount, price, trigger_price")
        return OrderState.from_json(await self._call("PUT", "order_put", "/order", body=body))

    async def cancel_order(self, market: str, *, client_order_id: str | None = None,
                           order_id: str | None = None) -> str | None:
        """DELETE /order; the order id, or None when there is no open order to cancel (240: unknown,
        or already filled/canceled). ``RestUnavailable``: outcome unknown."""
        params = {"market": market, **_order_ref(client_order_id, order_id), "operatorId": self.operator_id}
        try:
            data = await self._call("DELETE", "order_delete", "/order", params)
        except OrderNotFound:
            return None
        oid = _object(data, "cancel answer").get("orderId")
        if not isinstance(oid, str) or not oid:
            raise ParseError(f"cancel answer has no orderId: {data!r}")
        return oid

    async def open_orders(self, market: str | None = None) -> list[OrderState]:
        """GET /ordersOpen (weight 5 with a market, 100 without)."""
        endpoint = "orders_open" if market else "orders_open_all"
        data = await self._call("GET", endpoint, "/ordersOpen", {"market": market})
        return [OrderState.from_json(o) for o in _list(data, "open orders")]

    async def orders(self, market: str, *, limit: int | None = None, start: int | None = None,
                     end: int | None = None) -> list[OrderState]:
        """GET /orders: orders of every status, newest first."""
        data = await self._call("GET", "orders", "/orders", {"market": market, "limit": limit, "start": start, "end": end})
        return [OrderState.from_json(o) for o in _list(data, "orders")]

    # -- account -------------------------------------------------------------------------

    async def trades(self, market: str, *, limit: int | None = None, start: int | None = None,
                     end: int | None = None) -> list[dict[str, Any]]:
        """GET /trades (own trades, newest first), as the exchange's rows with ``amount``, ``price``
        and (once settled) ``fee`` turned into Decimal."""
        data = await self._call("GET", "trades", "/trades", {"market": market, "limit": limit, "start": start, "end": end})
        out = []
        for row in _list(data, "trades"):
            row = dict(_object(row, "trade"))
            for key in ("amount", "price", "fee"):
                if key != "fee" or row.get("fee") is not None:  # fee only once settled
                    row[key] = _decimal(row, key, f"trade {row.get('id')}")
            out.append(row)
        return out

    async def balance(self, symbol: str | None = None) -> dict[str, tuple[Decimal, Decimal]]:
        """GET /balance: symbol -> (available, inOrder)."""
        data = await self._call("GET", "balance", "/balance", {"symbol": symbol})
        if isinstance(data, dict):  # a single-symbol answer might come as one object
            data = [data]
        out: dict[str, tuple[Decimal, Decimal]] = {}
        for row in _list(data, "balance"):
            row = _object(row, "balance row")
            sym = row.get("symbol")
            if not isinstance(sym, str) or not sym:
                raise ParseError(f"balance row has no symbol: {row!r}")
            out[sym] = (_decimal(row, "available", f"balance {sym}"), _decimal(row, "inOrder", f"balance {sym}"))
        return out

    async def fees(self, market: str | None = None) -> tuple[Decimal, Decimal]:
        """GET /account/fees: (maker, taker) as fractions (0.0015 = 0.15 %)."""
        data = _object(await self._call("GET", "fees", "/account/fees", {"market": market}), "fees")
        return _decimal(data, "maker", "fees"), _decimal(data, "taker", "fees")


class AuthenticationFailed(ConnectionError):
    """The WS ``authenticate`` was refused or not answered; the stream reconnects with backoff."""


Callback = Callable[[], "Awaitable[Any] | None"]


class AccountStream(BitvavoWs):
    """The ``account`` WS channel of one API key: ``on_order(OrderState)`` and ``on_fill(Fill)``.

    On every (re)connect: authenticate (waiting for ``{"event":"authenticate","authenticated":true}``
    up to ``auth_timeout_s``), then subscribe ``account`` for the current markets; the first
    ``subscribed`` ack of each connection calls ``on_connected()`` (sync or async), so the caller can
    poll REST for what it missed while down. ``on_state(up)`` on every change (up = authenticated and
    subscribe sent). ``set_markets`` changes the markets live. Reconnects with capped backoff; a
    malformed frame is logged and counted (``unexpected``, ``on_unexpected``), never fatal.
    ``run(stop)`` returns within about a second of ``stop`` being set.
    """

    CHANNEL = ("account", None)

    def __init__(self, url: str, *, api_key: str, api_secret: str, on_order: Callable[[OrderState], None],
                 on_fill: Callable[[Fill], None], markets: Iterable[str] = (), on_connected: Callback | None = None,
                 on_state: Callable[[bool], None] | None = None, on_unexpected: Callable[[str], None] | None = None,
                 window_ms: int = DEFAULT_WINDOW_MS, auth_timeout_s: float = 5.0, quiet_s: float = 30.0,
                 ping_every_s: float = 15.0, backoff: Backoff | None = None, clock: Clock = SYSTEM_CLOCK,
                 session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(url, on_event=self._on_account_event, on_connected=self._authenticate, on_state=on_state,
                         on_unexpected=on_unexpected, quiet_s=quiet_s, ping_every_s=ping_every_s, backoff=backoff,
                         clock=clock, session=session)
        self.credentials = Credentials(api_key, api_secret, window_ms)
        self.on_order = on_order
        self.on_fill = on_fill
        self.on_subscribed = on_connected
        self.auth_timeout_s = auth_timeout_s
        self.subs[self.CHANNEL] = set(markets)
        self.authenticated = False
        self.subscribed_connects = 0  # connections whose account subscribe was acknowledged
        self._acked = False
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def markets(self) -> set[str]:
        return set(self.subs[self.CHANNEL])

    async def set_markets(self, markets: Iterable[str]) -> None:
        """Subscribe the new markets and unsubscribe the gone ones now (or at the next connect)."""
        want = set(markets)
        have = self.subs[self.CHANNEL]
        if not self.authenticated:  # sent after the next authenticate
            self.subs[self.CHANNEL] = want
            return
        await self.unsubscribe("account", have - want)
        await self.subscribe("account", want - have)

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        try:
            await super().run(stop)
        finally:
            for task in list(self._tasks):
                task.cancel()

    # -- connect: authenticate before BitvavoWs subscribes ---------------------------------

    async def _authenticate(self) -> None:
        ws = self._ws
        assert ws is not None
        self.authenticated = False
        self._acked = False
        await ws.send_str(orjson.dumps(self.credentials.ws_frame(self.clock.now_ms())).decode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.auth_timeout_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AuthenticationFailed(f"no authenticate answer within {self.auth_timeout_s} s")
            if self._stop is not None and self._stop.is_set():
                raise AuthenticationFailed("stopping")
            try:
                msg = await ws.receive(timeout=min(left, 0.25))
            except asyncio.TimeoutError:
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AuthenticationFailed(f"socket closed while authenticating ({msg.type.name})")
            try:
                frame = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                frame = None
            if isinstance(frame, dict) and (frame.get("event") == "authenticate" or frame.get("action") == "authenticate"):
                if frame.get("authenticated") is True:
                    self.authenticated = True
                    log.info("ws_authenticated", url=self.url)
                    return
                log.error("ws_authenticate_refused", error_code=frame.get("errorCode"), error=frame.get("error"))
                raise AuthenticationFailed(f"authenticate refused: {frame.get('errorCode')} {frame.get('error')}")
            self._on_text(msg.data)  # anything else (e.g. a late event) is handled as usual

    # -- frames ----------------------------------------------------------------------------

    def _on_text(self, text: str) -> None:
        # BitvavoWs swallows subscription acks; the account stream needs the first one.
        if '"subscribed"' in text:
            try:
                frame = orjson.loads(text)
            except orjson.JSONDecodeError:
                frame = None
            if isinstance(frame, dict) and frame.get("event") == "subscribed":
                self._on_subscribed(frame)
        super()._on_text(text)

    def _on_subscribed(self, frame: dict[str, Any]) -> None:
        subs = frame.get("subscriptions")
        if self._acked or not isinstance(subs, dict) or not subs.get("account"):
            return
        self._acked = True
        self.subscribed_connects += 1
        log.info("ws_account_subscribed", markets=subs.get("account"), connects=self.subscribed_connects)
        if self.on_subscribed is not None:
            result = self.on_subscribed()
            if asyncio.iscoroutine(result):
                task = asyncio.get_running_loop().create_task(result, name="account-on-connected")
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ws_on_connected_failed", error=repr(task.exception()))

    def _on_account_event(self, frame: dict[str, Any], _t0: float) -> None:
        event = frame.get("event")
        if event == "order":
            self.on_order(OrderState.from_json(frame))  # ParseError: counted as bad_order by BitvavoWs
        elif event == "fill":
            self.on_fill(Fill.from_json(frame))
        elif event == "authenticate":
            return
        else:
            self._unexpected("unknown_event", orjson.dumps(frame).decode()[:300])


__all__ = ["AccountStream", "AuthenticationFailed", "BitvavoPrivate"]
