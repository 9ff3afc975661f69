"""Exchange JSON → our messages; the hot-path encoders equal the pydantic encoding."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tradestack.bitvavo.book import mid_and_spread_bps
from tradestack.bitvavo.parse import (
    ParseError,
    book_delta_message,
    candle_id,
    candle_message,
    delta_id,
    encode_book_delta,
    encode_book_top,
    ns_to_ms,
    parse_book_event,
    parse_candle_event,
    parse_rest_candles,
    parse_ticker24h,
    trading_markets,
)
from tradestack.messages import BookTopUpdated, Trace, decode, derive_id, encode_data

BOOK = {"event": "book", "market": "BTC-EUR", "nonce": 413289768, "bids": [["74968.00", "0"], ["75516.00", "0.00058294"]],
        "asks": [], "timestamp": 1790126693594483831}


def test_book_delta_fast_encoding_equals_model() -> None:
    ev = parse_book_event(BOOK)
    assert ev.exchange_ms == 1790126693594
    msg_id, data = encode_book_delta(ev, "ingest_orderbook")
    model = book_delta_message(ev, "ingest_orderbook")
    assert data == encode_data(model)
    back = decode({b"type": b"market.book_delta", b"data": data})
    assert back == model and back.id == msg_id
    assert back.bids[1] == (Decimal("75516.00"), Decimal("0.00058294"))
    assert encode_book_delta(ev, "ingest_orderbook")[0] == msg_id  # deterministic


def test_book_top_fast_encoding_equals_model() -> None:
    top = (Decimal("99.5"), Decimal("1.25"), Decimal("100.50"), Decimal("0.00000001"))
    mid, bps = mid_and_spread_bps(top[0], top[2])
    msg_id, data = encode_book_top("BTC-EUR", top, mid, bps, 7, 1_700_000_000_000, "trace-1", "src")
    model = BookTopUpdated(id=msg_id, ts=1_700_000_000_000, src="src", trace=Trace(id="trace-1", ts=1_700_000_000_000),
                           market="BTC-EUR", bid=top[0], bid_size=top[1], ask=top[2], ask_size=top[3], mid=mid,
                           spread_bps=bps, nonce=7, exchange_ts=1_700_000_000_000)
    assert data == encode_data(model)
    assert decode({b"type": b"market.book_top", b"data": data}) == model
    assert msg_id == derive_id("trace-1", "top")


@pytest.mark.parametrize("bad", [
    {"event": "book", "nonce": 1},
    {"event": "book", "market": "X", "nonce": "1"},
    {"event": "book", "market": "X", "nonce": 1, "bids": [["1"]]},
    {"event": "book", "market": "X", "nonce": 1, "bids": [[1, 2]]},
    {"event": "book", "market": "X", "nonce": True},
])
def test_bad_book_events_raise_parse_error(bad: dict) -> None:
    with pytest.raises(ParseError):
        parse_book_event(bad)


def test_ns_to_ms() -> None:
    assert ns_to_ms(1790126693594483831) == 1790126693594
    assert ns_to_ms(1542967486256) == 1542967486256


def test_ticker24h() -> None:
    frame = {"event": "ticker24h", "data": [
        {"market": "ETH-EUR", "open": "193.5", "high": "202.72", "low": "192.46", "last": "199.01",
         "volume": "3587.05020246", "volumeQuote": "708030.17", "bid": "199.56", "bidSize": "4.14730802",
         "ask": "199.57", "askSize": "6.13642074", "timestamp": 1590770885217},
        {"market": "NEW-EUR", "open": None, "high": None, "low": None, "last": None, "volume": "0",
         "volumeQuote": "0", "bid": None, "bidSize": None, "ask": None, "askSize": None, "timestamp": 1590770885217,
         "startTimestamp": 1, "openTimestamp": None}]}
    eth, new = parse_ticker24h(frame, "t")
    assert eth.market == "ETH-EUR" and eth.volume_quote == Decimal("708030.17") and eth.exchange_ts == 1590770885217
    assert new.open is None and new.volume == Decimal(0)
    assert eth.id == parse_ticker24h(frame, "t")[0].id
    with pytest.raises(ParseError):
        parse_ticker24h({"event": "ticker24h", "data": [{"market": "X", "timestamp": 1, "open": 1.5}]}, "t")


def test_candles() -> None:
    [c] = parse_candle_event({"event": "candle", "market": "BTC-EUR", "interval": "1h",
                              "candle": [[1548676800000, "2999.3", "2999.3", "2990.5", "2999.3", "11.15058838"]]})
    assert c.open_ts == 1548676800000 and c.low == "2990.5"
    rest = parse_rest_candles("BTC-EUR", "1h", [[1548669600000, "3012.9", "3015.8", "3000", "3012.9", "8"],
                                                ["1548417600000", "3124", "3125.1", "3124", "3124", "0.1"]])
    assert [r.open_ts for r in rest] == [1548417600000, 1548669600000]
    closed = candle_message(c, True, 5, "s")
    assert closed.closed and closed.id == candle_id(c, True)
    assert candle_id(c, False) != candle_id(c, True)
    changed = c.__class__(**{**{f: getattr(c, f) for f in c.__slots__}, "close": "3000"})
    assert candle_id(changed, True) == candle_id(c, True)  # closed: one id per period
    assert candle_id(changed, False) != candle_id(c, False)  # open: each update its own
    with pytest.raises(ParseError):
        parse_candle_event({"event": "candle", "market": "X", "interval": "1m", "candle": [[1, "a", "1", "1", "1", "1"]]})


def test_trading_markets() -> None:
    assert trading_markets([{"market": "B-EUR", "status": "trading"}, {"market": "A-EUR", "status": "trading"},
                            {"market": "H-EUR", "status": "halted"}]) == ["A-EUR", "B-EUR"]


def test_ingest_ids_are_pinned() -> None:
    """The ids ingest derives never change across releases: a restarted (upgraded) ingest re-publishing
    an exchange event must write the id the first one wrote, or downstream would not drop the copy."""
    assert delta_id("BTC-EUR", 1, 2) == "ac4499c2-5677-578e-9e5d-dbea34aca322"
    top = (Decimal("1"), Decimal("1"), Decimal("2"), Decimal("1"))
    assert encode_book_top("BTC-EUR", top, Decimal("1.5"), Decimal("1"), 1, 1, "trace-1", "s")[0] \
        == "46cb95fb-e872-5f17-aea0-a6cd8c15909f"
