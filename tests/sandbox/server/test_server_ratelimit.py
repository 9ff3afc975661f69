"""Rate limits: documented weights, headers on every answer, 105 bans with a parseable expiry."""

from __future__ import annotations

import pytest
from srv_helpers import KEY, KEY2, SECRET2, run, sandbox

from sandbox.server.errors import ApiError
from sandbox.server.ratelimit import RateLimiter
from tradestack.clock import FakeClock


def _ban_ms(error: str) -> int:
    # exactly how the SDK parses it (Bitvavo.updateRateLimit)
    return int(error.split(" at ")[1].split(".")[0])


def test_limiter_windows_and_bans(fake_clock: FakeClock) -> None:
    rl = RateLimiter(fake_clock.now_ms, limit=10, ban_key_ms=60_000, ban_ip_ms=900_000)
    ident, is_key = rl.identity(None, "127.0.0.1")
    b = rl.charge(ident, 4, is_key)
    assert (b.limit, b.remaining) == (10, 6)
    assert b.reset_at % 60_000 == 0 and b.reset_at > fake_clock.now_ms()
    rl.charge(ident, 6, is_key)
    with pytest.raises(ApiError) as e:
        rl.charge(ident, 1, is_key)
    assert e.value.error_code == 105 and e.value.http_status == 429
    assert _ban_ms(e.value.error) == fake_clock.now_ms() + 900_000  # IPs: 15 minutes
    fake_clock.advance(60_000)  # a new window does not lift a ban
    with pytest.raises(ApiError):
        rl.charge(ident, 1, is_key)
    fake_clock.advance(900_000)
    assert rl.charge(ident, 1, is_key).remaining == 9
    key_ident, key_is_key = rl.identity("abc", "127.0.0.1")
    with pytest.raises(ApiError) as e:
        rl.charge(key_ident, 11, key_is_key)
    assert _ban_ms(e.value.error) == fake_clock.now_ms() + 60_000  # keys: 1 minute


def test_weights_headers_and_ban_over_rest(fake_clock: FakeClock) -> None:
    async def scenario() -> None:
        async with sandbox(fake_clock) as (sb, c):
            async def remaining(method: str, path: str, **kw) -> int:
                status, body, h = await c.call(method, path, **kw)
                assert status == 200, body
                assert int(h["bitvavo-ratelimit-resetat"]) > fake_clock.now_ms()
                assert h["bitvavo-ratelimit-limit"] == "1000"
                return int(h["bitvavo-ratelimit-remaining"])

            expected = [
                ("GET", "/time", 1), ("GET", "/markets", 1), ("GET", "/BTC-EUR/book", 1),
                ("GET", "/BTC-EUR/trades", 5), ("GET", "/BTC-EUR/candles?interval=1m", 1),
                ("GET", "/ticker/24h?market=BTC-EUR", 1), ("GET", "/ticker/24h", 25),
                ("GET", "/balance", 5), ("GET", "/account", 1), ("GET", "/orders?market=BTC-EUR", 5),
                ("GET", "/ordersOpen?market=BTC-EUR", 5), ("GET", "/ordersOpen", 100),
                ("GET", "/trades?market=BTC-EUR", 5),
                ("DELETE", "/orders?market=BTC-EUR&operatorId=1", 25), ("DELETE", "/orders?operatorId=1", 100),
            ]
            prev = 1000
            for method, path, weight in expected:
                now = await remaining(method, path)
                assert prev - now == weight, (method, path)
                prev = now
            # unsigned calls are counted per IP, separately
            assert await remaining("GET", "/time", auth=False) == 999
            # unknown paths and auth failures carry the headers too
            status, body, h = await c.call("GET", "/nope")
            assert status == 404 and body["errorCode"] == 110 and "bitvavo-ratelimit-resetat" in h

            # exhaust key 2's budget: 105, parseable ban time, and 105 again during the ban
            for _ in range(9):
                await c.call("GET", "/ordersOpen", key=KEY2, secret=SECRET2)
            status, body, h = await c.call("GET", "/ordersOpen", key=KEY2, secret=SECRET2)
            assert status == 200 and h["bitvavo-ratelimit-remaining"] == "0"
            status, body, h = await c.call("GET", "/time", key=KEY2, secret=SECRET2)
            assert status == 429 and body["errorCode"] == 105
            assert body["error"].startswith("Your IP or API key has been banned for not respecting the rate limit.")
            assert _ban_ms(body["error"]) == fake_clock.now_ms() + 60_000
            fake_clock.advance(30_000)
            status, body, _ = await c.call("GET", "/time", key=KEY2, secret=SECRET2)
            assert (status, body["errorCode"]) == (429, 105)
            # the other key is unaffected
            assert (await c.call("GET", "/time", key=KEY))[0] == 200
            fake_clock.advance(31_000)
            assert (await c.call("GET", "/time", key=KEY2, secret=SECRET2))[0] == 200

    run(scenario())


def test_ws_actions_share_the_budget(fake_clock: FakeClock) -> None:
    async def scenario() -> None:
        async with sandbox(fake_clock) as (sb, c):
            async with c.http.ws_connect(sb.ws_url) as ws:
                await ws.send_json({"action": "getTicker24h"})  # 25, unsigned → per IP
                assert (await ws.receive_json())["action"] == "getTicker24h"
                await ws.send_json({"action": "subscribe", "channels": [{"name": "book", "markets": ["BTC-EUR"]}]})
                assert (await ws.receive_json())["event"] == "subscribed"
            _, _, h = await c.call("GET", "/time", auth=False)
            assert h["bitvavo-ratelimit-remaining"] == str(1000 - 25 - 1 - 1)

    run(scenario())
