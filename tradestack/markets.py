"""A market's trading rules from Bitvavo's ``GET /markets``, and the rounding Bitvavo demands.

Shared by the trading core (sizing, guards) and the executor (the last check before sending), so
an order the core accepts is an order the exchange accepts.

- Prices must be a multiple of ``tickSize`` (since API v2.12.0; ``pricePrecision`` is ``null``
  and ignored here). ``round_price`` rounds with ``Decimal`` arithmetic only, in the direction the
  caller names: ``down`` and ``up`` are exact floor/ceiling to the tick grid, ``nearest`` is half-even.
- Amounts may carry at most ``quantityDecimals`` decimals; ``round_amount_down`` never rounds up
  (rounding an amount up could spend money the sizing did not allow).
- ``check_order`` answers with the first rule an order breaks (a short reason code) or ``None``.

Bitvavo sends numbers as strings, sometimes as ints (``quantityDecimals``: ``8`` or ``"8"``); both
are accepted. A float is accepted only for integer fields; money from a float is refused.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from tradestack.errors import ConfigError

Rounding = Literal["down", "up", "nearest"]

_ROUNDING = {"down": decimal.ROUND_FLOOR, "up": decimal.ROUND_CEILING, "nearest": decimal.ROUND_HALF_EVEN}
# Enough digits for any price/amount Bitvavo lists (1e-10 .. 1e11) times any tick: no silent rounding.
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation,
                                                                          decimal.DivisionByZero])
TRADING = "trading"


def _dec(entry: Mapping[str, Any], key: str, *, required: bool = True) -> Decimal | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise ValueError(f"{key} is missing")
        return None
    if isinstance(value, (bool, float)):
        raise ValueError(f"{key}={value!r} must be a decimal string")  # noqa: TRY004 (caught as ValueError)
    try:
        parsed = Decimal(str(value).strip()) if isinstance(value, (str, int)) else None
    except decimal.InvalidOperation:
        parsed = None
    if parsed is None or not parsed.is_finite():
        raise ValueError(f"{key}={value!r} is not a decimal")
    return parsed


def _int(entry: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = entry.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"{key} is missing")
        return default
    if isinstance(value, bool):
        raise ValueError(f"{key}={value!r} is not an integer")  # noqa: TRY004 (caught as ValueError)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{key}={value!r} is not an integer") from None


@dataclass(frozen=True, slots=True)
class MarketRules:
    """One market's rules. ``min_base``/``min_quote`` are inclusive minimums; ``max_*`` may be None."""

    market: str
    base: str
    quote: str
    status: str
    tick_size: Decimal
    quantity_decimals: int
    notional_decimals: int
    min_base: Decimal
    min_quote: Decimal
    max_base: Decimal | None = None
    max_quote: Decimal | None = None
    order_types: tuple[str, ...] = ()
    # Derived once (every decision rounds with them): the quantity step, and the tick as a power of
    # ten (``0.01`` for a tick of ``0.01``, ``1`` for ``1.00``) when it is one, else None.
    _amount_step: Decimal = field(init=False, repr=False, compare=False, hash=False)
    _tick_unit: Decimal | None = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_amount_step", Decimal(1).scaleb(-self.quantity_decimals))
        unit = None
        if isinstance(self.tick_size, Decimal) and self.tick_size.is_finite() and self.tick_size > 0:
            normal = self.tick_size.normalize(_CTX)
            if normal.as_tuple().digits == (1,):
                unit = self.tick_size if normal.as_tuple() == self.tick_size.as_tuple() else normal
        object.__setattr__(self, "_tick_unit", unit)

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> MarketRules:
        """Parse one ``/markets`` entry; ValueError naming the market and field when it is unusable."""
        market = entry.get("market")
        if not isinstance(market, str) or market.count("-") != 1:
            raise ValueError(f"market {market!r} is not BASE-QUOTE")
        try:
            base, quote = market.split("-")
            tick = _dec(entry, "tickSize")
            assert tick is not None
            if tick <= 0:
                raise ValueError(f"tickSize={entry.get('tickSize')!r} must be positive")
            qd = _int(entry, "quantityDecimals")
            nd = _int(entry, "notionalDecimals", default=2)
            if not 0 <= qd <= 18 or not 0 <= nd <= 18:
                raise ValueError("quantityDecimals/notionalDecimals out of range 0..18")
            min_base = _dec(entry, "minOrderInBaseAsset") or Decimal(0)
            min_quote = _dec(entry, "minOrderInQuoteAsset") or Decimal(0)
            if min_base < 0 or min_quote < 0:
                raise ValueError("minimums must not be negative")
            types = entry.get("orderTypes") or ()
            return cls(
                market=market,
                base=str(entry.get("base") or base),
                quote=str(entry.get("quote") or quote),
                status=str(entry.get("status") or ""),
                tick_size=tick,
                quantity_decimals=qd,
                notional_decimals=nd,
                min_base=min_base,
                min_quote=min_quote,
                max_base=_dec(entry, "maxOrderInBaseAsset", required=False),
                max_quote=_dec(entry, "maxOrderInQuoteAsset", required=False),
                order_types=tuple(str(t) for t in types),
            )
        except ValueError as exc:
            raise ValueError(f"{market}: {exc}") from None

    @property
    def amount_step(self) -> Decimal:
        return self._amount_step

    def round_price(self, price: Decimal, direction: Rounding) -> Decimal:
        """``price`` on the tick grid, rounded ``down`` (floor), ``up`` (ceiling) or ``nearest``.

        The result carries the tick's exponent (BTC-EUR tick ``1.00``: ``60123.00``)."""
        if not isinstance(price, Decimal) or not price.is_finite():
            raise ValueError(f"price {price!r} must be a finite Decimal")
        if price <= 0:
            raise ValueError(f"price {price} must be positive")
        unit = self._tick_unit
        if unit is not None and _CTX.plus(price) == price:
            # A power-of-ten tick and a price of at most 60 digits: price / tick is exact, so its
            # floor/ceiling/nearest is a quantize to the tick's unit (the same number, cheaper),
            # written with the tick's exponent (the unit's, unless the tick is 1.00 or the like).
            rounded = price.quantize(unit, rounding=_ROUNDING[direction], context=_CTX)
            return rounded if unit is self.tick_size else rounded.quantize(self.tick_size, context=_CTX)
        steps = _CTX.divide(price, self.tick_size).to_integral_value(rounding=_ROUNDING[direction])
        return _CTX.multiply(steps, self.tick_size).quantize(self.tick_size, context=_CTX)

    def is_on_tick(self, price: Decimal) -> bool:
        return price > 0 and _CTX.remainder(price, self.tick_size) == 0

    def round_amount_down(self, amount: Decimal) -> Decimal:
        """``amount`` truncated to ``quantityDecimals`` (never up). Negative → ValueError."""
        if not isinstance(amount, Decimal) or not amount.is_finite():
            raise ValueError(f"amount {amount!r} must be a finite Decimal")
        if amount < 0:
            raise ValueError(f"amount {amount} must not be negative")
        return amount.quantize(self.amount_step, rounding=decimal.ROUND_DOWN, context=_CTX)

    def amount_fits(self, amount: Decimal) -> bool:
        return amount.quantize(self.amount_step, rounding=decimal.ROUND_DOWN, context=_CTX) == amount

    def check_order(self, amount: Decimal, price: Decimal) -> str | None:
        """The first rule a limit order (or a market order valued at ``price``) breaks, or None.

        Reasons: ``market_not_trading``, ``no_size``, ``bad_price``, ``amount_precision``,
        ``price_tick``, ``below_min_base``, ``below_min_quote``, ``above_max_base``,
        ``above_max_quote``."""
        if self.status != TRADING:
            return "market_not_trading"
        if amount <= 0:
            return "no_size"
        if price <= 0:
            return "bad_price"
        if not self.amount_fits(amount):
            return "amount_precision"
        if not self.is_on_tick(price):
            return "price_tick"
        if amount < self.min_base:
            return "below_min_base"
        notional = _CTX.multiply(amount, price)
        if notional < self.min_quote:
            return "below_min_quote"
        if self.max_base is not None and amount > self.max_base:
            return "above_max_base"
        if self.max_quote is not None and notional > self.max_quote:
            return "above_max_quote"
        return None

    def min_amount_at(self, price: Decimal) -> Decimal:
        """The smallest amount on the quantity grid that meets both minimums at ``price``."""
        need = max(self.min_base, _CTX.divide(self.min_quote, price))
        rounded = need.quantize(self.amount_step, rounding=decimal.ROUND_CEILING, context=_CTX)
        return rounded


class MarketCatalog(Mapping[str, MarketRules]):
    """Market id → rules, built from the ``/markets`` JSON list (or one object).

    Unusable entries are skipped and listed in ``rejected`` (market → reason) unless ``strict``,
    in which case the first one raises ConfigError: one bad delisted coin should not stop trading
    in the others, but the caller can insist."""

    __slots__ = ("_rules", "rejected")

    def __init__(self, rules: Iterable[MarketRules] = ()) -> None:
        self._rules: dict[str, MarketRules] = {r.market: r for r in rules}
        self.rejected: dict[str, str] = {}

    @classmethod
    def from_json(cls, entries: Any, *, strict: bool = False) -> MarketCatalog:
        if isinstance(entries, Mapping):
            entries = [entries]
        if not isinstance(entries, list):
            raise ConfigError("/markets must be a JSON list of market objects")
        catalog = cls()
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise ConfigError(f"/markets entry {entry!r} is not an object")
            try:
                rules = MarketRules.from_json(entry)
            except ValueError as exc:
                if strict:
                    raise ConfigError(f"/markets: {exc}") from None
                catalog.rejected[str(entry.get("market"))] = str(exc)
                continue
            catalog._rules[rules.market] = rules
        return catalog

    def __getitem__(self, market: str) -> MarketRules:
        return self._rules[market]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, market: object) -> bool:
        return market in self._rules

    def trading(self) -> list[str]:
        return [m for m, r in self._rules.items() if r.status == TRADING]


def base_quote(market: str) -> tuple[str, str]:
    """``"BTC-EUR"`` → ``("BTC", "EUR")``; ValueError otherwise."""
    parts = market.split("-")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"market {market!r} is not BASE-QUOTE")
    return parts[0], parts[1]


__all__ = ["TRADING", "MarketCatalog", "MarketRules", "Rounding", "base_quote"]
