"""Orders as Bitvavo knows them: what we ask for (``OrderRequest``) and what it says back
(``OrderState``, ``Fill``), in ``Decimal``. Both brokers (paper and real) speak these, so the
executor cannot tell them apart; ``OrderState.from_json`` reads the REST order object and the WS
``order`` event (reference §5.4, §9.3), ``Fill.from_json`` a REST ``fills[]`` entry and a WS
``fill`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Mapping

from tradestack.bitvavo.parse import ParseError

ZERO = Decimal(0)
OrderType = Literal["market", "limit", "stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"]
TriggerReference = Literal["lastTrade", "bestBid", "bestAsk", "midPrice"]
OPEN_STATUSES = frozenset({"new", "awaitingTrigger", "partiallyFilled"})
FINAL_STATUSES = frozenset({
    "filled", "canceled", "canceledAuction", "canceledSelfTradePrevention", "canceledIOC", "canceledFOK",
    "canceledMarketProtection", "canceledPostOnly", "expired", "rejected",
})


def plain(value: Decimal) -> str:
    """A decimal as Bitvavo wants it on the wire: no exponent, no trailing zeros."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _dec(data: Mapping[str, Any], key: str, default: Decimal | None = None, *, required: bool = False) -> Decimal | None:
    raw = data.get(key)
    if raw is None or raw == "":
        if required:
            raise ParseError(f"order field {key!r} is missing")
        return default
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        raise ParseError(f"order field {key!r} is not a number: {raw!r}") from None
    if not value.is_finite():
        raise ParseError(f"order field {key!r} is not finite: {raw!r}")
    return value


def _str(data: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    raw = data.get(key)
    if raw is None:
        if required:
            raise ParseError(f"order field {key!r} is missing")
        return None
    if not isinstance(raw, str):
        raise ParseError(f"order field {key!r} must be a string, got {raw!r}")
    return raw


def _int(data: Mapping[str, Any], key: str, default: int = 0) -> int:
    raw = data.get(key, default)
    if isinstance(raw, bool):
        raise ParseError(f"order field {key!r} must be an integer, got {raw!r}")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ParseError(f"order field {key!r} must be an integer, got {raw!r}") from None


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """One order to create. Amounts and prices must already be rounded to the market's rules
    (``MarketRules``); ``to_body`` only formats them."""

    market: str
    side: Literal["buy", "sell"]
    order_type: OrderType
    client_order_id: str
    amount: Decimal | None = None
    amount_quote: Decimal | None = None  # market / stopLoss / takeProfit only
    price: Decimal | None = None  # limit-type only
    trigger_price: Decimal | None = None  # trigger types only
    trigger_reference: TriggerReference = "bestBid"
    time_in_force: Literal["GTC", "IOC", "FOK"] | None = None
    post_only: bool | None = None

    def __post_init__(self) -> None:
        if (self.amount is None) == (self.amount_quote is None):
            raise ValueError("an order needs exactly one of amount and amount_quote")
        if self.order_type in ("limit", "stopLossLimit", "takeProfitLimit") and self.price is None:
            raise ValueError(f"a {self.order_type} order needs a price")
        if self.order_type not in ("market", "limit") and self.trigger_price is None:
            raise ValueError(f"a {self.order_type} order needs a trigger price")
        for name in ("amount", "amount_quote", "price", "trigger_price"):
            value = getattr(self, name)
            if value is not None and not (value.is_finite() and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")

    @property
    def is_trigger(self) -> bool:
        return self.order_type not in ("market", "limit")

    def to_body(self, operator_id: int) -> dict[str, Any]:
        """The POST /order body (reference §5.2)."""
        body: dict[str, Any] = {"market": self.market, "side": self.side, "orderType": self.order_type,
                                "clientOrderId": self.client_order_id, "operatorId": operator_id}
        if self.amount is not None:
            body["amount"] = plain(self.amount)
        if self.amount_quote is not None:
            body["amountQuote"] = plain(self.amount_quote)
        if self.price is not None:
            body["price"] = plain(self.price)
        if self.trigger_price is not None:
            body["triggerAmount"] = plain(self.trigger_price)
            body["triggerType"] = "price"
            body["triggerReference"] = self.trigger_reference
        if self.time_in_force is not None:
            body["timeInForce"] = self.time_in_force
        if self.post_only is not None:
            body["postOnly"] = self.post_only
        return body


@dataclass(frozen=True, slots=True)
class Fill:
    """One trade of one of our orders. ``fee`` is None while Bitvavo has not settled it."""

    fill_id: str
    order_id: str
    market: str
    side: Literal["buy", "sell"] | None
    ts: int
    amount: Decimal
    price: Decimal
    taker: bool
    fee: Decimal | None
    fee_currency: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, order_id: str | None = None, market: str | None = None,
                  side: str | None = None) -> Fill:
        """A REST ``fills[]`` entry (``id``, ``timestamp``; the order's id, market and side passed in)
        or a WS ``fill`` event (``fillId``, ``orderId``, ``market``, ``side``)."""
        if not isinstance(data, Mapping):
            raise ParseError(f"a fill must be an object, got {type(data).__name__}")
        fill_id = data.get("fillId") or data.get("id")
        if not isinstance(fill_id, str) or not fill_id:
            raise ParseError("fill has no id")
        oid = data.get("orderId", order_id)
        mkt = data.get("market", market)
        if not isinstance(oid, str) or not isinstance(mkt, str):
            raise ParseError(f"fill {fill_id} has no order id or market")
        sd = data.get("side", side)
        if sd not in ("buy", "sell", None):
            raise ParseError(f"fill {fill_id} has side {sd!r}")
        amount = _dec(data, "amount", required=True)
        price = _dec(data, "price", required=True)
        assert amount is not None and price is not None
        if amount <= 0 or price <= 0:
            raise ParseError(f"fill {fill_id} has amount {amount} and price {price}: both must be > 0")
        fee = _dec(data, "fee")
        currency = data.get("feeCurrency")
        return cls(fill_id=fill_id, order_id=oid, market=mkt, side=sd, ts=_int(data, "timestamp"),
                   amount=amount, price=price, taker=bool(data.get("taker", True)), fee=fee,
                   fee_currency=currency if isinstance(currency, str) else None)


@dataclass(frozen=True, slots=True)
class OrderState:
    """One order as the exchange reports it; ``filled_*`` and ``fee_paid`` are cumulative."""

    order_id: str
    market: str
    side: Literal["buy", "sell"]
    order_type: str
    status: str
    client_order_id: str | None = None
    amount: Decimal | None = None
    amount_remaining: Decimal | None = None
    amount_quote: Decimal | None = None
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    filled_amount: Decimal = ZERO
    filled_quote: Decimal = ZERO
    fee_paid: Decimal = ZERO
    fee_currency: str = ""
    fills: tuple[Fill, ...] = field(default_factory=tuple)
    created: int = 0
    updated: int = 0
    restatement_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def avg_price(self) -> Decimal | None:
        return self.filled_quote / self.filled_amount if self.filled_amount > 0 else None

    @classmethod
    def from_json(cls, data: Any) -> OrderState:
        """The REST order object or a WS ``order`` event. ``ParseError`` when it is not one."""
        if not isinstance(data, Mapping):
            raise ParseError(f"an order must be an object, got {type(data).__name__}")
        order_id = _str(data, "orderId")
        market = _str(data, "market")
        side = _str(data, "side")
        status = _str(data, "status")
        assert order_id is not None and market is not None and status is not None
        if side != "buy" and side != "sell":
            raise ParseError(f"order {order_id} has side {side!r}")
        side_: Literal["buy", "sell"] = "buy" if side == "buy" else "sell"
        raw_fills = data.get("fills") or []
        if not isinstance(raw_fills, list):
            raise ParseError(f"order {order_id}: fills must be a list")
        fills = tuple(Fill.from_json(f, order_id=order_id, market=market, side=side) for f in raw_fills)
        filled = _dec(data, "filledAmount", ZERO)
        filled_quote = _dec(data, "filledAmountQuote", ZERO)
        assert filled is not None and filled_quote is not None
        if filled < 0 or filled_quote < 0:
            raise ParseError(f"order {order_id} has negative filled amounts")
        return cls(
            order_id=order_id, market=market, side=side_, order_type=_str(data, "orderType", required=False) or "",
            status=status, client_order_id=_str(data, "clientOrderId", required=False),
            amount=_dec(data, "amount"), amount_remaining=_dec(data, "amountRemaining"),
            amount_quote=_dec(data, "amountQuote"), price=_dec(data, "price"),
            trigger_price=_dec(data, "triggerPrice") or _dec(data, "triggerAmount"),
            filled_amount=filled, filled_quote=filled_quote, fee_paid=_dec(data, "feePaid", ZERO) or ZERO,
            fee_currency=_str(data, "feeCurrency", required=False) or "", fills=fills,
            created=_int(data, "created"), updated=_int(data, "updated"),
            restatement_reason=_str(data, "restatementReason", required=False))


__all__ = ["FINAL_STATUSES", "OPEN_STATUSES", "Fill", "OrderRequest", "OrderState", "OrderType", "TriggerReference",
           "plain"]
