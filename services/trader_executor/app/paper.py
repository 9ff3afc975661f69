"""The paper broker: Bitvavo's order handling simulated against the live book, so the executor
cannot tell it from the real broker (same order types, statuses, errors, ``OrderState``/``Fill``).

Pure: no I/O, no wall clock, no asyncio. The caller passes every time (``now_ms``, the book's
``ts_ms``), feeds the books it receives from ingest (``set_book`` for depth, ``on_top`` for a
top-of-book message) and persists ``snapshot()``; ``restore()`` brings the same broker back.

The numbers follow the sandbox exchange (``sandbox/engine``), so paper and sandbox mode book the
same amounts for the same fills:

- Fees are charged per fill in the quote currency: ``notional × rate`` rounded half-up to the
  market's ``notionalDecimals`` (taker 0.25 %, maker 0.15 % at tier 0). A buy pays notional + fee
  from its quote; a sell receives notional − fee. A buy by ``amountQuote`` spends at most that
  amount, fee included (Bitvavo's ``amountQuote`` includes the fee): the last fee is cut to what is
  left, as the sandbox does. ``Fill.fee`` is always set (paper fills settle at once).
- Holds (``balances()``'s in-order part): a buy reserves quote: ``amount × price × (1 + taker fee)``
  rounded up to ``notionalDecimals`` for limit-type orders, the same with the trigger price for a
  ``stopLoss``/``takeProfit`` buy by amount, ``amountQuote`` itself for a buy by ``amountQuote``, and
  for a market buy by amount the cost estimated by walking the book (levels beyond the book priced
  at its worst level). A sell reserves its base amount (by ``amountQuote``: the base it buys at the
  trigger price, or estimated from the bids). Not enough available → 216. A spot balance backs one
  resting sell: sell coins a stop holds and you get 216, so cancel the stop first.
- Market orders (and triggered ``stopLoss``/``takeProfit``) walk the current depth at once, taker
  fee per fill; market-type orders may spend available funds beyond their hold (as the sandbox's do).
  A market order by amount that the depth cannot fill completely ends ``canceled`` with what it did
  fill (possibly nothing); one by ``amountQuote`` ends ``filled`` once its budget cannot buy another
  quantity step, ``canceled`` when the depth ran out first. With a top-of-book feed (``on_top``)
  the depth is the top level only.
- Slippage: each taker fill's price is the level's price worsened by ``slippage_bps`` and rounded
  to the tick in the adverse direction (up for buys, down for sells), never past a limit order's
  price and never below one tick. Maker fills are at the order's own price.
- Limit orders: the marketable part takes at once (taker, up to the limit); ``postOnly`` that would
  take → ``canceledPostOnly``; FOK without enough crossing depth → ``canceledFOK`` (nothing fills);
  IOC → ``canceledIOC`` after taking; the rest rests (``new``/``partiallyFilled``). A later book
  whose opposite side crosses a resting order fills it at its limit price, maker fee, up to the
  crossing size; resting orders are served best price first, then oldest. A book that only touches
  the price (bid at our resting buy) fills nothing: queue position is unknown, so we are pessimistic.
- Our own orders are not in the book: a paper order never trades with another paper order (no
  self-trade prevention), and liquidity a paper fill took is removed from the local copy of the book
  until the next ``set_book``/``on_top`` replaces it (the live book does not know about paper fills,
  so the next book may show that liquidity again).
- Trigger orders rest as ``awaitingTrigger``, hold their funds and take no liquidity. They are
  checked on every book, and once at placement/update against the current book (a trigger already
  hit fires at once). The reference is taken from the book as received (paper fills do not move the
  market): ``bestBid``, ``bestAsk``, ``midPrice``; ``lastTrade`` uses ``midPrice`` as its proxy (the
  broker sees no trades). ``stopLoss`` sell fires when reference <= trigger, ``takeProfit`` sell when
  reference >= trigger; buys mirrored. A fired order becomes ``new`` and executes on that same book
  as a market order (``stopLoss``/``takeProfit``, at the book's prices, not at the trigger) or as a
  limit order (``*Limit``). On a book, resting limit orders match first, then triggers fire.
- Validation mirrors the sandbox (and Bitvavo): unknown market 205; a parameter the order type does
  not take 202; price or trigger off the tick 422; too many decimals in ``amount`` (``quantityDecimals``)
  or ``amountQuote`` (``notionalDecimals``) 429; amount above ``maxOrderInBaseAsset`` 210, below
  ``minOrderInBaseAsset`` 212; ``amountQuote`` or notional (amount × price, or the book's estimate for
  a market order) below ``minOrderInQuoteAsset`` 217; market not trading 423/424/425/426 (no
  auctions are simulated: every non-trading status refuses new orders and updates; only ``halted``
  refuses cancels); more than 100 open orders 235; a ``clientOrderId`` already used by an OPEN order
  of the market 220; no funds 216. Updates: 234 on market orders, 232 when nothing changes, 233 when
  the order is not open, 239 for ``amount`` on an ``amountQuote`` order, 202 for ``price`` on a
  market-type order or a trigger change once triggered. Cancel of an unknown or closed order: 240.
- No book for the market → 431 (HTTP 409, Bitvavo's "market data unavailable"): a definite rejection,
  nothing was placed. Trigger orders need no book (their hold comes from the request). The broker has
  no clock: how old a book may be is the caller's call (``book_ts``; ``drop_book`` makes it unusable).
  An order that needs a price estimate when the book side is empty and has no history → 230.
- Ids are deterministic: an order's id is ``derive_id("paper/<market>/<clientOrderId>", "order")``
  (``.../order/<seq>`` if that id is already known, i.e. a reused clientOrderId), a fill's is
  ``derive_id(order_id, "fill/<n>")``; the sequence counter is in the snapshot, so a replay after a
  restart makes the same ids.
- ``created`` is the ``now_ms`` of ``place``; ``updated`` and fill timestamps are the ``now_ms`` of
  the call or the ``ts_ms`` of the book that caused the change. Closed orders are kept (for ``get``)
  up to ``keep_closed``, oldest dropped first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

from tradestack.bitvavo.orders import Fill, OrderRequest, OrderState
from tradestack.markets import TRADING, MarketCatalog, MarketRules
from tradestack.messages import BookTopUpdated, derive_id

Side = Literal["buy", "sell"]
ZERO = Decimal(0)
ONE = Decimal(1)
BPS = Decimal(10_000)
SNAPSHOT_VERSION = 1
MAX_OPEN_ORDERS = 100
LIMIT_TYPES = frozenset({"limit", "stopLossLimit", "takeProfitLimit"})
TRIGGER_TYPES = frozenset({"stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"})
QUOTE_TYPES = frozenset({"market", "stopLoss", "takeProfit"})  # may be sized by amountQuote
TRIGGER_REFERENCES = frozenset({"lastTrade", "bestBid", "bestAsk", "midPrice"})
OPEN = frozenset({"new", "partiallyFilled", "awaitingTrigger"})
ACTIVE = frozenset({"new", "partiallyFilled"})


# ---- errors ------------------------------------------------------------------------------------

class PaperOrderError(Exception):
    """A rejection as Bitvavo words it: ``error_code`` (§8), ``message`` and the HTTP status."""

    def __init__(self, error_code: int, message: str, http_status: int = 400) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message
        self.http_status = http_status

    def to_json(self) -> dict[str, Any]:
        return {"errorCode": self.error_code, "error": self.message}


def _invalid(param: str, value: object | None = None) -> PaperOrderError:
    text = f"{param} parameter is invalid." if value is None else f"{param} parameter {value} is invalid."
    return PaperOrderError(205, text)


def _not_for_type(param: str) -> PaperOrderError:
    return PaperOrderError(202, f"{param} order parameter is not supported. Please note that certain parameters "
                                "are only allowed for market or limit orders.")


def _insufficient() -> PaperOrderError:
    return PaperOrderError(216, "You do not have sufficient balance to complete this operation.")


def _notional_too_low() -> PaperOrderError:
    return PaperOrderError(217, "Minimum order size in quote currency is 5 EUR or 0.001 BTC.")


def _not_found() -> PaperOrderError:
    return PaperOrderError(240, "No order found. Please be aware that simultaneously updating the same order "
                                "may return this error.", 404)


def _too_many_decimals(param: str, decimals: int) -> PaperOrderError:
    return PaperOrderError(429, f"Field '{param}' has too many decimal digits. Maximum is {decimals}.")


def _tick(rules: MarketRules) -> PaperOrderError:
    return PaperOrderError(422, f"Invalid price tick size. The price must be a multiple of {rules.tick_size}.")


_STATUS_ERRORS = {
    "halted": (423, "The market is halted."),
    "cancelOnly": (424, "The market is in cancelOnly status: only cancelling orders is allowed."),
    "auction": (425, "The market is in an auction phase. Trading is temporarily restricted."),
    "auctionMatching": (426, "The market is in auctionMatching status."),
}


def _status_error(status: str) -> PaperOrderError:
    code, text = _STATUS_ERRORS.get(status, (423, f"The market is not trading (status {status or 'unknown'})."))
    return PaperOrderError(code, text)


# ---- numbers -----------------------------------------------------------------------------------

def _quantum(decimals: int) -> Decimal:
    return ONE.scaleb(-decimals)


def _round_up(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(_quantum(decimals), rounding=ROUND_CEILING)


def _round_down(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(_quantum(decimals), rounding=ROUND_DOWN)


def _round_half_up(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(_quantum(decimals), rounding=ROUND_HALF_UP)


def _s(value: Decimal) -> str:
    return format(value, "f")


def _opt_s(value: Decimal | None) -> str | None:
    return None if value is None else _s(value)


def _d(raw: Any, what: str) -> Decimal:
    if not isinstance(raw, str):
        raise ValueError(f"paper snapshot: {what} must be a decimal string, got {raw!r}")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"paper snapshot: {what}={raw!r} is not a decimal") from None
    if not value.is_finite():
        raise ValueError(f"paper snapshot: {what}={raw!r} is not finite")
    return value


def _opt_d(raw: Any, what: str) -> Decimal | None:
    return None if raw is None else _d(raw, what)


# ---- state -------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Book:
    """One market's book as last received, minus what paper fills took from it since."""

    ts: int
    bids: list[list[Decimal]]  # [price, size], best first
    asks: list[list[Decimal]]
    best_bid: Decimal | None  # as received: the trigger references
    best_ask: Decimal | None
    last_bid: Decimal | None  # worst price received per side: the estimate beyond the depth
    last_ask: Decimal | None

    def side(self, taker_side: str) -> list[list[Decimal]]:
        return self.asks if taker_side == "buy" else self.bids

    def reference(self, name: str) -> Decimal | None:
        if name == "bestBid":
            return self.best_bid
        if name == "bestAsk":
            return self.best_ask
        if self.best_bid is None or self.best_ask is None:
            return None
        return (self.best_bid + self.best_ask) / 2  # midPrice, and lastTrade's proxy

    def to_json(self) -> dict[str, Any]:
        return {"ts": self.ts, "bids": [[_s(p), _s(q)] for p, q in self.bids],
                "asks": [[_s(p), _s(q)] for p, q in self.asks],
                "best_bid": _opt_s(self.best_bid), "best_ask": _opt_s(self.best_ask),
                "last_bid": _opt_s(self.last_bid), "last_ask": _opt_s(self.last_ask)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Book:
        return cls(ts=int(data["ts"]), bids=[[_d(p, "bid"), _d(q, "bid size")] for p, q in data["bids"]],
                   asks=[[_d(p, "ask"), _d(q, "ask size")] for p, q in data["asks"]],
                   best_bid=_opt_d(data.get("best_bid"), "best_bid"), best_ask=_opt_d(data.get("best_ask"), "best_ask"),
                   last_bid=_opt_d(data.get("last_bid"), "last_bid"), last_ask=_opt_d(data.get("last_ask"), "last_ask"))


@dataclass(slots=True)
class _Order:
    order_id: str
    market: str
    base: str
    quote: str
    side: Side
    order_type: str
    client_order_id: str
    created: int
    updated: int
    status: str
    seq: int  # priority among resting orders (renewed by an update) and id disambiguation
    amount: Decimal | None = None
    amount_remaining: Decimal | None = None
    amount_quote: Decimal | None = None
    amount_quote_remaining: Decimal | None = None
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    trigger_reference: str = "bestBid"
    time_in_force: str = "GTC"
    post_only: bool = False
    on_hold: Decimal = ZERO
    filled_amount: Decimal = ZERO
    filled_quote: Decimal = ZERO
    fee_paid: Decimal = ZERO
    triggered: bool = False
    fills: list[Fill] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def limit_like(self) -> bool:
        return self.order_type in LIMIT_TYPES

    @property
    def hold_currency(self) -> str:
        return self.quote if self.side == "buy" else self.base

    def state(self) -> OrderState:
        return OrderState(
            order_id=self.order_id, market=self.market, side=self.side, order_type=self.order_type,
            status=self.status, client_order_id=self.client_order_id, amount=self.amount,
            amount_remaining=self.amount_remaining, amount_quote=self.amount_quote, price=self.price,
            trigger_price=self.trigger_price, filled_amount=self.filled_amount, filled_quote=self.filled_quote,
            fee_paid=self.fee_paid, fee_currency=self.quote, fills=tuple(self.fills), created=self.created,
            updated=self.updated)

    def to_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id, "market": self.market, "base": self.base, "quote": self.quote,
            "side": self.side, "order_type": self.order_type, "client_order_id": self.client_order_id,
            "created": self.created, "updated": self.updated, "status": self.status, "seq": self.seq,
            "amount": _opt_s(self.amount), "amount_remaining": _opt_s(self.amount_remaining),
            "amount_quote": _opt_s(self.amount_quote), "amount_quote_remaining": _opt_s(self.amount_quote_remaining),
            "price": _opt_s(self.price), "trigger_price": _opt_s(self.trigger_price),
            "trigger_reference": self.trigger_reference, "time_in_force": self.time_in_force,
            "post_only": self.post_only, "on_hold": _s(self.on_hold), "filled_amount": _s(self.filled_amount),
            "filled_quote": _s(self.filled_quote), "fee_paid": _s(self.fee_paid), "triggered": self.triggered,
            "fills": [{"fill_id": f.fill_id, "ts": f.ts, "amount": _s(f.amount), "price": _s(f.price),
                       "taker": f.taker, "fee": _s(f.fee if f.fee is not None else ZERO)} for f in self.fills],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Order:
        side = data["side"]
        if side not in ("buy", "sell"):
            raise ValueError(f"paper snapshot: order side {side!r}")
        oid, market, quote = str(data["order_id"]), str(data["market"]), str(data["quote"])
        fills = [Fill(fill_id=str(f["fill_id"]), order_id=oid, market=market, side=side, ts=int(f["ts"]),
                      amount=_d(f["amount"], "fill amount"), price=_d(f["price"], "fill price"),
                      taker=bool(f["taker"]), fee=_d(f["fee"], "fill fee"), fee_currency=quote)
                 for f in data["fills"]]
        return cls(
            order_id=oid, market=market, base=str(data["base"]), quote=quote, side=side,
            order_type=str(data["order_type"]), client_order_id=str(data["client_order_id"]),
            created=int(data["created"]), updated=int(data["updated"]), status=str(data["status"]),
            seq=int(data["seq"]), amount=_opt_d(data.get("amount"), "amount"),
            amount_remaining=_opt_d(data.get("amount_remaining"), "amount_remaining"),
            amount_quote=_opt_d(data.get("amount_quote"), "amount_quote"),
            amount_quote_remaining=_opt_d(data.get("amount_quote_remaining"), "amount_quote_remaining"),
            price=_opt_d(data.get("price"), "price"), trigger_price=_opt_d(data.get("trigger_price"), "trigger_price"),
            trigger_reference=str(data["trigger_reference"]), time_in_force=str(data["time_in_force"]),
            post_only=bool(data["post_only"]), on_hold=_d(data["on_hold"], "on_hold"),
            filled_amount=_d(data["filled_amount"], "filled_amount"), filled_quote=_d(data["filled_quote"], "filled_quote"),
            fee_paid=_d(data["fee_paid"], "fee_paid"), triggered=bool(data["triggered"]), fills=fills)


# ---- the broker --------------------------------------------------------------------------------

class PaperBroker:
    """Bitvavo's order handling for one account, against the books the caller feeds in."""

    def __init__(self, catalog: MarketCatalog, *, balances: Mapping[str, Decimal],
                 maker_fee: Decimal = Decimal("0.0015"), taker_fee: Decimal = Decimal("0.0025"),
                 slippage_bps: Decimal = ZERO, keep_closed: int = 100) -> None:
        for name, value in (("maker_fee", maker_fee), ("taker_fee", taker_fee), ("slippage_bps", slippage_bps)):
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative Decimal")
        if keep_closed < 0:
            raise ValueError("keep_closed must not be negative")
        self._catalog = catalog
        self.maker_fee = maker_fee
        self.taker_fee = taker_fee
        self.slippage_bps = slippage_bps
        self.keep_closed = keep_closed
        self._bal: dict[str, list[Decimal]] = {}  # asset -> [available, in_order]
        for asset, amount in balances.items():
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise ValueError(f"balance {asset}={amount!r} must be a non-negative Decimal")
            self._bal[asset] = [amount, ZERO]
        self._orders: dict[str, _Order] = {}  # open and kept closed orders, by id, in placement order
        self._closed: list[str] = []  # ids of kept closed orders, oldest closure first
        self._open: dict[str, dict[str, _Order]] = {}  # market -> its open orders by id, in placement order
        self._books: dict[str, _Book] = {}
        self._seq = 0
        self._touched: dict[str, _Order] = {}  # orders changed by the current book, in order of change
        # For incremental persistence (``take_changes``): orders changed or dropped since the last take.
        self._dirty: set[str] = set()
        self._dirty_bal: set[str] = set(self._bal)  # the starting balances are saved with the first take
        self._dropped: set[str] = set()
        self._by_client_id: dict[tuple[str, str], list[str]] = {}  # (market, clientOrderId) → order ids, oldest first

    # ---- market data ---------------------------------------------------------------------------
    def set_catalog(self, catalog: MarketCatalog) -> None:
        """New market rules (a refreshed ``/markets``); open orders keep their market."""
        self._catalog = catalog

    def set_book(self, market: str, bids: Iterable[Sequence[Decimal]], asks: Iterable[Sequence[Decimal]],
                 ts_ms: int) -> list[OrderState]:
        """Replace the market's book (depth, best first) and run what it causes: resting limit
        orders it crosses fill (maker), then hit triggers fire and execute on it. Returns the
        orders that changed, in the order they first changed, each in its state after this book."""
        rules = self._catalog.get(market)
        if rules is None:
            return []
        book = _Book(ts=ts_ms, bids=self._levels(rules, bids, reverse=True), asks=self._levels(rules, asks, reverse=False),
                     best_bid=None, best_ask=None, last_bid=None, last_ask=None)
        book.best_bid = book.bids[0][0] if book.bids else None
        book.best_ask = book.asks[0][0] if book.asks else None
        book.last_bid = book.bids[-1][0] if book.bids else None
        book.last_ask = book.asks[-1][0] if book.asks else None
        self._books[market] = book
        if rules.status != TRADING:
            return []  # nothing matches and no stop fires while the market is paused
        opened = self._open.get(market)
        if not opened:
            return []
        self._touched = {}
        self._match_resting(rules, book, ts_ms)
        for order in [o for o in opened.values() if o.status == "awaitingTrigger"]:
            if order.status == "awaitingTrigger" and self._hit(order, book):
                self._fire(order, rules, book, ts_ms)
        touched, self._touched = self._touched, {}
        return [order.state() for order in touched.values()]

    def on_top(self, top: BookTopUpdated) -> list[OrderState]:
        """A one-level book from a top-of-book message (``exchange_ts``, else ``ts``)."""
        bids = [(top.bid, top.bid_size)] if top.bid > 0 and top.bid_size > 0 else []
        asks = [(top.ask, top.ask_size)] if top.ask > 0 and top.ask_size > 0 else []
        return self.set_book(top.market, bids, asks, top.exchange_ts or top.ts)

    def book_ts(self, market: str) -> int | None:
        """When the market's current book was received (its ``ts_ms``), None without one."""
        book = self._books.get(market)
        return None if book is None else book.ts

    def drop_book(self, market: str) -> None:
        """Forget the market's book (e.g. stale): market and limit orders get 431 until the next."""
        self._books.pop(market, None)

    @staticmethod
    def _levels(rules: MarketRules, levels: Iterable[Sequence[Decimal]], *, reverse: bool) -> list[list[Decimal]]:
        out: list[list[Decimal]] = []
        for price, size in levels:
            if not (price.is_finite() and size.is_finite()) or price <= 0 or size <= 0:
                continue
            size = _round_down(size, rules.quantity_decimals)
            if size > 0:
                out.append([price, size])
        out.sort(key=lambda level: level[0], reverse=reverse)
        return out

    # ---- orders --------------------------------------------------------------------------------
    def place(self, req: OrderRequest, now_ms: int) -> OrderState:
        """Create an order as POST /order does; PaperOrderError when Bitvavo would refuse it."""
        rules = self._rules(req.market)
        self._validate(req, rules)
        if rules.status != TRADING:
            raise _status_error(rules.status)
        book = self._books.get(req.market)
        is_trigger = req.order_type in TRIGGER_TYPES
        if book is None and not is_trigger:
            raise PaperOrderError(431, f"getBook is not available for {req.market}: the paper broker has no book "
                                       "for it yet", 409)
        open_here = self._open.get(req.market, {}).values()
        if len(open_here) >= MAX_OPEN_ORDERS:
            raise PaperOrderError(235, "You can only have 100 open orders on each book.")
        if any(o.client_order_id == req.client_order_id for o in open_here):
            raise PaperOrderError(220, "clientOrderId conflict within the market.")
        if req.order_type == "market" and req.amount is not None and book is not None:
            estimate = self._estimate_price(book, req.side, req.amount)
            if estimate is not None and req.amount * estimate < rules.min_quote:
                raise _notional_too_low()

        self._seq += 1
        parent = f"paper/{req.market}/{req.client_order_id}"
        order_id = derive_id(parent, "order")
        if order_id in self._orders:
            order_id = derive_id(parent, f"order/{self._seq}")
        order = _Order(
            order_id=order_id, market=req.market, base=rules.base, quote=rules.quote, side=req.side,
            order_type=req.order_type, client_order_id=req.client_order_id, created=now_ms, updated=now_ms,
            status="awaitingTrigger" if is_trigger else "new", seq=self._seq, amount=req.amount,
            amount_remaining=req.amount, amount_quote=req.amount_quote, amount_quote_remaining=req.amount_quote,
            price=req.price, trigger_price=req.trigger_price if is_trigger else None,
            trigger_reference=req.trigger_reference, time_in_force=req.time_in_force or "GTC",
            post_only=bool(req.post_only))
        hold = self._hold_for(order, rules, book)
        self._reserve(order.hold_currency, hold)
        order.on_hold = hold
        self._orders[order.order_id] = order
        self._index(order)
        self._dirty.add(order.order_id)
        self._open.setdefault(order.market, {})[order.order_id] = order
        if is_trigger:
            if book is not None and self._hit(order, book):
                self._fire(order, rules, book, now_ms)
        else:
            assert book is not None
            self._execute(order, rules, book, now_ms)
        self._touched = {}
        return order.state()

    def get(self, market: str, *, client_order_id: str | None = None,
            order_id: str | None = None) -> OrderState | None:
        """The order as GET /order returns it (clientOrderId wins; the open one, else the newest)."""
        order = self._find(market, client_order_id, order_id)
        return None if order is None else order.state()

    def update(self, market: str, *, client_order_id: str | None = None, order_id: str | None = None,
               amount: Decimal | None = None, price: Decimal | None = None, trigger_price: Decimal | None = None,
               now_ms: int) -> OrderState:
        """Change a limit or untriggered trigger order as PUT /order does. An active order leaves
        the book and re-enters as a new taker (it may fill at once; it loses its time priority)."""
        rules = self._rules(market)
        if rules.status != TRADING:
            raise _status_error(rules.status)
        order = self._find_required(market, client_order_id, order_id)
        if order.order_type == "market":
            raise PaperOrderError(234, "Market orders cannot be updated.")
        if amount is None and price is None and trigger_price is None:
            raise PaperOrderError(232, "You must change at least one of amount, amountRemaining, price, timeInForce, "
                                       "selfTradePrevention or postOnly.")
        if amount is not None and order.amount is None:
            raise PaperOrderError(239, "You cannot switch between amount and amountQuote while updating an order.")
        if not order.is_open:
            raise PaperOrderError(233, "Order must be active (status new or partiallyFilled) to allow "
                                       "updating/cancelling.")
        if amount is not None:
            if not amount.is_finite() or amount <= 0:
                raise _invalid("amount")
            self._check_amount(rules, amount)
            if amount <= order.filled_amount:
                raise _invalid("amount")
        if price is not None:
            if not order.limit_like:
                raise _not_for_type("price")
            self._check_price(rules, price, "price")
        if trigger_price is not None:
            if order.order_type not in TRIGGER_TYPES or order.status != "awaitingTrigger":
                raise _not_for_type("triggerAmount")
            self._check_price(rules, trigger_price, "triggerAmount")
        if amount is not None:
            at = price if price is not None else order.price
            if at is not None and (amount - order.filled_amount) * at < rules.min_quote:
                raise _notional_too_low()

        book = self._books.get(market)
        saved = (order.amount, order.amount_remaining, order.price, order.trigger_price, order.on_hold)
        self._release(order.hold_currency, order.on_hold)
        order.on_hold = ZERO
        if amount is not None:
            order.amount = amount
            order.amount_remaining = amount - order.filled_amount
        if price is not None:
            order.price = price
        if trigger_price is not None:
            order.trigger_price = trigger_price
        try:
            hold = self._hold_for(order, rules, book)
            self._reserve(order.hold_currency, hold)
        except PaperOrderError:
            order.amount, order.amount_remaining, order.price, order.trigger_price, old_hold = saved
            self._reserve(order.hold_currency, old_hold)
            order.on_hold = old_hold
            raise
        order.on_hold = hold
        order.updated = now_ms
        self._dirty.add(order.order_id)
        if order.status == "awaitingTrigger":
            if book is not None and self._hit(order, book):
                self._fire(order, rules, book, now_ms)
        elif book is not None:
            self._seq += 1
            order.seq = self._seq
            self._execute(order, rules, book, now_ms)
        self._touched = {}
        return order.state()

    def cancel(self, market: str, *, client_order_id: str | None = None, order_id: str | None = None,
               now_ms: int) -> OrderState:
        """Cancel an open order (DELETE /order); 240 when it is unknown or no longer open."""
        rules = self._catalog.get(market)
        if rules is None and not any(o.market == market for o in self._orders.values()):
            raise _invalid("market", market)
        if rules is not None and rules.status == "halted":
            raise _status_error("halted")
        order = self._find_required(market, client_order_id, order_id)
        if not order.is_open:
            raise _not_found()
        self._finalize(order, "canceled", now_ms)
        self._touched = {}
        return order.state()

    def open_orders(self, market: str | None = None) -> list[OrderState]:
        """Open orders (``new``, ``partiallyFilled``, ``awaitingTrigger``), oldest first."""
        if market is not None:
            return [o.state() for o in self._open.get(market, {}).values()]
        return [o.state() for o in self._orders.values() if o.is_open]

    def balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        """asset → (available, in order), as GET /balance reports them."""
        return {asset: (b[0], b[1]) for asset, b in self._bal.items()}

    # ---- persistence ---------------------------------------------------------------------------
    def snapshot(self, *, books: bool = True) -> dict[str, Any]:
        """The whole state as JSON-able data (decimals as strings). Without ``books`` the market
        data is left out (after ``restore`` the next book must arrive before market/limit orders)."""
        data: dict[str, Any] = {**self.snapshot_head(), "orders": [o.to_json() for o in self._orders.values()]}
        if books:
            data["books"] = {market: book.to_json() for market, book in self._books.items()}
        return data

    def snapshot_head(self, *, balances: bool = True) -> dict[str, Any]:
        """``snapshot(books=False)`` without the orders (and without the balances when asked)."""
        head: dict[str, Any] = {"v": SNAPSHOT_VERSION, "seq": self._seq, "maker_fee": _s(self.maker_fee),
                                "taker_fee": _s(self.taker_fee), "slippage_bps": _s(self.slippage_bps),
                                "keep_closed": self.keep_closed, "closed": list(self._closed)}
        if balances:
            head["balances"] = {asset: [_s(b[0]), _s(b[1])] for asset, b in self._bal.items()}
        return head

    def take_changes(self) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, dict[str, Any]], list[str]]:
        """What changed since the last take, for an incremental save: (``snapshot_head()`` without
        the balances, the changed balances by asset, the changed orders' JSON by id, the ids of
        orders dropped). Saving them and restoring with ``restore_parts`` gives the same broker as
        ``snapshot(books=False)``/``restore``. Cost: what changed, not every asset and order."""
        head = {k: v for k, v in self.snapshot_head(balances=False).items()}
        balances = {a: [_s(self._bal[a][0]), _s(self._bal[a][1])] for a in sorted(self._dirty_bal) if a in self._bal}
        changed = {oid: self._orders[oid].to_json() for oid in sorted(self._dirty) if oid in self._orders}
        dropped = sorted(self._dropped)
        self._dirty.clear()
        self._dirty_bal.clear()
        self._dropped.clear()
        return head, balances, changed, dropped

    def mark_all_changed(self) -> None:
        """The next ``take_changes`` returns every balance and order (a full rewrite)."""
        self._dirty = set(self._orders)
        self._dirty_bal = set(self._bal)

    @classmethod
    def restore_parts(cls, meta: Mapping[str, Any], balances: Mapping[str, Any], orders: Iterable[Mapping[str, Any]],
                      catalog: MarketCatalog, **kw: Any) -> PaperBroker:
        """The broker saved by ``take_changes`` (orders in any order: placement order is their seq)."""
        try:
            ordered = sorted(orders, key=lambda o: (int(o["created"]), int(o["seq"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"paper state is malformed: {exc!r}") from None
        return cls.restore({**meta, "balances": {**meta.get("balances", {}), **balances}, "orders": ordered},
                           catalog, **kw)

    @classmethod
    def restore(cls, data: Mapping[str, Any], catalog: MarketCatalog, *, maker_fee: Decimal | None = None,
                taker_fee: Decimal | None = None, slippage_bps: Decimal | None = None,
                keep_closed: int | None = None) -> PaperBroker:
        """The broker a ``snapshot()`` was taken of; fees and slippage from the snapshot unless
        given. ValueError when the data is not a snapshot this code reads."""
        try:
            if data.get("v") != SNAPSHOT_VERSION:
                raise ValueError(f"paper snapshot version {data.get('v')!r}, expected {SNAPSHOT_VERSION}")
            broker = cls(
                catalog, balances={},
                maker_fee=maker_fee if maker_fee is not None else _d(data["maker_fee"], "maker_fee"),
                taker_fee=taker_fee if taker_fee is not None else _d(data["taker_fee"], "taker_fee"),
                slippage_bps=slippage_bps if slippage_bps is not None else _d(data["slippage_bps"], "slippage_bps"),
                keep_closed=keep_closed if keep_closed is not None else int(data["keep_closed"]))
            broker._seq = int(data["seq"])
            broker._bal = {str(asset): [_d(b[0], f"{asset} available"), _d(b[1], f"{asset} in order")]
                           for asset, b in data["balances"].items()}
            for raw in data["orders"]:
                order = _Order.from_json(raw)
                broker._orders[order.order_id] = order
                broker._index(order)
                if order.is_open:
                    broker._open.setdefault(order.market, {})[order.order_id] = order
            broker._closed = [str(oid) for oid in data["closed"] if oid in broker._orders]
            for market, raw in (data.get("books") or {}).items():
                broker._books[str(market)] = _Book.from_json(raw)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"paper snapshot is malformed: {exc!r}") from None
        return broker

    # ---- validation ----------------------------------------------------------------------------
    def _rules(self, market: str) -> MarketRules:
        rules = self._catalog.get(market)
        if rules is None:
            raise _invalid("market", market)
        return rules

    @staticmethod
    def _check_price(rules: MarketRules, price: Decimal, name: str) -> None:
        if not price.is_finite() or price <= 0:
            raise _invalid(name)
        if not rules.is_on_tick(price):
            raise _tick(rules)

    @staticmethod
    def _check_amount(rules: MarketRules, amount: Decimal) -> None:
        if not rules.amount_fits(amount):
            raise _too_many_decimals("amount", rules.quantity_decimals)
        if rules.max_base is not None and amount > rules.max_base:
            raise PaperOrderError(210, f"Amount exceeds the maximum allowed amount ({rules.max_base}).")
        if amount < rules.min_base:
            raise PaperOrderError(212, "Amount is below the minimum allowed amount for this asset.")

    def _validate(self, req: OrderRequest, rules: MarketRules) -> None:
        """POST /order's checks, in the sandbox's order: shape, trigger, price, amount, minimums."""
        kind = req.order_type
        if rules.order_types and kind not in rules.order_types:
            raise _invalid("orderType")
        if req.side not in ("buy", "sell"):
            raise _invalid("side")
        if req.amount_quote is not None and kind not in QUOTE_TYPES:
            raise _not_for_type("amountQuote")
        if req.price is not None and kind not in LIMIT_TYPES:
            raise _not_for_type("price")
        if req.trigger_price is not None and kind not in TRIGGER_TYPES:
            raise _not_for_type("triggerAmount")
        if req.post_only and kind not in LIMIT_TYPES:
            raise _not_for_type("postOnly")
        if req.time_in_force not in (None, "GTC", "IOC", "FOK"):
            raise _invalid("timeInForce")
        if kind in TRIGGER_TYPES:
            if req.trigger_reference not in TRIGGER_REFERENCES:
                raise _invalid("triggerReference")
            assert req.trigger_price is not None
            self._check_price(rules, req.trigger_price, "triggerAmount")
        if req.price is not None:
            self._check_price(rules, req.price, "price")
        if req.amount is not None:
            self._check_amount(rules, req.amount)
        if req.amount_quote is not None:
            aq = req.amount_quote
            if _round_down(aq, rules.notional_decimals) != aq:
                raise _too_many_decimals("amountQuote", rules.notional_decimals)
            if aq < rules.min_quote:
                raise _notional_too_low()
        if req.amount is not None and req.price is not None and req.amount * req.price < rules.min_quote:
            raise _notional_too_low()

    # ---- lookup --------------------------------------------------------------------------------
    def _find(self, market: str, client_order_id: str | None, order_id: str | None) -> _Order | None:
        if client_order_id is None and order_id is None:
            raise PaperOrderError(203, "orderId or clientOrderId parameter is required.")
        if client_order_id is not None:
            same = [self._orders[oid] for oid in self._by_client_id.get((market, client_order_id), ())]
            for candidate in same:
                if candidate.is_open:
                    return candidate
            return same[-1] if same else None
        found = self._orders.get(order_id) if order_id is not None else None
        return found if found is not None and found.market == market else None

    def _find_required(self, market: str, client_order_id: str | None, order_id: str | None) -> _Order:
        order = self._find(market, client_order_id, order_id)
        if order is None:
            raise _not_found()
        return order

    # ---- funds ---------------------------------------------------------------------------------
    def _balance(self, asset: str) -> list[Decimal]:
        """The asset's [available, in order], to change: every change of a balance comes through here."""
        self._dirty_bal.add(asset)
        b = self._bal.get(asset)
        if b is None:
            b = self._bal[asset] = [ZERO, ZERO]
        return b

    def _available(self, asset: str) -> Decimal:
        b = self._bal.get(asset)
        return b[0] if b is not None else ZERO

    def _reserve(self, asset: str, amount: Decimal) -> None:
        b = self._balance(asset)
        if amount > b[0]:
            raise _insufficient()
        b[0] -= amount
        b[1] += amount

    def _release(self, asset: str, amount: Decimal) -> None:
        if amount <= 0:
            return
        b = self._balance(asset)
        b[1] -= amount
        b[0] += amount

    def _estimate_price(self, book: _Book, side: str, amount: Decimal) -> Decimal | None:
        """Average price to take ``amount`` from the book (the worst level's price beyond it)."""
        left, cost = amount, ZERO
        last: Decimal | None = None
        for price, size in book.side(side):
            take = min(size, left)
            cost += take * price
            left -= take
            last = price
            if left <= 0:
                break
        if left > 0:
            ref = last if last is not None else (book.last_ask if side == "buy" else book.last_bid)
            if ref is None:
                return None
            cost += left * ref
        return cost / amount

    def _estimate_base_for_quote(self, book: _Book | None, quote: Decimal, decimals: int) -> Decimal:
        """Base a sell by ``amountQuote`` needs, walking the bids (the worst bid beyond them)."""
        left, base = quote, ZERO
        last = book.last_bid if book is not None else None
        for price, size in book.bids if book is not None else ():
            take = min(size * price, left)
            base += take / price
            left -= take
            last = price
            if left <= 0:
                break
        if left > 0 and last:
            base += left / last
        return _round_up(base, decimals)

    def _hold_for(self, order: _Order, rules: MarketRules, book: _Book | None) -> Decimal:
        """What an order reserves: buys quote incl. the taker fee (rounded up to the cent), sells base."""
        nd, qd = rules.notional_decimals, rules.quantity_decimals
        if order.side == "sell":
            if order.amount_remaining is not None:
                return order.amount_remaining
            assert order.amount_quote is not None
            if order.trigger_price is not None:
                return _round_up(order.amount_quote / order.trigger_price, qd)
            return self._estimate_base_for_quote(book, order.amount_quote, qd)
        if order.amount_quote is not None:
            return order.amount_quote  # amountQuote includes the fee
        assert order.amount_remaining is not None
        factor = ONE + self.taker_fee
        if order.price is not None:
            return _round_up(order.amount_remaining * order.price * factor, nd)
        if order.trigger_price is not None:
            return _round_up(order.amount_remaining * order.trigger_price * factor, nd)
        estimate = self._estimate_price(book, "buy", order.amount_remaining) if book is not None else None
        if estimate is None:
            raise PaperOrderError(230, "The order is rejected by the matching engine.")
        return _round_up(order.amount_remaining * estimate * factor, nd)

    # ---- matching ------------------------------------------------------------------------------
    def _hit(self, order: _Order, book: _Book) -> bool:
        ref = book.reference(order.trigger_reference)
        trigger = order.trigger_price
        if ref is None or trigger is None:
            return False
        stop = order.order_type.startswith("stopLoss")
        if order.side == "sell":
            return ref <= trigger if stop else ref >= trigger
        return ref >= trigger if stop else ref <= trigger

    def _fire(self, order: _Order, rules: MarketRules, book: _Book, ts: int) -> None:
        order.triggered = True
        order.status = "new"
        order.updated = ts
        self._touched[order.order_id] = order
        self._dirty.add(order.order_id)
        self._seq += 1
        order.seq = self._seq
        self._execute(order, rules, book, ts)

    @staticmethod
    def _crosses(side: str, limit: Decimal | None, level_price: Decimal) -> bool:
        if limit is None:
            return True
        return level_price <= limit if side == "buy" else level_price >= limit

    def _fill_price(self, rules: MarketRules, side: str, level_price: Decimal, limit: Decimal | None) -> Decimal:
        """A taker fill's price: the level's, worsened by the slippage and rounded to the tick adversely."""
        if side == "buy":
            price = rules.round_price(level_price * (ONE + self.slippage_bps / BPS), "up")
            return min(price, limit) if limit is not None else price
        raw = level_price * (ONE - self.slippage_bps / BPS)
        price = rules.round_price(raw, "down") if raw > 0 else rules.tick_size
        price = max(price, rules.tick_size)
        return max(price, limit) if limit is not None else price

    def _max_qty(self, order: _Order, rules: MarketRules, price: Decimal) -> Decimal:
        """The most base a taker can still take at ``price`` (the sandbox's rule: its hold, plus the
        available balance for market-type orders; a buy's budget counts the taker fee)."""
        qd = rules.quantity_decimals
        market_like = not order.limit_like
        if order.side == "buy":
            funds = order.on_hold + (self._available(order.quote) if market_like else ZERO)
            unit = price * (ONE + self.taker_fee)
            affordable = _round_down(funds / unit, qd)
            if order.amount_remaining is not None:
                return min(order.amount_remaining, affordable)
            assert order.amount_quote_remaining is not None
            return min(_round_down(order.amount_quote_remaining / unit, qd), affordable)
        funds = _round_down(order.on_hold + (self._available(order.base) if market_like else ZERO), qd)
        if order.amount_remaining is not None:
            return min(order.amount_remaining, funds)
        assert order.amount_quote_remaining is not None
        return min(_round_down(order.amount_quote_remaining / price, qd), funds)

    def _take(self, order: _Order, rules: MarketRules, book: _Book, limit: Decimal | None, ts: int) -> bool:
        """Walk the opposite depth as a taker. True when the depth ran out while the order still
        wanted more (for a limit order: crossing depth)."""
        levels = book.side(order.side)
        last_price: Decimal | None = None
        while levels:
            level = levels[0]
            if not self._crosses(order.side, limit, level[0]):
                return False
            price = self._fill_price(rules, order.side, level[0], limit)
            want = self._max_qty(order, rules, price)
            if want <= 0:
                return False
            qty = min(want, level[1])
            level[1] -= qty
            if level[1] <= 0:
                del levels[0]
            self._settle(order, rules, qty, price, True, ts)
            last_price = price
            if not order.is_open:
                return False
        return last_price is None or self._max_qty(order, rules, last_price) > 0

    def _execute(self, order: _Order, rules: MarketRules, book: _Book, ts: int) -> None:
        """An active order as a taker, then it rests (limit GTC), or ends (market, IOC, FOK)."""
        limit = order.price if order.limit_like else None
        levels = book.side(order.side)
        if limit is not None and order.post_only and levels and self._crosses(order.side, limit, levels[0][0]):
            self._finalize(order, "canceledPostOnly", ts)
            return
        if limit is not None and order.time_in_force == "FOK":
            assert order.amount_remaining is not None
            fillable = sum((size for price, size in levels if self._crosses(order.side, limit, price)), ZERO)
            if fillable < order.amount_remaining:
                self._finalize(order, "canceledFOK", ts)
                return
        exhausted = self._take(order, rules, book, limit, ts)
        if not order.is_open:
            return
        if limit is None:
            if order.amount is not None:
                self._finalize(order, "canceled", ts)  # an amount left over: the depth (or the funds) ran out
            else:
                self._finalize(order, "filled" if order.filled_amount > 0 and not exhausted else "canceled", ts)
            return
        if order.time_in_force == "IOC":
            self._finalize(order, "canceledIOC", ts)
        elif order.time_in_force == "FOK":
            self._finalize(order, "canceledFOK", ts)
        # else GTC: it rests, status new or partiallyFilled

    def _match_resting(self, rules: MarketRules, book: _Book, ts: int) -> None:
        """Resting limit orders that the new book crosses fill at their price, as makers."""
        resting = [o for o in self._open.get(rules.market, {}).values()
                   if o.status in ACTIVE and o.limit_like and o.price is not None]
        if not resting:
            return
        buys = sorted((o for o in resting if o.side == "buy"), key=lambda o: (-(o.price or ZERO), o.seq))
        sells = sorted((o for o in resting if o.side == "sell"), key=lambda o: (o.price or ZERO, o.seq))
        for orders, levels in ((buys, book.asks), (sells, book.bids)):
            for order in orders:
                price = order.price
                assert price is not None and order.amount_remaining is not None
                while order.is_open and levels and self._crosses(order.side, price, levels[0][0]):
                    level = levels[0]
                    qty = min(order.amount_remaining, level[1])
                    level[1] -= qty
                    if level[1] <= 0:
                        del levels[0]
                    self._settle(order, rules, qty, price, False, ts)

    def _settle(self, order: _Order, rules: MarketRules, qty: Decimal, price: Decimal, taker: bool, ts: int) -> None:
        """Book one fill: balances, fee, the order's cumulative fields (the sandbox's settlement)."""
        notional = qty * price
        fee = _round_half_up(notional * (self.taker_fee if taker else self.maker_fee), rules.notional_decimals)
        base, quote = self._balance(order.base), self._balance(order.quote)
        if order.side == "buy":
            if order.amount_quote_remaining is not None:
                fee = max(ZERO, min(fee, order.amount_quote_remaining - notional))  # amountQuote includes the fee
            spend = notional + fee
            from_hold = min(spend, order.on_hold)
            order.on_hold -= from_hold
            quote[1] -= from_hold
            rest = spend - from_hold
            if rest > 0:
                from_available = min(rest, quote[0])
                quote[0] -= from_available
                fee -= rest - from_available  # never overdraw: a rounding residue comes off the fee
            base[0] += qty
            if order.amount_quote_remaining is not None:
                order.amount_quote_remaining -= notional + fee
        else:
            from_hold = min(qty, order.on_hold)
            order.on_hold -= from_hold
            base[1] -= from_hold
            base[0] -= qty - from_hold
            quote[0] += notional - fee
            if order.amount_quote_remaining is not None:
                order.amount_quote_remaining -= notional
        order.filled_amount += qty
        order.filled_quote += notional
        order.fee_paid += fee
        if order.amount_remaining is not None:
            order.amount_remaining -= qty
        order.updated = ts
        order.fills.append(Fill(
            fill_id=derive_id(order.order_id, f"fill/{len(order.fills) + 1}"), order_id=order.order_id,
            market=order.market, side=order.side, ts=ts, amount=qty, price=price, taker=taker, fee=fee,
            fee_currency=order.quote))
        self._touched[order.order_id] = order
        self._dirty.add(order.order_id)
        if order.amount_remaining is not None and order.amount_remaining <= 0:
            self._finalize(order, "filled", ts)
        else:
            order.status = "partiallyFilled"

    def _finalize(self, order: _Order, status: str, ts: int) -> None:
        order.status = status
        order.updated = ts
        self._release(order.hold_currency, order.on_hold)
        order.on_hold = ZERO
        self._touched[order.order_id] = order
        self._dirty.add(order.order_id)
        opened = self._open.get(order.market)
        if opened is not None:
            opened.pop(order.order_id, None)
            if not opened:
                del self._open[order.market]
        self._closed.append(order.order_id)
        while len(self._closed) > self.keep_closed:
            gone = self._orders.pop(self._closed.pop(0), None)
            if gone is not None:
                self._dropped.add(gone.order_id)
                self._dirty.discard(gone.order_id)
                if gone.client_order_id is not None:
                    key = (gone.market, gone.client_order_id)
                    ids = [oid for oid in self._by_client_id.get(key, ()) if oid != gone.order_id]
                    if ids:
                        self._by_client_id[key] = ids
                    else:
                        self._by_client_id.pop(key, None)

    def _index(self, order: _Order) -> None:
        if order.client_order_id is not None:
            self._by_client_id.setdefault((order.market, order.client_order_id), []).append(order.order_id)


__all__ = ["PaperBroker", "PaperOrderError"]
