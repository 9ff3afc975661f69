"""WebSocket: auth, subscribe acks, events per channel, action replies and errors, slow clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from srv_helpers import KEY, SECRET, run, sandbox

from sandbox.server.auth import sign
from sandbox.server.metrics import Metrics
from sandbox.server.ws import Hub, Session


def _auth_msg(key: str = KEY, secret: str = SECRET, ts: int | None = None, window: Any = "10000") -> dict:
    ts = ts if ts is not None else time.time_ns() // 1_000_000
    return {"action": "authenticate", "key": key, "signature": sign(secret, ts, "GET", "/v2/websocket"),
            "timestamp": ts, "window": window}


async def _until(ws, pred, timeout: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, "condition not met before the deadline"
        m = await ws.receive_json(timeout=left)
        if pred(m):
            return m


def test_actions_errors_and_auth() -> None:
    async def scenario() -> None:
        async with sandbox() as (sb, c):
            async with c.http.ws_connect(sb.ws_url) as ws:
                await ws.send_str("not json")
                assert await ws.receive_json(timeout=5) == {"errorCode": 102, "error": "Invalid JSON."}
                await ws.send_json({"action": "getTime", "requestId": 7})
                m = await ws.receive_json(timeout=5)
                assert m["action"] == "getTime" and m["requestId"] == 7 and isinstance(m["response"]["time"], int)
                await ws.send_json({"action": "frobnicate"})
                assert await ws.receive_json(timeout=5) == {
                    "action": "frobnicate", "errorCode": 415, "error": "Invalid action. Please check the request."}
                await ws.send_json({"action": "privateGetBalance"})
                assert (await ws.receive_json(timeout=5))["errorCode"] == 300
                await ws.send_json({"action": "getBook", "market": "NOPE-EUR"})
                m = await ws.receive_json(timeout=5)
                assert m["action"] == "getBook" and m["errorCode"] == 205
                await ws.send_json({"action": "getBook", "market": "BTC-EUR", "depth": 3})
                m = await ws.receive_json(timeout=5)
                assert m["response"]["market"] == "BTC-EUR" and len(m["response"]["bids"]) <= 3
                bad = _auth_msg()
                bad["signature"] = "0" * 64
                await ws.send_json(bad)
                assert await ws.receive_json(timeout=5) == {
                    "action": "authenticate", "errorCode": 309, "error": "The signature is invalid."}
                await ws.send_json(_auth_msg(ts=time.time_ns() // 1_000_000 - 60_000))
                assert (await ws.receive_json(timeout=5))["errorCode"] == 304
                # window as a number and timestamp as a string (Node / Go SDKs) are fine too
                ts = time.time_ns() // 1_000_000
                await ws.send_json(_auth_msg(ts=ts) | {"timestamp": str(ts), "window": 10000})
                assert await ws.receive_json(timeout=5) == {"event": "authenticate", "authenticated": True}
                await ws.send_json({"action": "privateGetBalance"})
                m = await ws.receive_json(timeout=5)
                assert m["action"] == "privateGetBalance" and any(b["symbol"] == "EUR" for b in m["response"])
                await ws.send_json({"action": "privateGetFees", "market": None})
                assert "taker" in (await ws.receive_json(timeout=5))["response"]

    run(scenario())


def test_subscriptions_acks_and_events() -> None:
    async def scenario() -> None:
        async with sandbox() as (sb, c):
            async with c.http.ws_connect(sb.ws_url) as ws:
                await ws.send_json({"action": "subscribe", "channels": [{"name": "account", "markets": ["BTC-EUR"]}]})
                assert (await ws.receive_json(timeout=5))["errorCode"] == 300
                await ws.send_json({"action": "subscribe", "channels": [{"name": "book", "markets": ["NOPE-EUR"]}]})
                assert (await ws.receive_json(timeout=5))["error"] == "market parameter NOPE-EUR is invalid."
                await ws.send_json({"action": "subscribe", "channels": [{"name": "bogus", "markets": ["BTC-EUR"]}]})
                assert (await ws.receive_json(timeout=5))["error"] == "channel.name parameter is invalid."
                await ws.send_json({"action": "subscribe", "channels": [{"name": "book", "markets": ["BTC-EUR"]}]})
                assert await ws.receive_json(timeout=5) == {"event": "subscribed", "subscriptions": {"book": ["BTC-EUR"]}}
                await ws.send_json({"action": "subscribe", "channels": [
                    {"name": "candles", "interval": ["1m"], "markets": ["BTC-EUR"]},
                    {"name": "ticker24h", "markets": ["ETH-EUR"]},
                    {"name": "ticker", "markets": ["BTC-EUR", "ETH-EUR"]},
                    {"name": "trades", "markets": ["BTC-EUR", "ETH-EUR"]},
                    {"name": "book", "markets": ["BTC-EUR"]},
                ]})
                ack = await _until(ws, lambda m: m.get("event") == "subscribed")
                assert ack["subscriptions"] == {
                    "book": ["BTC-EUR"], "candles": {"1m": ["BTC-EUR"]}, "ticker24h": ["ETH-EUR"],
                    "ticker": ["BTC-EUR", "ETH-EUR"], "trades": ["BTC-EUR", "ETH-EUR"]}
                seen: dict[str, dict] = {}

                def collect(m: dict) -> bool:
                    if "event" in m:
                        seen.setdefault(m["event"], m)
                    return {"book", "ticker24h", "trade", "candle", "ticker"} <= seen.keys()

                await _until(ws, collect, timeout=30)
                assert [r["market"] for r in seen["ticker24h"]["data"]] == ["ETH-EUR"]
                assert seen["candle"]["interval"] == "1m" and seen["candle"]["market"] == "BTC-EUR"
                assert isinstance(seen["book"]["nonce"], int)
                await ws.send_json({"action": "unsubscribe", "channels": [
                    {"name": "book", "markets": ["BTC-EUR"]}, {"name": "candles", "interval": ["1m"], "markets": ["BTC-EUR"]},
                    {"name": "trades", "markets": ["BTC-EUR", "ETH-EUR"]}, {"name": "ticker", "markets": ["BTC-EUR", "ETH-EUR"]},
                    {"name": "ticker24h", "markets": ["ETH-EUR"]}]})
                ack = await _until(ws, lambda m: m.get("event") == "unsubscribed")
                assert ack["subscriptions"] == {}

    run(scenario())


def test_account_channel_gets_own_order_and_fill_events() -> None:
    async def scenario() -> None:
        async with sandbox() as (sb, c):
            async with c.http.ws_connect(sb.ws_url) as mine, c.http.ws_connect(sb.ws_url) as other:
                await mine.send_json(_auth_msg())
                assert (await mine.receive_json(timeout=5))["authenticated"] is True
                await mine.send_json({"action": "subscribe", "channels": [{"name": "account", "markets": ["BTC-EUR"]}]})
                assert (await mine.receive_json(timeout=5)) == {"event": "subscribed", "subscriptions": {"account": ["BTC-EUR"]}}
                status, order, _ = await c.call("POST", "/order", {
                    "market": "BTC-EUR", "side": "buy", "orderType": "market", "amountQuote": "20", "operatorId": 3})
                assert status == 200, order
                ev = await _until(mine, lambda m: m.get("event") == "fill")
                assert ev["orderId"] == order["orderId"] and ev["market"] == "BTC-EUR"
                ev = await _until(mine, lambda m: m.get("event") == "order" and m.get("status") == "filled")
                assert ev["orderId"] == order["orderId"]
                # WS order placement, reply to the sender
                await mine.send_json({"action": "privateCreateOrder", "market": "BTC-EUR", "side": "buy",
                                      "orderType": "limit", "amount": "0.01", "price": "1000", "operatorId": 3})
                m = await _until(mine, lambda m: m.get("action") == "privateCreateOrder")
                assert m["response"]["status"] == "new"
                await other.send_json({"action": "getTime"})
                assert "response" in await other.receive_json(timeout=5)  # nothing from the other account leaked first

    run(scenario())


def test_market_data_from_a_request_leaves_between_two_market_steps() -> None:
    # The market loop steps once a minute here, so it never flushes in time: the book change an
    # order makes must still reach a book subscriber within the flush interval (a socket of its
    # own, which no account event wakes), and the order's own account event at once.
    async def scenario() -> None:
        async with sandbox(step_ms=60_000) as (sb, c):
            async with c.http.ws_connect(sb.ws_url) as books, c.http.ws_connect(sb.ws_url) as mine:
                await mine.send_json(_auth_msg())
                assert (await mine.receive_json(timeout=5))["authenticated"] is True
                await mine.send_json({"action": "subscribe", "channels": [{"name": "account", "markets": ["BTC-EUR"]}]})
                await _until(mine, lambda m: m.get("event") == "subscribed")
                await books.send_json({"action": "subscribe", "channels": [{"name": "book", "markets": ["BTC-EUR"]}]})
                await _until(books, lambda m: m.get("event") == "subscribed")
                status, order, _ = await c.call("POST", "/order", {
                    "market": "BTC-EUR", "side": "buy", "orderType": "limit", "amount": "0.01", "price": "1000",
                    "operatorId": 3})
                assert status == 200, order
                ev = await _until(mine, lambda m: m.get("event") == "order", timeout=5)
                assert ev["orderId"] == order["orderId"]
                await _until(books, lambda m: m.get("event") == "book" and ["1000", "0.01"] in m.get("bids", []),
                             timeout=5)

    run(scenario())


def test_slow_client_is_dropped_without_blocking_others() -> None:
    class StuckWs:
        async def send_str(self, data: str) -> None:
            await asyncio.Event().wait()  # never completes: a client that stopped reading

        async def close(self, **kw: Any) -> None:
            return None

    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    async def scenario() -> None:
        metrics = Metrics()
        hub = Hub(metrics)
        tr = Transport()
        slow = Session(StuckWs(), "127.0.0.1", tr, 3, hub)  # type: ignore[arg-type]
        hub.add(slow)
        hub.index_add(("book", "BTC-EUR"), slow)
        task = asyncio.create_task(slow.run_writer())
        for i in range(10):
            hub.publish(("book", "BTC-EUR"), "book", lambda i=i: {"event": "book", "i": i})
            await asyncio.sleep(0)
        assert slow.closed and tr.aborted
        assert metrics.registry.get_sample_value("sandbox_ws_slow_client_disconnects_total") == 1
        task.cancel()

    run(scenario())
