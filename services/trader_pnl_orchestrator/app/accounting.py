"""The PnL orchestrator's accounting as plain code: no Redis, no I/O, no wall clock (DESIGN §5).

``PnlBook`` folds execution reports (``OrderExecuted``) and marks (the best bid per market) into
positions, realized and unrealized PnL, fees, cash, equity, exposure, the UTC day's PnL, the peak
equity and the drawdown, and says when the loss breaker must trip. Positions are the shared
``tradestack.ledger.PositionLedger`` (the same fold as the trading core and the executor): this
module adds cash, marks, the day and the peak around it and never keeps a second accounting of
positions. Every figure is a ``Decimal``; sums and products are taken with 60 significant digits,
so they are exact for any number Bitvavo sends.

API::

    PnlLimits(max_daily_loss_pct=None, max_drawdown_pct=None)    # None = no limit; else > 0
    book = PnlBook(starting_equity, quote="EUR", limits=None, catalog=None, ledger=None)
    book.on_report(report) -> Booking | None   # None: duplicate or stale; PoisonMessage: nothing changed
    book.on_mark(market, mark, ts_ms) -> bool  # False: ignored
    book.set_starting_equity(eur)              # sandbox/live: the exchange balance at the first start
    book.restore(snapshot)                     # at a restart, after refolding the reports and marks
    book.breaker() -> str | None               # the reason while a loss limit is passed
    book.totals() -> PnlTotals                 # every total at once (one equity computation)
    book.snapshot(factory, parent, mode, key=None) -> PnlSnapshotTaken
    book.positions_json() -> {market: json}    # the ``trading:positions`` hash (open positions only)
    book.totals_json() -> {field: str}         # the ``trading:pnl`` hash

Views (properties unless called): ``cash``, ``equity``, ``realized``, ``unrealized``, ``fees``,
``exposure``, ``exposure_by_asset()``, ``positions`` (market → ``PositionView``), ``marks``,
``mark(market)``, ``mark_ts(market)``, ``daily_pnl``, ``daily_loss_pct``, ``day``, ``day_start_equity``,
``peak_equity``, ``drawdown_pct``, ``starting_equity``, ``reports_booked``, ``updated_ts``,
``ledger``.

Inputs:

- ``on_report`` books a report through the ledger (cumulative per ``client_order_id``, idempotent
  per report id; see ``tradestack.ledger``) and returns the ledger's ``Booking``, or None when it
  booked nothing (a duplicate, an older state). It raises ``PoisonMessage`` and changes nothing
  (not even the day) for a market that is not ``BASE-<quote>``, a market missing from ``catalog``
  (when one is given) and whatever the ledger rejects (negative fills, a sell beyond the position,
  a fee in a currency that is neither the base nor the quote, contradicting states...).
- ``on_mark`` takes the best bid (what a sell would get) of a market at ``ts_ms``. It is ignored
  (returns False, changes nothing) when the mark is not a positive finite number, the market is not
  quoted in ``quote`` (or not in ``catalog``), or ``ts_ms`` is older than the market's current mark.
  Marks are kept for every market, held or not, so a later buy is valued at once.

Definitions (they hold exactly, in Decimal):

- ``cash`` = ``starting_equity`` − Σ buy quote − Σ buy fees + Σ sell quote − Σ sell fees, summed
  over the ledger's bookings (``Booking.delta_quote``, ``Booking.fee_quote``: the fee in quote; a
  base-currency fee is converted by the ledger's rule). A fee-only settlement moves cash by its fee.
  Spot buying power is not checked here: cash may go negative if the reports say so.
- market value of an open position = ``size × mark``; without a mark yet, its ``cost``.
  ``exposure`` = Σ market values (global); ``exposure_by_asset()`` = base asset → market value.
- ``equity`` = ``cash`` + Σ market values.
- ``unrealized`` = Σ (``size × mark − cost``) over the open positions that have a mark (the ledger's
  ``unrealized``; ``cost`` includes the buy fees of the coins held, so it is net of them).
- ``realized`` = ``ledger.realized`` (net of every fee); ``fees`` = ``ledger.fees`` (already inside
  ``realized`` and ``cost``; never subtract it again).
- Identity: ``equity − starting_equity = realized + unrealized`` (a position without a mark counts
  at cost, i.e. zero unrealized). In the gross terms of issue 13: ``gross realized + gross
  unrealized − fees`` with gross realized = ``realized + fees − Σ open_fees`` and gross unrealized =
  Σ ``size × mark − (cost − open_fees)``.
- ``day``: the UTC date (``YYYY-MM-DD``) of the latest input's ts (a report's ``ts`` or a mark's
  ``ts_ms``); "" before the first input. When an input arrives for a later day,
  ``day_start_equity`` = the equity just before applying it (the close of the previous day); before
  the first input it is the starting equity. An input older than the current day (a late report)
  is booked but does not move the day back; its PnL lands in the current day.
  ``daily_pnl`` = ``equity − day_start_equity``.
- ``daily_loss_pct`` = max(0, −``daily_pnl``) / ``day_start_equity`` × 100 (None when the day-start
  equity is not positive).
- ``peak_equity`` = the largest equity seen: it starts at ``starting_equity`` (or the equity of a
  pre-filled ledger, when larger) and is raised after every input. ``drawdown_pct`` =
  (``peak_equity`` − ``equity``) / ``peak_equity`` × 100, 0 when ``equity >= peak_equity``.
  Percentages are divisions: computed to 28 significant digits; the breaker compares exactly.
- ``breaker()``: the reason text while ``daily loss % >= max_daily_loss_pct`` (compared exactly as
  ``loss × 100 >= limit × day_start_equity``; any loss counts when the day-start equity is not
  positive) or ``drawdown % >= max_drawdown_pct`` (``(peak − equity) × 100 >= limit × peak``),
  both joined by "; " when both are passed; None otherwise and always without limits. It never
  clears anything: it only reports while the limit is passed (the service trips the kill switch).
  E.g. ``daily loss 5.2% of 1000.00 EUR day-start equity >= MAX_DAILY_LOSS_PCT 5`` and
  ``drawdown 10% of 1200.00 EUR peak equity >= MAX_DRAWDOWN_PCT 10``.
- ``reports_booked`` counts the reports that returned a ``Booking``; ``updated_ts`` is the largest
  ts of the inputs applied (0 before the first).

Incremental totals: exposure, unrealized, realized and fees are kept as running sums, moved by
the difference of the one market an input changed (``total − old + new``, each step exact in 60
digits), so an input costs O(1) whatever the number of positions. These sums equal the plain sums
over the positions (``_sum``) whenever those are exact, which they are for any number Bitvavo
sends (a few dozen digits at most); a step that would round makes the book sum afresh instead.
Texts are kept per held market too (the parts of its ``positions_json`` only a booking changes,
its normalized size and value for the snapshot) and made again only when that market changes.
tests/pnl compare every output with the plain computation.

Restart: build a new book with the configured starting equity, refold every report of
``orders:executed`` in stream order (duplicates, older states and poison are recognised again),
re-apply the latest mark of each market, then ``restore(last PnlSnapshotTaken)``. ``restore`` takes
``starting_equity`` (when positive: a rebase as ``set_starting_equity``), the ``day`` with its
``day_start_equity`` (unless the refold has already reached a later day: then the refold's roll
stands) and ``peak_equity`` = max(snapshot peak, starting equity). The refold values positions at
cost (no marks yet), so its running peak and day starts are not the ones lived: restore replaces
them, and does not take the equity of the moment into the peak either (the next input raises the
peak if the equity is above it; drawdown is 0 meanwhile). When the snapshot was taken after the
last input, the rebuilt book equals the live one in every view. Marks re-applied after ``restore``
(rather than before) are inputs like any other: they may raise the peak and roll the day.
Call ``set_starting_equity`` only when there is no snapshot: it rebases the book (cash, equity,
peak and day-start equity move by the difference; daily PnL does not).

Construction with a ``ledger`` that already holds positions (e.g. one restored from a ledger
snapshot): cash is derived from it as ``starting_equity + realized − Σ cost`` of the open positions
(what the flows above would have summed to), and its markets must be quoted in ``quote``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tradestack.errors import PoisonMessage
from tradestack.ledger import Booking, Position, PositionLedger
from tradestack.markets import MarketCatalog, base_quote
from tradestack.messages import Message, MessageFactory, Mode, OrderExecuted, PnlSnapshotTaken

ZERO = Decimal(0)
HUNDRED = Decimal(100)
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)  # sums and products: exact in practice
_PCT = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)  # percentages (a division)
_DAY_MS = 86_400_000
_EPOCH = dt.date(1970, 1, 1)
_CENT = Decimal("0.01")
# The incremental sums (``_shift``): as _CTX, but an inexact step raises, so the caller sums afresh.
_EXACT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN,
                         traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
_q = '"'


def day_index(ts_ms: int) -> int:
    """Days since 1970-01-01 (UTC) of an epoch-ms time, in integers (no float rounding at midnight)."""
    return ts_ms // _DAY_MS


def day_name(index: int) -> str:
    """``day_index`` → ``YYYY-MM-DD``."""
    return (_EPOCH + dt.timedelta(days=index)).isoformat()


def utc_day(ts_ms: int) -> str:
    """The UTC date of an epoch-ms time, ``YYYY-MM-DD``."""
    return day_name(day_index(ts_ms))


def _parse_day(day: str) -> int:
    try:
        return (dt.date.fromisoformat(day) - _EPOCH).days
    except ValueError:
        raise ValueError(f"snapshot day {day!r} is not YYYY-MM-DD") from None


def _n(value: Decimal) -> Decimal:
    """Without trailing zeros (``361.500000000000000000`` → ``361.5``): the same number, one spelling."""
    return value.normalize(_CTX)


def _s(value: Decimal) -> str:
    return format(_n(value), "f")


def _opt(value: Decimal | None) -> str | None:
    return None if value is None else _s(value)


def _money(value: Decimal) -> str:
    return format(value.quantize(_CENT, context=_CTX), "f")


def _pct_text(value: Decimal) -> str:
    text = format(value.quantize(_CENT, context=_CTX), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _limit_text(value: Decimal) -> str:
    return format(value.normalize(_CTX), "f")


def _check_equity(value: Decimal, what: str = "starting equity") -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        raise ValueError(f"{what} {value!r} must be a positive finite Decimal")


@dataclass(frozen=True, slots=True)
class PnlLimits:
    """Loss limits in percent (``5`` = 5%); None = no limit."""

    max_daily_loss_pct: Decimal | None = None
    max_drawdown_pct: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("max_daily_loss_pct", "max_drawdown_pct"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Decimal) or not value.is_finite() or value <= 0):
                raise ValueError(f"{name.upper()}={value!r} must be a positive Decimal or None")


@dataclass(frozen=True, slots=True)
class PositionView:
    """One open position as the PnL orchestrator reports it. ``value`` is its market value
    (``size × mark``, or ``cost`` without a mark); ``unrealized`` is None without a mark."""

    market: str
    asset: str
    size: Decimal
    avg_cost: Decimal  # cost / size: buy fees included (break-even before the sell fee)
    avg_price: Decimal  # (cost − open_fees) / size: fees excluded
    cost: Decimal
    open_fees: Decimal
    realized: Decimal  # of this market since the first fill, net of fees
    fees: Decimal  # of this market since the first fill
    mark: Decimal | None
    mark_ts: int | None
    value: Decimal
    unrealized: Decimal | None
    opened_ts: int | None
    updated_ts: int

    def to_json(self) -> dict[str, Any]:
        return {"market": self.market, "asset": self.asset, "size": _s(self.size), "avg_cost": _s(self.avg_cost),
                "avg_price": _s(self.avg_price), "cost": _s(self.cost), "open_fees": _s(self.open_fees),
                "realized": _s(self.realized), "fees": _s(self.fees), "mark": _opt(self.mark),
                "mark_ts": self.mark_ts, "value": _s(self.value), "unrealized": _opt(self.unrealized),
                "opened_ts": self.opened_ts, "updated_ts": self.updated_ts}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PositionView:
        def opt(key: str) -> Decimal | None:
            return None if data[key] is None else Decimal(data[key])

        return cls(market=data["market"], asset=data["asset"], size=Decimal(data["size"]),
                   avg_cost=Decimal(data["avg_cost"]), avg_price=Decimal(data["avg_price"]), cost=Decimal(data["cost"]),
                   open_fees=Decimal(data["open_fees"]), realized=Decimal(data["realized"]),
                   fees=Decimal(data["fees"]), mark=opt("mark"), mark_ts=data["mark_ts"], value=Decimal(data["value"]),
                   unrealized=opt("unrealized"), opened_ts=data["opened_ts"], updated_ts=data["updated_ts"])


@dataclass(frozen=True, slots=True)
class PnlTotals:
    """Every total of the book at one moment (the ``trading:pnl`` hash, the snapshot)."""

    equity: Decimal
    cash: Decimal
    realized: Decimal
    unrealized: Decimal
    fees: Decimal
    exposure: Decimal
    daily_pnl: Decimal
    day: str
    day_start_equity: Decimal
    peak_equity: Decimal
    drawdown_pct: Decimal
    starting_equity: Decimal
    open_positions: int
    reports_booked: int
    updated_ts: int

    def to_strings(self) -> dict[str, str]:
        """Field → text, in field order (decimals as ``_s``)."""
        return {"equity": _s(self.equity), "cash": _s(self.cash), "realized": _s(self.realized),
                "unrealized": _s(self.unrealized), "fees": _s(self.fees), "exposure": _s(self.exposure),
                "daily_pnl": _s(self.daily_pnl), "day": self.day, "day_start_equity": _s(self.day_start_equity),
                "peak_equity": _s(self.peak_equity), "drawdown_pct": _s(self.drawdown_pct),
                "starting_equity": _s(self.starting_equity), "open_positions": str(self.open_positions),
                "reports_booked": str(self.reports_booked), "updated_ts": str(self.updated_ts)}


class PnlBook:
    """Positions (the shared ledger), cash, marks, day and peak; see the module docstring."""

    __slots__ = ("quote", "limits", "catalog", "_ledger", "_starting", "_flows", "_marks", "_mark_ts", "_day",
                 "_day_start", "_peak", "_booked", "_updated_ts", "_vals", "_unreal", "_exposure", "_unreal_sum",
                 "_realized", "_fees", "_values_exact", "_pnl_exact", "_held", "_names", "_size_n", "_val_n",
                 "_day_text", "_texts", "_last_texts")

    def __init__(self, starting_equity: Decimal, *, quote: str = "EUR", limits: PnlLimits | None = None,
                 catalog: MarketCatalog | None = None, ledger: PositionLedger | None = None) -> None:
        _check_equity(starting_equity)
        self.quote = quote
        self.limits = limits if limits is not None else PnlLimits()
        self.catalog = catalog
        self._ledger = ledger if ledger is not None else PositionLedger()
        for market in self._ledger.positions:
            self._check_market(market, "ledger", ValueError)
        self._starting = starting_equity
        # Σ sell quote − sell fees − buy quote − buy fees; from a pre-filled ledger: realized − Σ cost.
        self._flows = _CTX.subtract(self._ledger.realized, _sum(p.cost for p in self._ledger.positions.values()))
        self._marks: dict[str, Decimal] = {}
        self._mark_ts: dict[str, int] = {}
        # Per held market: its market value and (marked) unrealized PnL, kept as reports and marks
        # arrive, and their sums with realized and fees (see "Incremental totals" below): an input
        # costs O(1), not a walk of the ledger with multiplications.
        self._vals: dict[str, Decimal] = {}
        self._unreal: dict[str, Decimal] = {}
        # held market → _n(size), _n(value): the snapshot's entries, made when a snapshot needs them
        # (an input drops its market's), so a burst of inputs between two snapshots normalizes nothing
        self._size_n: dict[str, Decimal] = {}
        self._val_n: dict[str, Decimal] = {}
        self._names: dict[str, tuple[str, str, str]] = {}  # market → (asset, JSON of market, JSON of asset)
        self._held: list[str] | None = None  # held markets, sorted (None: to sort again)
        # held market → the parts of its position JSON that only a booking changes (before and after
        # the mark's part): a mark or a full rewrite formats 4 decimals per market, not 11.
        self._texts: dict[str, tuple[str, str]] = {}
        self._last_texts: dict[str, tuple[Decimal, str]] = {}  # totals_json: field → (figure, its text)
        self._exposure = self._unreal_sum = self._realized = self._fees = ZERO
        self._values_exact = False  # exposure and unrealized are the exact sums: they may be shifted
        self._pnl_exact = False  # realized and fees likewise (unknown for a pre-filled ledger: summed afresh)
        for market in self._ledger.positions:
            self._revalue(market)
        self._resum_values()
        self._resum_pnl()
        self._pnl_exact = False  # the ledger may hand a cached sum, whose rounding no flag shows: the first
                                 # booking sums afresh (the booking clears that cache)
        self._day: int | None = None
        self._day_text = ""
        self._booked = 0
        self._updated_ts = 0
        equity = self.equity
        self._day_start = equity
        self._peak = max(starting_equity, equity)

    # -- inputs ---------------------------------------------------------------------------

    def on_report(self, report: OrderExecuted) -> Booking | None:
        """Book one execution report through the ledger. None: it booked nothing (duplicate or older
        state). PoisonMessage: it can never be booked; nothing has changed."""
        self._check_market(report.market, f"report {report.id}", PoisonMessage)
        day = day_index(report.ts)
        before = self.equity if self._day is None or day > self._day else None
        old = self._ledger.position(report.market)  # the ledger replaces it on a booking, never mutates it
        booking = self._ledger.apply(report)  # PoisonMessage here: the ledger changed nothing
        if booking is not None:
            if booking.side == "buy":
                self._flows = _CTX.subtract(self._flows, _CTX.add(booking.delta_quote, booking.fee_quote))
            else:
                self._flows = _CTX.add(self._flows, _CTX.subtract(booking.delta_quote, booking.fee_quote))
            self._booked += 1
            new = self._ledger.position(report.market)
            assert new is not None
            realized = fees = None
            if self._pnl_exact:
                realized = _shift(self._realized, old.realized if old is not None else ZERO, new.realized)
                fees = _shift(self._fees, old.fees if old is not None else ZERO, new.fees)
            if realized is None or fees is None:
                self._resum_pnl()
            else:
                self._realized, self._fees = realized, fees
            self._revalue(report.market, booked=True)
        self._after_input(day, report.ts, before)
        return booking

    def on_mark(self, market: str, mark: Decimal, ts_ms: int) -> bool:
        """Take ``mark`` (the best bid) as the value of one unit of ``market`` at ``ts_ms``. False
        when it is ignored (not a positive number, another quote, not in the catalog, older than the
        market's current mark); then nothing has changed."""
        if not isinstance(mark, Decimal) or not mark.is_finite() or mark <= 0:
            return False
        try:
            self._check_market(market, "mark", ValueError)
        except ValueError:
            return False
        if ts_ms < self._mark_ts.get(market, ts_ms):
            return False
        day = day_index(ts_ms)
        before = self.equity if self._day is None or day > self._day else None
        self._marks[market] = mark
        self._mark_ts[market] = ts_ms
        self._revalue(market)
        self._after_input(day, ts_ms, before)
        return True

    def _revalue(self, market: str, booked: bool = False) -> None:
        """Value ``market`` again after its mark or (``booked``) its position changed, and move the
        sums by the difference."""
        pos = self._ledger.position(market)
        old_val = self._vals.get(market)
        old_unreal = self._unreal.get(market, ZERO)
        if pos is None or pos.size <= 0:
            if old_val is None:
                return
            del self._vals[market]
            self._size_n.pop(market, None)
            self._val_n.pop(market, None)
            self._texts.pop(market, None)
            self._unreal.pop(market, None)
            self._held = None
            val, unreal = ZERO, ZERO
        else:
            mark = self._marks.get(market)
            with decimal.localcontext(_CTX):
                val = pos.size * mark if mark is not None else pos.cost
                unreal = pos.unrealized(mark) if mark is not None else ZERO
            self._vals[market] = val
            if mark is not None:
                self._unreal[market] = unreal
            else:
                self._unreal.pop(market, None)
            self._val_n.pop(market, None)
            if booked or old_val is None:
                self._size_n.pop(market, None)
                self._texts.pop(market, None)
            if old_val is None:
                self._held = None
                if market not in self._names:
                    asset = base_quote(market)[0]
                    self._names[market] = (asset, json.dumps(market), json.dumps(asset))
        exposure = unrealized = None
        if self._values_exact:
            exposure = _shift(self._exposure, old_val if old_val is not None else ZERO, val)
            unrealized = _shift(self._unreal_sum, old_unreal, unreal)
        if exposure is None or unrealized is None:
            self._resum_values()
        else:
            self._exposure, self._unreal_sum = exposure, unrealized

    def _resum_values(self) -> None:
        """Exposure and unrealized summed afresh, as plain sums in ``_CTX`` (at start; after a shift
        that would round; and on every input while a plain sum rounds: a rounded total is no base
        to shift from)."""
        ctx = decimal.Context(prec=_CTX.prec, rounding=_CTX.rounding)  # its own flags: did a step round?
        self._exposure = _sum(self._vals.values(), ctx)
        self._unreal_sum = _sum(self._unreal.values(), ctx)
        self._values_exact = not ctx.flags[decimal.Inexact]

    def _resum_pnl(self) -> None:
        """Realized and fees summed afresh over the ledger (every market ever traded), as the ledger
        sums them in ``_CTX``: after a booking, whose ledger keeps no cached sum."""
        with decimal.localcontext(decimal.Context(prec=_CTX.prec, rounding=_CTX.rounding)) as ctx:
            self._realized = self._ledger.realized
            self._fees = self._ledger.fees
        self._pnl_exact = not ctx.flags[decimal.Inexact]

    def set_starting_equity(self, eur: Decimal) -> None:
        """Rebase the book on another starting equity (sandbox/live: the exchange balance at the first
        start). Cash, equity, peak and day-start equity move by the difference; daily PnL does not."""
        _check_equity(eur)
        delta = _CTX.subtract(eur, self._starting)
        self._starting = eur
        self._peak = _CTX.add(self._peak, delta)
        self._day_start = _CTX.add(self._day_start, delta)

    def restore(self, snapshot: PnlSnapshotTaken) -> None:
        """Continue the day and the drawdown of the last snapshot (see "Restart" in the module
        docstring): call it after refolding the reports, best after re-applying the marks too. A
        malformed ``day`` raises ValueError."""
        day = _parse_day(snapshot.day) if snapshot.day else None
        if snapshot.starting_equity > 0:
            self.set_starting_equity(snapshot.starting_equity)  # a rebase: kept when the snapshot has no day
        if day is not None and (self._day is None or day >= self._day):
            self._set_day(day)
            self._day_start = snapshot.day_start_equity
        # Not the refold's running peak (positions at cost then), nor the equity now: the next input
        # raises the peak to the equity if it is above (drawdown is 0 meanwhile).
        self._peak = max(snapshot.peak_equity, self._starting)

    def _after_input(self, day: int, ts_ms: int, equity_before: Decimal | None) -> None:
        if equity_before is not None:  # the first input of a later day: the previous day closed here
            self._set_day(day)
            self._day_start = equity_before
        if ts_ms > self._updated_ts:
            self._updated_ts = ts_ms
        equity = self.equity
        if equity > self._peak:
            self._peak = equity

    def _set_day(self, day: int) -> None:
        self._day = day
        self._day_text = day_name(day)

    def _check_market(self, market: str, what: str, error: type[Exception]) -> None:
        try:
            _, quote = base_quote(market)
        except ValueError as exc:
            raise error(f"{what}: {exc}") from None
        if quote != self.quote:
            raise error(f"{what}: market {market} is quoted in {quote}, not {self.quote}")
        if self.catalog is not None and market not in self.catalog:
            raise error(f"{what}: market {market} is not in the market catalog")

    # -- views ----------------------------------------------------------------------------

    @property
    def ledger(self) -> PositionLedger:
        """The ledger the book folds into (read only: book reports through ``on_report``)."""
        return self._ledger

    @property
    def starting_equity(self) -> Decimal:
        return self._starting

    @property
    def cash(self) -> Decimal:
        return _CTX.add(self._starting, self._flows)

    @property
    def marks(self) -> dict[str, Decimal]:
        """Market → its current mark (every market marked, held or not)."""
        return dict(self._marks)

    def mark(self, market: str) -> Decimal | None:
        return self._marks.get(market)

    def mark_ts(self, market: str) -> int | None:
        return self._mark_ts.get(market)

    def _values(self) -> dict[str, Decimal]:
        return self._vals

    @property
    def exposure(self) -> Decimal:
        """Σ market values of the open positions (size × mark, or cost without a mark)."""
        return self._exposure

    def exposure_by_asset(self) -> dict[str, Decimal]:
        """Base asset → market value of its open position."""
        return {self._names[m][0]: v for m, v in self._values().items()}

    @property
    def equity(self) -> Decimal:
        return _CTX.add(_CTX.add(self._starting, self._flows), self._exposure)

    @property
    def realized(self) -> Decimal:
        return self._realized

    @property
    def unrealized(self) -> Decimal:
        return self._unreal_sum

    @property
    def fees(self) -> Decimal:
        return self._fees

    @property
    def positions(self) -> dict[str, PositionView]:
        """Open positions, market → view, sorted by market."""
        return {m: self._view(m, p) for m, p in sorted(self._ledger.positions.items())}

    def _view(self, market: str, pos: Position) -> PositionView:
        mark, mark_ts = self._marks.get(market), self._mark_ts.get(market)
        with decimal.localcontext(_CTX):
            avg_cost, avg_price = pos.avg_cost, pos.avg_price
            assert avg_cost is not None and avg_price is not None  # open: size > 0
            value = pos.size * mark if mark is not None else pos.cost
            unrealized = pos.unrealized(mark) if mark is not None else None
        return PositionView(market=market, asset=base_quote(market)[0], size=pos.size, avg_cost=avg_cost,
                            avg_price=avg_price, cost=pos.cost, open_fees=pos.open_fees, realized=pos.realized,
                            fees=pos.fees, mark=mark, mark_ts=mark_ts, value=value, unrealized=unrealized,
                            opened_ts=pos.opened_ts, updated_ts=pos.updated_ts)

    @property
    def day(self) -> str:
        """UTC date of the latest input (``YYYY-MM-DD``), "" before the first."""
        return self._day_text

    @property
    def day_start_equity(self) -> Decimal:
        return self._day_start

    @property
    def daily_pnl(self) -> Decimal:
        return _CTX.subtract(self.equity, self._day_start)

    @property
    def daily_loss_pct(self) -> Decimal | None:
        """max(0, −daily PnL) / day-start equity × 100; None when the day-start equity is not positive."""
        if self._day_start <= 0:
            return None
        loss = max(ZERO, _CTX.subtract(self._day_start, self.equity))
        return _PCT.divide(_CTX.multiply(loss, HUNDRED), self._day_start)

    @property
    def peak_equity(self) -> Decimal:
        return self._peak

    @property
    def drawdown_pct(self) -> Decimal:
        return self._drawdown_pct(self.equity)

    def _drawdown_pct(self, equity: Decimal) -> Decimal:
        if equity >= self._peak:
            return ZERO
        return _PCT.divide(_CTX.multiply(_CTX.subtract(self._peak, equity), HUNDRED), self._peak)

    @property
    def reports_booked(self) -> int:
        return self._booked

    @property
    def updated_ts(self) -> int:
        return self._updated_ts

    # -- the loss breaker -----------------------------------------------------------------

    def breaker(self) -> str | None:
        """The reason while the daily loss or the drawdown is at or past its limit, else None."""
        reasons = []
        equity = self.equity
        limit = self.limits.max_daily_loss_pct
        if limit is not None:
            start = self._day_start
            loss = max(ZERO, _CTX.subtract(start, equity))
            if start <= 0 and loss > 0:
                reasons.append(f"daily loss of {_money(loss)} {self.quote} from a non-positive day-start equity of "
                               f"{_money(start)} {self.quote} (MAX_DAILY_LOSS_PCT {_limit_text(limit)})")
            elif start > 0 and _CTX.multiply(loss, HUNDRED) >= _CTX.multiply(limit, start):
                pct = _PCT.divide(_CTX.multiply(loss, HUNDRED), start)
                reasons.append(f"daily loss {_pct_text(pct)}% of {_money(start)} {self.quote} day-start equity "
                               f">= MAX_DAILY_LOSS_PCT {_limit_text(limit)}")
        limit = self.limits.max_drawdown_pct
        if limit is not None:
            down = _CTX.subtract(self._peak, equity)
            if down > 0 and _CTX.multiply(down, HUNDRED) >= _CTX.multiply(limit, self._peak):
                reasons.append(f"drawdown {_pct_text(self._drawdown_pct(equity))}% of {_money(self._peak)} {self.quote} "
                               f"peak equity >= MAX_DRAWDOWN_PCT {_limit_text(limit)}")
        return "; ".join(reasons) or None

    # -- outputs --------------------------------------------------------------------------

    def totals(self) -> PnlTotals:
        exposure = self._exposure
        cash = _CTX.add(self._starting, self._flows)
        equity = _CTX.add(cash, exposure)
        return PnlTotals(equity, cash, self._realized, self._unreal_sum, self._fees, exposure,
                         _CTX.subtract(equity, self._day_start), self._day_text, self._day_start, self._peak,
                         self._drawdown_pct(equity), self._starting, len(self._vals), self._booked, self._updated_ts)

    def _held_sorted(self) -> list[str]:
        held = self._held
        if held is None:
            held = self._held = sorted(self._vals)
        return held

    def snapshot(self, factory: MessageFactory, parent: Message | None, mode: Mode, *,
                 key: str | None = None, totals: PnlTotals | None = None) -> PnlSnapshotTaken:
        """The totals as a ``pnl.snapshot`` message: a child of ``parent`` (the report or mark that
        caused it), or a root message keyed ``key`` (default ``snapshot/<now ms>``) for a timer's.
        ``totals``: this moment's ``totals()`` when the caller has them already."""
        t = totals if totals is not None else self.totals()
        held, names, size_n, val_n = self._held_sorted(), self._names, self._size_n, self._val_n
        if len(size_n) < len(held) or len(val_n) < len(held):
            ledger, vals = self._ledger, self._vals
            for m in held:
                if m not in size_n:
                    size_n[m] = _n(ledger.size(m))
                if m not in val_n:
                    val_n[m] = _n(vals[m])
        equity, realized, unrealized, fees, exposure = _n(t.equity), _n(t.realized), _n(t.unrealized), _n(t.fees), \
            _n(t.exposure)
        # The envelope (id, ts, src, trace, v) from the factory, validated, on the five required
        # figures; the rest by model_copy, unvalidated: these are Decimals, strings and ints made
        # here (validating them, a Python validator per Decimal, was most of a snapshot's cost).
        # tests/pnl check the result equals the fully validated message, field by field and on the wire.
        env: dict[str, Any] = dict(equity=equity, realized=realized, unrealized=unrealized, fees=fees,
                                   exposure=exposure, positions={})
        if parent is not None:
            msg = factory.child(parent, PnlSnapshotTaken, **env)
        else:
            msg = factory.root(PnlSnapshotTaken, key or f"snapshot/{factory.clock.now_ms()}", **env)
        return msg.model_copy(update=dict(
            positions={m: size_n[m] for m in held}, cash=_n(t.cash), starting_equity=_n(t.starting_equity),
            day=t.day, day_start_equity=_n(t.day_start_equity), daily_pnl=_n(t.daily_pnl),
            peak_equity=_n(t.peak_equity), drawdown_pct=_n(t.drawdown_pct),
            exposure_by_asset={names[m][0]: val_n[m] for m in held}, reports_booked=t.reports_booked, mode=mode))

    def positions_json(self) -> dict[str, str]:
        """Market → compact JSON of its ``PositionView`` (decimals as strings without exponent or
        trailing zeros, times as integers, null for no mark), open positions only, sorted by market:
        the writer deletes the hash fields of markets no longer listed. The same text as
        ``json.dumps(view.to_json(), separators=(",", ":"))``, written directly (tests/pnl compare)."""
        out: dict[str, str] = {}
        for m in self._held_sorted():
            text = self.position_json(m)
            assert text is not None
            out[m] = text
        return out

    def position_json(self, market: str) -> str | None:
        """``positions_json`` of one market (None when it holds nothing): what one report changes."""
        pos = self._ledger.position(market)
        if pos is None or pos.size <= 0:
            return None
        texts = self._texts.get(market)
        if texts is None:
            with decimal.localcontext(_CTX):  # as _view
                avg_cost, avg_price = pos.avg_cost, pos.avg_price
            assert avg_cost is not None and avg_price is not None  # open: size > 0
            _, market_json, asset_json = self._names[market]
            # The decimals' text is digits, "-" and "." only: nothing to escape.
            texts = self._texts[market] = (
                f'{{"market":{market_json},"asset":{asset_json},"size":"{_s(pos.size)}",'
                f'"avg_cost":"{_s(avg_cost)}","avg_price":"{_s(avg_price)}","cost":"{_s(pos.cost)}",'
                f'"open_fees":"{_s(pos.open_fees)}","realized":"{_s(pos.realized)}","fees":"{_s(pos.fees)}",',
                f'"opened_ts":{"null" if pos.opened_ts is None else int(pos.opened_ts)},'
                f'"updated_ts":{int(pos.updated_ts)}}}')
        mark, mark_ts = self._marks.get(market), self._mark_ts.get(market)
        return (f'{texts[0]}"mark":{"null" if mark is None else f"{_q}{_s(mark)}{_q}"},'
                f'"mark_ts":{"null" if mark_ts is None else int(mark_ts)},"value":"{_s(self._vals[market])}",'
                f'"unrealized":{"null" if mark is None else f"{_q}{_s(self._unreal[market])}{_q}"},{texts[1]}')

    def totals_json(self, totals: PnlTotals | None = None) -> dict[str, str]:
        """Field → string (decimals without exponent or trailing zeros) for the ``trading:pnl`` hash:
        ``PnlTotals.to_strings``, with the text of a figure equal to the last one's taken again
        (starting and day-start equity, the peak, realized on a buy...: an equal number, one text)."""
        t = totals if totals is not None else self.totals()
        last = self._last_texts

        def text(name: str, value: Decimal) -> str:
            seen = last.get(name)
            if seen is not None and seen[0] == value:
                return seen[1]
            out = _s(value)
            last[name] = (value, out)
            return out

        return {"equity": text("equity", t.equity), "cash": text("cash", t.cash),
                "realized": text("realized", t.realized), "unrealized": text("unrealized", t.unrealized),
                "fees": text("fees", t.fees), "exposure": text("exposure", t.exposure),
                "daily_pnl": text("daily_pnl", t.daily_pnl), "day": t.day,
                "day_start_equity": text("day_start_equity", t.day_start_equity),
                "peak_equity": text("peak_equity", t.peak_equity), "drawdown_pct": text("drawdown_pct", t.drawdown_pct),
                "starting_equity": text("starting_equity", t.starting_equity),
                "open_positions": str(t.open_positions), "reports_booked": str(t.reports_booked),
                "updated_ts": str(t.updated_ts)}


def _sum(values: Iterable[Decimal], ctx: decimal.Context = _CTX) -> Decimal:
    total = ZERO
    for value in values:
        total = ctx.add(total, value)
    return total


def _shift(total: Decimal, old: Decimal, new: Decimal) -> Decimal | None:
    """``total − old + new`` when both steps are exact in 60 digits, else None (then the caller
    sums afresh, exactly as ``_sum`` would). ``total`` must be an exact sum."""
    if old == new:
        return total
    try:
        return _EXACT.add(_EXACT.subtract(total, old), new)
    except decimal.Inexact:
        return None


__all__ = ["PnlBook", "PnlLimits", "PnlTotals", "PositionView", "day_index", "day_name", "utc_day"]
