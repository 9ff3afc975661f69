"""The signal engine's pure part: closed candles and book tops in, ``SignalEmitted`` out (DESIGN §4).

``SignalEngine`` holds, per (market, interval) of the universe, the ATR and every strategy's
state, and per market the newest book top (the gates' input). The service hands it decoded
messages and commits what it returns; nothing here touches Redis or the wall clock.

Exactly one signal id per (market, strategy, interval, candle): the id is
``derive_id(f"signal/{market}/{strategy}/{interval}/{open_ts}")``, independent of the candle
entry's id, of when it is handled and of how often. A candle whose ``open_ts`` is not newer than
the last one handled for its (market, interval) is a duplicate (a re-published closed candle, a
replay) and changes nothing.

Warm-up and restarts. ``warm(candle)`` runs the same update as ``on_candle`` without emitting:
the service feeds it the candle streams' history at start (after ``set_universe``) and when a
market joins. A strategy cannot call before it has seen ``max(its warmup, atr_period)`` candles
of the (market, interval). History may include candles the loop has not handled yet (entries
pending after a crash, or not read yet): for those, ``warm`` remembers the calls the strategies
made (a few per series at most) and ``on_candle`` of that candle later emits them, through the
gates, with the same ids, so a restart neither loses nor duplicates a signal. Gates are applied
when the signal would leave, with the book and clock of that moment; ``stale_candle`` keeps a
backlog of old candles from trading on old prices.

Malformed values raise ``PoisonMessage`` (the loop dead-letters the entry); candles of another
market, of an interval not configured, or not yet closed are ignored and counted.

ATR in signals: computed in float like every indicator (it is an estimate, not an amount: float's
1e-16 relative error is far below any tick size) and turned into a ``Decimal`` with 12
significant digits, ``Decimal(f"{atr:.12g}")``: significant digits rather than ``round(x, 12)``,
which would keep only 3 digits of a PEPE-EUR ATR (~1e-9). Deterministic: the same candles give
the same float operations and the same string on every replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from tradestack import streams
from tradestack.clock import Clock
from tradestack.effects import Effect, Output
from tradestack.errors import ConfigError, PoisonMessage
from tradestack.messages import BookTopUpdated, CandleUpdated, MessageFactory, SignalEmitted, derive_id

from .gates import INTERVAL_MS, REASONS, Gates, GateSettings, vol_scale
from .indicators import WilderATR
from .strategies.base import Bar, SignalCall, Strategy

_INF = math.inf

# Outcomes of candle messages (``SignalEngine.candles``).
CANDLE_OUTCOMES = ("processed", "duplicate", "out_of_universe", "not_closed", "other_interval",
                   "warmed", "warm_skipped")


def signal_id(market: str, strategy: str, interval: str, open_ts: int) -> str:
    """The one id of a strategy's signal on a candle."""
    return derive_id(f"signal/{market}/{strategy}/{interval}/{open_ts}")


def atr_decimal(atr: float) -> Decimal:
    """A float ATR as the Decimal a signal carries: 12 significant digits (see the module doc)."""
    return Decimal(f"{atr:.12g}")


class _Pending:
    """Calls made while warming on a candle the loop may still hand to ``on_candle``."""

    __slots__ = ("atr", "calls")

    def __init__(self, calls: list[tuple[Strategy[Any, Any], SignalCall]], atr: float | None) -> None:
        self.calls = calls
        self.atr = atr


class _Series:
    """Everything kept for one (market, interval)."""

    __slots__ = ("atr", "count", "first_ts", "last_ts", "pending", "states", "warmed")

    def __init__(self, atr_period: int, strategies: Sequence[Strategy[Any, Any]]) -> None:
        self.atr = WilderATR(atr_period)
        self.states = [s.new_state() for s in strategies]
        self.count = 0  # candles applied
        self.first_ts = -1
        self.last_ts = -1  # open_ts of the newest candle applied
        self.warmed = 0  # of which through warm()
        self.pending: dict[int, _Pending] = {}  # open_ts -> calls made while warming


class SignalEngine:
    """Candles and book tops in, signals out. See the module doc.

    Counters (plain dicts the service exports; keys exist from the start, at 0):
    ``signals[(strategy, side)]``, ``suppressed[reason]`` (``gates.REASONS``),
    ``candles[outcome]`` (``CANDLE_OUTCOMES``). Warm-up: ``ready(market, interval)``,
    ``warmup_progress()``.
    """

    def __init__(self, strategies: Sequence[Strategy[Any, Any]], gates: GateSettings, intervals: Iterable[str],
                 factory: MessageFactory, stream: str = streams.SIGNALS_BASELINE, clock: Clock | None = None, *,
                 atr_period: int = 14, universe: Iterable[str] | None = None, pending_per_series: int = 64) -> None:
        self.strategies: tuple[Strategy[Any, Any], ...] = tuple(strategies)
        if not self.strategies:
            raise ConfigError("signal engine: no strategies configured")
        names = [s.name for s in self.strategies]
        if len(set(names)) != len(names):
            raise ConfigError(f"signal engine: strategy names must be unique, got {names}")
        self.intervals: tuple[str, ...] = tuple(dict.fromkeys(intervals))
        if not self.intervals:
            raise ConfigError("signal engine: no candle intervals configured")
        for interval in self.intervals:
            if interval not in INTERVAL_MS:
                raise ConfigError(f"signal engine: unknown candle interval {interval!r}; "
                                  f"expected one of {', '.join(INTERVAL_MS)}")
        if isinstance(atr_period, bool) or not isinstance(atr_period, int) or atr_period < 1:
            raise ConfigError(f"signal engine: atr_period must be an integer >= 1, got {atr_period!r}")
        self.gates = Gates(gates)
        self.factory = factory
        self.stream = stream
        self.clock: Clock = clock if clock is not None else factory.clock
        self.atr_period = atr_period
        self.pending_per_series = pending_per_series
        self._interval_ms = {iv: INTERVAL_MS[iv] for iv in self.intervals}
        self._vol_scale = {iv: vol_scale(iv) for iv in self.intervals}
        # A strategy may call once the candles seen cover its warm-up and the ATR's (the gates and
        # the signal need the ATR).
        self._plan = [(s, s.step, max(s.warmup, atr_period)) for s in self.strategies]
        self.warmup = max(p[2] for p in self._plan)  # candles until a (market, interval) is ready
        self._series: dict[tuple[str, str], _Series] = {}
        self._universe: frozenset[str] = frozenset(universe or ())
        self.signals: dict[tuple[str, str], int] = {(s.name, side): 0 for s in self.strategies for side in ("buy", "sell")}
        self.suppressed: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.candles: dict[str, int] = dict.fromkeys(CANDLE_OUTCOMES, 0)

    # -- universe ------------------------------------------------------------------------------

    @property
    def universe(self) -> frozenset[str]:
        return self._universe

    def set_universe(self, markets: Iterable[str]) -> set[str]:
        """Trade these markets from now on. Returns the markets that joined: the service warms them
        from history (``warm``). Markets that left lose all their state (indicators, book)."""
        new = frozenset(markets)
        old = self._universe
        for market in old - new:
            for interval in self.intervals:
                self._series.pop((market, interval), None)
            self.gates.drop(market)
        self._universe = new
        return set(new - old)

    # -- handlers ------------------------------------------------------------------------------

    def on_candle(self, msg: CandleUpdated) -> list[Effect]:
        """A candle from ``bitvavo:candles:<interval>``: the signals it causes (often none)."""
        if not msg.closed:
            self.candles["not_closed"] += 1
            return []
        interval = msg.interval
        if interval not in self._interval_ms:
            self.candles["other_interval"] += 1
            return []
        bar = _bar(msg)
        market = msg.market
        if market not in self._universe:
            self.candles["out_of_universe"] += 1
            return []
        key = (market, interval)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.atr_period, self.strategies)
        if msg.open_ts <= series.last_ts:
            pending = series.pending.pop(msg.open_ts, None) if series.pending else None
            if pending is None:
                self.candles["duplicate"] += 1
                return []
            # Seen while warming but never handled: decide now, with the same ids.
            self.candles["processed"] += 1
            return self._emit(msg, pending.calls, pending.atr, bar.close)
        calls = self._apply(series, bar)
        self.candles["processed"] += 1
        if calls is None:
            return []
        return self._emit(msg, calls, bar.atr, bar.close)

    def warm(self, msg: CandleUpdated, handled: bool = False) -> None:
        """The same update as ``on_candle`` for a candle from history, emitting nothing.

        ``handled``: the loop is known to have handled this entry already (the start-up rebuild
        stops where the group has read), so its calls were emitted then and are not kept for a
        later ``on_candle`` of the same candle (a replay must not emit them again).

        Feed a market's history oldest first, after ``set_universe``, and before its live candles
        reach ``on_candle`` (or at least in one go: a series that live candles started before any
        history arrived is rebuilt from the history). Never raises for bad data: a malformed or
        unusable history entry is skipped and counted (``warm_skipped``); the live loop dead-letters
        it when it handles it."""
        if not msg.closed or msg.interval not in self._interval_ms or msg.market not in self._universe:
            self.candles["warm_skipped"] += 1
            return
        try:
            bar = _bar(msg)
        except PoisonMessage:
            self.candles["warm_skipped"] += 1
            return
        key = (msg.market, msg.interval)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.atr_period, self.strategies)
        elif msg.open_ts <= series.last_ts:
            if series.warmed == 0 and series.count < self.warmup and msg.open_ts < series.first_ts:
                # Live candles got here before the history of a joining market: start over from the
                # history (which includes those live candles, as they are older than its read).
                series = self._series[key] = _Series(self.atr_period, self.strategies)
            else:
                self.candles["warm_skipped"] += 1
                return
        calls = self._apply(series, bar)
        series.warmed += 1
        self.candles["warmed"] += 1
        if calls is not None and not handled:
            pending = series.pending
            pending[bar.open_ts] = _Pending(calls, bar.atr)
            if len(pending) > self.pending_per_series:
                del pending[next(iter(pending))]  # the oldest: long handled, or long stale

    def on_book(self, msg: BookTopUpdated) -> list[Effect]:
        """A book top from ``bitvavo:book``: updates the gate inputs; emits nothing."""
        self.gates.on_book(msg)
        return []

    # -- readiness -----------------------------------------------------------------------------

    def ready(self, market: str, interval: str) -> bool:
        """Whether every strategy may call on (market, interval) (its warm-up is done)."""
        series = self._series.get((market, interval))
        return series is not None and series.count >= self.warmup

    def warmup_progress(self) -> dict[tuple[str, str], float]:
        """Per (market, interval) of the universe: candles seen / candles needed, capped at 1."""
        out = {}
        need = self.warmup
        for market in sorted(self._universe):
            for interval in self.intervals:
                series = self._series.get((market, interval))
                out[(market, interval)] = min(1.0, series.count / need) if series is not None else 0.0
        return out

    # -- internals -----------------------------------------------------------------------------

    def _apply(self, series: _Series, bar: Bar) -> list[tuple[Strategy[Any, Any], SignalCall]] | None:
        """One candle into the ATR and every strategy (always all of them, once); the calls allowed."""
        if series.count == 0:
            series.first_ts = bar.open_ts
        series.last_ts = bar.open_ts
        series.count += 1
        count = series.count
        bar.atr = series.atr.update(bar.high, bar.low, bar.close)
        calls: list[tuple[Strategy[Any, Any], SignalCall]] | None = None
        for (strategy, step, eligible_at), state in zip(self._plan, series.states, strict=True):
            call = step(state, bar)
            if call is not None and count >= eligible_at:
                if calls is None:
                    calls = []
                calls.append((strategy, call))
        return calls

    def _emit(self, msg: CandleUpdated, calls: list[tuple[Strategy[Any, Any], SignalCall]], atr: float | None,
              close: float) -> list[Effect]:
        market, interval, open_ts = msg.market, msg.interval, msg.open_ts
        now = self.clock.now_ms()
        # A call needs a ready ATR (see _plan); without one the volatility is unknown: fail safe (vol_low).
        vol = atr / close * self._vol_scale[interval] if atr is not None else 0.0
        reason = self.gates.check(market, open_ts + self._interval_ms[interval], vol, now)
        if reason is not None:
            self.suppressed[reason] += len(calls)
            return []
        atr_dec = atr_decimal(atr) if atr is not None else None
        out: list[Effect] = []
        for strategy, call in calls:
            signal = SignalEmitted(
                id=signal_id(market, strategy.name, interval, open_ts), ts=now, src=self.factory.src,
                trace=msg.trace, v=SignalEmitted.V, market=market, strategy=strategy.name, side=call.side,
                strength=call.strength, ref_price=msg.close, atr=atr_dec, interval=interval,
                candle_open_ts=open_ts, features=call.features, params=strategy.param_strings)
            self.signals[(strategy.name, call.side)] += 1
            out.append(Output(self.stream, signal))
        return out


def _bar(msg: CandleUpdated) -> Bar:
    """The candle as floats, or PoisonMessage when it cannot be a candle."""
    o, h, lo, c, v = float(msg.open), float(msg.high), float(msg.low), float(msg.close), float(msg.volume)
    if 0.0 < lo <= o <= h < _INF and lo <= c <= h and 0.0 <= v < _INF:
        return Bar(msg.market, msg.interval, msg.open_ts, o, h, lo, c, v)
    raise PoisonMessage(_malformed(msg))


def _malformed(msg: CandleUpdated) -> str:
    where = f"candle {msg.market} {msg.interval} {msg.open_ts}"
    o, h, lo, c, v = msg.open, msg.high, msg.low, msg.close, msg.volume
    if not all(x.is_finite() for x in (o, h, lo, c, v)):
        return f"{where}: values must be finite (open {o}, high {h}, low {lo}, close {c}, volume {v})"
    if min(o, h, lo, c) <= 0:
        return f"{where}: prices must be > 0 (open {o}, high {h}, low {lo}, close {c})"
    if h < lo:
        return f"{where}: high {h} < low {lo}"
    if not (lo <= o <= h and lo <= c <= h):
        return f"{where}: open {o} / close {c} outside [low {lo}, high {h}]"
    if v < 0:
        return f"{where}: volume {v} < 0"
    return f"{where}: values out of range (open {o}, high {h}, low {lo}, close {c}, volume {v})"
