"""Exits: the levels an entry is planned with, and the monitor that follows the book afterwards.

Levels (``EXIT_MODE``):

- ``fixed``: stop = entry × (1 − ``EXIT_STOP_LOSS_PCT``/100), take-profit = entry × (1 + ``EXIT_TAKE_PROFIT_PCT``/100)
- ``atr``: stop = entry − ``EXIT_STOP_ATR_MULT``·ATR, take-profit = entry + ``EXIT_TAKE_PROFIT_ATR_MULT``·ATR;
  a signal without ATR (or ATR ≤ 0) cannot be planned: reason ``no_atr``.

Rounding to ``tickSize`` (long positions only, spot):

- the stop rounds **down**: never above (tighter than) the intended stop, so noise the strategy
  allowed for does not stop it out; the size is computed from the rounded stop, so the risk
  amount still holds;
- the take-profit rounds **up**: never below the intended target, so the reward/risk ratio is never
  worse than configured;
- a trailing stop rounds **down** and only ever moves up, by at least one tick.

The protective stop rests on the exchange (the executor places it at the fill). The monitor,
given book tops, emits:

- an exit when the best bid reaches the take-profit (``take_profit``), falls to a trailing stop
  that has moved above the initial stop (``trailing_stop``; the resting stop may lag behind it by
  the amend rate limit), or the position is older than ``EXIT_TIME_STOP_SECS`` (``time_stop``);
  one exit at a time per position, retried after ``EXIT_RETRY_SECS`` if its order ends with coins
  left;
- a stop amend when the trailing stop (``EXIT_TRAILING=pct|atr``: best-bid high × (1 − pct/100),
  or high − mult·ATR at entry) is at least one tick above the stop, at most once per
  ``EXIT_TRAILING_MIN_INTERVAL_SECS`` per position.

The monitor's state changes only through ``open``/``learn_*`` calls, which the core makes for its
own outputs both live and when folding ``orders:shadow`` at start, so a rebuilt monitor is the
live one (apart from the best-bid high, rebuilt from the last amend's ``high_price``).
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from tradestack.markets import MarketRules

ZERO = Decimal(0)
HUNDRED = Decimal(100)
_CTX = decimal.Context(prec=40)
ExitMode = Literal["fixed", "atr"]
TrailingMode = Literal["off", "pct", "atr"]
ExitReason = Literal["take_profit", "trailing_stop", "time_stop"]


@dataclass(frozen=True, slots=True)
class ExitConfig:
    mode: ExitMode = "fixed"
    stop_loss_pct: Decimal = Decimal(2)
    take_profit_pct: Decimal | None = Decimal(4)  # None: no take-profit
    stop_atr_mult: Decimal = Decimal(2)
    take_profit_atr_mult: Decimal | None = Decimal(3)
    trailing: TrailingMode = "off"
    trailing_pct: Decimal = Decimal("1.5")
    trailing_atr_mult: Decimal = Decimal(2)
    trailing_min_interval_secs: int = 30
    time_stop_secs: int | None = None  # None: no time stop
    retry_secs: int = 10

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "atr"):
            raise ValueError(f"EXIT_MODE {self.mode!r} must be fixed or atr")
        if self.trailing not in ("off", "pct", "atr"):
            raise ValueError(f"EXIT_TRAILING {self.trailing!r} must be off, pct or atr")
        if not ZERO < self.stop_loss_pct < HUNDRED:
            raise ValueError("EXIT_STOP_LOSS_PCT must be in (0, 100)")
        if self.take_profit_pct is not None and self.take_profit_pct <= 0:
            raise ValueError("EXIT_TAKE_PROFIT_PCT must be > 0 (unset for none)")
        if self.stop_atr_mult <= 0 or (self.take_profit_atr_mult is not None and self.take_profit_atr_mult <= 0):
            raise ValueError("ATR multiples must be > 0")
        if not ZERO < self.trailing_pct < HUNDRED or self.trailing_atr_mult <= 0:
            raise ValueError("EXIT_TRAILING_PCT must be in (0, 100) and EXIT_TRAILING_ATR_MULT > 0")
        if self.trailing_min_interval_secs < 0 or self.retry_secs < 0:
            raise ValueError("intervals must be >= 0")
        if self.time_stop_secs is not None and self.time_stop_secs <= 0:
            raise ValueError("EXIT_TIME_STOP_SECS must be > 0 (unset for none)")


@dataclass(frozen=True, slots=True)
class ExitLevels:
    stop: Decimal
    take_profit: Decimal | None
    trail_pct: Decimal | None  # trailing by a percentage of the high
    trail_distance: Decimal | None  # trailing by a fixed distance (ATR multiple), or pct's at entry


def plan_levels(cfg: ExitConfig, entry: Decimal, atr: Decimal | None,
                rules: MarketRules) -> ExitLevels | str:
    """The stop, take-profit and trailing for a long entry at ``entry`` (on the tick grid), or the
    reason there is none: ``no_atr`` (atr mode or ATR trailing without ATR), ``bad_stop``."""
    needs_atr = cfg.mode == "atr" or cfg.trailing == "atr"
    if needs_atr and (atr is None or atr <= 0):
        return "no_atr"
    if cfg.mode == "fixed":
        stop_raw = entry * (HUNDRED - cfg.stop_loss_pct) / HUNDRED
        tp_raw = entry * (HUNDRED + cfg.take_profit_pct) / HUNDRED if cfg.take_profit_pct is not None else None
    else:
        assert atr is not None
        stop_raw = entry - cfg.stop_atr_mult * atr
        tp_raw = entry + cfg.take_profit_atr_mult * atr if cfg.take_profit_atr_mult is not None else None
    if stop_raw <= 0:
        return "bad_stop"
    stop = rules.round_price(stop_raw, "down") if stop_raw >= rules.tick_size else ZERO
    if stop <= 0 or stop >= entry:
        return "bad_stop"
    tp = rules.round_price(tp_raw, "up") if tp_raw is not None else None
    trail_pct: Decimal | None = None
    trail_distance: Decimal | None = None
    if cfg.trailing == "pct":
        trail_pct = cfg.trailing_pct
        trail_distance = _CTX.divide(entry * cfg.trailing_pct, HUNDRED)
    elif cfg.trailing == "atr":
        assert atr is not None
        trail_distance = cfg.trailing_atr_mult * atr
    return ExitLevels(stop, tp, trail_pct, trail_distance)


@dataclass(slots=True)
class PositionPlan:
    """One market's open (or pending) position as the monitor follows it."""

    position_id: str  # the entry intent's id
    market: str
    rules: MarketRules
    entry_price: Decimal
    initial_stop: Decimal
    stop: Decimal  # the stop as last requested (initial, then each amend)
    take_profit: Decimal | None
    trail_pct: Decimal | None
    trail_distance: Decimal | None
    time_stop_secs: int | None
    high: Decimal
    size: Decimal = ZERO  # from the ledger
    opened_ms: int | None = None  # first fill
    last_amend_ms: int | None = None
    exit_intent_id: str | None = None  # an exit in flight
    last_exit_ms: int | None = None
    exit_attempts: int = 0

    @property
    def trailing(self) -> bool:
        return self.trail_pct is not None or self.trail_distance is not None

    def trail_stop(self) -> Decimal | None:
        """The trailing stop for the current high, on the tick grid (down), or None."""
        if self.trail_pct is not None:
            raw = _CTX.divide(self.high * (HUNDRED - self.trail_pct), HUNDRED)
        elif self.trail_distance is not None:
            raw = self.high - self.trail_distance
        else:
            return None
        if raw < self.rules.tick_size:
            return None
        return self.rules.round_price(raw, "down")


@dataclass(frozen=True, slots=True)
class ExitAction:
    market: str
    position_id: str
    reason: ExitReason
    amount: Decimal
    trigger_price: Decimal
    level: Decimal | None
    attempt: int
    opened_ms: int | None


@dataclass(frozen=True, slots=True)
class AmendAction:
    market: str
    position_id: str
    amount: Decimal
    stop_price: Decimal
    previous_stop: Decimal
    high_price: Decimal
    trailing_distance: Decimal


class PositionMonitor:
    """Follows open positions' book tops; returns exit and stop-amend actions (the core makes the
    messages and reports them back through ``learn_exit``/``learn_amend``)."""

    __slots__ = ("cfg", "plans")

    def __init__(self, cfg: ExitConfig) -> None:
        self.cfg = cfg
        self.plans: dict[str, PositionPlan] = {}

    def open(self, plan: PositionPlan) -> None:
        """A new entry's plan; a market already followed keeps its plan (and position id)."""
        self.plans.setdefault(plan.market, plan)

    def close(self, market: str) -> None:
        self.plans.pop(market, None)

    def get(self, market: str) -> PositionPlan | None:
        return self.plans.get(market)

    def on_fill(self, market: str, size: Decimal, avg_price: Decimal | None, ts_ms: int) -> None:
        plan = self.plans.get(market)
        if plan is None:
            return
        if plan.size == 0 and size > 0 and plan.opened_ms is None:
            plan.opened_ms = ts_ms
        plan.size = size
        if avg_price is not None and avg_price > plan.high:
            plan.high = avg_price

    def learn_exit(self, market: str, intent_id: str, ts_ms: int) -> None:
        plan = self.plans.get(market)
        if plan is not None and plan.exit_intent_id != intent_id:
            plan.exit_intent_id = intent_id
            plan.last_exit_ms = ts_ms
            plan.exit_attempts += 1

    def exit_done(self, market: str, intent_id: str) -> None:
        """The exit's order is final; if coins are left, a later exit may be tried."""
        plan = self.plans.get(market)
        if plan is not None and plan.exit_intent_id == intent_id:
            plan.exit_intent_id = None

    def learn_amend(self, market: str, stop: Decimal, high: Decimal, ts_ms: int) -> None:
        plan = self.plans.get(market)
        if plan is not None:
            plan.stop = max(plan.stop, stop)
            plan.high = max(plan.high, high)
            plan.last_amend_ms = ts_ms if plan.last_amend_ms is None else max(plan.last_amend_ms, ts_ms)

    def on_book(self, market: str, bid: Decimal, now_ms: int) -> list[ExitAction | AmendAction]:
        plan = self.plans.get(market)
        if plan is None or bid <= 0:
            return []
        if plan.size > 0 and bid > plan.high:
            plan.high = bid
        return self._check(plan, bid, now_ms)

    def on_time(self, now_ms: int, bids: dict[str, Decimal]) -> list[ExitAction | AmendAction]:
        """Time stops of every position (for a timer; markets without a book top are skipped)."""
        out: list[ExitAction | AmendAction] = []
        for market, plan in self.plans.items():
            bid = bids.get(market)
            if bid is not None and plan.time_stop_secs is not None:
                out.extend(a for a in self._check(plan, bid, now_ms) if isinstance(a, ExitAction))
        return out

    def _check(self, plan: PositionPlan, bid: Decimal, now_ms: int) -> list[ExitAction | AmendAction]:
        amount = plan.rules.round_amount_down(plan.size)
        if amount <= 0:
            return []  # not filled yet (or dust): the entry's fills will tell
        if plan.exit_intent_id is not None:
            return []  # one exit at a time
        trail = plan.trail_stop()
        trailing_engaged = trail is not None and trail > plan.initial_stop
        exit_reason: ExitReason | None = None
        level: Decimal | None = None
        if plan.take_profit is not None and bid >= plan.take_profit:
            exit_reason, level = "take_profit", plan.take_profit
        elif trailing_engaged and trail is not None and bid <= max(trail, plan.stop):
            exit_reason, level = "trailing_stop", max(trail, plan.stop)
        elif (plan.time_stop_secs is not None and plan.opened_ms is not None
              and now_ms - plan.opened_ms >= plan.time_stop_secs * 1000):
            exit_reason = "time_stop"
        if exit_reason is not None:
            if plan.last_exit_ms is not None and now_ms - plan.last_exit_ms < self.cfg.retry_secs * 1000:
                return []
            return [ExitAction(plan.market, plan.position_id, exit_reason, amount, bid, level,
                               plan.exit_attempts, plan.opened_ms)]
        if trail is not None and trail >= plan.stop + plan.rules.tick_size and trail < bid:
            interval_ms = self.cfg.trailing_min_interval_secs * 1000
            if plan.last_amend_ms is None or now_ms - plan.last_amend_ms >= interval_ms:
                distance = plan.high - trail
                return [AmendAction(plan.market, plan.position_id, amount, trail, plan.stop, plan.high, distance)]
        return []


__all__ = [
    "AmendAction",
    "ExitAction",
    "ExitConfig",
    "ExitLevels",
    "PositionMonitor",
    "PositionPlan",
    "plan_levels",
]
