"""The one position ledger: ``orders:executed`` folded into spot positions, PnL and fees.

The trading core, the executor and the PnL orchestrator each fold the same stream through this
class in their own consumer group (rebuilt from history at start), so there is one accounting,
never three that drift apart.

Input: ``OrderExecuted`` reports are order *states*: ``filled_amount``, ``filled_quote`` and
``fee`` are cumulative per ``client_order_id``. The ledger books only the change since the
largest state of that order booked so far:

- the same report (same message ``id``) twice books once;
- an older state arriving after a newer one (smaller ``filled_amount``) books nothing;
- a state with the same ``filled_amount`` and ``filled_quote`` but another ``fee`` is a fee
  settlement (Bitvavo reports a fill's fee once it is settled) and books the fee change, if it is
  newer (``ts``) than the state booked;
- a state that contradicts the booked one (more base for less quote, the same base for another
  quote, another market or side for the same order, negative numbers) raises ``PoisonMessage``
  and books nothing.

Accounting convention (spot, long only):

- A buy adds ``Δamount`` to the position and ``Δquote + fee`` to its **cost** (cost basis
  includes buy fees), so ``avg_cost = cost / size`` is the break-even price before the sell fee.
- A sell removes ``Δamount`` at the average cost: ``realized += (Δquote − fee) − avg_cost·Δamount``.
  ``realized`` is therefore **net of all fees**; ``fees`` is the total paid, for information,
  already inside ``realized`` and ``cost``: do not subtract it again.
  ``equity change = realized + unrealized(marks)``. For the gross view (issue 13's
  ``realized + unrealized − fees``), ``open_fees`` is the part of ``cost`` that is buy fees of the
  coins still held: gross realized = ``realized + fees − open_fees``, gross unrealized =
  ``size·mark − (cost − open_fees)``.
- Fee currency: the quote currency (Bitvavo's only case) is booked as is. A fee in the **base**
  currency is converted at the order's average price of the change (``Δquote/Δamount``, or the
  order's average so far for a fee-only settlement) and, on a buy, also reduces the coins received
  (the exchange kept them); on a sell it is booked as a quote fee only (the coins left the account
  with the sell). Any other currency raises ``PoisonMessage``. An empty currency is accepted only
  with a zero fee.
- A buy's fee settled after every coin of the position was sold (a fee-only change, position flat)
  is booked to ``realized``: no coin carries it any more.
- A sell larger than the position is a broken invariant on a long-only spot account (the ledger
  missed a buy, or the report is wrong). It raises ``PoisonMessage``: the report is dead-lettered
  with the reason, nothing is booked, and every process folding the stream rejects it the same way,
  so they still agree. (FatalError would crash-loop every consumer on the same entry and stop the
  protective exits.) It is never clamped silently.

Report ids are kept to recognise duplicates (one short string per report); ``snapshot`` carries
them, so a restored ledger keeps rejecting them.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tradestack.errors import PoisonMessage
from tradestack.markets import base_quote
from tradestack.messages import OrderExecuted

ZERO = Decimal(0)
# Bitvavo's order statuses after which an order changes no more (plus legacy expired/rejected).
FINAL_STATUSES = frozenset({
    "filled", "canceled", "canceledAuction", "canceledSelfTradePrevention", "canceledIOC", "canceledFOK",
    "canceledMarketProtection", "canceledPostOnly", "expired", "rejected",
})
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
SNAPSHOT_VERSION = 1
_ALLOC = Decimal("1e-18")  # partial sells take cost out pro rata, to this quantum


@dataclass(slots=True)
class Position:
    """One market's spot position. ``cost`` includes the buy fees of the coins held."""

    market: str
    size: Decimal = ZERO
    cost: Decimal = ZERO
    open_fees: Decimal = ZERO
    realized: Decimal = ZERO
    fees: Decimal = ZERO
    opened_ts: int | None = None  # ts of the first fill of the current (non-zero) position
    updated_ts: int = 0

    @property
    def is_open(self) -> bool:
        return self.size > 0

    @property
    def avg_cost(self) -> Decimal | None:
        """Average cost per unit including buy fees (the break-even price before the sell fee)."""
        return _CTX.divide(self.cost, self.size) if self.size > 0 else None

    @property
    def avg_price(self) -> Decimal | None:
        """Average price paid per unit, fees excluded."""
        return _CTX.divide(self.cost - self.open_fees, self.size) if self.size > 0 else None

    def unrealized(self, mark: Decimal) -> Decimal:
        """Net of buy fees (not of the future sell fee): ``size·mark − cost``."""
        return self.size * mark - self.cost if self.size > 0 else ZERO

    def to_json(self) -> dict[str, Any]:
        return {"market": self.market, "size": _s(self.size), "cost": _s(self.cost),
                "open_fees": _s(self.open_fees), "realized": _s(self.realized), "fees": _s(self.fees),
                "opened_ts": self.opened_ts, "updated_ts": self.updated_ts}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Position:
        return cls(market=data["market"], size=Decimal(data["size"]), cost=Decimal(data["cost"]),
                   open_fees=Decimal(data["open_fees"]), realized=Decimal(data["realized"]),
                   fees=Decimal(data["fees"]), opened_ts=data["opened_ts"], updated_ts=data["updated_ts"])


@dataclass(slots=True)
class OrderFill:
    """The largest state of one order booked so far."""

    market: str
    side: str
    intent_id: str
    filled_amount: Decimal = ZERO
    filled_quote: Decimal = ZERO
    fee: Decimal = ZERO
    ts: int = 0
    status: str = ""
    final: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"market": self.market, "side": self.side, "intent_id": self.intent_id,
                "filled_amount": _s(self.filled_amount), "filled_quote": _s(self.filled_quote),
                "fee": _s(self.fee), "ts": self.ts, "status": self.status, "final": self.final}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OrderFill:
        return cls(market=data["market"], side=data["side"], intent_id=data["intent_id"],
                   filled_amount=Decimal(data["filled_amount"]), filled_quote=Decimal(data["filled_quote"]),
                   fee=Decimal(data["fee"]), ts=data["ts"], status=data["status"], final=data["final"])


@dataclass(frozen=True, slots=True)
class Booking:
    """What one report changed. ``delta_*`` are this report's increments (base, quote, fee in quote);
    ``realized`` the realized PnL it booked (sells only); ``size_after`` the position after it."""

    report_id: str
    client_order_id: str
    intent_id: str
    market: str
    side: str
    status: str
    final: bool
    became_final: bool
    delta_amount: Decimal
    delta_quote: Decimal
    fee_quote: Decimal
    realized: Decimal
    size_before: Decimal
    size_after: Decimal
    ts: int

    @property
    def opened(self) -> bool:
        return self.size_before == 0 and self.size_after > 0

    @property
    def closed(self) -> bool:
        return self.size_before > 0 and self.size_after == 0


@dataclass(slots=True)
class PositionLedger:
    """Positions per market from execution reports; see the module docstring for the rules."""

    _positions: dict[str, Position] = field(default_factory=dict)
    _orders: dict[str, OrderFill] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    stale: int = 0  # reports that booked nothing because a newer state was booked already
    duplicates: int = 0
    # Views read on every trading decision, kept until a booking changes a position (O(1) then,
    # instead of a walk over every market ever traded): the open positions, and the realized total
    # per (precision, rounding) of the decimal context it was summed in (the sum is the context's).
    _open_view: dict[str, Position] | None = field(default=None, repr=False, compare=False)
    _realized_sums: dict[tuple[int, str], Decimal] = field(default_factory=dict, repr=False, compare=False)

    # -- reading --------------------------------------------------------------------------

    def _open(self) -> dict[str, Position]:
        view = self._open_view
        if view is None:
            view = self._open_view = {m: p for m, p in self._positions.items() if p.size > 0}
        return view

    @property
    def positions(self) -> dict[str, Position]:
        """Open positions (size > 0), market → Position (live objects: do not mutate)."""
        return dict(self._open())

    def position(self, market: str) -> Position | None:
        return self._positions.get(market)

    def size(self, market: str) -> Decimal:
        pos = self._positions.get(market)
        return pos.size if pos is not None else ZERO

    @property
    def realized(self) -> Decimal:
        ctx = decimal.getcontext()
        key = (ctx.prec, ctx.rounding)
        total = self._realized_sums.get(key)
        if total is None:
            total = self._realized_sums[key] = sum((p.realized for p in self._positions.values()), ZERO)
        return total

    @property
    def fees(self) -> Decimal:
        return sum((p.fees for p in self._positions.values()), ZERO)

    def order(self, client_order_id: str) -> OrderFill | None:
        return self._orders.get(client_order_id)

    def exposure(self, marks: Mapping[str, Decimal]) -> dict[str, Decimal]:
        """Market → value of the open position in quote: ``size·mark``, or its cost without a mark."""
        out: dict[str, Decimal] = {}
        for market, pos in self._open().items():
            mark = marks.get(market)
            out[market] = pos.size * mark if mark is not None else pos.cost
        return out

    def unrealized(self, marks: Mapping[str, Decimal]) -> Decimal:
        return sum((p.unrealized(marks[m]) for m, p in self._open().items() if m in marks), ZERO)

    # -- booking --------------------------------------------------------------------------

    def apply(self, report: OrderExecuted) -> Booking | None:
        """Book one report; None when it books nothing (duplicate or stale). PoisonMessage when it
        can never be booked; then nothing has changed."""
        if report.id in self._seen:
            self.duplicates += 1
            return None
        try:
            base, quote = base_quote(report.market)
        except ValueError as exc:
            raise PoisonMessage(str(exc)) from None
        if report.filled_amount < 0 or report.filled_quote < 0:
            raise PoisonMessage(f"report {report.id}: negative filled amount or quote")
        if report.filled_amount == 0 and report.filled_quote != 0:
            raise PoisonMessage(f"report {report.id}: quote {report.filled_quote} filled for no amount")
        if report.fee != 0 and report.fee_currency not in (quote, base):
            raise PoisonMessage(f"report {report.id}: fee in {report.fee_currency!r}, neither {quote} nor {base}")
        if report.fee == 0 and report.fee_currency not in (quote, base, ""):
            raise PoisonMessage(f"report {report.id}: unknown fee currency {report.fee_currency!r}")

        prev = self._orders.get(report.client_order_id)
        if prev is not None and (prev.market != report.market or prev.side != report.side):
            raise PoisonMessage(f"report {report.id}: order {report.client_order_id} was {prev.side} "
                                f"{prev.market}, now {report.side} {report.market}")
        b_amount = prev.filled_amount if prev else ZERO
        b_quote = prev.filled_quote if prev else ZERO
        b_fee = prev.fee if prev else ZERO
        d_amount = report.filled_amount - b_amount
        d_quote = report.filled_quote - b_quote
        final = report.status in FINAL_STATUSES

        was_final = prev is not None and prev.final
        # A state is newer than the booked one by its filled amount, then by its time.
        newer = prev is None or d_amount > 0 or (d_amount == 0 and report.ts >= prev.ts)
        if d_amount < 0:
            self._seen.add(report.id)
            self.stale += 1
            return None
        if d_amount == 0 and d_quote != 0:
            raise PoisonMessage(f"report {report.id}: quote {report.filled_quote} contradicts {b_quote} "
                                f"for the same filled amount {b_amount}")
        if d_amount > 0 and d_quote <= 0:
            raise PoisonMessage(f"report {report.id}: {d_amount} more {base} filled for {d_quote} {quote}")
        fee_changes = report.fee != b_fee and newer
        if d_amount == 0 and not fee_changes and (was_final or not final):
            # Nothing to book: a repeat of the booked state, or an older one.
            self._seen.add(report.id)
            if not newer:
                self.stale += 1
            if prev is None:
                self._orders[report.client_order_id] = OrderFill(report.market, report.side, report.intent_id,
                                                                 ts=report.ts, status=report.status)
            return None

        d_fee = report.fee - b_fee if fee_changes or d_amount > 0 else ZERO
        pos = self._positions.get(report.market) or Position(report.market)
        # Fee in quote; a base fee converted at this change's (or the order's) average price.
        if d_fee == 0:
            fee_quote, fee_base = ZERO, ZERO
        elif report.fee_currency == quote:
            fee_quote, fee_base = d_fee, ZERO
        else:
            if d_amount > 0:
                price = _CTX.divide(d_quote, d_amount)
            elif report.filled_amount > 0:
                price = _CTX.divide(report.filled_quote, report.filled_amount)
            else:
                raise PoisonMessage(f"report {report.id}: a {base} fee on an order with nothing filled")
            fee_quote, fee_base = _CTX.multiply(d_fee, price), d_fee

        size_before = pos.size
        realized = ZERO
        if report.side == "buy" and d_amount == 0 and pos.size == 0 and fee_base == 0:
            # A buy's fee settled after its coins were all sold: no coins carry it any more, so it is
            # a realized cost (in a flat position's cost it would be in neither realized nor unrealized).
            realized = -fee_quote
            new = Position(pos.market, ZERO, pos.cost, pos.open_fees, pos.realized + realized, pos.fees + fee_quote,
                           None, report.ts)
        elif report.side == "buy":
            received = d_amount - fee_base
            if pos.size + received < 0:
                raise PoisonMessage(f"report {report.id}: a {base} fee larger than the position")
            new = Position(pos.market, pos.size + received, pos.cost + d_quote + fee_quote,
                           pos.open_fees + fee_quote, pos.realized, pos.fees + fee_quote,
                           pos.opened_ts, report.ts)
            if size_before == 0 and new.size > 0:
                new.opened_ts = report.ts
        else:
            if d_amount > pos.size:
                raise PoisonMessage(f"report {report.id}: sell of {d_amount} {base} exceeds the position of "
                                    f"{pos.size} {base} in {report.market} (spot is long only)")
            if d_amount == pos.size:
                cost_out, fees_out = pos.cost, pos.open_fees
            elif d_amount > 0:
                # Pro rata, to 1e-18 quote: what is not taken out stays in the cost, so nothing is lost.
                cost_out = _CTX.divide(pos.cost * d_amount, pos.size).quantize(_ALLOC, context=_CTX)
                fees_out = _CTX.divide(pos.open_fees * d_amount, pos.size).quantize(_ALLOC, context=_CTX)
            else:
                cost_out, fees_out = ZERO, ZERO
            realized = d_quote - fee_quote - cost_out
            size = pos.size - d_amount
            new = Position(pos.market, size, pos.cost - cost_out, pos.open_fees - fees_out,
                           pos.realized + realized, pos.fees + fee_quote,
                           pos.opened_ts if size > 0 else None, report.ts)
        # Commit: nothing above has changed state.
        self._positions[report.market] = new
        self._open_view = None
        self._realized_sums.clear()
        became_final = final and not was_final
        self._orders[report.client_order_id] = OrderFill(
            report.market, report.side, report.intent_id, report.filled_amount, report.filled_quote,
            report.fee if d_fee != 0 else b_fee, max(report.ts, prev.ts if prev else 0),
            report.status if newer or final or prev is None else prev.status, final or was_final)
        self._seen.add(report.id)
        return Booking(report.id, report.client_order_id, report.intent_id, report.market, report.side,
                       report.status, final or was_final, became_final, d_amount,
                       d_quote, fee_quote, realized, size_before, new.size, report.ts)

    # -- persistence ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able dict (decimals as strings) that ``restore`` turns back into this ledger."""
        return {"v": SNAPSHOT_VERSION,
                "positions": {m: p.to_json() for m, p in sorted(self._positions.items())},
                "orders": {c: o.to_json() for c, o in sorted(self._orders.items())},
                "seen": sorted(self._seen), "stale": self.stale, "duplicates": self.duplicates}

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> PositionLedger:
        if data.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"ledger snapshot version {data.get('v')!r} is not {SNAPSHOT_VERSION}")
        return cls(_positions={m: Position.from_json(p) for m, p in data["positions"].items()},
                   _orders={c: OrderFill.from_json(o) for c, o in data["orders"].items()},
                   _seen=set(data["seen"]), stale=int(data["stale"]), duplicates=int(data["duplicates"]))


def _s(value: Decimal) -> str:
    return format(value, "f")


__all__ = ["FINAL_STATUSES", "Booking", "OrderFill", "Position", "PositionLedger"]
