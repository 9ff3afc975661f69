"""Order model, its Bitvavo JSON shapes, and validation of create/update parameters."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from . import errors as E
from .markets import ORDER_TYPES, MarketSpec
from .numbers import ZERO, decimals_of, fmt, parse_decimal

OPEN_STATUSES = frozenset({"new", "partiallyFilled", "awaitingTrigger"})
ACTIVE_STATUSES = frozenset({"new", "partiallyFilled"})
TRIGGER_TYPES = frozenset({"stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"})
LIMIT_TYPES = frozenset({"limit", "stopLossLimit", "takeProfitLimit"})
QUOTE_ALLOWED_TYPES = frozenset({"market", "stopLoss", "takeProfit"})
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
STP_MODES = ("decrementAndCancel", "cancelOldest", "cancelNewest", "cancelBoth")
TRIGGER_REFERENCES = ("lastTrade", "bestBid", "bestAsk", "midPrice")

CREATE_PARAMS = frozenset({
    "market", "side", "orderType", "operatorId", "clientOrderId", "amount", "amountQuote", "price",
    "triggerAmount", "triggerType", "triggerReference", "timeInForce", "postOnly",
    "selfTradePrevention", "disableMarketProtection", "responseRequired", "codGroupId",
})
UPDATE_PARAMS = frozenset({
    "market", "orderId", "clientOrderId", "operatorId", "amount", "amountQuote", "amountRemaining",
    "price", "triggerAmount", "timeInForce", "selfTradePrevention", "postOnly", "responseRequired",
})


@dataclass(slots=True)
class Fill:
    fill_id: str
    timestamp: int
    amount: Decimal
    price: Decimal
    taker: bool
    fee: Decimal
    fee_currency: str

    def to_json(self) -> dict:
        return {"id": self.fill_id, "timestamp": self.timestamp, "amount": fmt(self.amount),
                "price": fmt(self.price), "taker": self.taker, "fee": fmt(self.fee),
                "feeCurrency": self.fee_currency, "settled": True}


@dataclass(slots=True)
class Order:
    order_id: str
    market: str
    api_key: str
    side: str
    order_type: str
    created: int
    updated: int
    status: str
    operator_id: int
    base: str
    quote: str
    amount: Decimal | None = None
    amount_remaining: Decimal | None = None
    amount_quote: Decimal | None = None
    amount_quote_remaining: Decimal | None = None
    price: Decimal | None = None
    trigger_amount: Decimal | None = None
    trigger_type: str | None = None
    trigger_reference: str | None = None
    time_in_force: str = "GTC"
    post_only: bool = False
    stp: str = "decrementAndCancel"
    client_order_id: str | None = None
    on_hold: Decimal = ZERO
    filled_amount: Decimal = ZERO
    filled_amount_quote: Decimal = ZERO
    fee_paid: Decimal = ZERO
    fills: list[Fill] = field(default_factory=list)
    restatement_reason: str | None = None
    triggered: bool = False

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def on_hold_currency(self) -> str:
        return self.quote if self.side == "buy" else self.base

    @property
    def is_limit_like(self) -> bool:
        return self.order_type in LIMIT_TYPES

    def _fields(self) -> dict:
        d: dict = {"orderId": self.order_id, "market": self.market}
        if self.client_order_id is not None:
            d["clientOrderId"] = self.client_order_id
        d.update(created=self.created, updated=self.updated, status=self.status, side=self.side,
                 orderType=self.order_type)
        if self.amount is not None:
            d["amount"] = fmt(self.amount)
            d["amountRemaining"] = fmt(self.amount_remaining or ZERO)
        if self.amount_quote is not None:
            d["amountQuote"] = fmt(self.amount_quote)
            d["amountQuoteRemaining"] = fmt(self.amount_quote_remaining or ZERO)
        if self.price is not None:
            d["price"] = fmt(self.price)
        d["onHold"] = fmt(self.on_hold)
        d["onHoldCurrency"] = self.on_hold_currency
        if self.order_type in TRIGGER_TYPES:
            d.update(triggerPrice=fmt(self.trigger_amount), triggerAmount=fmt(self.trigger_amount),
                     triggerType=self.trigger_type, triggerReference=self.trigger_reference)
        d.update(filledAmount=fmt(self.filled_amount), filledAmountQuote=fmt(self.filled_amount_quote),
                 feePaid=fmt(self.fee_paid), feeCurrency=self.quote)
        return d

    def _tail(self, d: dict) -> dict:
        d["selfTradePrevention"] = self.stp
        if self.is_limit_like:
            d["visible"] = self.status in ACTIVE_STATUSES or self.status == "awaitingTrigger"
            d["timeInForce"] = self.time_in_force
            d["postOnly"] = self.post_only
        else:
            d["visible"] = False
            d["disableMarketProtection"] = False
        d["operatorId"] = self.operator_id
        if self.restatement_reason:
            d["restatementReason"] = self.restatement_reason
        return d

    def to_json(self) -> dict:
        d = self._fields()
        d["fills"] = [f.to_json() for f in self.fills]
        return self._tail(d)

    def to_ws(self, execution_type: str) -> dict:
        """Fields of the WS account 'order' event (the server adds nothing but "event")."""
        d = self._tail(self._fields())
        d["executionType"] = execution_type
        return d

    def short_json(self) -> dict:
        d = {"market": self.market, "orderId": self.order_id}
        if self.client_order_id is not None:
            d["clientOrderId"] = self.client_order_id
        d.update(created=self.created, updated=self.updated)
        return d


# ---- parameter parsing ---------------------------------------------------------------------

def parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise E.invalid(name)


def parse_operator_id(params: dict) -> int:
    value = params.get("operatorId")
    if value is None or value == "":
        raise E.missing("operatorId")
    if isinstance(value, bool):
        raise E.invalid("operatorId")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise E.invalid("operatorId")


def parse_client_order_id(value: object) -> str:
    if not isinstance(value, str):
        raise E.invalid("clientOrderId")
    try:
        uuid.UUID(value)
    except ValueError as exc:
        raise E.invalid("clientOrderId") from exc
    return value


def parse_positive(name: str, value: object) -> Decimal:
    d = parse_decimal(value)
    if d is None or d <= 0:
        raise E.invalid(name)
    return d


def check_amount(spec: MarketSpec, name: str, amount: Decimal) -> None:
    if decimals_of(amount) > spec.quantity_decimals:
        raise E.too_many_decimals(name, spec.quantity_decimals)
    if amount > spec.max_base:
        raise E.amount_too_high(fmt(spec.max_base))
    if amount < spec.min_base:
        raise E.amount_too_low()


def check_quote(spec: MarketSpec, amount_quote: Decimal) -> None:
    if decimals_of(amount_quote) > spec.notional_decimals:
        raise E.too_many_decimals("amountQuote", spec.notional_decimals)
    if amount_quote < spec.min_quote:
        raise E.notional_too_low()


def check_price(spec: MarketSpec, name: str, price: Decimal) -> int:
    """Validate a price against the tick size; returns it in ticks."""
    ticks, rest = divmod(price, spec.tick)
    if rest != 0:
        raise E.tick_size(spec.tick_str)
    return int(ticks)


@dataclass(slots=True)
class CreateRequest:
    side: str
    order_type: str
    operator_id: int
    client_order_id: str | None
    amount: Decimal | None
    amount_quote: Decimal | None
    price: Decimal | None
    price_tick: int | None
    trigger_amount: Decimal | None
    trigger_type: str | None
    trigger_reference: str | None
    time_in_force: str
    post_only: bool
    stp: str
    response_required: bool


def parse_create(body: dict, spec: MarketSpec) -> CreateRequest:
    """Validate POST /order parameters (market already resolved). Order of checks mirrors Bitvavo:
    presence and shape first, then per-type requirements, then precision and minimums."""
    for key in body:
        if key not in CREATE_PARAMS:
            raise E.not_supported(key)
    side = body.get("side")
    if side is None:
        raise E.missing("side")
    if side not in ("buy", "sell"):
        raise E.invalid("side")
    order_type = body.get("orderType")
    if order_type is None:
        raise E.missing("orderType")
    if order_type not in ORDER_TYPES:
        raise E.invalid("orderType")
    operator_id = parse_operator_id(body)
    client_order_id = None
    if body.get("clientOrderId") is not None:
        client_order_id = parse_client_order_id(body["clientOrderId"])

    if body.get("disableMarketProtection") is not None and parse_bool(
            "disableMarketProtection", body["disableMarketProtection"]):
        raise E.invalid("disableMarketProtection")
    response_required = True
    if body.get("responseRequired") is not None:
        response_required = parse_bool("responseRequired", body["responseRequired"])

    has_amount = body.get("amount") is not None
    has_quote = body.get("amountQuote") is not None
    has_price = body.get("price") is not None
    trigger_keys = ("triggerAmount", "triggerType", "triggerReference")
    if has_amount and has_quote:
        raise E.use_either("amount", "amountQuote")
    if has_quote and order_type not in QUOTE_ALLOWED_TYPES:
        raise E.not_supported_for_type("amountQuote")
    if order_type == "limit":
        for key in trigger_keys:
            if body.get(key) is not None:
                raise E.not_supported_for_type(key)
        if not has_amount:
            raise E.missing("amount")
        if not has_price:
            raise E.missing("price")
    elif order_type == "market":
        for key in (*trigger_keys, "price", "postOnly"):
            if body.get(key) is not None:
                raise E.not_supported_for_type(key)
        if not (has_amount or has_quote):
            raise E.ExchangeError(203, "amount or amountQuote parameter is required.")
    else:
        if order_type in LIMIT_TYPES:
            needed_ok = has_amount and has_price
        else:
            if has_price:
                raise E.not_supported_for_type("price")
            needed_ok = has_amount or has_quote
        if not needed_ok or any(body.get(k) is None for k in trigger_keys):
            raise E.missing_stop_params(order_type)

    post_only = False
    if body.get("postOnly") is not None:
        post_only = parse_bool("postOnly", body["postOnly"])
        if post_only and order_type not in LIMIT_TYPES:
            raise E.not_supported_for_type("postOnly")
    tif = body.get("timeInForce", "GTC")
    if tif not in TIME_IN_FORCE:
        raise E.invalid("timeInForce")
    stp = body.get("selfTradePrevention", "decrementAndCancel")
    if stp not in STP_MODES:
        raise E.invalid("selfTradePrevention")

    trigger_amount = trigger_type = trigger_reference = None
    if order_type in TRIGGER_TYPES:
        trigger_type = body["triggerType"]
        if trigger_type != "price":
            raise E.invalid("triggerType")
        trigger_reference = body["triggerReference"]
        if trigger_reference not in TRIGGER_REFERENCES:
            raise E.invalid("triggerReference")
        trigger_amount = parse_positive("triggerAmount", body["triggerAmount"])
        check_price(spec, "triggerAmount", trigger_amount)

    amount = amount_quote = price = None
    price_tick = None
    if has_price:
        price = parse_positive("price", body["price"])
        price_tick = check_price(spec, "price", price)
    if has_amount:
        amount = parse_positive("amount", body["amount"])
        check_amount(spec, "amount", amount)
    if has_quote:
        amount_quote = parse_positive("amountQuote", body["amountQuote"])
        check_quote(spec, amount_quote)
    if amount is not None and price is not None and amount * price < spec.min_quote:
        raise E.notional_too_low()
    return CreateRequest(side, order_type, operator_id, client_order_id, amount, amount_quote,
                         price, price_tick, trigger_amount, trigger_type, trigger_reference, tif,
                         post_only, stp, response_required)
