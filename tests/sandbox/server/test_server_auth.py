"""Auth exactly as Bitvavo: HMAC over ts + METHOD + /v2 + raw path?query + compact body."""

from __future__ import annotations

import json

import pytest
from srv_helpers import KEY, SECRET, run, sandbox, signed

from sandbox.server import auth
from sandbox.server.errors import ApiError


def test_signature_matches_documented_examples() -> None:
    body = '{"market":"BTC-EUR","side":"buy","price":"5000","amount":"1.23","orderType":"limit"}'
    assert (
        auth.sign("bitvavo", 1548172481125, "POST", "/v2/order", body)
        == "44d022723a20973a18f7ee97398b9fdd405d2d019c8d39e24b8cc0dcb39ca016"
    )
    assert (
        auth.sign("bitvavo", 1548175200641, "GET", "/v2/websocket")
        == "653fc0505431c63a043273da4bd2f0927eae83948d796084f313e5d1131b0d6f"
    )


def test_canonical_body_compacts_spaced_json_and_ignores_empty_object() -> None:
    assert auth.canonical_body(b'{"a": "1", "b": 2}') == ('{"a":"1","b":2}', {"a": "1", "b": 2})
    assert auth.canonical_body(b"{}") == ("", None)
    assert auth.canonical_body(b"") == ("", None)
    with pytest.raises(ApiError) as e:
        auth.canonical_body(b"{nope")
    assert e.value.error_code == 102


def _verify(**kw: object) -> str:
    base: dict = dict(key=KEY, timestamp=1000_000, window=None, method="GET", path_qs="/v2/balance", body="",
                      secret_for={KEY: SECRET}.get, now_ms=1000_500)
    base.update(kw)
    if "signature" not in base:
        base["signature"] = auth.sign(SECRET, base["timestamp"], base["method"], base["path_qs"], base["body"])
    return auth.verify(**base)


@pytest.mark.parametrize(
    "kw, code",
    [
        (dict(signature="0" * 64), 309),
        (dict(signature="abc"), 308),
        (dict(now_ms=1000_000 + 10_001), 304),
        (dict(window="60001"), 303),
        (dict(window="99"), 303),
        (dict(window="ten"), 303),
        (dict(timestamp="soon"), 302),
        (dict(key="x" * 64), 305),
        (dict(key="x" * 63), 301),
        (dict(key=KEY + "x"), 301),
        (dict(signature=None), 300),
    ],
)
def test_verify_rejections(kw: dict, code: int) -> None:
    with pytest.raises(ApiError) as e:
        _verify(**kw)
    assert e.value.error_code == code
    assert e.value.http_status == 403


def test_verify_accepts_window_and_timestamp_as_string_or_number() -> None:
    assert _verify(window="20000", now_ms=1000_000 + 15_000) == KEY
    assert _verify(window=20000, timestamp="1000000") == KEY


# ---- through the server ------------------------------------------------------------------


def test_rest_auth_error_codes(fake_clock) -> None:
    async def scenario() -> None:
        async with sandbox(fake_clock) as (sb, c):
            now = fake_clock.now_ms()
            url = sb.rest_url + "/balance"

            async def get(headers: dict) -> tuple[int, dict]:
                async with c.http.get(url, headers=headers) as r:
                    assert "bitvavo-ratelimit-remaining" in r.headers
                    return r.status, await r.json()

            ok = signed("GET", "/v2/balance", ts=now)
            assert (await get(ok))[0] == 200
            bad_sig = dict(ok, **{"Bitvavo-Access-Signature": "f" * 64})
            assert await get(bad_sig) == (403, {"errorCode": 309, "error": "The signature is invalid."})
            old = signed("GET", "/v2/balance", ts=now - 10_001)
            assert (await get(old))[1]["errorCode"] == 304
            assert (await get(signed("GET", "/v2/balance", ts=now - 15_000, window=20_000)))[0] == 200
            assert (await get(signed("GET", "/v2/balance", ts=now, window=60_001)))[1]["errorCode"] == 303
            unknown = signed("GET", "/v2/balance", ts=now, key="z" * 64)
            assert (await get(unknown))[1]["errorCode"] == 305
            assert await get({}) == (403, {"errorCode": 300, "error": "Authentication is required for this endpoint."})
            # public endpoints: unsigned and signed both fine, a bad signature is still rejected
            assert (await c.call("GET", "/time", auth=False))[0] == 200
            assert (await c.call("GET", "/time"))[0] == 200
            async with c.http.get(sb.rest_url + "/time", headers=bad_sig) as r:
                assert r.status == 403

    run(scenario())


def test_spaced_json_body_and_empty_object_on_get_are_accepted(fake_clock) -> None:
    async def scenario() -> None:
        async with sandbox(fake_clock) as (sb, c):
            now = fake_clock.now_ms()
            body = {"market": "BTC-EUR", "side": "buy", "orderType": "limit", "amount": "0.01",
                    "price": "1000", "operatorId": 1}
            headers = signed("POST", "/v2/order", body, ts=now)
            headers["Content-Type"] = "application/json"
            # wire form with spaces, as requests(json=...) sends it; signature over the compact form
            async with c.http.post(sb.rest_url + "/order", data=json.dumps(body), headers=headers) as r:
                order = await r.json()
                assert r.status == 200, order
            # GET with the 2-byte body {} the SDK sends; query string is signed raw
            qs = f"/order?market=BTC-EUR&orderId={order['orderId']}"
            h = signed("GET", "/v2" + qs, ts=now)
            h["Content-Type"] = "application/json"
            async with c.http.get(sb.rest_url + qs, data=b"{}", headers=h) as r:
                assert r.status == 200
                assert (await r.json())["orderId"] == order["orderId"]
            # a body that was signed spaced (not canonical) is refused
            h = signed("POST", "/v2/order", None, ts=now)
            h["Bitvavo-Access-Signature"] = auth.sign(SECRET, now, "POST", "/v2/order", json.dumps(body))
            async with c.http.post(sb.rest_url + "/order", data=json.dumps(body), headers=h) as r:
                assert (await r.json())["errorCode"] == 309

    run(scenario())
