"""The trading core's pure handler: signals in, decisions and intents out (DESIGN §4).

``TradingCore`` holds the state (the shared ``PositionLedger``, in-flight intents, exit plans,
cooldowns, today's realized PnL) and answers each input with a list of effects; the service
(service.py) wires it to the streams. No I/O, no wall clock: time comes from the injected clock,
so tests set it.

Inputs and what they return:

- ``on_signal(signal, kill_switch)``: exactly one ``DecisionMade`` to ``orders:signals`` (id
  derived from the signal id: 100 copies make one id, and a copy gets the very same effects
  back); for an accepted one an ``EntryIntent`` to ``orders:shadow`` (id derived from the
  decision's); for a blocked buy a ``TradingEvent`` to ``trading:events`` with kind = the first
  reason, at most one per kind per ``event_interval_secs`` (the next one says how many were
  suppressed). Bad input never raises and never makes an intent: unknown market, a price ≤ 0,
  no ATR under ``EXIT_MODE=atr`` each block with their reason. A **sell** signal never makes an
  intent (spot, long only): without a position it is blocked ``spot_long_only``; with one it is
  blocked ``sell_signal_ignored``, because exits belong to the position's plan (take-profit,
  resting stop, trailing, time stop) rather than to whichever strategy fires next; neither makes
  an event (they are normal, not alarms).
- ``on_book(top)``: exit and stop-amend intents for the open position in that market; never
  blocked by the kill switch or any guard.
- ``on_timer()``: time stops of positions whose market has gone quiet (optional; on_book checks
  them too).
- ``on_executed(report)``: folds the report into the ledger (``PoisonMessage`` for a report that
  can never be booked: nothing changes), marks intents final, starts the cooldown on a stop-out,
  adds realized PnL to its UTC day (the report's ``ts``, so a rebuild books the same day).
  Returns nothing.
- ``on_intent(intent)``: learns one of the core's own past intents from ``orders:shadow``.

Rebuild at start: feed ``orders:shadow`` to ``on_intent`` and ``orders:executed`` to
``on_executed`` (either order, or interleaved); both emit nothing and give the same in-flight
intents, positions, exit plans, cooldowns and daily PnL as live, because the live path learns its
own outputs through the very same methods. ``on_executed`` raising ``PoisonMessage`` during a
rebuild means that report was dead-lettered live: skip it.

In-flight: an entry intent counts as exposure (``amount × ref/limit price`` minus what has filled)
and as a position from the moment it is made until a final report (``filled``, ``canceled*``,
``expired``, ``rejected``) for its buy order arrives. An intent the executor never reports on stays
in flight (blocking, never overshooting). A stop-out is a sell report whose ``reason`` is
``stop_loss`` or ``trailing_stop``, or a sell for one of our ``trailing_stop`` exit intents: the
executor must set ``OrderExecuted.reason="stop_loss"`` on the resting stop's reports.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from tradestack import streams
from tradestack.clock import Clock
from tradestack.effects import Effect, IfKey, Output
from tradestack.errors import ConfigError
from tradestack.ledger import PositionLedger
from tradestack.markets import MarketCatalog, MarketRules
from tradestack.messages import (
    BookTopUpdated,
    DecisionMade,
    EntryIntent,
    ExitIntent,
    GuardCheck,
    Message,
    MessageFactory,
    Mode,
    OrderExecuted,
    SignalEmitted,
    Sizing,
    StopAmendIntent,
    TradingEvent,
    derive_id,
)

from .exits import (
    AmendAction,
    ExitAction,
    ExitConfig,
    PositionMonitor,
    PositionPlan,
    plan_levels,
)
from .guards import NOT_CHECKED, GuardChain, GuardContext, fmt, guard_check, trusted_model
from .sizing import RiskConfig, size_entry

ZERO = Decimal(0)
STOP_OUT_REASONS = frozenset({"stop_loss", "trailing_stop"})
# Exact sums (adding and subtracting never rounds at this precision): the running in-flight totals.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN,
                         rounding=decimal.ROUND_HALF_EVEN,
                         traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
_DAY_MS = 86_400_000
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Everything the core's decisions depend on (built once from the settings)."""

    mode: Mode = "paper"
    equity_eur: Decimal = Decimal(1000)  # paper equity; realized PnL is added to it
    risk: RiskConfig = field(default_factory=RiskConfig)
    exits: ExitConfig = field(default_factory=ExitConfig)
    guards: GuardChain = field(default_factory=lambda: GuardChain.from_config(None))
    entry_order_type: Literal["market", "limit"] = "market"
    event_interval_secs: int = 60
    decision_cache: int = 10_000  # signals whose effects are kept to answer copies identically

    @classmethod
    def from_settings(cls, settings: Any, mode: Mode) -> CoreConfig:
        """From a settings object with the attributes below (see the service's Settings); any bad
        value is one ConfigError line naming the setting."""
        def get(name: str, default: Any) -> Any:
            return getattr(settings, name, default)

        def dec(name: str, default: str | None) -> Decimal | None:
            value = get(name, default)
            if value is None or value == "":
                return None
            try:
                parsed = Decimal(str(value))
            except ArithmeticError:
                raise ConfigError(f"{name.upper()}={value!r} is not a number") from None
            if not parsed.is_finite():
                raise ConfigError(f"{name.upper()}={value!r} is not a finite number")
            return parsed

        def req(name: str, default: str) -> Decimal:
            value = dec(name, default)
            if value is None:
                raise ConfigError(f"{name.upper()} must be set")
            return value

        try:
            risk = RiskConfig(mode=get("risk_mode", "percent"), value=req("risk_value", "1"),
                              fee_rate=req("core_taker_fee_rate", "0.0025"))
            time_stop = get("exit_time_stop_secs", None)
            exits = ExitConfig(
                mode=get("exit_mode", "fixed"),
                stop_loss_pct=req("exit_stop_loss_pct", "2"),
                take_profit_pct=dec("exit_take_profit_pct", "4"),
                stop_atr_mult=req("exit_stop_atr_mult", "2"),
                take_profit_atr_mult=dec("exit_take_profit_atr_mult", "3"),
                trailing=get("exit_trailing", "off"),
                trailing_pct=req("exit_trailing_pct", "1.5"),
                trailing_atr_mult=req("exit_trailing_atr_mult", "2"),
                trailing_min_interval_secs=int(get("exit_trailing_min_interval_secs", 30)),
                time_stop_secs=int(time_stop) if time_stop else None,
                retry_secs=int(get("exit_retry_secs", 10)),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        equity = req("core_equity_eur", "1000")
        order_type = get("core_entry_order_type", "market")
        if order_type not in ("market", "limit"):
            raise ConfigError(f"CORE_ENTRY_ORDER_TYPE={order_type!r} must be market or limit")
        interval = int(get("core_event_interval_secs", 60))
        if interval < 0:
            raise ConfigError("CORE_EVENT_INTERVAL_SECS must be >= 0")
        return cls(mode=mode, equity_eur=equity, risk=risk, exits=exits,
                   guards=GuardChain.from_config(get("core_guards", None)), entry_order_type=order_type,
                   event_interval_secs=interval)


@dataclass(slots=True)
class InFlight:
    intent_id: str
    kind: Literal["entry", "exit"]
    market: str
    asset: str
    notional: Decimal  # entry: what it may spend (quote); exit: 0
    made_ms: int


@dataclass(slots=True)
class _EventWindow:
    last_ms: int
    suppressed: int = 0


_DECISION_FIELDS = frozenset(DecisionMade.model_fields)


def _finite(*values: Decimal | None) -> bool:
    """Every value a finite Decimal (or None)."""
    return all(v is None or (type(v) is Decimal and v.is_finite()) for v in values)


def _uncount(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def utc_day(ts_ms: int) -> str:
    """The UTC date of epoch ms ``ts_ms`` (a UTC day is exactly 86 400 000 ms: no leap seconds in
    epoch time), e.g. ``"2023-11-14"``."""
    return _day_name(ts_ms // _DAY_MS)


@functools.lru_cache(maxsize=64)
def _day_name(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


@functools.lru_cache(maxsize=256)
def _unit(exp: int) -> Decimal:
    return Decimal((0, (1,), exp))


def _exponent(value: Decimal) -> int:
    exp = value.as_tuple().exponent
    assert isinstance(exp, int), value  # finite
    return exp


def _as_summed(exact: Decimal, exp: int, prec: int) -> Decimal | None:
    """``exact``, the exact sum of non-negative terms whose smallest exponent is ``exp`` (0 at
    most: ``ZERO`` is one of them), written the way ``ZERO + t1 + t2 + ...`` in a context of
    ``prec`` digits writes it (exponent ``exp``), whatever the order; None when that sum would
    have rounded on the way (more than ``prec`` digits): then only the sum itself gives its answer.
    With non-negative terms every partial sum is at most the total and has an exponent >= ``exp``,
    so a total that fits in ``prec`` digits means no step rounded."""
    value = _EXACT.quantize(exact, _unit(exp))
    if value and value.adjusted() - exp + 1 > prec:
        return None
    return value


class _Sum:
    """A running exact sum of Decimal terms and the exponents of the terms it holds, so
    ``_as_summed`` gives exactly what summing the terms present would (value and exponent), in
    O(distinct exponents), however the terms came and went."""

    __slots__ = ("exact", "exps", "n")

    def __init__(self) -> None:
        self.exact = ZERO
        self.exps: Counter[int] = Counter()
        self.n = 0

    def add(self, term: Decimal, exp: int) -> None:
        self.exact = _EXACT.add(self.exact, term)
        self.exps[exp] += 1
        self.n += 1

    def remove(self, term: Decimal, exp: int) -> None:
        self.n -= 1
        _uncount(self.exps, exp)
        self.exact = _EXACT.subtract(self.exact, term) if self.n else ZERO

    def min_exp(self) -> int:
        """The smallest exponent of the terms and of ZERO's (0)."""
        return min(min(self.exps), 0) if self.exps else 0


class TradingCore:
    """The pure decider; see the module docstring."""

    def __init__(self, config: CoreConfig, catalog: MarketCatalog, factory: MessageFactory, clock: Clock,
                 ledger: PositionLedger | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.factory = factory
        self.clock = clock
        self.ledger = ledger if ledger is not None else PositionLedger()
        self.monitor = PositionMonitor(config.exits)
        self._trusted_decisions = isinstance(factory.src, str) and config.mode in ("paper", "sandbox", "live")
        self._catalog_markets = frozenset(catalog)
        self._inflight: dict[str, InFlight] = {}
        # Kept with _inflight by _add_flight/_drop_flight/_add_filled only, so a decision is O(1)
        # in the number of intents in flight (tests/core/test_core_speed_invariants.py):
        self._flight_kinds: Counter[str] = Counter()  # entry/exit → intents in flight
        self._entry_markets: Counter[str] = Counter()  # market → entries in flight
        self._left: dict[str, tuple[Decimal, int]] = {}  # entry in flight → (unfilled notional, its exponent)
        self._left_by_asset: dict[str, _Sum] = {}  # asset → sum of its entries' unfilled notional
        self._left_total = _Sum()
        self._final: set[tuple[str, str]] = set()  # (intent id, side) with a final report
        self._filled_quote: dict[str, Decimal] = {}  # intent id → quote its buy orders filled
        self._known_intents: set[str] = set()
        self._exit_reasons: dict[str, str] = {}  # exit intent id → reason
        self._decided: OrderedDict[str, list[Effect]] = OrderedDict()
        self._decided_before: set[str] = set()  # signals whose intents were learned from history
        self._bids: dict[str, Decimal] = {}
        self._last_book: dict[str, BookTopUpdated] = {}
        self._stop_outs: dict[str, int] = {}  # market → last stop-out (report ts)
        self._sold: dict[str, int] = {}  # intent id → last sell fill's ts (stop-outs learned late)
        self._daily_realized: dict[str, Decimal] = {}
        self._events: dict[str, _EventWindow] = {}
        self._equity_override: Decimal | None = None
        # metrics
        self.decisions: Counter[tuple[str, str]] = Counter()  # (outcome, first reason)
        self.blocked_reasons: Counter[str] = Counter()  # every reason of every blocked decision
        self.intents: Counter[str] = Counter()  # entry, exit, amend_stop (made live)
        self.events_suppressed = 0

    # -- inputs -----------------------------------------------------------------------------

    def on_signal(self, msg: SignalEmitted, kill_switch: bool) -> list[Effect]:
        cached = self._decided.get(msg.id)
        if cached is not None:
            return list(cached)
        if msg.id in self._decided_before:
            return []  # decided before a restart; its outputs are already in the streams
        effects = self._decide(msg, kill_switch)
        self._decided[msg.id] = effects
        while len(self._decided) > self.config.decision_cache:
            self._decided.popitem(last=False)
        return list(effects)

    def on_signal_gated(self, msg: SignalEmitted, kill_switch: bool) -> list[Effect]:
        """``on_signal`` for the live loop: an accepted entry is wrapped in an ``IfKey`` on
        ``trading:kill``, so the commit itself reads the switch again. Set between this call and the
        commit, the switch picks the blocked branch (the same decision id, ``blocked:
        kill_switch``, no intent), and ``_retract`` forgets the intent the core had counted: no
        entry intent is ever committed while the switch is on, whatever the watcher's poll saw."""
        effects = self.on_signal(msg, kill_switch)
        if kill_switch or not effects:
            return effects
        first = effects[0]
        if not (isinstance(first, Output) and isinstance(first.msg, DecisionMade) and first.msg.accepted):
            return effects
        intent = next(e.msg for e in effects if isinstance(e, Output) and isinstance(e.msg, EntryIntent))
        blocked = self._killed_variant(first.msg)

        def chosen(killed: bool | None) -> None:
            if killed:
                self._retract(msg.id, intent, blocked)

        return [IfKey(streams.KILL, "1", then=tuple(blocked), otherwise=tuple(effects), on_chosen=chosen)]

    def _killed_variant(self, decision: DecisionMade) -> list[Effect]:
        checks = [guard_check(c.name, False, "on (read at commit)", "off", "kill_switch") if c.name == "kill_switch"
                  else c for c in decision.checks]
        update = {"accepted": False, "reasons": ["kill_switch"], "checks": checks, "intent_id": None}
        message = f"entry blocked in {decision.market}: kill_switch (set while the signal was being decided)"
        ts = self.factory.clock.now_ms()
        if self._trusted_decisions and type(ts) is int and set(decision.model_fields_set) == _DECISION_FIELDS:
            # Made on every accepted entry (the branch the commit takes if the switch is set meanwhile)
            # and rarely used: the decision's own validated fields with four replaced by values of their
            # type, and an event of str fields only. The same objects, byte for byte, as model_copy and
            # factory.child make (tests/core/test_core_fast_paths.py).
            blocked = trusted_model(DecisionMade, {**decision.__dict__, **update})
            event: TradingEvent = trusted_model(TradingEvent, dict(
                id=derive_id(blocked.id, TradingEvent.TYPE), ts=ts, src=self.factory.src, trace=blocked.trace,
                v=TradingEvent.V, kind="kill_switch", severity="warning", message=message,
                details={"decision_id": blocked.id, "signal_id": blocked.signal_id, "market": blocked.market,
                         "strategy": blocked.strategy, "reasons": "kill_switch"}))
        else:
            blocked = decision.model_copy(update=update)
            event = self.factory.child(
                blocked, TradingEvent, kind="kill_switch", severity="warning", message=message,
                details={"decision_id": blocked.id, "signal_id": blocked.signal_id, "market": blocked.market,
                         "strategy": blocked.strategy, "reasons": "kill_switch"})
        return [Output(streams.ORDERS_SIGNALS, blocked), Output(streams.TRADING_EVENTS, event)]

    def _retract(self, signal_id: str, intent: EntryIntent, blocked: list[Effect]) -> None:
        """Undo what deciding ``intent`` taught the core, because the commit wrote the blocked branch."""
        self._known_intents.discard(intent.id)
        self._drop_flight(intent.id)
        self._decided_before.discard(signal_id)
        plan = self.monitor.get(intent.market)
        if plan is not None and plan.position_id == intent.id:
            self.monitor.close(intent.market)
        _uncount(self.decisions, ("accepted", ""))
        _uncount(self.intents, "entry")
        self.decisions[("blocked", "kill_switch")] += 1
        self.blocked_reasons["kill_switch"] += 1
        if signal_id in self._decided:
            self._decided[signal_id] = list(blocked)

    def set_catalog(self, catalog: MarketCatalog) -> None:
        """New market rules (the periodic ``/markets`` refresh); plans keep the rules they opened with."""
        self.catalog = catalog
        self._catalog_markets = frozenset(catalog)

    def on_book(self, msg: BookTopUpdated) -> list[Effect]:
        if msg.bid <= 0:
            return []
        self._bids[msg.market] = msg.bid
        self._last_book[msg.market] = msg
        if msg.market not in self.monitor.plans:
            return []
        return self._act(self.monitor.on_book(msg.market, msg.bid, self.clock.now_ms()), msg)

    def on_timer(self) -> list[Effect]:
        """Time stops for positions whose market sent no book top lately (call every few seconds)."""
        out: list[Effect] = []
        now = self.clock.now_ms()
        for action in self.monitor.on_time(now, self._bids):
            out.extend(self._act([action], self._last_book[action.market]))
        return out

    def on_executed(self, msg: OrderExecuted) -> list[Effect]:
        booking = self.ledger.apply(msg)  # PoisonMessage: nothing has changed
        if booking is None:
            return []
        if booking.side == "buy":
            self._add_filled(msg.intent_id, booking.delta_quote)
        if booking.realized:
            day = utc_day(msg.ts)
            self._daily_realized[day] = self._daily_realized.get(day, ZERO) + booking.realized
        if booking.side == "sell" and booking.delta_amount > 0:
            self._sold[msg.intent_id] = max(self._sold.get(msg.intent_id, 0), msg.ts)
            if msg.reason in STOP_OUT_REASONS or self._exit_reasons.get(msg.intent_id) in STOP_OUT_REASONS:
                self._stop_out(msg.market, msg.ts)
        if booking.became_final:
            self._final.add((msg.intent_id, booking.side))
            flight = self._inflight.get(msg.intent_id)
            if flight is not None and (flight.kind == "entry") == (booking.side == "buy"):
                self._drop_flight(msg.intent_id)
                if flight.kind == "exit":
                    self.monitor.exit_done(msg.market, msg.intent_id)
        pos = self.ledger.position(msg.market)
        size = pos.size if pos is not None else ZERO
        self.monitor.on_fill(msg.market, size, pos.avg_price if pos is not None else None, msg.ts)
        if size == 0 and not self._entry_in_flight(msg.market):
            self.monitor.close(msg.market)
        return []

    def on_intent(self, msg: Message) -> list[Effect]:
        """Learn one of the core's own intents from ``orders:shadow`` (rebuild). Emits nothing."""
        if isinstance(msg, EntryIntent):
            self._learn_entry(msg)
        elif isinstance(msg, ExitIntent):
            self._learn_exit(msg)
        elif isinstance(msg, StopAmendIntent):
            self._learn_amend(msg)
        return []

    def prime_book(self, msg: BookTopUpdated) -> None:
        """Remember a book top without acting on it: at start, the latest top of each market (so
        exposure is valued at the same marks as before the restart)."""
        if msg.bid > 0:
            self._bids[msg.market] = msg.bid
            self._last_book[msg.market] = msg

    def set_equity(self, equity_eur: Decimal | None) -> None:
        """Equity from outside (e.g. the exchange balance); None returns to config + realized."""
        self._equity_override = equity_eur

    @property
    def equity(self) -> Decimal:
        if self._equity_override is not None:
            return self._equity_override
        return self.config.equity_eur + self.ledger.realized

    # -- deciding ---------------------------------------------------------------------------

    def _decide(self, msg: SignalEmitted, kill_switch: bool) -> list[Effect]:
        now = self.clock.now_ms()
        rules = self.catalog.get(msg.market)
        if msg.side != "buy":
            has = self.ledger.size(msg.market) > 0
            reason = "sell_signal_ignored" if has else "spot_long_only"
            check = guard_check("signal", False, f"sell {msg.market}", "buy (spot, long only)", reason)
            decision = self._decision(msg, False, [check], None, None, None)
            self.decisions[("blocked", reason)] += 1
            self.blocked_reasons[reason] += 1
            return [Output(streams.ORDERS_SIGNALS, decision)]

        input_checks: list[GuardCheck] = []
        price = ZERO
        if rules is None:
            input_checks.append(guard_check("signal", False, msg.market, "catalogue", "unknown_market"))
        elif msg.ref_price <= 0:
            input_checks.append(guard_check("signal", False, fmt(msg.ref_price), "> 0", "bad_price"))
        else:
            price = rules.round_price(msg.ref_price, "up")  # pay at most this: size conservatively
            input_checks.append(guard_check("signal", True, fmt(price), "> 0"))

        levels = None
        sizing_outcome = None
        if rules is not None and price > 0:
            planned = plan_levels(self.config.exits, price, msg.atr, rules)
            if isinstance(planned, str):
                atr = fmt(msg.atr) if msg.atr is not None else "none"
                input_checks.append(guard_check("exit_plan", False, f"atr {atr}", f"exit mode {self.config.exits.mode}",
                                                planned))
            else:
                levels = planned
                input_checks.append(guard_check(
                    "exit_plan", True, f"stop {fmt(levels.stop)}",
                    f"take_profit {fmt(levels.take_profit) if levels.take_profit is not None else 'none'}"))

        asset = rules.base if rules is not None else msg.market.split("-")[0]
        held_asset, total = self._exposure_of(asset)
        if levels is not None and rules is not None:
            caps = self.config.guards.caps
            rooms = {
                "max_order_notional": caps.max_order_notional_eur,
                "max_asset_exposure": None if caps.max_asset_exposure_eur is None
                else caps.max_asset_exposure_eur - held_asset,
                "max_global_exposure": None if caps.max_global_exposure_eur is None
                else caps.max_global_exposure_eur - total,
            }
            sizing_outcome = size_entry(equity=self.equity, risk=self.config.risk, entry_price=price,
                                        stop_price=levels.stop, rules=rules, rooms=rooms)
            if sizing_outcome.reason is not None:
                input_checks.append(guard_check("sizing", False, fmt(self.equity), "> 0", sizing_outcome.reason))
        amount = sizing_outcome.amount if sizing_outcome is not None else ZERO
        notional = amount * price
        ctx = GuardContext(
            market=msg.market, asset=asset, kill_switch=kill_switch, rules=rules, amount=amount, price=price,
            notional=notional, market_has_position=self._has_position(msg.market),
            open_positions=self._open_positions(), asset_exposure=held_asset, global_exposure=total,
            daily_loss=self.daily_loss(now), last_stop_out_ms=self._stop_outs.get(msg.market), now_ms=now,
            catalog_markets=self._catalog_markets,
            exchange_reason=sizing_outcome.exchange_reason
            if sizing_outcome is not None and sizing_outcome.sizing is not None else NOT_CHECKED,
        )
        # The signal's own checks first (so bad input is the first reason), then every guard.
        checks = input_checks + self.config.guards.check(ctx)
        reasons = [c.reason for c in checks if not c.passed and c.reason]
        if len(reasons) > 1:
            reasons = list(dict.fromkeys(reasons))  # unique, in order
        accepted = not reasons
        sizing = sizing_outcome.sizing if sizing_outcome is not None else None
        stop = levels.stop if levels is not None else None
        tp = levels.take_profit if levels is not None else None
        decision_id = derive_id(msg.id, DecisionMade.TYPE)
        intent_id = derive_id(decision_id, EntryIntent.TYPE) if accepted else None
        decision = self._decision(msg, accepted, checks, sizing, (stop, tp), intent_id, reasons, decision_id)
        out: list[Effect] = [Output(streams.ORDERS_SIGNALS, decision)]
        if accepted:
            assert levels is not None and sizing is not None and rules is not None and intent_id is not None
            # What factory.child(decision, EntryIntent, ...) makes, with the id already derived.
            ts = self.factory.clock.now_ms()
            time_stop = self.config.exits.time_stop_secs
            fields: dict[str, Any] = dict(
                id=intent_id, ts=ts, src=self.factory.src, trace=decision.trace, v=EntryIntent.V,
                decision_id=decision.id, signal_id=msg.id, market=msg.market, side="buy",
                order_type=self.config.entry_order_type, amount=amount,
                price=price if self.config.entry_order_type == "limit" else None, ref_price=price,
                stop_price=levels.stop, take_profit_price=levels.take_profit,
                trailing_distance=levels.trail_distance, time_stop_secs=time_stop,
                strategy=msg.strategy, strategy_params=dict(msg.params), checks=checks, sizing=sizing,
                mode=self.config.mode)
            if (self._trusted_decisions and type(ts) is int and self.config.entry_order_type in ("market", "limit")
                    and (time_stop is None or type(time_stop) is int) and type(sizing) is Sizing
                    and _finite(amount, price, levels.stop, levels.take_profit, levels.trail_distance)):
                # As the decision's: every field already of its validated type (the amount and prices
                # from round_amount_down/round_price, the trailing distance from finite config and ATR
                # checked here), so validating again only costs (same JSON: tests/core/test_core_fast_paths.py).
                intent: EntryIntent = trusted_model(EntryIntent, fields)
            else:
                intent = EntryIntent(**fields)
            self._learn_entry(intent, live=True)
            out.append(Output(streams.ORDERS_SHADOW, intent))
            self.decisions[("accepted", "")] += 1
        else:
            self.decisions[("blocked", reasons[0])] += 1
            blocked = self.blocked_reasons
            for reason in reasons:
                blocked[reason] += 1
            event = self._blocked_event(decision, reasons, now)
            if event is not None:
                out.append(Output(streams.TRADING_EVENTS, event))
        return out

    def _decision(self, msg: SignalEmitted, accepted: bool, checks: list[GuardCheck], sizing: Any,
                  levels: tuple[Decimal | None, Decimal | None] | None, intent_id: str | None,
                  reasons: list[str] | None = None, decision_id: str | None = None) -> DecisionMade:
        if reasons is None:
            reasons = [c.reason for c in checks if not c.passed and c.reason]
        stop, tp = levels if levels is not None else (None, None)
        # What factory.child(msg, DecisionMade, ...) makes (the id derived from the signal's).
        ts = self.factory.clock.now_ms()
        fields = dict(
            id=decision_id or derive_id(msg.id, DecisionMade.TYPE), ts=ts, src=self.factory.src,
            trace=msg.trace, v=DecisionMade.V, signal_id=msg.id, market=msg.market, strategy=msg.strategy,
            strategy_params=dict(msg.params), side=msg.side, ref_price=msg.ref_price, atr=msg.atr,
            accepted=accepted, reasons=reasons, checks=checks, sizing=sizing, stop_price=stop,
            take_profit_price=tp, intent_id=intent_id, mode=self.config.mode)
        if self._trusted_decisions and type(ts) is int:
            # Every field is already of its validated type: the signal's (validated when decoded), ids
            # from derive_id, new lists of str and of GuardCheck, a Sizing, prices from round_price,
            # src and mode checked at start. The audit record of every signal: validating it again
            # was a fifth of the decision (tests/core/test_core_speed_invariants.py: same JSON).
            return trusted_model(DecisionMade, fields)
        return DecisionMade(**fields)

    def _blocked_event(self, decision: DecisionMade, reasons: list[str], now: int) -> TradingEvent | None:
        kind = reasons[0]
        window = self._events.get(kind)
        if window is not None and now - window.last_ms < self.config.event_interval_secs * 1000:
            window.suppressed += 1
            self.events_suppressed += 1
            return None
        suppressed = window.suppressed if window is not None else 0
        self._events[kind] = _EventWindow(now)
        return self.factory.child(
            decision, TradingEvent, kind=kind, severity="warning",
            message=f"entry blocked in {decision.market}: {', '.join(reasons)}",
            details={"decision_id": decision.id, "signal_id": decision.signal_id, "market": decision.market,
                     "strategy": decision.strategy, "reasons": ",".join(reasons),
                     "suppressed_since_last": str(suppressed),
                     "window_secs": str(self.config.event_interval_secs)})

    # -- exits ------------------------------------------------------------------------------

    def _act(self, actions: list[ExitAction | AmendAction], book: BookTopUpdated) -> list[Effect]:
        out: list[Effect] = []
        now = self.clock.now_ms()
        for action in actions:
            msg: Message
            if isinstance(action, ExitAction):
                msg = ExitIntent(
                    id=derive_id(action.position_id, f"exit/{action.attempt}"), ts=now, src=self.factory.src,
                    trace=book.trace, v=ExitIntent.V, position_id=action.position_id, market=action.market,
                    side="sell", order_type="market", amount=action.amount, price=None, reason=action.reason,
                    trigger_price=action.trigger_price, level=action.level, opened_ts=action.opened_ms,
                    mode=self.config.mode)
                self._learn_exit(msg)
                self.intents["exit"] += 1
            else:
                msg = StopAmendIntent(
                    id=derive_id(action.position_id, f"amend/{fmt(action.stop_price)}"), ts=now,
                    src=self.factory.src, trace=book.trace, v=StopAmendIntent.V, position_id=action.position_id,
                    market=action.market, amount=action.amount, stop_price=action.stop_price,
                    previous_stop=action.previous_stop, high_price=action.high_price,
                    trailing_distance=action.trailing_distance, mode=self.config.mode)
                self._learn_amend(msg)
                self.intents["amend_stop"] += 1
            out.append(Output(streams.ORDERS_SHADOW, msg))
        return out

    # -- learning own intents (live and rebuild share these) ----------------------------------

    def _learn_entry(self, intent: EntryIntent, live: bool = False) -> None:
        if intent.id in self._known_intents:
            return
        self._known_intents.add(intent.id)
        if intent.signal_id is not None:
            self._decided_before.add(intent.signal_id)
        if live:
            self.intents["entry"] += 1
        rules = self.catalog.get(intent.market)
        asset = rules.base if rules is not None else intent.market.split("-")[0]
        filled = (intent.id, "buy") in self._final
        # What it may spend: the limit price, else the price it was sized at; a hand-made market
        # intent has neither: the best bid, else its stop (a floor; such intents bypass the core).
        ref = intent.price or intent.ref_price or self._bids.get(intent.market) or intent.stop_price
        if not filled:
            self._add_flight(InFlight(intent.id, "entry", intent.market, asset, intent.amount * ref, intent.ts))
        if rules is None:
            return
        if intent.market in self.monitor.plans:
            return  # the market keeps the plan it has (PositionMonitor.open)
        size = self.ledger.size(intent.market)
        if filled and size == 0:
            return  # entry done and the position gone (or never filled)
        # Trailing as configured now; an ATR trail keeps the distance the intent was planned with.
        trail_pct = self.config.exits.trailing_pct if self.config.exits.trailing == "pct" else None
        trail_distance = intent.trailing_distance if self.config.exits.trailing == "atr" else None
        pos = self.ledger.position(intent.market)
        self.monitor.open(PositionPlan(
            position_id=intent.id, market=intent.market, rules=rules, entry_price=ref,
            initial_stop=intent.stop_price, stop=intent.stop_price, take_profit=intent.take_profit_price,
            trail_pct=trail_pct, trail_distance=trail_distance, time_stop_secs=intent.time_stop_secs,
            high=ref, size=size, opened_ms=pos.opened_ts if pos is not None and size > 0 else None))

    def _learn_exit(self, intent: ExitIntent) -> None:
        if intent.id in self._known_intents:
            return
        self._known_intents.add(intent.id)
        self._exit_reasons[intent.id] = intent.reason
        if intent.reason in STOP_OUT_REASONS and intent.id in self._sold:
            self._stop_out(intent.market, self._sold[intent.id])  # its fills were folded first
        if (intent.id, "sell") in self._final:
            plan = self.monitor.get(intent.market)
            if plan is not None:  # count the attempt, but it is over
                plan.exit_attempts += 1
                plan.last_exit_ms = intent.ts
            return
        self._add_flight(InFlight(intent.id, "exit", intent.market, intent.market.split("-")[0], ZERO, intent.ts))
        self.monitor.learn_exit(intent.market, intent.id, intent.ts)

    def _learn_amend(self, intent: StopAmendIntent) -> None:
        if intent.id in self._known_intents:
            return
        self._known_intents.add(intent.id)
        self.monitor.learn_amend(intent.market, intent.stop_price, intent.high_price, intent.ts)

    # -- state views ------------------------------------------------------------------------

    def _stop_out(self, market: str, ts: int) -> None:
        self._stop_outs[market] = max(self._stop_outs.get(market, 0), ts)

    # In flight: every change goes through these three, which keep the counts and sums with it.

    def _add_flight(self, flight: InFlight) -> None:
        self._drop_flight(flight.intent_id)
        self._inflight[flight.intent_id] = flight
        self._flight_kinds[flight.kind] += 1
        if flight.kind == "entry":
            self._entry_markets[flight.market] += 1
            self._count_left(flight)

    def _drop_flight(self, intent_id: str) -> InFlight | None:
        flight = self._inflight.pop(intent_id, None)
        if flight is not None:
            _uncount(self._flight_kinds, flight.kind)
            if flight.kind == "entry":
                _uncount(self._entry_markets, flight.market)
                self._uncount_left(flight)
        return flight

    def _add_filled(self, intent_id: str, quote: Decimal) -> None:
        """``quote`` more filled by the intent's buy orders (its unfilled notional shrinks)."""
        self._filled_quote[intent_id] = self._filled_quote.get(intent_id, ZERO) + quote
        flight = self._inflight.get(intent_id)
        if flight is not None and flight.kind == "entry":
            self._uncount_left(flight)
            self._count_left(flight)

    def _count_left(self, flight: InFlight) -> None:
        # What an entry still may spend: never below 0 (it filled for more than its notional).
        left = max(flight.notional - self._filled_quote.get(flight.intent_id, ZERO), ZERO)
        exp = _exponent(left)
        self._left[flight.intent_id] = (left, exp)
        sums = self._left_by_asset.get(flight.asset)
        if sums is None:
            sums = self._left_by_asset[flight.asset] = _Sum()
        sums.add(left, exp)
        self._left_total.add(left, exp)

    def _uncount_left(self, flight: InFlight) -> None:
        left, exp = self._left.pop(flight.intent_id)
        sums = self._left_by_asset[flight.asset]
        sums.remove(left, exp)
        if not sums.n:
            del self._left_by_asset[flight.asset]
        self._left_total.remove(left, exp)

    def _entry_in_flight(self, market: str) -> bool:
        return market in self._entry_markets

    def _has_position(self, market: str) -> bool:
        return self.ledger.size(market) > 0 or market in self._entry_markets

    def open_positions(self) -> int:
        """Markets with an open position or an in-flight entry."""
        return self._open_positions()

    def _open_positions(self) -> int:
        entries = self._entry_markets
        return len(entries) + sum(1 for m in self.ledger.positions if m not in entries)

    def _asset_of(self, market: str) -> str:
        rules = self.catalog.get(market)
        return rules.base if rules is not None else market.split("-")[0]

    def _exposures(self) -> tuple[dict[str, Decimal], Decimal]:
        """Asset → EUR held (at the best bid, or cost without one) plus in-flight entries' unfilled
        notional; and the total. O(open positions + assets in flight)."""
        prec = decimal.getcontext().prec
        sums: dict[str, tuple[Decimal, int]] = {}  # asset → (exact sum, smallest exponent with ZERO's)
        total, total_exp = self._left_total.exact, self._left_total.min_exp()
        for market, value in self.ledger.exposure(self._bids).items():
            if value < 0:
                return self._exposures_scan()
            exp = _exponent(value)
            asset = self._asset_of(market)
            had, had_exp = sums.get(asset, (ZERO, 0))
            sums[asset] = (_EXACT.add(had, value), min(had_exp, exp))
            total, total_exp = _EXACT.add(total, value), min(total_exp, exp)
        for asset, left in self._left_by_asset.items():
            had, had_exp = sums.get(asset, (ZERO, 0))
            sums[asset] = (_EXACT.add(had, left.exact), min(had_exp, left.min_exp()))
        summed = _as_summed(total, total_exp, prec)
        if summed is None:
            return self._exposures_scan()
        per_asset: dict[str, Decimal] = {}
        for asset, (exact, exp) in sums.items():
            asset_sum = _as_summed(exact, exp, prec)
            if asset_sum is None:
                return self._exposures_scan()
            per_asset[asset] = asset_sum
        return per_asset, summed

    def _exposure_of(self, asset: str) -> tuple[Decimal, Decimal]:
        """``(_exposures()[0].get(asset, ZERO), _exposures()[1])`` in O(open positions)."""
        prec = decimal.getcontext().prec
        left = self._left_by_asset.get(asset)
        held, held_exp = (left.exact, left.min_exp()) if left is not None else (ZERO, 0)
        total, total_exp = self._left_total.exact, self._left_total.min_exp()
        for market, value in self.ledger.exposure(self._bids).items():
            if value < 0:
                break
            exp = _exponent(value)
            if self._asset_of(market) == asset:
                held, held_exp = _EXACT.add(held, value), min(held_exp, exp)
            total, total_exp = _EXACT.add(total, value), min(total_exp, exp)
        else:
            summed_held = _as_summed(held, held_exp, prec)
            summed_total = _as_summed(total, total_exp, prec)
            if summed_held is not None and summed_total is not None:
                return summed_held, summed_total
        per_asset, summed = self._exposures_scan()
        return per_asset.get(asset, ZERO), summed

    def _exposures_scan(self) -> tuple[dict[str, Decimal], Decimal]:
        """``_exposures`` from scratch, O(intents in flight): the reference the kept sums equal
        (and the answer when a sum would round at the context's precision)."""
        per_asset: dict[str, Decimal] = {}
        for market, value in self.ledger.exposure(self._bids).items():
            asset = self._asset_of(market)
            per_asset[asset] = per_asset.get(asset, ZERO) + value
        for flight in self._inflight.values():
            if flight.kind == "entry":
                left = max(flight.notional - self._filled_quote.get(flight.intent_id, ZERO), ZERO)
                per_asset[flight.asset] = per_asset.get(flight.asset, ZERO) + left
        return per_asset, sum(per_asset.values(), ZERO)

    def daily_loss(self, now_ms: int | None = None) -> Decimal:
        """Realized loss of the current UTC day (positive = lost), net of today's gains."""
        realized = self._daily_realized.get(utc_day(self.clock.now_ms() if now_ms is None else now_ms), ZERO)
        return max(ZERO, -realized)

    def cooldowns(self) -> dict[str, int]:
        """Market → epoch ms its stop-out cooldown ends (only running ones)."""
        secs = self.config.guards.cooldown_secs
        if secs is None:
            return {}
        now = self.clock.now_ms()
        return {m: ts + secs * 1000 for m, ts in self._stop_outs.items() if ts + secs * 1000 > now}

    def in_flight(self) -> list[InFlight]:
        return sorted(self._inflight.values(), key=lambda f: (f.made_ms, f.intent_id))

    def in_flight_counts(self) -> dict[str, int]:
        """Intents in flight by kind (entry, exit): ``in_flight()`` counted, in O(1)."""
        return {"entry": self._flight_kinds["entry"], "exit": self._flight_kinds["exit"]}

    def exposure(self) -> dict[str, Decimal]:
        return self._exposures()[0]

    def summary(self) -> dict[str, Any]:
        """For ``--once`` and metrics: JSON-able (decimals as strings)."""
        per_asset, total = self._exposures()
        outcomes: Counter[str] = Counter()
        for (outcome, _), n in self.decisions.items():
            outcomes[outcome] += n
        positions = {m: {"size": fmt(p.size),
                         "avg_cost": fmt(p.avg_cost.quantize(Decimal("1e-8"))) if p.avg_cost is not None else None,
                         "realized": fmt(p.realized), "fees": fmt(p.fees)}
                     for m, p in sorted(self.ledger.positions.items())}
        return {
            "mode": self.config.mode,
            "decisions": dict(outcomes),
            "decisions_by_reason": {f"{o}:{r}" if r else o: n for (o, r), n in sorted(self.decisions.items())},
            "blocked_reasons": dict(sorted(self.blocked_reasons.items())),
            "intents": dict(sorted(self.intents.items())),
            "exposure_eur": {a: fmt(v) for a, v in sorted(per_asset.items())},
            "global_exposure_eur": fmt(total),
            "open_positions": self._open_positions(),
            "positions": positions,
            "in_flight": [{"intent_id": f.intent_id, "kind": f.kind, "market": f.market,
                           "notional_eur": fmt(f.notional)} for f in self.in_flight()],
            "equity_eur": fmt(self.equity),
            "realized_eur": fmt(self.ledger.realized),
            "daily_loss_eur": fmt(self.daily_loss()),
            "cooldowns": self.cooldowns(),
            "events_suppressed": self.events_suppressed,
            "guards": self.config.guards.describe(),
        }

    def summary_json(self) -> str:
        return json.dumps(self.summary(), sort_keys=True)


__all__ = ["STOP_OUT_REASONS", "CoreConfig", "InFlight", "MarketRules", "TradingCore", "utc_day"]
