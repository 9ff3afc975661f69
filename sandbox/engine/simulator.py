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
        # Ladder spacing on a fixed grid so a 1-tick mid move only touches the edge levels.
        self.gap = max(1, round(float(spec.price0) * 0.00005 / self.tick_f))
        self.half_spread_ticks = float(self.gap)
        self.sizing = Sizing(spec.quantity_decimals, spec.tick)
        self.regime = 1
        self.regime_until = 0
        self.lp: dict[str, dict[int, Resting]] = {"buy": {}, "sell": {}}
        self._last_requote: tuple | None = None  # (top_bid, top_ask, book change marker)

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

    def trade_count(self, dt_ms: int) -> int:
        lam = self.spec.trades_per_min * self.activity * REGIMES[self.regime][2] * dt_ms / 60_000
        # Poisson by inversion; lam is small per sub-step.
        n, p = 0, math.exp(-lam)
        u, cum = self.rng.random(), p
        while u > cum and n < 50:
            n += 1
            p *= lam / n
            cum += p
        return n

    def _lp_size(self, distance: int) -> Decimal:
        notional = math.exp(self.rng.gauss(math.log(400.0), 0.9)) * (1 + 0.15 * distance)
        return self.sizing.qty(notional, self.mid)

    def _flow_size(self) -> Decimal:
        return self.sizing.qty(math.exp(self.rng.gauss(math.log(120.0), 1.1)), self.mid)

    def flow_side(self) -> str:
        trend = REGIMES[self.regime][1]
        p_buy = 0.5 + (0.1 if trend > 0 else -0.1 if trend < 0 else 0.0)
        return "buy" if self.rng.random() < p_buy else "sell"

    # ---- one sub-step ---------------------------------------------------------------------
    def requote(self, ops: MarketOps, book: OrderBook) -> None:
        """Move the ladder to the current mid: cancel quotes inside the new spread or beyond
        depth, add missing levels (which may trade with users' orders in the way), and
        re-size a couple of random levels so the book keeps changing."""
        market = self.spec.market
        mid_ticks = self.mid / self.tick_f
        gap = self.gap
        top_bid = math.floor((mid_ticks - self.half_spread_ticks) / gap) * gap
        top_ask = math.ceil((mid_ticks + self.half_spread_ticks) / gap) * gap
        top_bid = max(top_bid, gap)
        if top_ask <= top_bid:
            top_ask = top_bid + gap
        # Nothing moved and nobody traded or placed since last time: only churn a level or two.
        marker = (top_bid, top_ask, book.version)
        if marker == self._last_requote:
            self._churn(ops, book, top_bid, top_ask)
            self._last_requote = (top_bid, top_ask, book.version)
            return
        targets = {
            "buy": [top_bid - i * gap for i in range(self.levels) if top_bid - i * gap > 0],
            "sell": [top_ask + i * gap for i in range(self.levels)],
        }
        for side in ("buy", "sell"):
            quotes = self.lp[side]
            wanted = set(targets[side])
            for tick in list(quotes):
                r = quotes[tick]
                if r.remaining <= 0 or r.order_id not in book.index:
                    del quotes[tick]  # consumed by trades
                elif tick not in wanted:
                    ops.lp_cancel(market, r)
                    del quotes[tick]
        for side in ("buy", "sell"):
            quotes = self.lp[side]
            for i, tick in enumerate(targets[side]):
                if tick not in quotes:
                    r = ops.lp_place(market, side, tick, self._lp_size(i))
                    if r is not None:
                        quotes[tick] = r
        self._churn(ops, book, top_bid, top_ask)
        self._last_requote = (top_bid, top_ask, book.version)

    def _churn(self, ops: MarketOps, book: OrderBook, top_bid: int, top_ask: int) -> None:
        """Re-size a couple of random levels so the book keeps changing like a real one."""
        market = self.spec.market
        gap = self.gap
        # Busy markets churn more; quiet generated small caps barely (keeps "all" cheap).
        p = min(1.0, self.spec.trades_per_min / 8)
        for _ in range(2):
            if self.rng.random() >= p:
                continue
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
