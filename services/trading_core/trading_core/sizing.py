"""Position size from the risk per trade and the stop distance (``RISK_MODE``, ``RISK_VALUE``).

A stop-out should lose about the risk amount, fees included:

    risk_eur      = equity × RISK_VALUE / 100   (RISK_MODE=percent)   or   RISK_VALUE (fixed, EUR)
    loss_per_unit = entry × (1 + fee) − stop × (1 − fee)
                    (buy at entry paying the taker fee, sell at the stop paying it again: the stop
                    rests on the exchange as a stopLoss *market* order, so both legs are taker)
    raw_size      = risk_eur / loss_per_unit

then capped by the order-notional limit and the room left under the asset and global exposure
limits (``capped_by`` names the binding cap), then rounded DOWN to the market's
``quantityDecimals``. Rounding down and capping only make the loss smaller; a size that ends
below the exchange minimum is not bumped up: the ``ExchangeRules`` guard blocks it
(``below_min_quote``/``below_min_base``), ``exchange_reason`` says so here too.

Not included: slippage past the stop (a stop market order fills at the next bids; a gap down can
lose more than the risk amount). The stop price is the one already rounded to the tick grid
(exits.py), so the tick rounding is inside the computation.
"""

from __future__ import annotations

import decimal
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from tradestack.markets import MarketRules
from tradestack.messages import Sizing

from .guards import trusted_model

ZERO = Decimal(0)
HUNDRED = Decimal(100)
_CTX = decimal.Context(prec=40, rounding=decimal.ROUND_DOWN)
RiskMode = Literal["percent", "fixed"]


@dataclass(frozen=True, slots=True)
class RiskConfig:
    mode: RiskMode = "percent"
    value: Decimal = Decimal(1)  # percent of equity, or EUR when fixed
    fee_rate: Decimal = Decimal("0.0025")  # taker fee (Bitvavo tier 0)

    def __post_init__(self) -> None:
        if self.mode not in ("percent", "fixed"):
            raise ValueError(f"RISK_MODE {self.mode!r} must be percent or fixed")
        if self.value <= 0 or (self.mode == "percent" and self.value > 100):
            raise ValueError(f"RISK_VALUE {self.value} must be > 0 (and <= 100 for percent)")
        if not ZERO <= self.fee_rate < 1:
            raise ValueError(f"fee rate {self.fee_rate} must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class SizingOutcome:
    """``sizing`` is None when the inputs make no size at all; then ``reason`` says why
    (``no_equity``, ``bad_price``, ``bad_stop``). ``exchange_reason`` is the market rule the
    rounded size breaks, if any (the ExchangeRules guard reports it in the decision)."""

    sizing: Sizing | None
    reason: str | None
    exchange_reason: str | None = None

    @property
    def amount(self) -> Decimal:
        return self.sizing.rounded_size if self.sizing is not None else ZERO


def size_entry(*, equity: Decimal, risk: RiskConfig, entry_price: Decimal, stop_price: Decimal,
               rules: MarketRules, rooms: Mapping[str, Decimal | None]) -> SizingOutcome:
    """The size for a long entry at ``entry_price`` with its stop at ``stop_price``.

    ``rooms``: cap name → the most quote (EUR) this order may be worth under it (None = no cap;
    negative counts as 0), applied in the given order; the smallest binds."""
    if entry_price <= 0:
        return SizingOutcome(None, "bad_price")
    if stop_price <= 0 or stop_price >= entry_price:
        return SizingOutcome(None, "bad_stop")
    if risk.mode == "percent":
        if equity <= 0:
            return SizingOutcome(None, "no_equity")
        risk_eur = _CTX.divide(_CTX.multiply(equity, risk.value), HUNDRED)
    else:
        risk_eur = risk.value
    fee = risk.fee_rate
    loss_per_unit = entry_price * (1 + fee) - stop_price * (1 - fee)
    raw = _CTX.divide(risk_eur, loss_per_unit)
    capped, capped_by = raw, None
    for name, room in rooms.items():
        if room is None:
            continue
        room = max(room, ZERO)
        if _CTX.multiply(capped, entry_price) > room:
            capped, capped_by = _CTX.divide(room, entry_price), name
    rounded = rules.round_amount_down(capped)
    shown = _shown(rules.quantity_decimals)  # keep the message readable
    fields: dict[str, Any] = {
        "equity": equity, "risk_mode": risk.mode, "risk_value": risk.value, "risk_eur": risk_eur,
        "entry_price": entry_price, "stop_price": stop_price, "stop_distance": entry_price - stop_price,
        "fee_rate": fee, "loss_per_unit": loss_per_unit, "raw_size": raw.quantize(shown, context=_CTX),
        "capped_size": capped.quantize(shown, context=_CTX), "capped_by": capped_by, "rounded_size": rounded,
    }
    # Inputs that are finite Decimals give only finite Decimals (decimal arithmetic traps rather than
    # make NaN or infinity; the sizes are quantized), risk_mode is checked by RiskConfig, capped_by is
    # a room's name: nothing left for Sizing's validators to do. Anything else is validated (and refused).
    if (isinstance(equity, Decimal) and equity.is_finite() and isinstance(risk.value, Decimal)
            and risk.value.is_finite() and isinstance(fee, Decimal) and fee.is_finite()
            and isinstance(entry_price, Decimal) and entry_price.is_finite()
            and isinstance(stop_price, Decimal) and stop_price.is_finite()
            and (capped_by is None or isinstance(capped_by, str))):
        sizing = trusted_model(Sizing, fields)
    else:
        sizing = Sizing(**fields)
    return SizingOutcome(sizing, None, rules.check_order(rounded, entry_price))


@functools.lru_cache(maxsize=64)
def _shown(quantity_decimals: int) -> Decimal:
    return Decimal(1).scaleb(-(quantity_decimals + 4))


def stop_out_loss(amount: Decimal, entry_price: Decimal, stop_price: Decimal, fee_rate: Decimal) -> Decimal:
    """What ``amount`` bought at ``entry_price`` loses when sold at ``stop_price``, taker fees in."""
    return amount * entry_price * (1 + fee_rate) - amount * stop_price * (1 - fee_rate)


__all__ = ["RiskConfig", "SizingOutcome", "size_entry", "stop_out_loss"]
