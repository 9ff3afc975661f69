"""The executor's decisions as a pure state machine: intents and order states in, broker commands,
execution reports and events out (DESIGN §3, §5).

No I/O, no asyncio, no wall clock: every input carries ``now_ms`` (the ``ts`` of what it emits).
``OrderManager`` holds, per position (position id = the entry intent's id), the entry order, the
resting stop and every sell, and decides what to do next. The service performs the commands through
a broker (paper or Bitvavo) and feeds **every** answer back, exactly one per command:

========== ============================================================================================
command    answer
========== ============================================================================================
``Place``  ``on_order(state)`` (the created order), or ``on_failed(cmd, Failure)``
``Cancel`` ``on_order(state)`` (the order after the cancel: Bitvavo's DELETE returns only the id, so
           fetch it or pass its WS event), or ``on_failed``
``Amend``  ``on_order(state)``, or ``on_failed``
``Lookup`` ``on_lookup(cmd, state | None)`` (None: the exchange has no such order, e.g. error 240), or
           ``on_failed`` when the lookup itself could not be made (it is then asked again)
========== ============================================================================================

A command the service stops retrying without an answer is handed back with ``abandon(cmd)``; the next
``reconcile()`` then wakes its position and the command is made again.

Every other state of one of our orders (WS ``order`` events, REST polling, the paper book) goes to
``on_order`` too. ``Failure.kind``: ``rejected`` = the exchange refused, nothing happened (4xx with an
``errorCode``); ``unknown`` = the outcome is not known (timeout, 5xx; codes 101, 108, 109, 111, 400, 419
and 430 are read as unknown whatever the kind says); ``not_found`` = the order is not there (or no longer
active). Codes 105, 107 and 112 (rate limit, overload) mean "nothing happened, try again": the same
command comes back in the Step; the service must apply its backoff before sending it.

Client order ids (``clientOrderId``): UUID5 in ``CLIENT_ORDER_NAMESPACE`` of ``<intent id>/entry``,
``<position id>/stop/<n>`` (n = 1, 2, … the stop placements of the position),
``<exit intent id>/exit`` and ``<position id>/emergency/<n>``. A command that may have been sent
before a restart is looked up by its client id before it is sent (again).

The rules:

1. **Idempotency.** An intent seen before (live or learned at rebuild) yields an empty Step. A report's
   id is ``derive_id(client_order_id, f"{status}/{filled_amount}/{fee_paid}")`` (numbers as Bitvavo
   writes them: no exponent, no trailing zeros); a stop whose amount or trigger was amended gets
   ``/{amount}/{trigger}`` appended, so the amendment is a new message. Only a change of an order
   is reported; an older state (less filled, or an open state after the final one) is ignored.
2. **Door checks for entries** (never for exits or protective orders), in this order: kill switch,
   ``mode_mismatch`` (the intent's mode is not the executor's), ``unknown_market``, ``spot_long_only``
   (a sell entry), live mode only: ``market_not_allowed``, ``no_reference_price`` (no price to value
   the order with while a notional limit is set), ``max_order_notional``, ``max_total_notional`` (open
   positions at their entry price + unfilled entries + this order); then ``no_limit_price``,
   ``bad_stop`` (the stop, rounded down to the tick, is not above 0 and below the entry price) and
   ``MarketRules.check_order`` on the amount rounded down to ``quantityDecimals`` at the limit price
   (down to the tick) or the reference price. A blocked entry gets a FINAL ``rejected`` report (zero
   fills, ``reason`` = the block reason) and a warning event of that kind; so does an entry the
   exchange rejects (reason ``exchange_rejected:<code>``).
3. **Never a position without a stop.** As soon as the entry shows fills, a ``stopLoss`` sell
   (``triggerType=price``, ``triggerReference=bestBid``) of what is held (bought − sold, rounded down)
   at the intent's stop (down to the tick); more fills → the stop's amount is amended up (once the
   stop is confirmed open). A rejected placement (or one whose outcome was unknown and that the
   lookup did not find) is retried ``stop_retries`` more times; then the open entry is canceled, an
   ``emergency`` market sell of what is held is placed and a critical ``stop_failed`` event raised. An
   emergency that fails or leaves coins marks the position *halted*: critical event, no more automatic
   orders (exits are still carried out). What is held below the market's minimums at the entry price
   (dust) gets no order, only a warning ``dust`` event. A stop the exchange canceled (not us) is
   replaced; a stop that triggered and left coins is followed by a new stop for the rest.
4. **Exits.** A spot balance backs only one resting sell: the open entry and the stop are canceled
   first; once no sell is open any more, what is still held is sold at market (the exit's amount is
   not used: exits close the position). If the stop sold first, only the rest is sold; with nothing
   left the exit gets a FINAL ``canceled`` report ``stop_triggered_first``; ``dust`` when the rest is
   dust. An exit sell that ends with coins left (or is rejected) is followed by a new stop. An exit for
   an unknown position or with nothing held: ``no_position``; a second exit while one runs:
   ``exit_in_progress``. An exit whose stop cannot be canceled (rejected) gets a FINAL ``rejected``
   report ``cancel_failed:<code>`` (the stop keeps protecting; the core may try again).
5. **Stop amend** (trailing): the trigger moves up only (down to the tick; a lower one is ignored),
   the amount stays. An amend refused because the stop is no longer active (202, 233, 234, 240,
   not_found) → Lookup, and what it shows is handled (usually: triggered). Other refusals are not
   repeated for the same values (warning event; critical when coins are left uncovered). An amend
   for an unknown position: an info event.
6. **Unknown outcomes** → a ``Lookup`` before anything else. Found → continue from its state. Not
   found after an unknown ``Place`` → the same client id is placed again. (Deviation: a stop is also
   placed again with the *same* client id, not a new ``n``; it counts as a failed placement. Bitvavo
   refuses a duplicate client id only among open orders, and a late-landing first copy must not
   make two stops.) Never two ``Place`` in flight for one client id, and nothing is decided for a
   position while one of its orders is being looked up.
7. **Reports** (``OrderExecuted`` v2) for every change: ``intent_id`` is the entry intent's id for
   the entry, the stop and an emergency sell, the exit intent's id for an exit sell; ``reason`` is
   ``entry``, ``stop_loss`` (the core counts stop-outs by it), the exit's reason, or ``emergency``.
   Events: ``entry_filled``, ``stop_placed`` (info), ``stop_triggered``, ``stop_canceled``,
   ``stop_rejected``, ``dust``, ``exit_rejected``, ``cancel_failed`` (warning), ``exit_done`` (info),
   ``stop_failed``, ``emergency_failed``, ``emergency_incomplete``, ``orphan_order``,
   ``order_missing``, ``order_resurrected``, ``oversold`` (critical).
8. **Rebuild.** ``learn_intent`` and ``learn_report`` over ``orders:shadow`` and ``orders:executed``
   (only messages of the executor's own mode: a paper history never becomes live orders) restore
   positions, stops, stop prices and unresolved exits; the live path books its own outputs through the
   very same code, so ``summary()`` of a rebuilt manager equals the live one's. (What no report
   records is not restored: placement attempts whose outcome was unknown, and one-shot event
   memory.) Then ``on_open_orders`` (the account's open orders: unknown ones are orphans, alerted and
   never touched; ours that another process placed just before a crash are adopted) and
   ``reconcile()`` (Lookups for every order not known final, for an entry that has no report yet,
   and one per position that still needs work); their answers continue the work. On a position
   rebuilt from history, every new order is looked up before it is placed.
9. **Polling.** The service feeds the account's open orders to ``on_order`` and then calls
   ``reconcile()`` again: an open order of ours that no state confirmed since the previous call left
   the listing (filled or canceled while no event said so) and is looked up.

Market sells are sized in base (``amount``); notional figures are in the quote currency (EUR).
Positions are kept for the life of the process (fee settlements may come late).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from tradestack.bitvavo.orders import FINAL_STATUSES, OrderRequest, OrderState, plain
from tradestack.markets import TRADING, MarketCatalog, MarketRules
from tradestack.messages import (
    EntryIntent,
    ExitIntent,
    FillInfo,
    MessageFactory,
    Mode,
    OrderExecuted,
    StopAmendIntent,
    Trace,
    TradingEvent,
    derive_id,
)

ZERO = Decimal(0)
# The namespace of every client order id this executor makes (fixed forever: changing it would make
# a restarted executor blind to the orders of the one before).
CLIENT_ORDER_NAMESPACE = uuid.UUID("c9c695c0-52ad-4245-ab66-e37342732132")

Purpose = Literal["entry", "stop", "exit", "emergency"]
FailureKind = Literal["rejected", "unknown", "not_found"]
Severity = Literal["info", "warning", "critical"]
Intent = EntryIntent | ExitIntent | StopAmendIntent

ERR_CLIENT_ID_CONFLICT = 220
ERR_NOTHING_CHANGED = 232
# The order is not (any more) in a state that can be changed: its state will tell what happened.
ERR_NOT_ACTIVE = frozenset({202, 233, 234, 240})
# Nothing happened; the same command may be sent again (after the service's backoff).
ERR_TRANSIENT = frozenset({105, 107, 112})
# The operation may or may not have happened.
ERR_UNKNOWN = frozenset({101, 108, 109, 111, 400, 419, 430})
AMENDABLE = frozenset({"awaitingTrigger", "new"})
# An entry, exit or emergency sell whose Place had an unknown outcome and was then not found this many
# times is given up (reported rejected, ``place_unconfirmed``); stops are bounded by ``stop_retries``.
MAX_LOST_PLACES = 3


def _client_id(name: str) -> str:
    return str(uuid.uuid5(CLIENT_ORDER_NAMESPACE, name))


def entry_client_id(intent_id: str) -> str:
    return _client_id(f"{intent_id}/entry")


def stop_client_id(position_id: str, n: int) -> str:
    return _client_id(f"{position_id}/stop/{n}")


def exit_client_id(exit_intent_id: str) -> str:
    return _client_id(f"{exit_intent_id}/exit")


def emergency_client_id(position_id: str, n: int) -> str:
    return _client_id(f"{position_id}/emergency/{n}")


# -- commands and answers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    request: OrderRequest
    purpose: Purpose
    intent_id: str
    position_id: str

    @property
    def client_order_id(self) -> str:
        return self.request.client_order_id

    @property
    def market(self) -> str:
        return self.request.market


@dataclass(frozen=True, slots=True)
class Cancel:
    market: str
    client_order_id: str
    position_id: str


@dataclass(frozen=True, slots=True)
class Amend:
    """Change a resting stop: ``amount`` and/or ``trigger_price`` (None = unchanged)."""

    market: str
    client_order_id: str
    position_id: str
    amount: Decimal | None
    trigger_price: Decimal | None


@dataclass(frozen=True, slots=True)
class Lookup:
    market: str
    client_order_id: str
    position_id: str


Command = Place | Cancel | Amend | Lookup


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    error_code: int | None = None
    message: str = ""


@dataclass(slots=True)
class Step:
    """What one input makes: commands for the broker, reports for ``orders:executed``, events for
    ``trading:events``."""

    commands: list[Command] = field(default_factory=list)
    reports: list[OrderExecuted] = field(default_factory=list)
    events: list[TradingEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.commands or self.reports or self.events)


@dataclass(frozen=True, slots=True)
class DoorLimits:
    """Live-mode checks at the door (DESIGN §3): applied only when the executor's mode is ``live``."""

    allowed_markets: frozenset[str] | None = None
    max_order_notional_eur: Decimal | None = None
    max_total_notional_eur: Decimal | None = None


@dataclass(frozen=True, slots=True)
class PositionView:
    """One position as its reports tell it (what a restart restores)."""

    position_id: str
    market: str
    entry_status: str
    bought: Decimal
    sold: Decimal
    held: Decimal
    stop_price: Decimal | None
    stop_client_order_id: str | None
    stop_status: str | None
    stop_amount: Decimal | None
    stop_trigger: Decimal | None
    stop_rejections: int
    exit_intent_id: str | None
    halted: bool

    def to_json(self) -> dict[str, Any]:
        def s(v: Decimal | None) -> str | None:
            return None if v is None else plain(v)

        return {"position_id": self.position_id, "market": self.market, "entry_status": self.entry_status,
                "bought": s(self.bought), "sold": s(self.sold), "held": s(self.held),
                "stop_price": s(self.stop_price), "stop_client_order_id": self.stop_client_order_id,
                "stop_status": self.stop_status, "stop_amount": s(self.stop_amount),
                "stop_trigger": s(self.stop_trigger), "stop_rejections": self.stop_rejections,
                "exit_intent_id": self.exit_intent_id, "halted": self.halted}


# -- internal state ------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Track:
    """One of our orders (one client order id)."""

    coid: str
    position_id: str
    purpose: Purpose
    market: str
    side: Literal["buy", "sell"]
    order_type: str
    intent_id: str
    n: int = 0
    fresh: bool = True  # never sent before this process made it: no lookup needed before placing
    request: OrderRequest | None = None
    # learned from reports (live and rebuild alike)
    last_key: tuple[str, ...] | None = None
    status: str = ""
    order_id: str | None = None
    landed: bool = False  # the exchange has (had) it
    final: bool = False
    filled: Decimal = ZERO
    filled_quote: Decimal = ZERO
    fee: Decimal = ZERO
    fee_currency: str = ""
    rep_amount: Decimal | None = None
    rep_trigger: Decimal | None = None
    placed_amount: Decimal | None = None
    placed_trigger: Decimal | None = None
    updated: int = 0
    # runtime only
    state: OrderState | None = None
    inflight: Literal["place", "cancel", "amend", "lookup"] | None = None
    lookup_of: str = ""
    verified: bool = False  # a state of it was seen by this process
    seen_round: int = -1  # the reconcile round in which a state of it was last seen (see ``reconcile``)
    absent: bool = False  # a lookup found no such order: it never landed
    attempts: int = 0
    lost: int = 0  # placements that never landed (unknown outcome, then not found)
    cancel_wanted: bool = False
    cancel_refused: set[str] = field(default_factory=set)  # contexts whose cancel the exchange refused
    cancel_ctx: str = ""
    asked_amount: Decimal | None = None  # confirmed amount / trigger on the exchange
    asked_trigger: Decimal | None = None
    amend_target: tuple[Decimal | None, Decimal | None] | None = None
    refused: tuple[Decimal | None, Decimal | None] | None = None
    missing: bool = False  # landed, but the exchange says it has no such order: hands off
    discarded: bool = False  # never landed and no longer wanted

    @property
    def reported(self) -> bool:
        return self.last_key is not None

    @property
    def done(self) -> bool:
        return self.final or self.discarded

    @property
    def amendable(self) -> bool:
        return self.landed and not self.final and self.status in AMENDABLE and self.filled == 0


@dataclass(slots=True, eq=False)
class _Exit:
    intent: ExitIntent
    coid: str
    fresh: bool


@dataclass(slots=True, eq=False)
class _Position:
    position_id: str
    market: str
    base: str
    trace: Trace
    recovered: bool
    intent: EntryIntent | None = None
    amend_stop: Decimal | None = None  # highest stop asked by a StopAmendIntent (rounded)
    orders: dict[str, _Track] = field(default_factory=dict)
    stop_n: int = 0
    emergency_n: int = 0
    warned: set[str] = field(default_factory=set)
    awake: bool = False  # driven since this process started (else reconcile wakes it)
    _entry_coid: str = ""  # entry_client_id(position_id), computed once (a UUID5, on every hot path)

    @property
    def entry_coid(self) -> str:
        if not self._entry_coid:
            self._entry_coid = entry_client_id(self.position_id)
        return self._entry_coid

    def entry(self) -> _Track | None:
        return self.orders.get(self.entry_coid)

    def bought(self) -> Decimal:
        t = self.entry()
        if t is None:
            return ZERO
        base_fee = t.fee if t.fee_currency == self.base and t.fee > 0 else ZERO
        return t.filled - base_fee

    def sold(self) -> Decimal:
        return sum((t.filled for t in self.orders.values() if t.side == "sell"), ZERO)

    def held(self) -> Decimal:
        return self.bought() - self.sold()

    def sells(self) -> list[_Track]:
        return [t for t in self.orders.values() if t.side == "sell" and not t.discarded]

    def ref_price(self) -> Decimal | None:
        """What one coin of the position is worth for the minimum checks: the entry's average fill
        price, else the intent's limit or reference price, else the stop."""
        t = self.entry()
        if t is not None and t.filled > 0:
            return t.filled_quote / t.filled
        if self.intent is not None:
            return self.intent.price or self.intent.ref_price or self.intent.stop_price
        return None


def _s(v: Decimal | None) -> str:
    return "" if v is None else plain(v)


def _key(r: OrderExecuted) -> tuple[str, ...]:
    return (r.status, plain(r.filled_amount), plain(r.fee), _s(r.amount), _s(r.trigger_price))


class OrderManager:
    """The executor's decisions; see the module docstring."""

    def __init__(self, catalog: MarketCatalog, factory: MessageFactory, mode: Mode,
                 limits: DoorLimits | None = None, *, stop_retries: int = 2) -> None:
        limits = limits if limits is not None else DoorLimits()
        if stop_retries < 0:
            raise ValueError("stop_retries must be >= 0")
        if mode == "live" and not limits.allowed_markets:
            raise ValueError("live mode needs a non-empty list of allowed markets (LIVE_ALLOWED_MARKETS)")
        self.catalog = catalog
        self.factory = factory
        self.mode: Mode = mode
        self.limits = limits
        self.stop_retries = stop_retries
        self._positions: dict[str, _Position] = {}
        self._by_coid: dict[str, _Track] = {}
        self._by_order_id: dict[tuple[str, str], _Track] = {}
        self._seen_intents: set[str] = set()
        self._exits: dict[str, _Exit] = {}
        self._exits_by_pid: dict[str, list[str]] = {}
        self._exit_done: set[str] = set()
        self._early_amends: dict[str, Decimal] = {}
        self._loose: dict[str, str] = {}  # exit client id → exit id, for exits of unknown positions
        # The kill switch as last told (``on_intent``, ``on_lookup``, or set by the service when it
        # changes): an entry that must be sent again after a restart or an unknown outcome is sent
        # only while it is off.
        self.kill_switch = False
        # Rounds of ``reconcile()``: an open order of ours that no state confirmed since the previous
        # round (it left the open-orders listing: filled or canceled while no event told us) is looked up.
        self._poll_round = 0
        self.counters: Counter[str] = Counter()  # for metrics: commands, reports, events by kind
        self.changes = 0  # steps that did something: the views (positions()) are the same while it stands

    # -- inputs ------------------------------------------------------------------------------

    def on_intent(self, intent: Intent, kill_switch: bool, now_ms: int, *, refuse: str | None = None) -> Step:
        """``refuse``: a reason the service found at the door to send no new entry (e.g. the
        rate-limit budget is kept for protective orders); the entry is reported rejected with it.
        Exits and amends are never refused."""
        step = Step()
        self.kill_switch = kill_switch
        if intent.id in self._seen_intents:
            self.counters["intents_duplicate"] += 1
            return step
        if isinstance(intent, EntryIntent):
            self._on_entry(intent, kill_switch, step, now_ms, refuse)
        elif isinstance(intent, ExitIntent):
            self._on_exit(intent, step, now_ms)
        else:
            self._on_amend(intent, step, now_ms)
        return self._count(step)

    def on_order(self, state: OrderState, now_ms: int) -> Step:
        step = Step()
        t = self._find(state)
        if t is None:
            return step
        self._apply_state(t, state, step, now_ms)
        self._drive(self._positions[t.position_id], step, now_ms)
        return self._count(step)

    def on_failed(self, cmd: Command, failure: Failure, now_ms: int) -> Step:
        step = Step()
        coid = cmd.client_order_id
        t = self._by_coid.get(coid)
        if t is None:
            if isinstance(cmd, Lookup) and coid in self._loose:
                step.commands.append(cmd)  # ask again
            return self._count(step)
        p = self._positions[t.position_id]
        kind: FailureKind = failure.kind
        code = failure.error_code
        if kind == "rejected" and code in ERR_UNKNOWN:
            kind = "unknown"
        transient = kind == "rejected" and code in ERR_TRANSIENT
        if isinstance(cmd, Lookup):
            if t.inflight != "lookup":
                return step
            if kind == "unknown" or transient:
                step.commands.append(cmd)
            elif kind == "not_found":
                t.inflight = None
                self._lookup_answer(p, t, None, step, now_ms)
            else:
                t.inflight = None
                t.missing = True
                self._event(step, p.trace, f"{t.coid}/lookup", "order_missing", "critical",
                            f"{p.market}: the {t.purpose} order {t.coid} cannot be looked up "
                            f"({code}: {failure.message}); hands off until a restart", self._details(p, t),
                            now_ms)
        elif isinstance(cmd, Place):
            if t.landed or t.inflight != "place":
                return step  # it landed after all (a state came), or an answer we no longer wait for
            t.inflight = None
            if transient:
                t.inflight = "place"
                step.commands.append(cmd)
            elif kind != "rejected" or code == ERR_CLIENT_ID_CONFLICT:
                self._lookup(t, "place", step)
            else:
                self._placement_rejected(p, t, code, failure.message, step, now_ms)
                self._drive(p, step, now_ms)
        elif isinstance(cmd, Cancel):
            if t.final or t.inflight == "lookup":
                return step
            if t.inflight == "cancel":
                t.inflight = None
            if transient:
                t.inflight = "cancel"
                step.commands.append(cmd)
            elif kind in ("unknown", "not_found") or code in ERR_NOT_ACTIVE:
                self._lookup(t, "cancel", step)
            else:
                self._cancel_refused(p, t, code, failure.message, step, now_ms)
                self._drive(p, step, now_ms)
        else:
            if t.amend_target is None or t.inflight != "amend":
                return step
            target = t.amend_target
            t.inflight = None
            if transient:
                t.inflight = "amend"
                step.commands.append(cmd)
                return self._count(step)
            t.amend_target = None
            if kind == "unknown":
                self._lookup(t, "amend", step)
            elif code == ERR_NOTHING_CHANGED:
                self._confirm_amend(t, target)
                self._drive(p, step, now_ms)
            else:
                t.refused = target
                if kind == "not_found" or code in ERR_NOT_ACTIVE:
                    self._lookup(t, "amend", step)
                else:
                    uncovered = target[0] is not None and (t.asked_amount is None or target[0] > t.asked_amount)
                    self._event(step, p.trace, f"{t.coid}/{_s(target[0])}/{_s(target[1])}", "stop_amend_failed",
                                "critical" if uncovered else "warning",
                                f"{p.market}: amending the stop to amount {_s(target[0]) or '-'} trigger "
                                f"{_s(target[1]) or '-'} was refused ({code}: {failure.message})",
                                self._details(p, t), now_ms)
                    self._drive(p, step, now_ms)
        return self._count(step)

    def on_lookup(self, cmd: Lookup, state: OrderState | None, now_ms: int, *,
                  kill_switch: bool | None = None) -> Step:
        """The answer to a Lookup (None: no such order). ``kill_switch`` (when given) updates the
        switch: an entry found never placed is sent only while it is off."""
        step = Step()
        if kill_switch is not None:
            self.kill_switch = kill_switch
        exit_id = self._loose.pop(cmd.client_order_id, None)
        if exit_id is not None:
            ex = self._exits[exit_id]
            if state is None:
                if exit_id not in self._exit_done:
                    self._exit_report(ex, "canceled", "no_position", step, now_ms)
            else:
                self._event(step, ex.intent.trace, f"{ex.coid}/loose", "orphan_order", "critical",
                            f"{ex.intent.market}: an exit sell {ex.coid} exists for the unknown position "
                            f"{ex.intent.position_id}; not touched", {"client_order_id": ex.coid,
                                                                    "order_id": state.order_id}, now_ms)
            return self._count(step)
        t = self._by_coid.get(cmd.client_order_id)
        if t is None:
            return step
        p = self._positions[t.position_id]
        if t.inflight != "lookup":
            if state is not None:  # an answer we did not wait for: a state is still the truth
                self._apply_state(t, state, step, now_ms)
                self._drive(p, step, now_ms)
            return self._count(step)
        t.inflight = None
        self._lookup_answer(p, t, state, step, now_ms)
        return self._count(step)

    def abandon(self, cmd: Command) -> None:
        """The service gave up on ``cmd`` without an answer (it kept coming back refused with a "try
        again" code such as 107, or a step made more commands than the service carries out at once).
        Nothing is in flight for that order any more, and its position is woken by the next
        ``reconcile()`` (a Lookup whose answer drives it), which makes the command again. Without this
        the order would count as in flight for the life of the process: a stop never placed, coins
        without protection until a restart."""
        t = self._by_coid.get(cmd.client_order_id)
        if t is None:
            if isinstance(cmd, Lookup):
                self._loose.pop(cmd.client_order_id, None)  # reconcile() asks again
            return
        if t.inflight is None:
            return
        t.inflight = None
        t.amend_target = None
        t.lookup_of = ""
        self._positions[t.position_id].awake = False
        self.counters["commands_abandoned"] += 1

    def on_open_orders(self, states: list[OrderState], now_ms: int) -> Step:
        """The account's open orders at start (every market). Ours are resumed (one another process
        placed just before a crash is adopted), unknown ones are orphans: a critical event, never
        touched. Ours the exchange no longer lists (closed while we were down) are looked up."""
        step = Step()
        seen: set[str] = set()
        touched: dict[str, _Position] = {}
        patterns: dict[str, tuple[_Position, Purpose, int, str]] | None = None
        for state in states:
            t = self._find(state)
            if t is None and state.client_order_id is not None:
                if patterns is None:
                    patterns = self._patterns()
                hit = patterns.get(state.client_order_id)
                if hit is not None:
                    t = self._adopt(hit, state, step, now_ms)
            if t is None:
                self._event(step, Trace(id=f"{state.market}/{state.order_id}", ts=now_ms),
                            f"{state.market}/{state.order_id}", "orphan_order", "critical",
                            f"{state.market}: open {state.side} {state.order_type} order {state.order_id} is not "
                            f"ours (or its history is lost); not touched",
                            {"market": state.market, "order_id": state.order_id,
                             "client_order_id": state.client_order_id or "", "side": state.side,
                             "order_type": state.order_type, "amount": _s(state.amount),
                             "status": state.status}, now_ms)
                continue
            seen.add(t.coid)
            self._apply_state(t, state, step, now_ms)
            touched[t.position_id] = self._positions[t.position_id]
        for p in self._positions.values():
            for t in p.orders.values():
                if (t.landed and not t.done and t.coid not in seen and t.inflight is None and not t.missing):
                    self._lookup(t, "check", step)
                    touched[p.position_id] = p
        for p in touched.values():
            self._drive(p, step, now_ms)
        return self._count(step)

    # -- rebuild -----------------------------------------------------------------------------

    def learn_intent(self, intent: Intent) -> None:
        """One of ``orders:shadow``'s intents, at start (emits nothing)."""
        if intent.id in self._seen_intents:
            return
        if isinstance(intent, EntryIntent):
            self._learn_entry(intent, recovered=True)
        elif isinstance(intent, ExitIntent):
            self._learn_exit(intent, fresh=False)
        else:
            self._learn_amend(intent)

    def learn_report(self, report: OrderExecuted) -> None:
        """One of ``orders:executed``'s reports, at start (emits nothing)."""
        self._learn_report(report, live=False)

    def reconcile(self) -> list[Lookup]:
        """After a rebuild: Lookups for every order not known final (not already confirmed by
        ``on_open_orders``), for entries with no report yet, and one per position that still has work
        (so its answer drives it); exits of unknown positions are looked up too (their answer
        reports them ``no_position``).

        Then on every poll, after the account's open orders were fed to ``on_order`` (or
        ``on_open_orders``): a Lookup for every open order of ours that no state confirmed since the
        previous ``reconcile()``. An order that left the open-orders listing filled or was canceled;
        with the account socket down no event says so, and without the lookup a stop that triggered
        (or an entry that filled) would stay unknown until a restart."""
        step = Step()
        for p in self._positions.values():
            issued = False
            for t in list(p.orders.values()):
                if t.done or t.missing:
                    continue
                if t.inflight == "lookup":
                    issued = True
                    continue
                if t.inflight is not None:
                    continue
                if t.verified:
                    if t.landed and t.seen_round != self._poll_round:  # not listed (nor told) since the last round
                        self._lookup(t, "check", step)
                        issued = True
                    continue
                self._lookup(t, "check" if t.landed else "probe", step)
                issued = True
            if p.intent is not None and p.entry() is None:
                t = self._new_track(p, "entry", p.entry_coid, fresh=False)
                self._lookup(t, "probe", step)
                issued = True
            if not issued and not p.awake and self._has_work(p) and not any(t.inflight for t in p.orders.values()):
                wake = p.entry() or max(p.orders.values(), key=lambda o: (o.updated, o.n), default=None)
                if wake is not None and not wake.missing:
                    self._lookup(wake, "wake", step)
        for exit_id, ex in self._exits.items():
            if (exit_id not in self._exit_done and ex.intent.position_id not in self._positions
                    and ex.intent.mode == self.mode and ex.coid not in self._loose):
                self._loose[ex.coid] = exit_id
                step.commands.append(Lookup(ex.intent.market, ex.coid, ex.intent.position_id))
        self._poll_round += 1
        self._count(step)
        return [c for c in step.commands if isinstance(c, Lookup)]

    # -- views -------------------------------------------------------------------------------

    def positions(self) -> dict[str, PositionView]:
        """Positions with work left (coins held, an entry or exit not final), by position id."""
        out: dict[str, PositionView] = {}
        for pid, p in sorted(self._positions.items()):
            if self._is_open(p):
                out[pid] = self._view(p)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able, from what the reports and intents say (a rebuilt manager shows the same)."""
        open_orders = []
        for p in self._positions.values():
            for t in p.orders.values():
                if t.reported and not t.final:
                    open_orders.append({"client_order_id": t.coid, "position_id": p.position_id, "purpose": t.purpose,
                                        "market": t.market, "side": t.side, "status": t.status,
                                        "amount": _s(t.rep_amount) or None, "trigger_price": _s(t.rep_trigger) or None,
                                        "filled": plain(t.filled)})
        open_orders.sort(key=lambda o: str(o["client_order_id"]))
        positions = self.positions()
        exits = sorted(e for e in self._exits if e not in self._exit_done
                       and self._exits[e].intent.position_id in self._positions)
        return {"mode": self.mode,
                "positions": {pid: v.to_json() for pid, v in positions.items()},
                "open_orders": open_orders,
                "open_exits": exits,
                "closed_positions": len(self._positions) - len(positions),
                "halted": sorted(pid for pid, v in positions.items() if v.halted)}

    # -- intents -----------------------------------------------------------------------------

    def _on_entry(self, intent: EntryIntent, kill_switch: bool, step: Step, now: int,
                  refuse: str | None = None) -> None:
        self._learn_entry(intent, recovered=False)
        p = self._positions.get(intent.id)
        if p is not None and p.entry() is not None:
            return  # its order is known from the reports already
        reason, request = (refuse, None) if refuse and not kill_switch else self._door(intent, kill_switch)
        if reason is not None or request is None:
            self._reject_entry(intent, reason or "no_request", request, step, now)
            return
        assert p is not None
        t = self._new_track(p, "entry", p.entry_coid, fresh=True)
        t.request = request
        self._place(p, t, step)

    def _on_exit(self, intent: ExitIntent, step: Step, now: int) -> None:
        ex = self._learn_exit(intent, fresh=True)
        p = self._positions.get(intent.position_id)
        if p is None:
            self._exit_report(ex, "canceled", "no_position", step, now)
            return
        active = self._active_exit(p)
        if active is not ex:
            self._exit_report(ex, "canceled", "exit_in_progress", step, now)
            return
        held = self._round(p, p.held())
        if held <= 0 and not any(not t.done for t in p.sells()):
            self._exit_report(ex, "canceled", "no_position", step, now)
            return
        self._drive(p, step, now)

    def _on_amend(self, intent: StopAmendIntent, step: Step, now: int) -> None:
        p = self._positions.get(intent.position_id)
        if p is None:
            self._seen_intents.add(intent.id)
            self._event(step, intent.trace, intent.id, "amend_unknown_position", "info",
                        f"{intent.market}: stop amend for unknown position {intent.position_id} ignored",
                        {"position_id": intent.position_id, "market": intent.market,
                         "stop_price": plain(intent.stop_price)}, now)
            return
        self._learn_amend(intent)
        self._drive(p, step, now)

    def _learn_entry(self, intent: EntryIntent, recovered: bool) -> None:
        self._seen_intents.add(intent.id)
        if intent.mode != self.mode:
            return  # never a position of another mode (its rejection report is learned as such)
        p = self._positions.get(intent.id)
        if p is None:
            p = self._new_position(intent.id, intent.market, intent.trace, recovered)
        p.intent = intent
        p.trace = intent.trace

    def _learn_exit(self, intent: ExitIntent, fresh: bool) -> _Exit:
        self._seen_intents.add(intent.id)
        ex = _Exit(intent, exit_client_id(intent.id), fresh)
        self._exits[intent.id] = ex
        self._exits_by_pid.setdefault(intent.position_id, []).append(intent.id)
        return ex

    def _learn_amend(self, intent: StopAmendIntent) -> None:
        self._seen_intents.add(intent.id)
        if intent.mode != self.mode and intent.position_id not in self._positions:
            return
        stop = self._round_stop(intent.market, intent.stop_price)
        if stop is None:
            return
        p = self._positions.get(intent.position_id)
        if p is None:
            prev = self._early_amends.get(intent.position_id)
            self._early_amends[intent.position_id] = stop if prev is None else max(prev, stop)
        else:
            p.amend_stop = stop if p.amend_stop is None else max(p.amend_stop, stop)

    # -- the door ----------------------------------------------------------------------------

    def _door(self, intent: EntryIntent, kill_switch: bool) -> tuple[str | None, OrderRequest | None]:
        if kill_switch:
            return "kill_switch", None
        if intent.mode != self.mode:
            return "mode_mismatch", None
        rules = self.catalog.get(intent.market)
        if rules is None:
            return "unknown_market", None
        if intent.side != "buy":
            return "spot_long_only", None
        live = self.mode == "live"
        if live and self.limits.allowed_markets is not None and intent.market not in self.limits.allowed_markets:
            return "market_not_allowed", None
        try:
            amount = rules.round_amount_down(intent.amount)
        except ValueError:
            return "no_size", None
        price: Decimal | None = None
        if intent.order_type == "limit":
            if intent.price is None or intent.price < rules.tick_size:
                return "no_limit_price", None
            price = rules.round_price(intent.price, "down")
        ref = price
        if ref is None and intent.ref_price is not None and intent.ref_price >= rules.tick_size:
            ref = rules.round_price(intent.ref_price, "nearest")
        if live and ref is None and (self.limits.max_order_notional_eur is not None
                                     or self.limits.max_total_notional_eur is not None):
            return "no_reference_price", None
        if live and ref is not None:
            notional = amount * ref
            cap = self.limits.max_order_notional_eur
            if cap is not None and notional > cap:
                return "max_order_notional", None
            total_cap = self.limits.max_total_notional_eur
            if total_cap is not None and self._exposure(exclude=intent.id) + notional > total_cap:
                return "max_total_notional", None
        stop = self._round_stop(intent.market, intent.stop_price)
        if stop is None or (ref is not None and stop >= ref):
            return "bad_stop", None
        problem = rules.check_order(amount, ref if ref is not None else stop)
        if problem is not None:
            return problem, None
        request = OrderRequest(market=intent.market, side="buy", order_type=intent.order_type,
                               client_order_id=entry_client_id(intent.id), amount=amount, price=price)
        return None, request

    def _exposure(self, exclude: str) -> Decimal:
        """Quote value of this executor's open positions (at their entry price) and unfilled entries."""
        total = ZERO
        for p in self._positions.values():
            if p.position_id == exclude:
                continue
            price = p.ref_price()
            if price is None:
                continue
            held = p.held()
            if held > 0:
                total += held * price
            t = p.entry()
            if t is not None and not t.final and t.request is not None and t.request.amount is not None:
                left = t.request.amount - t.filled
                unit = t.request.price or (p.intent.ref_price if p.intent is not None else None) or price
                if left > 0:
                    total += left * unit
        return total

    def _reject_entry(self, intent: EntryIntent, reason: str, request: OrderRequest | None, step: Step,
                      now: int) -> None:
        coid = entry_client_id(intent.id)
        amount = request.amount if request is not None else intent.amount
        report = self._build(coid=coid, intent_id=intent.id, position_id=intent.id, purpose="entry",
                             market=intent.market, side=intent.side, status="rejected", reason=reason,
                             order_type=intent.order_type, amount=amount, trigger=None, trace=intent.trace,
                             now=now)
        self._emit(step, report)
        self._event(step, intent.trace, f"{coid}/{reason}", reason, "warning",
                    f"entry {intent.id} in {intent.market} blocked: {reason}",
                    {"intent_id": intent.id, "market": intent.market, "reason": reason,
                     "amount": plain(intent.amount), "mode": intent.mode}, now)

    # -- order states ------------------------------------------------------------------------

    def _apply_state(self, t: _Track, state: OrderState, step: Step, now: int) -> None:
        p = self._positions[t.position_id]
        if state.market != t.market or state.side != t.side:
            self._event(step, p.trace, f"{t.coid}/mismatch/{state.order_id}", "order_mismatch", "critical",
                        f"order {t.coid} was a {t.side} in {t.market}, the exchange says {state.side} in "
                        f"{state.market}; state ignored", self._details(p, t), now)
            return
        if t.inflight in ("place", "cancel"):
            t.inflight = None
        if t.inflight == "amend" and t.amend_target is not None:
            amount, trigger = t.amend_target
            applied = ((amount is None or state.amount == amount)
                       and (trigger is None or state.trigger_price is None or state.trigger_price == trigger))
            if applied or state.is_final or state.status not in AMENDABLE or state.filled_amount > 0:
                if applied:
                    self._confirm_amend(t, t.amend_target)
                t.inflight = None
                t.amend_target = None
        t.verified = True
        t.seen_round = self._poll_round
        t.absent = False
        t.missing = False
        if self._stale(t, state):
            return
        resurrected = (t.final and not t.landed) or t.discarded
        t.discarded = False  # the exchange has it: it counts, whatever we thought
        prev_landed, prev_filled, prev_final = t.landed, t.filled, t.final
        t.state = state
        t.updated = max(t.updated, state.updated)
        if t.asked_amount is None and state.amount is not None:
            t.asked_amount = state.amount
        if t.asked_trigger is None and state.trigger_price is not None:
            t.asked_trigger = state.trigger_price
        report = self._state_report(p, t, state, now)
        if report is not None:
            self._emit(step, report)
        if state.order_id and (t.market, state.order_id) not in self._by_order_id:
            self._by_order_id[(t.market, state.order_id)] = t
            t.order_id = t.order_id or state.order_id
        self._transitions(p, t, step, now, resurrected, prev_landed, prev_filled, prev_final)

    def _stale(self, t: _Track, state: OrderState) -> bool:
        if not t.landed:
            return False
        if state.filled_amount < t.filled:
            return True
        if t.final and not state.is_final:
            return True
        return (state.filled_amount == t.filled and state.updated > 0 and t.updated > 0
                and state.updated < t.updated and not (state.is_final and not t.final))

    def _transitions(self, p: _Position, t: _Track, step: Step, now: int, resurrected: bool,
                     prev_landed: bool, prev_filled: Decimal, prev_final: bool) -> None:
        d = self._details(p, t)
        tr = self._trace(p, t)
        if resurrected:
            self._event(step, tr, f"{t.coid}/resurrected", "order_resurrected", "critical",
                        f"{p.market}: the {t.purpose} order {t.coid} we took for refused exists "
                        f"({t.status}); following it", d, now)
        became_final = t.final and not prev_final
        if t.purpose == "entry":
            if became_final and t.filled > 0:
                self._event(step, tr, f"{t.coid}/filled", "entry_filled", "info",
                            f"{p.market}: entry {t.status}, {plain(t.filled)} bought", d, now)
        elif t.purpose == "stop":
            if t.landed and not prev_landed:
                self._event(step, tr, f"{t.coid}/placed", "stop_placed", "info",
                            f"{p.market}: stop {t.n} placed for {_s(t.asked_amount)} at {_s(t.asked_trigger)}",
                            d, now)
            if t.filled > 0 and prev_filled == 0:
                self._event(step, tr, f"{t.coid}/triggered", "stop_triggered", "warning",
                            f"{p.market}: stop {t.n} triggered, {plain(t.filled)} sold", d, now)
            if became_final and t.filled == 0 and not t.cancel_wanted and t.landed:
                self._event(step, tr, f"{t.coid}/canceled", "stop_canceled", "warning",
                            f"{p.market}: the exchange ended stop {t.n} ({t.status}, "
                            f"{t.state.restatement_reason if t.state else None}); replacing it", d, now)
        elif t.purpose == "exit":
            if became_final:
                left = self._round(p, p.held())
                self._event(step, tr, f"{t.coid}/done", "exit_done", "info",
                            f"{p.market}: exit {t.status}, {plain(t.filled)} sold, {plain(left)} left", d, now)
        elif became_final:
            left = self._round(p, p.held())
            if left > 0 and not self._is_dust(p, left):
                self._event(step, tr, f"{t.coid}/incomplete", "emergency_incomplete", "critical",
                            f"{p.market}: emergency sell {t.status} with {plain(left)} left and no stop: "
                            f"position halted, act by hand", d, now)
            else:
                self._event(step, tr, f"{t.coid}/done", "emergency_done", "warning",
                            f"{p.market}: emergency sell {t.status}, {plain(t.filled)} sold", d, now)

    def _state_report(self, p: _Position, t: _Track, state: OrderState, now: int) -> OrderExecuted | None:
        rules = self.catalog.get(t.market)
        amount = state.amount if state.amount is not None else (t.asked_amount or t.rep_amount)
        trigger = None
        if t.purpose == "stop":
            trigger = state.trigger_price if state.trigger_price is not None else (t.asked_trigger or t.rep_trigger)
        fee_ccy = state.fee_currency
        if not fee_ccy and state.fee_paid != 0:
            fee_ccy = rules.quote if rules is not None else t.market.split("-")[-1]
        fills = [FillInfo(fill_id=f.fill_id, ts=f.ts, amount=f.amount, price=f.price, taker=f.taker, fee=f.fee,
                          fee_currency=f.fee_currency) for f in state.fills]
        report = self._build(coid=t.coid, intent_id=t.intent_id, position_id=t.position_id, purpose=t.purpose,
                             market=t.market, side=t.side, status=state.status, reason=self._reason(t),
                             order_type=state.order_type or t.order_type, amount=amount, trigger=trigger,
                             trace=self._trace(p, t), now=now, order_id=state.order_id,
                             filled=state.filled_amount, quote=state.filled_quote, fee=state.fee_paid,
                             fee_currency=fee_ccy, fills=fills, restatement=state.restatement_reason,
                             exchange_ts=state.updated or None, placed=(t.placed_amount, t.placed_trigger))
        if _key(report) == t.last_key:
            return None
        return report

    def _build(self, *, coid: str, intent_id: str, position_id: str, purpose: Purpose, market: str, side: str,
               status: str, reason: str | None, order_type: str, amount: Decimal | None,
               trigger: Decimal | None, trace: Trace, now: int, order_id: str | None = None,
               filled: Decimal = ZERO, quote: Decimal = ZERO, fee: Decimal = ZERO, fee_currency: str = "",
               fills: list[FillInfo] | None = None, restatement: str | None = None, exchange_ts: int | None = None,
               placed: tuple[Decimal | None, Decimal | None] = (None, None)) -> OrderExecuted:
        tag = f"{status}/{plain(filled)}/{plain(fee)}"
        if purpose == "stop" and placed != (None, None) and (amount, trigger) != placed:
            tag += f"/{_s(amount)}/{_s(trigger)}"
        return OrderExecuted(
            id=derive_id(coid, tag), ts=now, src=self.factory.src, trace=trace, v=OrderExecuted.V,
            intent_id=intent_id, client_order_id=coid, order_id=order_id, market=market, side=side,  # type: ignore[arg-type]
            status=status, filled_amount=filled, filled_quote=quote,
            avg_price=(quote / filled) if filled > 0 else None, fee=fee, fee_currency=fee_currency, mode=self.mode,
            reason=reason, position_id=position_id, purpose=purpose, order_type=order_type, amount=amount,
            trigger_price=trigger, fills=fills or [], restatement_reason=restatement, exchange_ts=exchange_ts)

    def _emit(self, step: Step, report: OrderExecuted) -> None:
        step.reports.append(report)
        self._learn_report(report, live=True)

    def _learn_report(self, r: OrderExecuted, live: bool) -> None:
        if r.mode != self.mode:
            return
        purpose = r.purpose
        if purpose == "unknown":
            if r.client_order_id != entry_client_id(r.intent_id):
                return
            purpose = "entry"
        pid = r.position_id or (r.intent_id if purpose == "entry" else None)
        if pid is None:
            return
        if purpose == "exit" and r.status in FINAL_STATUSES:
            self._exit_done.add(r.intent_id)
        p = self._positions.get(pid)
        if p is None:
            if purpose == "exit" and r.filled_amount == 0:
                return  # an exit of an unknown position: nothing to follow
            p = self._new_position(pid, r.market, r.trace, recovered=True)
        t = p.orders.get(r.client_order_id)
        if t is None:
            t = self._track_from_report(p, r, purpose)
        key = _key(r)
        if key == t.last_key or r.filled_amount < t.filled:
            return
        t.last_key = key
        t.status = r.status
        t.filled = r.filled_amount
        t.filled_quote = r.filled_quote
        t.fee = r.fee
        t.fee_currency = r.fee_currency
        t.final = r.status in FINAL_STATUSES
        if r.order_id is not None:
            t.landed = True
            t.order_id = r.order_id
            self._by_order_id.setdefault((t.market, r.order_id), t)
        if r.amount is not None:
            t.rep_amount = r.amount
            if t.placed_amount is None:
                t.placed_amount = r.amount
            if not live or t.asked_amount is None:
                t.asked_amount = r.amount
        if r.trigger_price is not None:
            t.rep_trigger = r.trigger_price
            if t.placed_trigger is None:
                t.placed_trigger = r.trigger_price
            if not live or t.asked_trigger is None:
                t.asked_trigger = r.trigger_price
        if r.exchange_ts:
            t.updated = max(t.updated, r.exchange_ts)

    def _track_from_report(self, p: _Position, r: OrderExecuted, purpose: Purpose) -> _Track:
        n = 0
        if purpose == "stop":
            n = self._match_n(p.position_id, stop_client_id, r.client_order_id, p.stop_n)
        elif purpose == "emergency":
            n = self._match_n(p.position_id, emergency_client_id, r.client_order_id, p.emergency_n)
        return self._new_track(p, purpose, r.client_order_id, n=n, intent_id=r.intent_id, fresh=False,
                               order_type=r.order_type or ("stopLoss" if purpose == "stop" else "market"),
                               side=r.side)

    @staticmethod
    def _match_n(pid: str, make: Callable[[str, int], str], coid: str, hint: int) -> int:
        for n in range(1, hint + 1000):
            if make(pid, n) == coid:
                return n
        return 0

    # -- answers -----------------------------------------------------------------------------

    def _lookup_answer(self, p: _Position, t: _Track, state: OrderState | None, step: Step, now: int) -> None:
        why = t.lookup_of
        t.lookup_of = ""
        if state is not None:
            if why == "amend":
                if state.amount is not None:
                    t.asked_amount = state.amount
                if state.trigger_price is not None:
                    t.asked_trigger = state.trigger_price
            self._apply_state(t, state, step, now)
            self._drive(p, step, now)
            return
        if why == "wake":
            self._drive(p, step, now)
            return
        if t.landed:
            t.missing = True
            self._event(step, p.trace, f"{t.coid}/missing", "order_missing", "critical",
                        f"{p.market}: the exchange has no {t.purpose} order {t.coid} any more (last seen "
                        f"{t.status}, {plain(t.filled)} filled); hands off until a restart",
                        self._details(p, t), now)
            return
        t.absent = True
        if why == "place" and t.attempts > 0:
            t.lost += 1
            if t.purpose != "stop" and t.lost >= MAX_LOST_PLACES and not t.final:
                self._placement_rejected(p, t, None, f"placed {t.attempts} times, never confirmed", step, now,
                                         why="place_unconfirmed")
                self._drive(p, step, now)
                return
        if t.purpose == "entry":
            if t.final:
                return
            intent = p.intent
            if intent is None:
                t.discarded = True
                return
            reason, request = self._door(intent, self.kill_switch)
            if reason is not None or request is None:
                self._reject_entry(intent, reason or "no_request", request, step, now)
                return
            t.request = request
            self._place(p, t, step)
            return
        self._drive(p, step, now)

    def _placement_rejected(self, p: _Position, t: _Track, code: int | None, message: str, step: Step,
                            now: int, why: str | None = None) -> None:
        why = why or f"exchange_rejected:{code if code is not None else 'none'}"
        amount = t.request.amount if t.request is not None else None
        trigger = t.request.trigger_price if t.request is not None else None
        reason = why if t.purpose in ("entry", "exit") else self._reason(t)
        report = self._build(coid=t.coid, intent_id=t.intent_id, position_id=t.position_id, purpose=t.purpose,
                             market=t.market, side=t.side, status="rejected", reason=reason,
                             order_type=t.order_type, amount=amount, trigger=trigger, trace=self._trace(p, t),
                             now=now, placed=(t.placed_amount, t.placed_trigger))
        self._emit(step, report)
        d = dict(self._details(p, t), error_code=str(code), error=message)
        tr = self._trace(p, t)
        if t.purpose == "entry":
            self._event(step, tr, f"{t.coid}/{why}", why, "warning",
                        f"entry {t.intent_id} in {p.market} rejected by the exchange ({code}: {message})", d, now)
        elif t.purpose == "stop":
            self._event(step, tr, f"{t.coid}/rejected", "stop_rejected", "warning",
                        f"{p.market}: stop {t.n} rejected ({code}: {message})", d, now)
        elif t.purpose == "exit":
            self._event(step, tr, f"{t.coid}/rejected", "exit_rejected", "warning",
                        f"{p.market}: exit sell rejected ({code}: {message}); protecting the rest", d, now)
        else:
            self._event(step, tr, f"{t.coid}/rejected", "emergency_failed", "critical",
                        f"{p.market}: emergency sell rejected ({code}: {message}): position without a stop, "
                        f"halted, act by hand", d, now)

    def _cancel_refused(self, p: _Position, t: _Track, code: int | None, message: str, step: Step,
                        now: int) -> None:
        t.cancel_wanted = False
        t.cancel_refused.add(t.cancel_ctx)
        d = dict(self._details(p, t), error_code=str(code), error=message)
        self._event(step, p.trace, f"{t.coid}/cancel/{code}", "cancel_failed", "warning",
                    f"{p.market}: cancel of the {t.purpose} order refused ({code}: {message})", d, now)
        ex = self._active_exit(p)
        if ex is not None and t.purpose != "entry" and t.cancel_ctx == ex.intent.id:
            self._exit_report(ex, "rejected", f"cancel_failed:{code if code is not None else 'none'}", step, now)

    def _confirm_amend(self, t: _Track, target: tuple[Decimal | None, Decimal | None]) -> None:
        if target[0] is not None:
            t.asked_amount = target[0]
        if target[1] is not None:
            t.asked_trigger = target[1]

    # -- deciding ----------------------------------------------------------------------------

    def _drive(self, p: _Position, step: Step, now: int) -> None:
        """Move the position one step towards what it should be, given everything known."""
        p.awake = True
        tracks = [t for t in p.orders.values() if not t.discarded]
        if any(t.inflight == "lookup" for t in tracks):
            return  # the truth is on its way
        if any(t.missing and not t.final for t in tracks):
            return  # hands off (critical event raised)
        rules = self.catalog.get(p.market)
        if rules is None:
            self._once(p, step, "unknown_market", "critical",
                       f"{p.market} is not in the market catalogue: position {p.position_id} cannot be managed", now)
            return
        held = p.held()
        if held < 0:
            self._once(p, step, "oversold", "critical",
                       f"{p.market}: position {p.position_id} sold {plain(p.sold())} of {plain(p.bought())} "
                       f"bought; hands off", now)
            return
        for _ in range(16):  # each round resolves one exit at most
            ex = self._active_exit(p)
            if ex is None:
                break
            if not self._drive_exit(p, ex, rules, step, now):
                return
        self._protect(p, rules, step, now)

    def _drive_exit(self, p: _Position, ex: _Exit, rules: MarketRules, step: Step, now: int) -> bool:
        """Carry out the exit; True when it was resolved right here (the next one may go on)."""
        started = ex.coid in p.orders or any(t.cancel_ctx == ex.intent.id for t in p.orders.values())
        if not started and rules.status != TRADING:
            # Nothing can be sold: keep the stop rather than cancel it for a sell that cannot be placed.
            self._exit_report(ex, "rejected", "market_not_trading", step, now)
            self._event(step, ex.intent.trace, f"{ex.coid}/not_trading", "exit_rejected", "warning",
                        f"{p.market} is {rules.status or 'not trading'}: exit {ex.intent.id} not carried out, "
                        f"the stop stays", {"position_id": p.position_id, "market": p.market,
                                            "exit_intent_id": ex.intent.id}, now)
            return True
        entry = p.entry()
        if entry is not None and entry.landed and not entry.final and entry.inflight is None:
            self._cancel(p, entry, step, ex.intent.id)
        et = p.orders.get(ex.coid)
        if et is not None and et.discarded and not et.final:
            et.discarded = False
        waiting = False
        for t in p.sells():
            if t is et or t.final:
                continue
            if t.landed:
                if t.purpose == "stop" and t.inflight in (None, "amend"):
                    if ex.intent.id in t.cancel_refused:
                        continue  # the exit was answered cancel_failed; this stop stays
                    self._cancel(p, t, step, ex.intent.id)
                waiting = True
            elif t.inflight is not None:
                waiting = True
            else:
                t.discarded = True  # never landed and not wanted any more
        if waiting:
            return False
        if et is not None and (et.final or et.landed or et.inflight is not None or et.discarded):
            return et.final
        held = rules.round_amount_down(max(p.held(), ZERO))
        if held <= 0 or self._is_dust(p, held):
            if held > 0:
                self._dust(p, held, step, now)
                reason = "dust"
            else:
                reason = "stop_triggered_first" if p.sold() > 0 else "no_position"
            self._exit_report(ex, "canceled", reason, step, now)
            return True
        if et is None:
            et = self._new_track(p, "exit", ex.coid, intent_id=ex.intent.id, fresh=ex.fresh or not p.recovered)
        et.request = OrderRequest(market=p.market, side="sell", order_type="market", client_order_id=ex.coid,
                                  amount=held)
        self._place(p, et, step)
        return False

    def _protect(self, p: _Position, rules: MarketRules, step: Step, now: int) -> None:
        """No exit running: what is held must be covered by one resting stop."""
        live = [t for t in p.sells() if not t.final]
        held = rules.round_amount_down(max(p.held(), ZERO))
        for t in live:  # a market sell of ours that never landed: send again or drop
            if t.purpose in ("exit", "emergency") and not t.landed and t.inflight is None:
                if t.purpose == "emergency" and held > 0 and not self._is_dust(p, held):
                    t.request = OrderRequest(market=p.market, side="sell", order_type="market",
                                             client_order_id=t.coid, amount=held)
                    self._place(p, t, step)
                else:
                    t.discarded = True
        live = [t for t in live if not t.discarded]
        if any(t.purpose in ("exit", "emergency") for t in live):
            return  # a market sell is running: its end decides
        stops = [t for t in live if t.purpose == "stop"]
        if len(stops) > 1:  # never two resting sells for the same coins
            keep = max(stops, key=lambda s: (s.landed, s.n))
            for s in stops:
                if s is keep:
                    continue
                if s.landed:
                    if s.inflight is None:
                        self._cancel(p, s, step, "protect")
                elif s.inflight is None:
                    s.discarded = True
            return
        stop = stops[0] if stops else None
        if held <= 0:
            if stop is not None:
                if stop.landed and stop.inflight is None and stop.amendable:
                    self._cancel(p, stop, step, "protect")  # nothing left to protect
                elif not stop.landed and stop.inflight is None:
                    stop.discarded = True
            return
        if stop is None and self._is_dust(p, held):
            self._dust(p, held, step, now)
            return
        stop_price = self._stop_price(p)
        if stop is not None:
            if not stop.landed:
                if stop.inflight is not None:
                    return
                if self._failures(p) <= self.stop_retries and stop_price is not None:
                    stop.request = self._stop_request(p, stop.coid, held, stop_price)
                    self._place(p, stop, step)
                    return
                stop.discarded = True  # placements exhausted: the emergency below
            else:
                if stop.inflight is not None or not stop.amendable:
                    return
                want_amount = held if held != stop.asked_amount else None
                want_trigger = (stop_price if stop_price is not None and stop.asked_trigger is not None
                                and stop_price > stop.asked_trigger else None)
                if want_amount is None and want_trigger is None:
                    return
                target = (want_amount, want_trigger)
                if target == stop.refused:
                    return
                stop.inflight = "amend"
                stop.amend_target = target
                step.commands.append(Amend(p.market, stop.coid, p.position_id, want_amount, want_trigger))
                return
        if self._halted(p):
            return
        if stop_price is None:
            self._once(p, step, "no_stop_price", "critical",
                       f"{p.market}: position {p.position_id} holds {plain(held)} and its stop price is unknown "
                       f"(entry intent not found); no stop placed", now)
            return
        if self._failures(p) > self.stop_retries:
            self._emergency(p, held, step, now)
            return
        p.stop_n += 1
        coid = stop_client_id(p.position_id, p.stop_n)
        t = self._new_track(p, "stop", coid, n=p.stop_n, fresh=not p.recovered)
        t.request = self._stop_request(p, coid, held, stop_price)
        self._place(p, t, step)

    def _emergency(self, p: _Position, held: Decimal, step: Step, now: int) -> None:
        entry = p.entry()
        if entry is not None and entry.landed and not entry.final and entry.inflight is None:
            self._cancel(p, entry, step, "emergency")
        p.emergency_n += 1
        coid = emergency_client_id(p.position_id, p.emergency_n)
        t = self._new_track(p, "emergency", coid, n=p.emergency_n, fresh=not p.recovered)
        t.request = OrderRequest(market=p.market, side="sell", order_type="market", client_order_id=coid, amount=held)
        self._place(p, t, step)
        self._event(step, p.trace, f"{coid}/stop_failed", "stop_failed", "critical",
                    f"{p.market}: the stop could not be placed ({self._failures(p)} tries): selling "
                    f"{plain(held)} at market", self._details(p, t), now)

    # -- commands ----------------------------------------------------------------------------

    def _place(self, p: _Position, t: _Track, step: Step) -> None:
        assert t.request is not None and not t.landed and t.inflight is None
        if not t.fresh and not t.absent:
            self._lookup(t, "probe", step)  # it may have been sent before a restart
            return
        t.inflight = "place"
        t.attempts += 1
        t.placed_amount = t.request.amount
        t.placed_trigger = t.request.trigger_price
        t.asked_amount = t.request.amount
        t.asked_trigger = t.request.trigger_price
        step.commands.append(Place(t.request, t.purpose, t.intent_id, p.position_id))

    def _cancel(self, p: _Position, t: _Track, step: Step, ctx: str) -> None:
        """Cancel ``t`` unless the exchange refused that already in this context (no retry loop)."""
        if ctx in t.cancel_refused:
            return
        t.inflight = "cancel"
        t.amend_target = None
        t.cancel_wanted = True
        t.cancel_ctx = ctx
        step.commands.append(Cancel(t.market, t.coid, p.position_id))

    def _lookup(self, t: _Track, why: str, step: Step) -> None:
        t.inflight = "lookup"
        t.lookup_of = why
        step.commands.append(Lookup(t.market, t.coid, t.position_id))

    # -- helpers -----------------------------------------------------------------------------

    def _new_position(self, pid: str, market: str, trace: Trace, recovered: bool) -> _Position:
        base = market.split("-")[0]
        rules = self.catalog.get(market)
        if rules is not None:
            base = rules.base
        p = _Position(pid, market, base, trace, recovered)
        early = self._early_amends.pop(pid, None)
        if early is not None:
            p.amend_stop = early
        self._positions[pid] = p
        return p

    def _new_track(self, p: _Position, purpose: Purpose, coid: str, *, n: int = 0, intent_id: str | None = None,
                   fresh: bool, order_type: str | None = None, side: str | None = None) -> _Track:
        if order_type is None:
            if purpose == "entry":
                order_type = p.intent.order_type if p.intent is not None else "market"
            else:
                order_type = "stopLoss" if purpose == "stop" else "market"
        sd: Literal["buy", "sell"] = "buy" if (side or ("buy" if purpose == "entry" else "sell")) == "buy" else "sell"
        t = _Track(coid=coid, position_id=p.position_id, purpose=purpose, market=p.market, side=sd,
                   order_type=order_type, intent_id=intent_id or p.position_id, n=n, fresh=fresh)
        p.orders[coid] = t
        self._by_coid[coid] = t
        if purpose == "stop":
            p.stop_n = max(p.stop_n, n)
        elif purpose == "emergency":
            p.emergency_n = max(p.emergency_n, n)
        return t

    def order_ref(self, market: str, order_id: str) -> tuple[str, bool] | None:
        """(clientOrderId, known final) of one of our orders by the exchange's id; None: not ours, or
        not acknowledged yet."""
        t = self._by_order_id.get((market, order_id))
        return (t.coid, t.final) if t is not None else None

    def knows(self, state: OrderState) -> bool:
        """The order is ours and already known in exactly this status with this much filled: an
        account event that says only that needs no REST read of the order (rate limit)."""
        t = self._find(state)
        return (t is not None and t.inflight is None and t.status == state.status
                and t.filled == state.filled_amount
                and (state.amount is None or state.amount == t.rep_amount)
                and (state.trigger_price is None or state.trigger_price == t.rep_trigger))

    def _find(self, state: OrderState) -> _Track | None:
        if state.client_order_id is not None:
            t = self._by_coid.get(state.client_order_id)
            if t is not None:
                return t
        return self._by_order_id.get((state.market, state.order_id))

    def _patterns(self) -> dict[str, tuple[_Position, Purpose, int, str]]:
        """Client ids our positions may have used without our knowing (placed just before a crash)."""
        out: dict[str, tuple[_Position, Purpose, int, str]] = {}
        for p in self._positions.values():
            if not (self._is_open(p) or self._active_exit(p) is not None):
                continue
            if p.entry() is None:
                out[p.entry_coid] = (p, "entry", 0, p.position_id)
            for n in range(1, p.stop_n + 11):
                out.setdefault(stop_client_id(p.position_id, n), (p, "stop", n, p.position_id))
            for n in range(1, p.emergency_n + 4):
                out.setdefault(emergency_client_id(p.position_id, n), (p, "emergency", n, p.position_id))
            for exit_id in self._exits_by_pid.get(p.position_id, []):
                out.setdefault(exit_client_id(exit_id), (p, "exit", 0, exit_id))
        return {coid: hit for coid, hit in out.items() if coid not in self._by_coid}

    def _adopt(self, hit: tuple[_Position, Purpose, int, str], state: OrderState, step: Step, now: int) -> _Track:
        p, purpose, n, intent_id = hit
        assert state.client_order_id is not None
        t = self._new_track(p, purpose, state.client_order_id, n=n, intent_id=intent_id, fresh=False,
                            order_type=state.order_type or None, side=state.side)
        self._event(step, p.trace, f"{t.coid}/adopted", "order_adopted", "warning",
                    f"{p.market}: open {purpose} order {t.coid} was placed before the restart but never "
                    f"reported; resuming it", self._details(p, t), now)
        return t

    def _active_exit(self, p: _Position) -> _Exit | None:
        for exit_id in self._exits_by_pid.get(p.position_id, []):
            if exit_id not in self._exit_done:
                return self._exits[exit_id]
        return None

    def _exit_report(self, ex: _Exit, status: str, reason: str, step: Step, now: int) -> None:
        intent = ex.intent
        p = self._positions.get(intent.position_id)
        t = p.orders.get(ex.coid) if p is not None else None
        report = self._build(coid=ex.coid, intent_id=intent.id, position_id=intent.position_id, purpose="exit",
                             market=intent.market, side="sell", status=status, reason=reason, order_type="market",
                             amount=t.request.amount if t is not None and t.request is not None else None,
                             trigger=None, trace=intent.trace, now=now)
        self._emit(step, report)

    def _failures(self, p: _Position, reported_only: bool = False) -> int:
        """Stop placements that failed since the last one that landed."""
        stops = [t for t in p.orders.values() if t.purpose == "stop"]
        base = max((t.n for t in stops if t.landed), default=0)
        rejected = sum(1 for t in stops if t.n > base and t.final and not t.landed and t.reported)
        if reported_only:
            return rejected
        return rejected + sum(t.lost for t in stops if t.n > base)

    def _halted(self, p: _Position) -> bool:
        """An emergency sell ended and coins are left: no more automatic orders."""
        return any(t.purpose == "emergency" and t.final for t in p.orders.values()) and self._round(p, p.held()) > 0

    def _is_open(self, p: _Position) -> bool:
        entry = p.entry()
        entry_open = (entry is None and p.intent is not None) or (entry is not None and not entry.final)
        return (entry_open or p.held() != 0 or self._active_exit(p) is not None
                or any(t.reported and not t.final for t in p.orders.values()))

    def _has_work(self, p: _Position) -> bool:
        entry = p.entry()
        return (self._round(p, p.held()) > 0 or self._active_exit(p) is not None
                or (entry is not None and not entry.final) or (entry is None and p.intent is not None))

    def _round(self, p: _Position, amount: Decimal) -> Decimal:
        rules = self.catalog.get(p.market)
        if amount <= 0:
            return ZERO
        return rules.round_amount_down(amount) if rules is not None else amount

    def _round_stop(self, market: str, price: Decimal) -> Decimal | None:
        rules = self.catalog.get(market)
        if rules is None or price < rules.tick_size:
            return None
        return rules.round_price(price, "down")

    def _stop_price(self, p: _Position) -> Decimal | None:
        base = self._round_stop(p.market, p.intent.stop_price) if p.intent is not None else None
        if base is None:  # no entry intent: the last stop we know of
            stops = [t for t in p.orders.values() if t.purpose == "stop" and t.rep_trigger is not None]
            base = max((t.rep_trigger for t in stops if t.rep_trigger is not None), default=None)
        if p.amend_stop is not None:
            return p.amend_stop if base is None else max(base, p.amend_stop)
        return base

    def _stop_request(self, p: _Position, coid: str, amount: Decimal, trigger: Decimal) -> OrderRequest:
        return OrderRequest(market=p.market, side="sell", order_type="stopLoss", client_order_id=coid, amount=amount,
                            trigger_price=trigger, trigger_reference="bestBid")

    def _is_dust(self, p: _Position, amount: Decimal) -> bool:
        """Below the market's minimum order, valued at the entry price."""
        rules = self.catalog.get(p.market)
        if rules is None:
            return False
        if amount < rules.min_base:
            return True
        price = p.ref_price()
        return price is not None and amount * price < rules.min_quote

    def _dust(self, p: _Position, held: Decimal, step: Step, now: int) -> None:
        key = f"dust/{plain(held)}"
        if key in p.warned:
            return
        p.warned.add(key)
        self._event(step, p.trace, f"{p.position_id}/{key}", "dust", "warning",
                    f"{p.market}: {plain(held)} held is below the market minimum: no order placed",
                    {"position_id": p.position_id, "market": p.market, "held": plain(held)}, now)

    def _once(self, p: _Position, step: Step, kind: str, severity: Severity, message: str, now: int) -> None:
        if kind in p.warned:
            return
        p.warned.add(kind)
        self._event(step, p.trace, f"{p.position_id}/{kind}", kind, severity, message,
                    {"position_id": p.position_id, "market": p.market}, now)

    def _reason(self, t: _Track) -> str:
        if t.purpose == "entry":
            return "entry"
        if t.purpose == "stop":
            return "stop_loss"
        if t.purpose == "emergency":
            return "emergency"
        ex = self._exits.get(t.intent_id)
        return ex.intent.reason if ex is not None else "exit"

    def _trace(self, p: _Position, t: _Track) -> Trace:
        if t.purpose == "exit":
            ex = self._exits.get(t.intent_id)
            if ex is not None:
                return ex.intent.trace
        return p.trace

    def _details(self, p: _Position, t: _Track) -> dict[str, str]:
        return {"position_id": p.position_id, "market": p.market, "client_order_id": t.coid,
                "order_id": t.order_id or "", "purpose": t.purpose, "status": t.status, "filled": plain(t.filled),
                "held": plain(p.held())}

    def _event(self, step: Step, trace: Trace, anchor: str, kind: str, severity: Severity, message: str,
               details: dict[str, str], now: int) -> None:
        step.events.append(TradingEvent(id=derive_id(anchor, f"event/{kind}"), ts=now, src=self.factory.src,
                                        trace=trace, v=TradingEvent.V, kind=kind, severity=severity,
                                        message=message, details=details))

    def _view(self, p: _Position) -> PositionView:
        entry = p.entry()
        stops = [t for t in p.orders.values() if t.purpose == "stop" and t.reported and not t.final]
        stop = max(stops, key=lambda s: s.n) if stops else None
        ex = self._active_exit(p)
        return PositionView(
            position_id=p.position_id, market=p.market,
            entry_status=entry.status if entry is not None else "", bought=p.bought(), sold=p.sold(),
            held=p.held(), stop_price=self._stop_price(p),
            stop_client_order_id=stop.coid if stop is not None else None,
            stop_status=stop.status if stop is not None else None,
            stop_amount=stop.rep_amount if stop is not None else None,
            stop_trigger=stop.rep_trigger if stop is not None else None,
            stop_rejections=self._failures(p, reported_only=True),
            exit_intent_id=ex.intent.id if ex is not None else None, halted=self._halted(p))

    def _count(self, step: Step) -> Step:
        if step:
            self.changes += 1
        for c in step.commands:
            self.counters[f"command_{type(c).__name__.lower()}"] += 1
        self.counters["reports"] += len(step.reports)
        for e in step.events:
            self.counters[f"event_{e.kind}"] += 1
        return step


__all__ = [
    "CLIENT_ORDER_NAMESPACE", "Amend", "Cancel", "Command", "DoorLimits", "Failure", "Lookup", "OrderManager",
    "Place", "PositionView", "Step", "emergency_client_id", "entry_client_id", "exit_client_id", "stop_client_id",
]
