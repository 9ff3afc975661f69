"""Seeded market simulation: a random walk with volatility/trend regimes drives liquidity
providers (a ladder of quotes around the mid) and aggressive flow that prints trades.

Floats are used only to evolve the simulated mid price; every price that reaches the book is
an integer number of ticks and every size a Decimal quantized to the market's decimals.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from .book import OrderBook, Resting
from .markets import MarketSpec

HOUR_MS = 3_600_000
CHURN_PER_S = 40.0  # level re-sizes per second of a busy market (times the activity knob)
GAP_FRACTION = 0.00005  # ladder spacing of a busy market, as a fraction of the price
BUSY_STEP_MS = 0  # every market-loop tick
QUIET_STEP_MS = 250
FULL_REQUOTE_EVERY = 20  # requotes between full ladder rebuilds (see MarketSimulator.requote)

# (vol multiplier, trend per hour as a fraction, activity multiplier, mean duration minutes)
REGIMES = [
    (0.6, 0.0, 0.7, 60),    # calm
    (1.0, 0.0, 1.0, 45),    # normal
    (1.0, 0.004, 1.3, 30),  # uptrend
    (1.0, -0.004, 1.3, 30),  # downtrend
    (2.5, 0.0, 2.0, 15),    # volatile
]


class MarketOps(Protocol):
    """What the simulator may do to a market; the exchange implements it (settling user fills)."""

    def lp_place(self, market: str, side: str, tick: int, qty: Decimal) -> Resting | None: ...
    def lp_cancel(self, market: str, resting: Resting) -> None: ...
    def sim_take(self, market: str, side: str, qty: Decimal) -> None: ...


@dataclass
class Sizing:
    qd: int
    tick: Decimal

    def qty(self, notional_eur: float, price: float) -> Decimal:
        units = int(notional_eur / price * 10 ** self.qd)
        return Decimal(max(units, 1)).scaleb(-self.qd)


class MarketSimulator:
    def __init__(self, spec: MarketSpec, seed: int, levels: int, activity: float, volatility: float,
                 mid_source: Callable[[int], float | None] | None = None) -> None:
        self.spec = spec
        self.rng = random.Random(f"{seed}:{spec.market}")
        self.levels = levels
        self.activity = activity
        self.volatility = volatility
        self.mid_source = mid_source  # replay: recorded mid at a time, instead of the walk
        self.log_mid = math.log(float(spec.price0))
        self.tick_f = float(spec.tick)
        # Ladder spacing on a fixed grid so a 1-tick mid move only touches the edge levels: 0.5 bp
        # for a busy market, wider for thin ones (a small cap's book does not requote on every
        # basis point: ~4 bp at 2 trades/min, ~13 bp at 0.3).
        self.gap = max(1, round(float(spec.price0) * GAP_FRACTION * max(1.0, 8.0 / spec.trades_per_min) / self.tick_f))
        # Thin markets are stepped less often (their changes are rare; one step covers the span).
        self.step_every_ms = BUSY_STEP_MS if spec.trades_per_min * activity >= 4 else QUIET_STEP_MS
        self.half_spread_ticks = float(self.gap)
        self.sizing = Sizing(spec.quantity_decimals, spec.tick)
        self.regime = 1
        self.regime_until = 0
        self.lp: dict[str, dict[int, Resting]] = {"buy": {}, "sell": {}}
        self._last_requote: tuple | None = None  # (top_bid, top_ask, book change marker)
        self._requotes = 0
        self._lp_notionals = [math.exp(self.rng.gauss(math.log(400.0), 0.9)) for _ in range(256)]

    # ---- the walk ---------------------------------------------------------------------------
    @property
    def mid(self) -> float:
        return math.exp(self.log_mid)

    def _maybe_switch_regime(self, now: int) -> None:
        if now < self.regime_until:
            return
        self.regime = self.rng.choices(range(len(REGIMES)), weights=(3, 4, 1.5, 1.5, 1))[0]
        minutes = self.rng.expovariate(1.0 / REGIMES[self.regime][3])
        self.regime_until = now + int(max(2.0, minutes) * 60_000)

    def advance(self, now: int, dt_ms: int) -> None:
        self._maybe_switch_regime(now)
        if self.mid_source is not None:
            recorded = self.mid_source(now)
            if recorded is not None and recorded > 0:
                self.log_mid = math.log(recorded)
            return
        vol_mult, trend, _act, _dur = REGIMES[self.regime]
        dt_h = dt_ms / HOUR_MS
        sigma = self.spec.vol_per_hour * self.volatility * vol_mult
        self.log_mid += trend * dt_h + sigma * math.sqrt(dt_h) * self.rng.gauss(0.0, 1.0)

    def _poisson(self, lam: float) -> int:
        # By inversion; lam is small per sub-step.
        n, p = 0, math.exp(-lam)
        u, cum = self.rng.random(), p
        while u > cum and n < 50:
            n += 1
            p *= lam / n
            cum += p
        return n

    def trade_count(self, dt_ms: int) -> int:
        return self._poisson(self.spec.trades_per_min * self.activity * REGIMES[self.regime][2] * dt_ms / 60_000)

    def _lp_size(self, distance: int) -> Decimal:
        # Log-normal quote sizes (median 400 EUR), drawn from a seeded pool: a quote is placed
        # for every level a ladder moves, and a gauss() per quote was a tenth of a step's cost.
        notional = self._lp_notionals[self.rng.getrandbits(8)] * (1 + 0.15 * distance)
        return self.sizing.qty(notional, self.mid)

    def _flow_size(self) -> Decimal:
        return self.sizing.qty(math.exp(self.rng.gauss(math.log(120.0), 1.1)), self.mid)

    def flow_side(self) -> str:
        trend = REGIMES[self.regime][1]
        p_buy = 0.5 + (0.1 if trend > 0 else -0.1 if trend < 0 else 0.0)
        return "buy" if self.rng.random() < p_buy else "sell"

    # ---- one sub-step ---------------------------------------------------------------------
    def requote(self, ops: MarketOps, book: OrderBook, dt_ms: int = 0) -> None:
        """Move the ladder to the current mid: cancel quotes inside the new spread or beyond
        depth, add missing levels (which may trade with users' orders in the way), and
        re-size a couple of random levels so the book keeps changing.

        Incremental, because it runs for every market on every step: a move of k levels
        touches only the k levels leaving and the k entering at each side, and trades only
        ever consume a ladder from its best level outward, so refilling walks from the best
        level to the first live quote. Every ``FULL_REQUOTE_EVERY``-th call (and on big jumps)
        rebuilds both sides from scratch, which repairs any hole the shortcuts missed."""
        mid_ticks = self.mid / self.tick_f
        gap = self.gap
        top_bid = math.floor((mid_ticks - self.half_spread_ticks) / gap) * gap
        top_ask = math.ceil((mid_ticks + self.half_spread_ticks) / gap) * gap
        top_bid = max(top_bid, gap)
        if top_ask <= top_bid:
            top_ask = top_bid + gap
        last = self._last_requote
        self._requotes += 1
        if last is None or self._requotes % FULL_REQUOTE_EVERY == 0:
            self._rebuild(ops, book, top_bid, top_ask)
        elif last != (top_bid, top_ask, book.version):
            old_bid, old_ask, _ = last
            if not (self._shift(ops, book, "buy", old_bid, top_bid)
                    and self._shift(ops, book, "sell", old_ask, top_ask)):
                self._rebuild(ops, book, top_bid, top_ask)
        # else: nothing moved and nobody traded or placed since last time: only churn.
        if dt_ms:
            self._churn(ops, book, top_bid, top_ask, dt_ms)
        self._last_requote = (top_bid, top_ask, book.version)

    def _ladder(self, side: str, top: int) -> range:
        """The ticks of one side's ladder, best first."""
        gap = self.gap
        if side == "buy":
            return range(top, max(top - self.levels * gap, 0), -gap)
        return range(top, top + self.levels * gap, gap)

    def _rebuild(self, ops: MarketOps, book: OrderBook, top_bid: int, top_ask: int) -> None:
        market = self.spec.market
        for side, top in (("buy", top_bid), ("sell", top_ask)):
            quotes = self.lp[side]
            wanted = self._ladder(side, top)
            for tick in list(quotes):
                r = quotes[tick]
                if r.remaining <= 0 or r.order_id not in book.index:
                    del quotes[tick]  # consumed by trades
                elif tick not in wanted:
                    ops.lp_cancel(market, r)
                    del quotes[tick]
        for side, top in (("buy", top_bid), ("sell", top_ask)):
            quotes = self.lp[side]
            for i, tick in enumerate(self._ladder(side, top)):
                if tick not in quotes:
                    r = ops.lp_place(market, side, tick, self._lp_size(i))
                    if r is not None:
                        quotes[tick] = r

    def _shift(self, ops: MarketOps, book: OrderBook, side: str, old_top: int, new_top: int) -> bool:
        """Move one side's ladder from ``old_top`` to ``new_top``; False = too far, rebuild instead."""
        n = self.levels
        d = (new_top - old_top) // (-self.gap if side == "buy" else self.gap)  # levels moved outward
        new = self._ladder(side, new_top)
        if abs(d) >= n or len(new) != n:
            return False
        market = self.spec.market
        quotes = self.lp[side]
        index = book.index

        def place(i: int) -> None:
            tick = new[i]
            r = ops.lp_place(market, side, tick, self._lp_size(i))
            if r is not None:
                quotes[tick] = r
            else:
                quotes.pop(tick, None)

        first = 0  # where the refill walk starts
        if d:
            old = self._ladder(side, old_top)
            if len(old) != n:
                return False
            for tick in (old[:d] if d > 0 else old[n + d:]):  # the levels leaving the ladder
                r = quotes.pop(tick, None)
                if r is not None and r.order_id in index:
                    ops.lp_cancel(market, r)
            if d > 0:  # moved away from the spread: new levels at the far end
                for i in range(n - d, n):
                    place(i)
            else:  # moved into the spread: new levels at the best end
                for i in range(-d):
                    place(i)
                first = -d
        # Trades consume a ladder from its best level outward: refill up to the first live quote.
        for i in range(first, n):
            r = quotes.get(new[i])
            if r is not None and r.order_id in index:
                break
            place(i)
        return True

    def _churn(self, ops: MarketOps, book: OrderBook, top_bid: int, top_ask: int, dt_ms: int) -> None:
        """Re-size random levels so the book keeps changing like a real one. A rate in simulated
        time: busy markets churn up to CHURN_PER_S levels a second, quiet small caps barely (which
        keeps "all" cheap), whatever the step cadence."""
        market = self.spec.market
        gap = self.gap
        rate = CHURN_PER_S * min(1.0, self.spec.trades_per_min / 8) * self.activity
        for _ in range(self._poisson(rate * dt_ms / 1000)):
            side = "buy" if self.rng.random() < 0.5 else "sell"
            i = self.rng.randrange(self.levels)
            tick = top_bid - i * gap if side == "buy" else top_ask + i * gap
            if tick <= 0:
                continue
            r = self.lp[side].get(tick)
            if r is not None and r.order_id in book.index:
                ops.lp_cancel(market, r)
                new = ops.lp_place(market, side, tick, self._lp_size(i))
                if new is not None:
                    self.lp[side][tick] = new
                else:
                    del self.lp[side][tick]

    def flow(self, ops: MarketOps, dt_ms: int) -> None:
        for _ in range(self.trade_count(dt_ms)):
            ops.sim_take(self.spec.market, self.flow_side(), self._flow_size())

    # ---- made-up history ---------------------------------------------------------------------
    def history(self, start: int, end: int, emit: Callable[[int, int, Decimal, str], None]) -> None:
        """Trades from ``start`` to ``end`` without a book: price = mid +- half spread."""
        t = start
        rate_per_ms = self.spec.trades_per_min * self.activity / 60_000
        while True:
            act = REGIMES[self.regime][2]
            dt = int(self.rng.expovariate(rate_per_ms * act)) + 1
            if t + dt >= end:
                self.advance(end, end - t)
                return
            t += dt
            self.advance(t, dt)
            side = self.flow_side()
            mid_ticks = self.mid / self.tick_f
            if side == "buy":
                tick = math.ceil((mid_ticks + self.half_spread_ticks) / self.gap) * self.gap
            else:
                tick = max(self.gap, math.floor((mid_ticks - self.half_spread_ticks) / self.gap) * self.gap)
            emit(t, tick, self._flow_size(), side)
