"""The API surface in one table: REST route, WS action, auth, weight and the engine call.

REST handlers and WS actions both dispatch through this table, so the two can never disagree
on shapes, weights or auth.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Params = dict[str, Any]
Call = Callable[[Any, str | None, str | None, Params], Any]  # (exchange, api_key, market, params)


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # metrics label and fault-matching path, e.g. "/v2/{market}/book"
    method: str
    pattern: re.Pattern[str]  # matched against the path after /v2
    call: Call
    weight: Callable[[Params], int]
    private: bool = False
    ws_action: str | None = None


def _engine(ex: Any, name: str) -> Callable[..., Any]:
    # Look the method up on the class: the engine keeps state in attributes named like some of
    # its API methods (``markets``, ``orders`` dicts), which shadow them on the instance.
    return getattr(type(ex), name).__get__(ex)


def _w(n: int) -> Callable[[Params], int]:
    return lambda _p: n


def _w_market(with_market: int, without: int) -> Callable[[Params], int]:
    return lambda p: with_market if p.get("market") else without


def _market_param(p: Params) -> str:
    return str(p.pop("market", "") or "")


ENDPOINTS: list[Endpoint] = [
    # public
    Endpoint("/v2/time", "GET", re.compile(r"/time"), lambda ex, k, m, p: _engine(ex, "time")(), _w(1), ws_action="getTime"),
    Endpoint("/v2/markets", "GET", re.compile(r"/markets"), lambda ex, k, m, p: _engine(ex, "markets")(p), _w(1), ws_action="getMarkets"),
    Endpoint("/v2/assets", "GET", re.compile(r"/assets"), lambda ex, k, m, p: _engine(ex, "assets")(p), _w(1), ws_action="getAssets"),
    Endpoint("/v2/ticker/price", "GET", re.compile(r"/ticker/price"), lambda ex, k, m, p: _engine(ex, "ticker_price")(p), _w(1), ws_action="getTickerPrice"),
    Endpoint("/v2/ticker/book", "GET", re.compile(r"/ticker/book"), lambda ex, k, m, p: _engine(ex, "ticker_book")(p), _w(1), ws_action="getTickerBook"),
    Endpoint("/v2/ticker/24h", "GET", re.compile(r"/ticker/24h"), lambda ex, k, m, p: _engine(ex, "ticker_24h")(p), _w_market(1, 25), ws_action="getTicker24h"),
    Endpoint("/v2/{market}/book", "GET", re.compile(r"/(?P<market>[^/]+)/book"), lambda ex, k, m, p: _engine(ex, "book")(m, p), _w(1), ws_action="getBook"),
    Endpoint("/v2/{market}/trades", "GET", re.compile(r"/(?P<market>[^/]+)/trades"), lambda ex, k, m, p: _engine(ex, "public_trades")(m, p), _w(5), ws_action="getTrades"),
    Endpoint("/v2/{market}/candles", "GET", re.compile(r"/(?P<market>[^/]+)/candles"), lambda ex, k, m, p: _engine(ex, "candles")(m, p), _w(1), ws_action="getCandles"),
    # private: orders
    Endpoint("/v2/order", "POST", re.compile(r"/order"), lambda ex, k, m, p: _engine(ex, "create_order")(k, p), _w(1), True, "privateCreateOrder"),
    Endpoint("/v2/order", "GET", re.compile(r"/order"), lambda ex, k, m, p: _engine(ex, "get_order")(k, p), _w(1), True, "privateGetOrder"),
    Endpoint("/v2/order", "PUT", re.compile(r"/order"), lambda ex, k, m, p: _engine(ex, "update_order")(k, p), _w(1), True, "privateUpdateOrder"),
    Endpoint("/v2/order", "DELETE", re.compile(r"/order"), lambda ex, k, m, p: _engine(ex, "cancel_order")(k, p), _w(1), True, "privateCancelOrder"),
    Endpoint("/v2/orders", "GET", re.compile(r"/orders"), lambda ex, k, m, p: _engine(ex, "orders")(k, p), _w(5), True, "privateGetOrders"),
    Endpoint("/v2/orders", "DELETE", re.compile(r"/orders"), lambda ex, k, m, p: _engine(ex, "cancel_orders")(k, p), _w_market(25, 100), True, "privateCancelOrders"),
    Endpoint("/v2/ordersOpen", "GET", re.compile(r"/ordersOpen"), lambda ex, k, m, p: _engine(ex, "orders_open")(k, p), _w_market(5, 100), True, "privateGetOrdersOpen"),
    Endpoint("/v2/trades", "GET", re.compile(r"/trades"), lambda ex, k, m, p: _engine(ex, "trades")(k, p), _w(5), True, "privateGetTrades"),
    # private: account
    Endpoint("/v2/account", "GET", re.compile(r"/account"), lambda ex, k, m, p: _engine(ex, "account")(k), _w(1), True, "privateGetAccount"),
    Endpoint("/v2/account/fees", "GET", re.compile(r"/account/fees"), lambda ex, k, m, p: _engine(ex, "fees")(k, p), _w(1), True, "privateGetFees"),
    Endpoint("/v2/balance", "GET", re.compile(r"/balance"), lambda ex, k, m, p: _engine(ex, "balance")(k, p), _w(5), True, "privateGetBalance"),
    # private: funding. The SDK's depositAssets() calls /depositAssets, which does not exist on
    # the real API either (it 404s there too); the real endpoint is /deposit.
    Endpoint("/v2/deposit", "GET", re.compile(r"/deposit"), lambda ex, k, m, p: _engine(ex, "deposit")(k, p), _w(1), True, "privateDepositAssets"),
    Endpoint("/v2/withdrawal", "POST", re.compile(r"/withdrawal"), lambda ex, k, m, p: _engine(ex, "withdraw")(k, p), _w(1), True, "privateWithdrawAssets"),
    Endpoint("/v2/depositHistory", "GET", re.compile(r"/depositHistory"), lambda ex, k, m, p: _engine(ex, "deposit_history")(k, p), _w(5), True, "privateGetDepositHistory"),
    Endpoint("/v2/withdrawalHistory", "GET", re.compile(r"/withdrawalHistory"), lambda ex, k, m, p: _engine(ex, "withdrawal_history")(k, p), _w(5), True, "privateGetWithdrawalHistory"),
]

# Static paths win over /{market}/...: e.g. /ticker/book is not the book of market "ticker".
_STATIC = [e for e in ENDPOINTS if "{market}" not in e.name]
_DYNAMIC = [e for e in ENDPOINTS if "{market}" in e.name]
BY_WS_ACTION: dict[str, Endpoint] = {e.ws_action: e for e in ENDPOINTS if e.ws_action}


def resolve(method: str, path: str) -> tuple[Endpoint, str | None] | None:
    """(endpoint, market from the path) for a path after /v2, or None (→ 404/110)."""
    for group in (_STATIC, _DYNAMIC):
        for ep in group:
            if ep.method != method:
                continue
            m = ep.pattern.fullmatch(path)
            if m is not None:
                return ep, m.groupdict().get("market")
    return None


def ws_market(ep: Endpoint, params: Params) -> str | None:
    """Market of a WS action whose REST twin carries it in the path (getBook etc.)."""
    if "{market}" in ep.name:
        return _market_param(params)
    return None
