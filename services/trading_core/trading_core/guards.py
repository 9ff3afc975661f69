"""The entry guard chain: every guard checked before every entry, each answer with value and limit.

Configured like freqtrade's protections (and our universe filters): ``CORE_GUARDS`` is an ordered
JSON list of ``{"method": Name, ...params}``; names come from an explicit registry; an unknown
name, an unknown or bad parameter, a duplicate, or a chain without ``KillSwitch`` and
``ExchangeRules`` (the two that are never optional) is a ``ConfigError`` with one line.

Guards never short-circuit: ``GuardChain.check`` runs all of them, so a blocked decision lists
every reason, in chain order. All exposure and position counts the core passes in include the
in-flight intents (sent, not yet final), so a burst cannot overshoot a limit.

| method | params (units in names) | passes when | reason |
|---|---|---|---|
| KillSwitch | – | ``trading:kill`` is off | kill_switch |
| MarketAllowList | markets (list; empty = every market of the catalogue) | market listed | market_not_allowed |
| OnePositionPerMarket | – | no open position or in-flight entry in the market | position_open |
| MaxOpenPositions | max_positions | positions (+ this one) ≤ max | max_positions |
| MaxAssetExposure | max_exposure_eur | asset exposure + order ≤ max (and room left) | asset_exposure |
| MaxGlobalExposure | max_exposure_eur | global exposure + order ≤ max (and room left) | global_exposure |
| MaxOrderNotional | max_notional_eur | order notional ≤ max | order_notional |
| DailyLossLimit | max_loss_eur | realized loss today (UTC) < max | daily_loss |
| StopOutCooldown | cooldown_secs | no stop-out in the market within cooldown_secs | cooldown |
| ExchangeRules | – | Bitvavo's minimums and precision hold (markets.py) | the rule's code |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from tradestack.errors import ConfigError
from tradestack.markets import MarketRules
from tradestack.messages import GuardCheck

ZERO = Decimal(0)


def _money(value: Any) -> Decimal:
    # Config may write 100, "100" or 100.5; never NaN, never negative.
    if isinstance(value, bool):
        raise ValueError("must be a number")  # noqa: TRY004 (pydantic reports ValueError only)
    try:
        parsed = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not parsed.is_finite() or parsed < 0:
        raise ValueError("must be a finite number >= 0")
    return parsed


Money = Annotated[Decimal, BeforeValidator(_money)]


def fmt(value: Decimal) -> str:
    return format(value, "f")


_CHECKS: dict[tuple[str, bool, str, str, str | None], GuardCheck] = {}
_CHECKS_MAX = 8192


def guard_check(name: str, passed: bool, value: str, limit: str, reason: str | None = None) -> GuardCheck:
    """``GuardCheck(name=..., passed=..., value=..., limit=..., reason=...)``, the same (frozen,
    str and bool fields only) instance for the same fields: most checks of most decisions repeat
    (``kill_switch off``, a market's exchange rules), and validating a model costs more than a
    dict lookup. Bounded: emptied when full."""
    key = (name, passed, value, limit, reason)
    check = _CHECKS.get(key)
    if check is None:
        check = GuardCheck(name=name, passed=passed, value=value, limit=limit, reason=reason)
        if len(_CHECKS) >= _CHECKS_MAX:
            _CHECKS.clear()
        _CHECKS[key] = check
    return check


NOT_CHECKED = "not_checked"  # GuardContext.exchange_reason when the caller has not run check_order

_M = TypeVar("_M", bound=BaseModel)
_new = object.__new__
_set = object.__setattr__


def trusted_model(cls: type[_M], fields: dict[str, Any]) -> _M:
    """``cls(**fields)`` without running its validators, for the decision's own models whose every
    field the caller built already in its validated type (it says why where it calls this): the same
    object, equal and encoded byte for byte as the validated one (tests/core/test_core_speed_invariants.py),
    at a quarter of the cost. ``fields`` names every field. (``model_construct`` is slower than
    validating, in the pydantic this runs on.)"""
    model = _new(cls)
    _set(model, "__dict__", fields)
    _set(model, "__pydantic_fields_set__", set(fields))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


@dataclass(slots=True)
class GuardContext:
    """What the guards look at for one proposed entry (built by the core, one per decision; guards
    only read it. Not frozen: a frozen dataclass's ``__init__`` costs four times as much)."""

    market: str
    asset: str  # base asset; exposure is per asset
    kill_switch: bool
    rules: MarketRules | None
    amount: Decimal  # rounded, proposed
    price: Decimal  # on the tick grid (0 when the signal had no usable price)
    notional: Decimal  # amount × price, quote (EUR)
    market_has_position: bool  # open position or in-flight entry in this market
    open_positions: int  # markets with an open position or an in-flight entry
    asset_exposure: Decimal  # held + in-flight in this asset, before this order
    global_exposure: Decimal  # held + in-flight overall, before this order
    daily_loss: Decimal  # realized loss today (UTC), positive = a loss
    last_stop_out_ms: int | None  # this market's last stop-out
    now_ms: int
    catalog_markets: frozenset[str] = frozenset()
    # ``rules.check_order(amount, price)`` when the caller has it already (the sizing ran it)
    exchange_reason: str | None = NOT_CHECKED


class Guard(BaseModel):
    """A guard: its params are its pydantic fields (validated at start)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    NAME: ClassVar[str] = ""
    REASON: ClassVar[str] = ""

    def check(self, ctx: GuardContext) -> GuardCheck:
        raise NotImplementedError

    def _result(self, passed: bool, value: str, limit: str, reason: str | None = None) -> GuardCheck:
        return guard_check(self.NAME, passed, value, limit, None if passed else (reason or self.REASON))

    def _derived(self) -> Any:
        """What ``_derive`` makes of this guard's (frozen) params, made once per instance."""
        known = _DERIVED.get(id(self))
        if known is None or known[0] is not self:
            if len(_DERIVED) >= 4096:
                _DERIVED.clear()
            known = _DERIVED[id(self)] = (self, self._derive())
        return known[1]

    def _derive(self) -> Any:
        return None

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        """``check`` with everything that depends on the (frozen) params alone worked out once: the
        chain calls this per decision. Answers exactly as ``check`` (tests/core/test_guards_compiled.py)."""
        return self.check


_DERIVED: dict[int, tuple[Guard, Any]] = {}  # id(guard) → (guard, its _derive())


class KillSwitch(Guard):
    NAME: ClassVar[str] = "kill_switch"
    REASON: ClassVar[str] = "kill_switch"

    def check(self, ctx: GuardContext) -> GuardCheck:
        return self._result(not ctx.kill_switch, "on" if ctx.kill_switch else "off", "off")

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        on, off = self._result(False, "on", "off"), self._result(True, "off", "off")
        return lambda ctx: on if ctx.kill_switch else off


class MarketAllowList(Guard):
    NAME: ClassVar[str] = "market_allow_list"
    REASON: ClassVar[str] = "market_not_allowed"
    markets: list[str] = Field(default_factory=list)

    def _derive(self) -> tuple[frozenset[str], str]:
        return frozenset(self.markets), ",".join(self.markets)

    def check(self, ctx: GuardContext) -> GuardCheck:
        if self.markets:
            allowed, limit = self._derived()
            return self._result(ctx.market in allowed, ctx.market, limit)
        return self._result(ctx.market in ctx.catalog_markets, ctx.market, "catalogue")

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        name, reason = self.NAME, self.REASON
        if self.markets:
            allowed, limit = self._derived()

            def listed(ctx: GuardContext) -> GuardCheck:
                market = ctx.market
                if market in allowed:
                    return guard_check(name, True, market, limit)
                return guard_check(name, False, market, limit, reason)
            return listed

        def in_catalogue(ctx: GuardContext) -> GuardCheck:
            market = ctx.market
            if market in ctx.catalog_markets:
                return guard_check(name, True, market, "catalogue")
            return guard_check(name, False, market, "catalogue", reason)
        return in_catalogue


class OnePositionPerMarket(Guard):
    NAME: ClassVar[str] = "one_position_per_market"
    REASON: ClassVar[str] = "position_open"

    def check(self, ctx: GuardContext) -> GuardCheck:
        return self._result(not ctx.market_has_position, str(int(ctx.market_has_position)), "0")

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        has, free = self._result(False, "1", "0"), self._result(True, "0", "0")
        return lambda ctx: has if ctx.market_has_position else free


class MaxOpenPositions(Guard):
    NAME: ClassVar[str] = "max_open_positions"
    REASON: ClassVar[str] = "max_positions"
    max_positions: int = Field(5, ge=0)

    def _derive(self) -> str:
        return str(self.max_positions)

    def check(self, ctx: GuardContext) -> GuardCheck:
        after = ctx.open_positions + (0 if ctx.market_has_position else 1)
        return self._result(after <= self.max_positions, str(after), self._derived())

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        name, reason, most, limit = self.NAME, self.REASON, self.max_positions, self._derived()

        def check(ctx: GuardContext) -> GuardCheck:
            after = ctx.open_positions if ctx.market_has_position else ctx.open_positions + 1
            if after <= most:
                return guard_check(name, True, str(after), limit)
            return guard_check(name, False, str(after), limit, reason)
        return check


def _exposure(guard: Guard, held: Decimal, notional: Decimal, limit: Decimal, shown: str) -> GuardCheck:
    after = held + notional
    # No room left blocks even a zero-size order (sizing caps to the room, so it could be 0).
    return guard._result(after <= limit and held < limit, fmt(after), shown)  # shown: fmt(limit)


def _compiled_exposure(guard: Guard, limit: Decimal, shown: str, asset: bool) -> Callable[[GuardContext], GuardCheck]:
    """``_exposure`` for the asset's (``asset``) or the global exposure, its limit worked out."""
    name, reason = guard.NAME, guard.REASON

    def check(ctx: GuardContext) -> GuardCheck:
        held = ctx.asset_exposure if asset else ctx.global_exposure
        after = held + ctx.notional
        if after <= limit and held < limit:
            return guard_check(name, True, format(after, "f"), shown)
        return guard_check(name, False, format(after, "f"), shown, reason)
    return check


class MaxAssetExposure(Guard):
    NAME: ClassVar[str] = "max_asset_exposure"
    REASON: ClassVar[str] = "asset_exposure"
    max_exposure_eur: Money = Decimal(250)

    def _derive(self) -> str:
        return fmt(self.max_exposure_eur)

    def check(self, ctx: GuardContext) -> GuardCheck:
        return _exposure(self, ctx.asset_exposure, ctx.notional, self.max_exposure_eur, self._derived())

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        return _compiled_exposure(self, self.max_exposure_eur, self._derived(), asset=True)


class MaxGlobalExposure(Guard):
    NAME: ClassVar[str] = "max_global_exposure"
    REASON: ClassVar[str] = "global_exposure"
    max_exposure_eur: Money = Decimal(1000)

    def _derive(self) -> str:
        return fmt(self.max_exposure_eur)

    def check(self, ctx: GuardContext) -> GuardCheck:
        return _exposure(self, ctx.global_exposure, ctx.notional, self.max_exposure_eur, self._derived())

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        return _compiled_exposure(self, self.max_exposure_eur, self._derived(), asset=False)


class MaxOrderNotional(Guard):
    NAME: ClassVar[str] = "max_order_notional"
    REASON: ClassVar[str] = "order_notional"
    max_notional_eur: Money = Decimal(100)

    def _derive(self) -> str:
        return fmt(self.max_notional_eur)

    def check(self, ctx: GuardContext) -> GuardCheck:
        return self._result(ctx.notional <= self.max_notional_eur, fmt(ctx.notional), self._derived())

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        name, reason, most, limit = self.NAME, self.REASON, self.max_notional_eur, self._derived()

        def check(ctx: GuardContext) -> GuardCheck:
            notional = ctx.notional
            if notional <= most:
                return guard_check(name, True, format(notional, "f"), limit)
            return guard_check(name, False, format(notional, "f"), limit, reason)
        return check


class DailyLossLimit(Guard):
    NAME: ClassVar[str] = "daily_loss_limit"
    REASON: ClassVar[str] = "daily_loss"
    max_loss_eur: Money = Decimal(50)

    def _derive(self) -> str:
        return fmt(self.max_loss_eur)

    def check(self, ctx: GuardContext) -> GuardCheck:
        return self._result(ctx.daily_loss < self.max_loss_eur, fmt(ctx.daily_loss), self._derived())

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        name, reason, most, limit = self.NAME, self.REASON, self.max_loss_eur, self._derived()

        def check(ctx: GuardContext) -> GuardCheck:
            loss = ctx.daily_loss
            if loss < most:
                return guard_check(name, True, format(loss, "f"), limit)
            return guard_check(name, False, format(loss, "f"), limit, reason)
        return check


class StopOutCooldown(Guard):
    NAME: ClassVar[str] = "stop_out_cooldown"
    REASON: ClassVar[str] = "cooldown"
    cooldown_secs: int = Field(3600, ge=0)

    def remaining_secs(self, ctx: GuardContext) -> Decimal:
        if ctx.last_stop_out_ms is None:
            return ZERO
        left_ms = ctx.last_stop_out_ms + self.cooldown_secs * 1000 - ctx.now_ms
        return max(ZERO, Decimal(left_ms) / 1000)

    def _derive(self) -> str:
        return str(self.cooldown_secs)

    def check(self, ctx: GuardContext) -> GuardCheck:
        left = self.remaining_secs(ctx)
        return self._result(left == 0, fmt(left), self._derived())

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        name, reason, limit = self.NAME, self.REASON, self._derived()
        clear = self._result(True, fmt(ZERO), limit)  # no stop-out in the market: nothing to wait
        remaining = self.remaining_secs

        def check(ctx: GuardContext) -> GuardCheck:
            if ctx.last_stop_out_ms is None:
                return clear
            left = remaining(ctx)
            if left == 0:
                return guard_check(name, True, format(left, "f"), limit)
            return guard_check(name, False, format(left, "f"), limit, reason)
        return check


class ExchangeRules(Guard):
    NAME: ClassVar[str] = "exchange_rules"
    REASON: ClassVar[str] = "exchange_rules"

    def check(self, ctx: GuardContext) -> GuardCheck:
        rules = ctx.rules
        value = f"{fmt(ctx.amount)}@{fmt(ctx.price)}"
        if rules is None:
            return self._result(False, value, "unknown", "unknown_market")
        reason = ctx.exchange_reason
        if reason == NOT_CHECKED:
            reason = rules.check_order(ctx.amount, ctx.price)
        return self._result(reason is None, value, _rules_limit(rules), reason)

    def compiled(self) -> Callable[[GuardContext], GuardCheck]:
        name, default_reason = self.NAME, self.REASON

        def check(ctx: GuardContext) -> GuardCheck:
            rules = ctx.rules
            value = f"{format(ctx.amount, 'f')}@{format(ctx.price, 'f')}"
            if rules is None:
                return guard_check(name, False, value, "unknown", "unknown_market")
            reason = ctx.exchange_reason
            if reason == NOT_CHECKED:
                reason = rules.check_order(ctx.amount, ctx.price)
            if reason is None:
                return guard_check(name, True, value, _rules_limit(rules))
            return guard_check(name, False, value, _rules_limit(rules), reason or default_reason)
        return check


_LIMITS: dict[int, tuple[MarketRules, str]] = {}  # id(rules) → (rules, its ExchangeRules limit)


def _rules_limit(rules: MarketRules) -> str:
    known = _LIMITS.get(id(rules))
    if known is not None and known[0] is rules:
        return known[1]
    limit = (f"min {fmt(rules.min_base)} {rules.base}, {fmt(rules.min_quote)} {rules.quote}; "
             f"tick {fmt(rules.tick_size)}; {rules.quantity_decimals} decimals")
    if len(_LIMITS) >= 4096:
        _LIMITS.clear()
    _LIMITS[id(rules)] = (rules, limit)
    return limit


REGISTRY: dict[str, type[Guard]] = {cls.__name__: cls for cls in (
    KillSwitch, MarketAllowList, OnePositionPerMarket, MaxOpenPositions, MaxAssetExposure, MaxGlobalExposure,
    MaxOrderNotional, DailyLossLimit, StopOutCooldown, ExchangeRules)}
REQUIRED = ("KillSwitch", "ExchangeRules")

DEFAULT_GUARDS: list[dict[str, Any]] = [
    {"method": "KillSwitch"},
    {"method": "MarketAllowList", "markets": []},
    {"method": "OnePositionPerMarket"},
    {"method": "MaxOpenPositions", "max_positions": 5},
    {"method": "MaxAssetExposure", "max_exposure_eur": "250"},
    {"method": "MaxGlobalExposure", "max_exposure_eur": "1000"},
    {"method": "MaxOrderNotional", "max_notional_eur": "100"},
    {"method": "DailyLossLimit", "max_loss_eur": "50"},
    {"method": "StopOutCooldown", "cooldown_secs": 3600},
    {"method": "ExchangeRules"},
]


@dataclass(frozen=True, slots=True)
class Caps:
    """The limits sizing caps a size by (None: that guard is not configured)."""

    max_order_notional_eur: Decimal | None
    max_asset_exposure_eur: Decimal | None
    max_global_exposure_eur: Decimal | None


class GuardChain:
    """The configured guards, in order."""

    __slots__ = ("_checks", "caps", "cooldown_secs", "guards")

    def __init__(self, guards: list[Guard]) -> None:
        self.guards: tuple[Guard, ...] = tuple(guards)
        self._checks = tuple(guard.compiled() for guard in self.guards)
        by_type = {type(g): g for g in self.guards}
        order = by_type.get(MaxOrderNotional)
        asset = by_type.get(MaxAssetExposure)
        total = by_type.get(MaxGlobalExposure)
        cool = by_type.get(StopOutCooldown)
        self.caps = Caps(
            order.max_notional_eur if isinstance(order, MaxOrderNotional) else None,
            asset.max_exposure_eur if isinstance(asset, MaxAssetExposure) else None,
            total.max_exposure_eur if isinstance(total, MaxGlobalExposure) else None,
        )
        self.cooldown_secs: int | None = cool.cooldown_secs if isinstance(cool, StopOutCooldown) else None

    @classmethod
    def from_config(cls, specs: str | list[dict[str, Any]] | None) -> GuardChain:
        """From ``CORE_GUARDS`` (a JSON string or the parsed list); None → ``DEFAULT_GUARDS``."""
        if specs is None or specs == "":
            specs = DEFAULT_GUARDS
        if isinstance(specs, str):
            try:
                specs = json.loads(specs)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"CORE_GUARDS is not valid JSON: {exc}") from None
        if not isinstance(specs, list):
            raise ConfigError("CORE_GUARDS must be a JSON list of {\"method\": Name, ...params}")
        guards: list[Guard] = []
        seen: set[str] = set()
        for i, spec in enumerate(specs):
            if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
                raise ConfigError(f"CORE_GUARDS[{i}] must be an object with a \"method\" name")
            params = dict(spec)
            name = params.pop("method")
            guard_cls = REGISTRY.get(name)
            if guard_cls is None:
                raise ConfigError(f"CORE_GUARDS[{i}]: unknown guard {name!r}; known: {', '.join(REGISTRY)}")
            if name in seen:
                raise ConfigError(f"CORE_GUARDS[{i}]: guard {name!r} listed twice")
            seen.add(name)
            try:
                guards.append(guard_cls(**params))
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "params"
                raise ConfigError(f"CORE_GUARDS[{i}] {name}: {where}: {err['msg']}") from None
        missing = [n for n in REQUIRED if n not in seen]
        if missing:
            raise ConfigError(f"CORE_GUARDS must include {', '.join(missing)} (never optional)")
        return cls(guards)

    def check(self, ctx: GuardContext) -> list[GuardCheck]:
        """Every guard's answer, in chain order (no short-circuit)."""
        return [check(ctx) for check in self._checks]

    def describe(self) -> list[dict[str, Any]]:
        return [{"method": type(g).__name__, **g.model_dump(mode="json")} for g in self.guards]


__all__ = ["DEFAULT_GUARDS", "NOT_CHECKED", "REGISTRY", "Caps", "Guard", "GuardChain", "GuardContext", "fmt",
           "guard_check", "trusted_model"]
