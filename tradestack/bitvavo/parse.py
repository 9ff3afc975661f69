"""Bitvavo JSON (WS events, REST answers) → our messages (``tradestack.messages``).

The venue's shapes stop here. Any malformed input raises ``ParseError`` (the caller logs and
counts it; a bad frame is never fatal).

Ids are deterministic, so a replay of the same exchange event yields the same message id and
downstream drops the duplicate: a book delta from market+nonce+exchange timestamp, a ticker from
market+timestamp, a closed candle from market+interval+open_ts (an open, still-forming candle
also from its values: each distinct update is a distinct message).

The book delta and top-of-book messages are the hot path (tens of thousands per second), so
they are encoded straight to JSON with orjson; ``tests/ingest/test_parse.py`` checks that the
bytes equal the pydantic encoding of the same message and decode back through the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

import orjson

from tradestack.errors import PoisonMessage
from tradestack.messages import BookDeltaReceived, BookTopUpdated, CandleUpdated, Ticker24hUpdated, Trace, derive_id


class ParseError(PoisonMessage, ValueError):
    """An exchange frame or answer that does not have the documented shape (it will never parse:
    poison, in the exception tree's terms)."""


def ns_to_ms(ts: int) -> int:
    """Book timestamps are ns since v2.8.0 (older payloads: ms). Normalise to ms."""
    return ts // 1_000_000 if ts >= 10**15 else ts


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParseError(f"{what} must be an integer, got {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ParseError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _dec_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ParseError(f"{what} must be a decimal string, got {value!r}")
    try:
        if not Decimal(value).is_finite():
            raise ParseError(f"{what} must be finite, got {value!r}")
    except InvalidOperation:
        raise ParseError(f"{what} must be a decimal string, got {value!r}") from None
    return value


def _levels(value: Any, what: str) -> list[list[str]]:
    if not isinstance(value, list):
        raise ParseError(f"{what} must be a list of [price, size]")
    for lvl in value:
        if not isinstance(lvl, list) or len(lvl) < 2 or not isinstance(lvl[0], str) or not isinstance(lvl[1], str):
            raise ParseError(f"{what} has a bad level {lvl!r}")
    return value


# -- book ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BookEvent:
    market: str
    nonce: int
    bids: list[list[str]]
    asks: list[list[str]]
    timestamp: int  # as sent (ns on the current API)

    @property
    def exchange_ms(self) -> int:
        return ns_to_ms(self.timestamp)


def parse_book_event(frame: dict[str, Any]) -> BookEvent:
    """``{"event":"book","market":..,"nonce":..,"bids":[[p,s]],"asks":[..],"timestamp":ns}``."""
    try:
        return BookEvent(_str(frame["market"], "market"), _int(frame["nonce"], "nonce"),
                         _levels(frame.get("bids", []), "bids"), _levels(frame.get("asks", []), "asks"),
                         _int(frame.get("timestamp", 0), "timestamp"))
    except KeyError as exc:
        raise ParseError(f"book event lacks {exc}") from None


def parse_book_snapshot(answer: Any) -> BookEvent:
    """``GET /{market}/book`` (or WS ``getBook``) answer."""
    if not isinstance(answer, dict):
        raise ParseError("book snapshot must be an object")
    return parse_book_event(answer)


def delta_id(market: str, nonce: int, timestamp: int) -> str:
    return derive_id(f"book/{market}/{nonce}/{timestamp}", "delta")


_DELTA_TYPE = BookDeltaReceived.TYPE.encode()
_TOP_TYPE = BookTopUpdated.TYPE.encode()


def encode_book_delta(ev: BookEvent, src: str) -> tuple[str, bytes]:
    """(id, JSON) of the ``BookDeltaReceived`` for one book event (levels as sent)."""
    msg_id = delta_id(ev.market, ev.nonce, ev.timestamp)
    ts = ev.exchange_ms
    data = orjson.dumps({
        "id": msg_id, "ts": ts, "src": src, "trace": {"id": msg_id, "ts": ts}, "v": 1,
        "market": ev.market, "nonce": ev.nonce,
        "bids": [lvl[:2] for lvl in ev.bids] if any(len(lvl) != 2 for lvl in ev.bids) else ev.bids,
        "asks": [lvl[:2] for lvl in ev.asks] if any(len(lvl) != 2 for lvl in ev.asks) else ev.asks,
        "exchange_ts": ts,
    })
    return msg_id, data


def book_delta_message(ev: BookEvent, src: str) -> BookDeltaReceived:
    """The same message as a model (slow path: tests and tools)."""
    msg_id = delta_id(ev.market, ev.nonce, ev.timestamp)
    ts = ev.exchange_ms
    return BookDeltaReceived(id=msg_id, ts=ts, src=src, trace=Trace(id=msg_id, ts=ts), market=ev.market,
                             nonce=ev.nonce, bids=[tuple(lvl[:2]) for lvl in ev.bids],  # type: ignore[misc]
                             asks=[tuple(lvl[:2]) for lvl in ev.asks], exchange_ts=ts)  # type: ignore[misc]


def _plain(d: Decimal) -> str:
    return format(d, "f")


def encode_book_top(market: str, top: tuple[Decimal, Decimal, Decimal, Decimal], mid: Decimal, spread_bps: Decimal,
                    nonce: int, exchange_ms: int, trace_id: str, src: str) -> tuple[str, bytes]:
    """(id, JSON) of a ``BookTopUpdated``; its trace is the book event that moved the top."""
    msg_id = derive_id(trace_id, "top")
    bid, bid_size, ask, ask_size = top
    data = orjson.dumps({
        "id": msg_id, "ts": exchange_ms, "src": src, "trace": {"id": trace_id, "ts": exchange_ms}, "v": 1,
        "market": market, "bid": _plain(bid), "bid_size": _plain(bid_size), "ask": _plain(ask),
        "ask_size": _plain(ask_size), "mid": _plain(mid), "spread_bps": _plain(spread_bps), "nonce": nonce,
        "exchange_ts": exchange_ms,
    })
    return msg_id, data


# -- ticker24h -------------------------------------------------------------------------------

_TICKER_FIELDS = (("open", "open"), ("high", "high"), ("low", "low"), ("last", "last"), ("volume", "volume"),
                  ("volume_quote", "volumeQuote"), ("bid", "bid"), ("bid_size", "bidSize"), ("ask", "ask"),
                  ("ask_size", "askSize"))


def parse_ticker24h(frame: dict[str, Any], src: str) -> list[Ticker24hUpdated]:
    """``{"event":"ticker24h","data":[{market, open, ..., timestamp}, ...]}`` → one message per market."""
    data = frame.get("data")
    if not isinstance(data, list):
        raise ParseError("ticker24h event lacks a data array")
    out = []
    for row in data:
        if not isinstance(row, dict):
            raise ParseError("ticker24h data entry must be an object")
        market = _str(row.get("market"), "market")
        ts = _int(row.get("timestamp"), "timestamp")
        fields: dict[str, Any] = {}
        for ours, theirs in _TICKER_FIELDS:
            value = row.get(theirs)
            fields[ours] = None if value is None else _dec_str(value, theirs)
        msg_id = derive_id(f"ticker24h/{market}/{ts}")
        out.append(Ticker24hUpdated(id=msg_id, ts=ts, src=src, trace=Trace(id=msg_id, ts=ts), market=market,
                                    exchange_ts=ts, **fields))
    return out


# -- candles ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candle:
    market: str
    interval: str
    open_ts: int
    open: str
    high: str
    low: str
    close: str
    volume: str


def _candle_row(market: str, interval: str, row: Any) -> Candle:
    if not isinstance(row, list) or len(row) < 6:
        raise ParseError(f"candle row must be [ts, open, high, low, close, volume], got {row!r}")
    ts = row[0]
    if isinstance(ts, str) and ts.isdigit():  # the docs sample quotes it
        ts = int(ts)
    return Candle(market, interval, _int(ts, "candle timestamp"), _dec_str(row[1], "open"), _dec_str(row[2], "high"),
                  _dec_str(row[3], "low"), _dec_str(row[4], "close"), _dec_str(row[5], "volume"))


def parse_candle_event(frame: dict[str, Any]) -> list[Candle]:
    """``{"event":"candle","market":..,"interval":..,"candle":[[ts,o,h,l,c,v]]}``."""
    market = _str(frame.get("market"), "market")
    interval = _str(frame.get("interval"), "interval")
    rows = frame.get("candle")
    if not isinstance(rows, list):
        raise ParseError("candle event lacks a candle array")
    if rows and not isinstance(rows[0], list):
        rows = [rows]  # tolerate a single row not wrapped in a list
    return [_candle_row(market, interval, r) for r in rows]


def parse_rest_candles(market: str, interval: str, answer: Any) -> list[Candle]:
    """``GET /{market}/candles`` (newest first) → candles oldest first."""
    if not isinstance(answer, list):
        raise ParseError("candles answer must be an array")
    return sorted((_candle_row(market, interval, r) for r in answer), key=lambda c: c.open_ts)


def candle_id(c: Candle, closed: bool) -> str:
    if closed:
        return derive_id(f"candle/{c.market}/{c.interval}/{c.open_ts}/closed")
    return derive_id(f"candle/{c.market}/{c.interval}/{c.open_ts}/open/{c.open}/{c.high}/{c.low}/{c.close}/{c.volume}")


def candle_message(c: Candle, closed: bool, ts: int, src: str) -> CandleUpdated:
    msg_id = candle_id(c, closed)
    return CandleUpdated(id=msg_id, ts=ts, src=src, trace=Trace(id=msg_id, ts=ts), market=c.market,
                         interval=c.interval, open_ts=c.open_ts, open=c.open, high=c.high, low=c.low,  # type: ignore[arg-type]
                         close=c.close, volume=c.volume, closed=closed)  # type: ignore[arg-type]


# -- markets ---------------------------------------------------------------------------------


def trading_markets(answer: Any) -> list[str]:
    """``GET /markets`` → the ids of markets whose status is ``trading``."""
    rows = answer if isinstance(answer, list) else [answer]
    out = []
    for row in rows:
        if isinstance(row, dict) and row.get("status") == "trading" and isinstance(row.get("market"), str):
            out.append(row["market"])
    return sorted(out)


def levels_json(levels: Sequence[tuple[Decimal, Decimal]]) -> list[list[str]]:
    return [[_plain(p), _plain(s)] for p, s in levels]
