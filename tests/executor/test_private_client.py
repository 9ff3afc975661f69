"""BitvavoPrivate (signed REST) and AccountStream (authenticated WS) against the in-process sandbox.

No HTTP mocks: faults are injected into the sandbox itself (``sandbox/server/faults.py``), and
every wait is on a condition with a deadline."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import pytest

from sandbox.server.runner import Sandbox, SandboxThread
from sandbox.server.settings import SandboxSettings
from tradestack.backoff import Backoff
from tradestack.bitvavo.auth import Credentials, auth_headers, sign, ws_auth_frame
from tradestack.bitvavo.orders import Fill, OrderRequest, OrderState
from tradestack.bitvavo.private import AccountStream, BitvavoPrivate
from tradestack.bitvavo.rest import (
    AuthError,
    BitvavoRest,
    DuplicateClientOrderId,
    InsufficientBalance,
    RestError,
    RestUnavailable,
)
from tradestack.errors import ConfigError, TransientError

T = TypeVar("T")
MARKET = "BTC-EUR"
OPERATOR = 7


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[SandboxThread, Sandbox]]:
    settings = SandboxSettings(markets="BTC-EUR,ETH-EUR", history_hours=0.05, eur=Decimal("100000"))
    thread = SandboxThread(None, settings)  # config from settings: one funded account, a 64-char key
    sb = thread.start()
    try:
        yield thread, sb
    finally:
        thread.stop()


def faults(thread: SandboxThread, spec: dict[str, Any]) -> dict[str, Any]:
    sb = thread.sb
    assert sb is not None
    return thread.call(lambda: sb.faults.apply(spec))


def injected(thread: SandboxThread, kind: str) -> int:
    sb = thread.sb
    assert sb is not None
    return thread.call(lambda: sb.faults.injected[kind])


def orders_with(thread: SandboxThread, client_order_id: str) -> list[dict[str, Any]]:
    sb = thread.sb
    assert sb is not None
    return thread.call(lambda: sb.exchange.admin_orders(client_order_id=client_order_id))


@asynccontextmanager
async def private(sb: Sandbox, secret: str | None = None) -> AsyncIterator[BitvavoPrivate]:
    rest = BitvavoRest(sb.rest_url, points_per_min=1000, reserve=0, timeout_s=5.0)
    try:
        yield BitvavoPrivate(rest, sb.api_key, secret or sb.api_secret, OPERATOR)
    finally:
        await rest.close()


async def until(predicate: Callable[[], T], timeout_s: float = 5.0, what: str = "condition") -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def run(coro: Awaitable[T]) -> T:
    async def with_deadline() -> T:
        return await asyncio.wait_for(coro, 12.0)

    return asyncio.run(with_deadline())


def coid() -> str:
    return str(uuid.uuid4())


async def far_price(priv: BitvavoPrivate, market: str = MARKET, factor: str = "0.5") -> Decimal:
    book = await priv.rest.book(market, depth=1)
    return (Decimal(book["bids"][0][0]) * Decimal(factor)).quantize(Decimal(1))


def limit_buy(price: Decimal, client_order_id: str | None = None, amount: str = "0.001",
              market: str = MARKET) -> OrderRequest:
    return OrderRequest(market=market, side="buy", order_type="limit", client_order_id=client_order_id or coid(),
                        amount=Decimal(amount), price=price)


def market_buy(quote: str = "100", market: str = MARKET) -> OrderRequest:
    return OrderRequest(market=market, side="buy", order_type="market", client_order_id=coid(),
                        amount_quote=Decimal(quote))


# -- signatures --------------------------------------------------------------------------------


def test_signature_matches_the_reference_examples() -> None:
    body = '{"market":"BTC-EUR","side":"buy","price":"5000","amount":"1.23","orderType":"limit"}'
    assert sign("bitvavo", 1548172481125, "POST", "/order", body) == (
        "44d022723a20973a18f7ee97398b9fdd405d2d019c8d39e24b8cc0dcb39ca016")
    assert sign("bitvavo", 1548175200641, "GET", "/websocket", "") == (
        "653fc0505431c63a043273da4bd2f0927eae83948d796084f313e5d1131b0d6f")
    frame = ws_auth_frame("k" * 64, "bitvavo", 1548175200641, 10_000)
    assert frame == {"action": "authenticate", "key": "k" * 64, "timestamp": 1548175200641, "window": 10_000,
                     "signature": "653fc0505431c63a043273da4bd2f0927eae83948d796084f313e5d1131b0d6f"}
    headers = auth_headers("k" * 64, "bitvavo", 1548172481125, "post", "/order", body, 5000)
    assert headers == {"Bitvavo-Access-Key": "k" * 64, "Bitvavo-Access-Timestamp": "1548172481125",
                       "Bitvavo-Access-Signature": "44d022723a20973a18f7ee97398b9fdd405d2d019c8d39e24b8cc0dcb39ca016",
                       "Bitvavo-Access-Window": "5000"}
    assert "bitvavo" not in repr(Credentials("k" * 64, "bitvavo"))
    with pytest.raises(ValueError):
        Credentials("k" * 64, "s", window_ms=99)


def test_private_client_needs_a_v2_base_url() -> None:
    with pytest.raises(ConfigError):
        BitvavoPrivate(BitvavoRest("http://127.0.0.1:1/api"), "k" * 64, "s", OPERATOR)


# -- REST: orders --------------------------------------------------------------------------------


def test_market_buy_fills_with_decimal_fills_and_fees(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    _, sb = sandbox

    async def scenario() -> None:
        async with private(sb) as priv:
            req = market_buy("100")
            order = await priv.place_order(req)
            assert order.status == "filled" and order.client_order_id == req.client_order_id
            assert order.fills and isinstance(order.filled_amount, Decimal) and order.filled_amount > 0
            assert sum(f.amount for f in order.fills) == order.filled_amount
            assert all(isinstance(f.price, Decimal) and isinstance(f.fee, Decimal) and f.fee > 0 for f in order.fills)
            assert isinstance(order.fee_paid, Decimal) and order.fee_paid == sum(f.fee or 0 for f in order.fills)
            assert order.fee_currency == "EUR"
            trades = await priv.trades(MARKET, limit=10)
            mine = [t for t in trades if t["orderId"] == order.order_id]
            assert mine and all(isinstance(t["amount"], Decimal) and isinstance(t["price"], Decimal) for t in mine)
            assert sum(t["amount"] for t in mine) == order.filled_amount
            history = await priv.orders(MARKET, limit=5)
            assert order.order_id in {o.order_id for o in history}

    run(scenario())


def test_limit_order_lifecycle_get_update_cancel(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    _, sb = sandbox

    async def scenario() -> None:
        async with private(sb) as priv:
            price = await far_price(priv)
            req = limit_buy(price)
            placed = await priv.place_order(req)
            assert placed.status == "new" and placed.price == price and placed.amount == Decimal("0.001")
            got = await priv.get_order(MARKET, client_order_id=req.client_order_id)
            assert got is not None and got.order_id == placed.order_id and got.is_open
            assert (await priv.get_order(MARKET, order_id=placed.order_id)) == got
            updated = await priv.update_order(MARKET, client_order_id=req.client_order_id, price=price - 1)
            assert updated.order_id == placed.order_id and updated.price == price - 1 and updated.status == "new"
            assert await priv.cancel_order(MARKET, client_order_id=req.client_order_id) == placed.order_id
            gone = await priv.get_order(MARKET, order_id=placed.order_id)
            assert gone is not None and gone.status == "canceled"
            assert await priv.cancel_order(MARKET, order_id=placed.order_id) is None  # already gone
            assert await priv.get_order(MARKET, client_order_id=coid()) is None
            assert await priv.get_order(MARKET, order_id=str(uuid.uuid4())) is None
            with pytest.raises(ValueError):
                await priv.update_order(MARKET, order_id=placed.order_id)

    run(scenario())


def test_stop_loss_waits_for_its_trigger_and_is_listed_open(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    _, sb = sandbox

    async def scenario() -> None:
        async with private(sb) as priv:
            assert (await priv.place_order(market_buy("100"))).status == "filled"
            trigger = await far_price(priv)
            req = OrderRequest(market=MARKET, side="sell", order_type="stopLoss", client_order_id=coid(),
                               amount=Decimal("0.0005"), trigger_price=trigger)
            stop = await priv.place_order(req)
            assert stop.status == "awaitingTrigger" and stop.trigger_price == trigger and stop.is_open
            listed = await priv.open_orders(MARKET)
            assert stop.order_id in {o.order_id for o in listed}
            assert stop.order_id in {o.order_id for o in await priv.open_orders()}
            moved = await priv.update_order(MARKET, order_id=stop.order_id, trigger_price=trigger - 10)
            assert moved.trigger_price == trigger - 10 and moved.status == "awaitingTrigger"
            assert await priv.cancel_order(MARKET, order_id=stop.order_id) == stop.order_id

    run(scenario())


def test_balance_and_fees(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    _, sb = sandbox

    async def scenario() -> None:
        async with private(sb) as priv:
            balances = await priv.balance()
            available, in_order = balances["EUR"]
            assert isinstance(available, Decimal) and isinstance(in_order, Decimal) and available > 0
            placed = await priv.place_order(limit_buy(await far_price(priv)))
            eur = (await priv.balance("EUR"))["EUR"]
            assert eur[1] >= placed.price * placed.amount  # type: ignore[operator]
            await priv.cancel_order(MARKET, order_id=placed.order_id)
            maker, taker = await priv.fees()
            assert (maker, taker) == (Decimal("0.0015"), Decimal("0.0025"))
            assert await priv.fees(MARKET) == (maker, taker)

    run(scenario())


def test_refusals_raise_their_subclass(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    _, sb = sandbox

    async def scenario() -> None:
        async with private(sb) as priv:
            price = await far_price(priv)
            with pytest.raises(InsufficientBalance) as too_big:
                await priv.place_order(limit_buy(price, amount="100"))
            assert (too_big.value.status, too_big.value.error_code) == (400, 216)
            req = limit_buy(price)
            placed = await priv.place_order(req)
            with pytest.raises(DuplicateClientOrderId) as dup:
                await priv.place_order(limit_buy(price, client_order_id=req.client_order_id))
            assert dup.value.error_code == 220 and "clientOrderId" in dup.value.message
            await priv.cancel_order(MARKET, order_id=placed.order_id)

        async with private(sb, secret="0" * 64) as wrong:
            with pytest.raises(AuthError) as auth:
                await wrong.balance()
            assert (auth.value.status, auth.value.error_code) == (403, 309)
            assert isinstance(auth.value, RestError) and not isinstance(auth.value, TransientError)

    run(scenario())


# -- REST: faults --------------------------------------------------------------------------------


def test_5xx_on_an_order_is_not_retried_but_a_get_is(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    thread, sb = sandbox

    async def scenario() -> None:
        async with private(sb) as priv:
            price = await far_price(priv)
            before = injected(thread, "error_107")
            faults(thread, {"errors": [{"code": 107, "path": "^/v2/order$", "method": "POST", "next": 3}]})
            req = limit_buy(price)
            with pytest.raises(RestUnavailable) as exc:
                await priv.place_order(req)
            assert (exc.value.status, exc.value.error_code) == (503, 107) and "outcome is unknown" in str(exc.value)
            assert injected(thread, "error_107") == before + 1  # exactly one request reached the exchange
            assert orders_with(thread, req.client_order_id) == []
            faults(thread, {"clear": True})

            placed = await priv.place_order(req)  # the caller's own retry, after it looked
            before = injected(thread, "error_101")
            faults(thread, {"errors": [{"code": 101, "path": "^/v2/order$", "method": "GET", "next": 1}]})
            got = await priv.get_order(MARKET, client_order_id=req.client_order_id)  # retried
            assert got is not None and got.order_id == placed.order_id
            assert injected(thread, "error_101") == before + 1
            faults(thread, {"errors": [{"code": 109, "path": "^/v2/order$", "method": "DELETE", "next": 1}]})
            with pytest.raises(RestUnavailable):
                await priv.cancel_order(MARKET, order_id=placed.order_id)
            faults(thread, {"clear": True})
            assert await priv.cancel_order(MARKET, order_id=placed.order_id) == placed.order_id

    try:
        run(scenario())
    finally:
        faults(thread, {"clear": True})


def test_lost_response_on_an_order_is_unknown_then_found(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    thread, sb = sandbox

    async def scenario() -> None:
        async with private(sb) as priv:
            price = await far_price(priv)
            for mode in ("timeout", "drop"):
                faults(thread, {"lost_responses": [{"path": "^/v2/order$", "method": "POST", "next": 1, "mode": mode}]})
                req = limit_buy(price)
                with pytest.raises(RestUnavailable) as exc:
                    await priv.place_order(req)
                assert "outcome is unknown" in str(exc.value)
                assert len(orders_with(thread, req.client_order_id)) == 1  # placed once, not retried
                found = await priv.get_order(MARKET, client_order_id=req.client_order_id)
                assert found is not None and found.status == "new" and found.client_order_id == req.client_order_id
                assert await priv.cancel_order(MARKET, client_order_id=req.client_order_id) == found.order_id

    try:
        run(scenario())
    finally:
        faults(thread, {"clear": True})


def test_a_ban_on_an_order_is_waited_out_then_sent_again(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    thread, sb = sandbox
    outcomes: list[tuple[str, str]] = []

    async def scenario() -> None:
        rest = BitvavoRest(sb.rest_url, points_per_min=1000, reserve=0, on_request=lambda e, o: outcomes.append((e, o)))
        try:
            priv = BitvavoPrivate(rest, sb.api_key, sb.api_secret, OPERATOR)
            price = await far_price(priv)
            faults(thread, {"ban": [{"api_key": sb.api_key, "secs": 0.3}]})
            req = limit_buy(price)
            placed = await priv.place_order(req)  # 429/105: refused before it ran, so safe to resend
            assert placed.status == "new"
            assert ("order_post", "banned") in outcomes and outcomes[-1] == ("order_post", "ok")
            assert len(orders_with(thread, req.client_order_id)) == 1
            await priv.cancel_order(MARKET, order_id=placed.order_id)
        finally:
            await rest.close()

    run(scenario())


# -- WS: the account channel ---------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.orders: list[OrderState] = []
        self.fills: list[Fill] = []
        self.states: list[bool] = []
        self.connected = 0

    def on_connected(self) -> None:
        self.connected += 1

    def stream(self, sb: Sandbox, **kw: Any) -> AccountStream:
        kw.setdefault("api_secret", sb.api_secret)
        return AccountStream(sb.ws_url, api_key=sb.api_key, on_order=self.orders.append,
                             on_fill=self.fills.append, on_connected=self.on_connected, on_state=self.states.append,
                             backoff=Backoff(0.05, 0.2), **kw)


@asynccontextmanager
async def running(stream: AccountStream) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 1.5)  # stopping is prompt


def test_account_stream_gets_order_and_fill_events(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    thread, sb = sandbox
    rec = Recorder()

    async def scenario() -> None:
        stream = rec.stream(sb, markets=[MARKET])
        async with running(stream), private(sb) as priv:
            await until(lambda: rec.connected == 1, what="subscribed")
            assert stream.authenticated and rec.states == [True]
            placed = await priv.place_order(market_buy("50"))
            fills = await until(lambda: [f for f in rec.fills if f.order_id == placed.order_id], what="fill events")
            await until(lambda: any(o.order_id == placed.order_id and o.status == "filled" for o in rec.orders),
                        what="filled order event")
            await until(lambda: sum(f.amount for f in rec.fills if f.order_id == placed.order_id) == placed.filled_amount,
                        what="all fills")
            assert all(f.market == MARKET and f.side == "buy" and isinstance(f.fee, Decimal) for f in fills)
            assert {f.fill_id for f in rec.fills if f.order_id == placed.order_id} == {f.fill_id for f in placed.fills}
            assert stream.unexpected == 0

            # markets change live: ETH-EUR in, BTC-EUR out
            await stream.set_markets(["ETH-EUR"])

            def eth_only() -> bool:
                subs = [s.subs.get("account", {}) for s in sb.hub.sessions.values()]
                return any("ETH-EUR" in m and MARKET not in m for m in subs)

            await until(lambda: thread.call(eth_only), what="ETH-EUR subscribed")
            seen = len(rec.orders)
            btc = await priv.place_order(market_buy("10"))
            eth = await priv.place_order(market_buy("10", market="ETH-EUR"))
            await until(lambda: any(o.order_id == eth.order_id for o in rec.orders), what="ETH-EUR order event")
            assert not any(o.order_id == btc.order_id for o in rec.orders[seen:])
            assert rec.connected == 1  # a live change is not a reconnect
        assert rec.states[-1] is False

    run(scenario())


def test_account_stream_reconnects_after_a_drop(sandbox: tuple[SandboxThread, Sandbox]) -> None:
    thread, sb = sandbox
    rec = Recorder()

    async def scenario() -> None:
        stream = rec.stream(sb, markets=[MARKET])
        async with running(stream), private(sb) as priv:
            await until(lambda: rec.connected == 1, what="first subscribe")
            assert faults(thread, {"ws_drop": "all"})["applied"]["ws_drop"] >= 1
            await until(lambda: rec.connected == 2, what="re-subscribe after the drop")
            assert rec.states == [True, False, True] and stream.connects == 2 and stream.authenticated
            placed = await priv.place_order(market_buy("20"))
            await until(lambda: any(f.order_id == placed.order_id for f in rec.fills), what="fill after reconnect")

    run(scenario())


def test_account_stream_with_a_wrong_secret_keeps_retrying_and_never_subscribes(
        sandbox: tuple[SandboxThread, Sandbox]) -> None:
    _, sb = sandbox
    rec = Recorder()

    async def scenario() -> None:
        stream = rec.stream(sb, markets=[MARKET], api_secret="0" * 64)
        async with running(stream):
            await until(lambda: stream.connects >= 2, what="a second attempt")
            assert not stream.authenticated and rec.connected == 0 and rec.states == []

    run(scenario())


def test_a_malformed_account_frame_is_counted_not_fatal() -> None:
    rec = Recorder()
    reasons: list[str] = []
    stream = AccountStream("ws://127.0.0.1:1/v2/", api_key="k" * 64, api_secret="s", on_order=rec.orders.append,
                           on_fill=rec.fills.append, on_unexpected=reasons.append)
    stream._on_text('{"event":"order","orderId":"x","market":"BTC-EUR"}')  # no side/status
    stream._on_text('{"event":"fill","market":"BTC-EUR","orderId":"x","fillId":"f","amount":"oops","price":"1"}')
    stream._on_text("not json")
    stream._on_text('{"event":"order","orderId":"o","market":"BTC-EUR","side":"sell","status":"new",'
                    '"orderType":"limit","amount":"0.1","amountRemaining":"0.1","price":"300"}')
    assert reasons == ["bad_order", "bad_fill", "not_json"] and stream.unexpected == 3
    assert [o.order_id for o in rec.orders] == ["o"] and rec.orders[0].price == Decimal("300")
