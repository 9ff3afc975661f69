"""Every fault kind is observable by a client."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from srv_helpers import KEY, run, sandbox

from sandbox.server.errors import SERVER_ERRORS
from sandbox.server.faults import FaultInjector, FaultSpec
from tradestack.clock import FakeClock


def _order(client_order_id: str | None = None, market: str = "BTC-EUR") -> dict:
    body = {"market": market, "side": "buy", "orderType": "limit", "amount": "0.01", "price": "1000",
            "operatorId": 42}
    if client_order_id:
        body["clientOrderId"] = client_order_id
    return body


async def _admin(c, spec: dict) -> dict:
    async with c.http.post(c.sb.base_url + "/admin/faults", json=spec) as r:
        body = await r.json()
        assert r.status == 200, body
        return body


async def _admin_orders(c, client_order_id: str) -> list:
    async with c.http.get(c.sb.base_url + "/admin/orders", params={"clientOrderId": client_order_id}) as r:
        assert r.status == 200
        return await r.json()


def test_fault_spec_rejects_unknown_fields_and_codes() -> None:
    with pytest.raises(ValueError):
        FaultSpec.model_validate({"latenzy": {"ms": 1}})
    with pytest.raises(ValueError):
        FaultSpec.model_validate({"errors": [{"code": 216}]})


def test_probabilistic_rules_are_seeded() -> None:
    async def fires(seed: int) -> list[bool]:
        fi = FaultInjector(seed)
        fi.apply({"errors": [{"code": 101, "probability": 0.5}]})
        out = []
        for _ in range(20):
            try:
                await fi.before("/v2/time", "GET")
                out.append(False)
            except Exception:  # noqa: BLE001 - ApiError expected
                out.append(True)
        return out

    assert run(fires(3)) == run(fires(3))
    assert any(run(fires(3))) and not all(run(fires(3)))


def test_latency_uses_the_injected_sleep(fake_clock: FakeClock) -> None:
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    async def scenario() -> None:
        async with sandbox(fake_clock, sleep=fake_sleep) as (sb, c):
            await _admin(c, {"latency": {"ms": 250, "path": "^/v2/time$"}})
            assert (await c.call("GET", "/time"))[0] == 200
            assert (await c.call("GET", "/markets"))[0] == 200  # path does not match: no delay
            assert slept == [0.25]
            await _admin(c, {"latency": {"ms": 100, "jitter_ms": 20}})
            for _ in range(5):
                await c.call("GET", "/time")
            assert all(0.08 <= s <= 0.12 for s in slept[1:]) and len(slept) == 6
            assert (await _admin(c, {"latency": {"ms": 0}}))["latency"] is None

    run(scenario())


def test_5xx_next_n_does_not_execute(fake_clock: FakeClock) -> None:
    async def scenario() -> None:
        async with sandbox(fake_clock) as (sb, c):
            await _admin(c, {"errors": [{"code": 107, "path": "^/v2/order$", "method": "POST", "next": 2}]})
            coid = str(uuid.uuid4())
            for _ in range(2):
                status, body, h = await c.call("POST", "/order", _order(coid))
                assert (status, body["errorCode"]) == (503, 107)
                assert "bitvavo-ratelimit-remaining" in h
            assert await _admin_orders(c, coid) == []
            status, body, _ = await c.call("POST", "/order", _order(coid))
            assert status == 200 and body["clientOrderId"] == coid
            snap = await (await c.http.get(sb.base_url + "/admin/faults")).json()
            assert snap["errors"] == [] and snap["injected"]["error_107"] == 2
            await _admin(c, {"errors": [{"code": 101, "next": 1}, {"code": 109, "path": "/time", "next": 1}]})
            assert (await c.call("GET", "/time"))[:2] == (500, {"errorCode": 101, "error": SERVER_ERRORS[101][0]})
            status, body, _ = await c.call("GET", "/time")
            assert (status, body["errorCode"]) == (503, 109)
            assert (await c.call("GET", "/time"))[0] == 200

    run(scenario())


def test_lost_response_timeout_and_drop_still_place_the_order(fake_clock: FakeClock) -> None:
    async def scenario() -> None:
        async with sandbox(fake_clock) as (sb, c):
            await _admin(c, {"lost_responses": [{"path": "^/v2/order$", "method": "POST", "next": 1}]})
            coid = str(uuid.uuid4())
            status, body, _ = await c.call("POST", "/order", _order(coid))
            assert (status, body["errorCode"]) == (503, 109)
            found = await _admin_orders(c, coid)
            assert len(found) == 1 and found[0]["clientOrderId"] == coid
            # the client's own recovery path: look it up by clientOrderId
            status, body, _ = await c.call("GET", f"/order?market=BTC-EUR&clientOrderId={coid}")
            assert status == 200 and body["orderId"] == found[0]["orderId"]

            await _admin(c, {"lost_responses": [{"path": "^/v2/order$", "method": "POST", "next": 1, "mode": "drop"}]})
            coid2 = str(uuid.uuid4())
            with pytest.raises(aiohttp.ClientError):
                await c.call("POST", "/order", _order(coid2))
            assert len(await _admin_orders(c, coid2)) == 1
            # the next request is normal again
            assert (await c.call("POST", "/order", _order(str(uuid.uuid4()))))[0] == 200

    run(scenario())


def test_ban_reject_halt_actions(fake_clock: FakeClock) -> None:
    async def scenario() -> None:
        async with sandbox(fake_clock) as (sb, c):
            res = await _admin(c, {"ban": [{"api_key": KEY, "secs": 5}]})
            status, body, _ = await c.call("GET", "/time")
            assert (status, body["errorCode"]) == (429, 105)
            assert str(res["applied"]["ban"][0]) in body["error"]
            fake_clock.advance(5_001)
            assert (await c.call("GET", "/time"))[0] == 200

            await _admin(c, {"reject_orders": {"n": 1, "error_code": 216}})
            status, body, _ = await c.call("POST", "/order", _order())
            assert body["errorCode"] == 216
            assert (await c.call("POST", "/order", _order()))[0] == 200

            await _admin(c, {"market_status": {"BTC-EUR": "halted"}})
            status, body, _ = await c.call("POST", "/order", _order())
            assert body["errorCode"] == 423
            assert (await c.call("POST", "/order", _order(market="ETH-EUR") | {"price": "100", "amount": "0.1"}))[0] == 200
            await _admin(c, {"market_status": {"BTC-EUR": "trading"}})
            assert (await c.call("POST", "/order", _order()))[0] == 200

    run(scenario())


def test_ws_drop_now_and_periodic() -> None:
    async def scenario() -> None:
        async with sandbox() as (sb, c):
            async with c.http.ws_connect(sb.ws_url) as ws1, c.http.ws_connect(sb.ws_url) as ws2:
                await ws1.send_json({"action": "getTime"})
                await ws1.receive_json(timeout=5)
                await _admin(c, {"ws_drop": "all"})
                for ws in (ws1, ws2):
                    msg = await ws.receive(timeout=5)
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            await _admin(c, {"ws_disconnect": {"every_secs": 0.2, "mode": "abort"}})
            async with c.http.ws_connect(sb.ws_url) as ws:
                msg = await ws.receive(timeout=5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            await _admin(c, {"clear": True})

    run(scenario())


def test_book_nonce_gap() -> None:
    async def scenario() -> None:
        async with sandbox() as (sb, c):
            async with c.http.ws_connect(sb.ws_url) as ws:
                await ws.send_json({"action": "subscribe", "channels": [{"name": "book", "markets": ["BTC-EUR"]}]})
                assert (await ws.receive_json(timeout=5))["event"] == "subscribed"
                nonces: list[int] = []

                async def next_nonce() -> int:
                    while True:
                        m = await ws.receive_json(timeout=10)
                        if m.get("event") == "book":
                            return m["nonce"]

                nonces.append(await next_nonce())
                await _admin(c, {"nonce_gap": ["BTC-EUR"]})
                while True:
                    nonces.append(await next_nonce())
                    if nonces[-1] - nonces[-2] != 1:
                        break
                    assert len(nonces) < 500
                assert nonces[-1] - nonces[-2] == 2

    run(scenario())


def test_ws_rate_limit_error_112_can_be_injected_on_a_ws_action(fake_clock: FakeClock) -> None:
    async def scenario() -> None:
        async with sandbox(fake_clock) as (sb, c):
            await _admin(c, {"errors": [{"code": 112, "path": "/time", "next": 1}]})
            async with c.http.ws_connect(sb.ws_url) as ws:
                await ws.send_json({"action": "getTime"})
                reply = await ws.receive_json(timeout=5)
                assert reply["action"] == "getTime" and reply["errorCode"] == 112
                assert reply["error"] == SERVER_ERRORS[112][0]
                await ws.send_json({"action": "getTime"})  # the socket stays usable
                assert "time" in (await ws.receive_json(timeout=5))["response"]

    run(scenario())
