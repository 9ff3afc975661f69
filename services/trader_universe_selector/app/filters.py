"""Universe filters: a chain configured as an ordered JSON list, as freqtrade's pairlists.

``UNIVERSE_FILTERS='[{"method":"VolumeTopN","n":10,"quote":"EUR"},{"method":"MaxSpread","max_bps":50}]'``

The first filter *generates* the candidates (in rank order); each next one *filters* them (and may
re-order them: ``VolumeTopN`` used later sorts and truncates). Every filter names the markets it
dropped and why (a ``Rejection`` with a reason code and the numbers behind the decision) and, for
the markets it kept, one short line saying why (the member's ``reasons`` in ``trading:universe``).

Parameters are validated when the chain is built (pydantic, unknown keys refused): an unknown
method or a bad parameter raises ``ConfigError`` with one line naming the position, the method and
the parameter. Filters are plain code on ``MarketView`` snapshots: no Redis, no clock.

Adding a filter: a ``FilterParams`` subclass, a ``UniverseFilter`` subclass with ``NAME``,
``PARAMS`` and ``check`` (or ``filter``/``generate``), and one line in ``REGISTRY``.
"""

from __future__ import annotations

import json
import re
from abc import ABC
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tradestack.errors import ConfigError

# The default chain for the sandbox's EUR markets and for Bitvavo alike: the 10 most traded EUR
# markets, spread <= 50 bps, 24 h range between 0.5 % and 50 % of the last price, price >= 0.0001.
# Compact JSON without spaces, so `export $(grep -v '^#' .env | xargs)` keeps it in one word.
DEFAULT_FILTERS = (
    '[{"method":"VolumeTopN","n":10,"quote":"EUR"},'
    '{"method":"MaxSpread","max_bps":50},'
    '{"method":"VolatilityRange","min_pct":0.5,"max_pct":50},'
    '{"method":"MinPrice","min_price":0.0001}]'
)

MARKET_RE = re.compile(r"^[A-Z0-9]+-[A-Z0-9]+$")
ASSET_RE = re.compile(r"^[A-Z0-9]+$")
PATTERN_RE = re.compile(r"^[A-Z0-9*?\[\]!]+-[A-Z0-9*?\[\]!]+$")
BPS = Decimal(10_000)
HUNDRED = Decimal(100)
SPREAD_QUANT = Decimal("0.0001")  # as the book ingest writes spread_bps
RATIO_QUANT = Decimal("0.000001")


def plain(value: Decimal | None) -> str | None:
    """A decimal as Bitvavo writes numbers ("0.00000001", never "1E-8"); None stays None."""
    return None if value is None else format(value, "f")


def _pct(ratio: Decimal) -> str:
    return f"{format((ratio * HUNDRED).normalize(), 'f')}%"


def spread_bps(bid: Decimal, ask: Decimal) -> Decimal:
    """Spread in basis points of the mid, 4 decimals (the book ingest's formula)."""
    mid = (bid + ask) / 2
    if mid <= 0:
        return Decimal(0)
    return ((ask - bid) / mid * BPS).quantize(SPREAD_QUANT)


# ---------------------------------------------------------------------------------------------
# What filters look at and what they say


@dataclass(frozen=True, slots=True)
class MarketView:
    """One market's latest inputs at refresh time, with the derived numbers the filters use.

    ``volatility`` is the 24 h range as a ratio of the last price: (high - low) / last (0.05 = 5 %).
    ``spread_bps`` comes from the newer of the market's book top and its ticker's bid/ask
    (``spread_source`` says which); None when neither has both sides."""

    market: str
    base: str
    quote: str
    last: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    volume: Decimal | None = None
    volume_quote: Decimal | None = None
    bid: Decimal | None = None
    ask: Decimal | None = None
    spread_bps: Decimal | None = None
    spread_source: str | None = None  # "book" | "ticker" | None
    volatility: Decimal | None = None
    ticker_age_ms: int = 0
    book_age_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one filter dropped one market. ``missing_data``: dropped for lack of input (no quote at
    all), not on a threshold; an empty universe made of such rejections is staleness, not a verdict."""

    market: str
    filter: str
    position: int
    reason: str
    details: Mapping[str, str] = field(default_factory=dict)
    missing_data: bool = False

    def describe(self) -> str:
        numbers = ", ".join(f"{k}={v}" for k, v in self.details.items())
        return f"{self.filter}: {self.reason}" + (f" ({numbers})" if numbers else "")


@dataclass(slots=True)
class Candidate:
    """A market still in the running, with the reasons each filter kept it."""

    view: MarketView
    reasons: list[str] = field(default_factory=list)

    @property
    def market(self) -> str:
        return self.view.market


@dataclass(frozen=True, slots=True)
class Reject:
    """What ``check`` returns to drop a market (the base class adds the filter's name and position)."""

    reason: str
    details: Mapping[str, str] = field(default_factory=dict)
    missing_data: bool = False


@dataclass(frozen=True, slots=True)
class ChainResult:
    members: tuple[Candidate, ...]  # ranked: rank 1 first
    rejections: tuple[Rejection, ...]

    @property
    def missing_data(self) -> bool:
        return any(r.missing_data for r in self.rejections)

    def rejects_by_filter(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rejections:
            counts[r.filter] = counts.get(r.filter, 0) + 1
        return counts


Step = tuple[list[Candidate], list[Rejection]]


# ---------------------------------------------------------------------------------------------
# Parameters


class FilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_markets(values: list[str], patterns: bool = False) -> list[str]:
    rx = PATTERN_RE if patterns else MARKET_RE
    for v in values:
        if not rx.match(v):
            what = "a market or pattern such as BTC-EUR or *-USDC" if patterns else "a market such as BTC-EUR"
            raise ValueError(f"{v!r} is not {what}")
    return values


def _check_asset(value: str) -> str:
    if not ASSET_RE.match(value):
        raise ValueError(f"{value!r} is not an asset symbol such as EUR")
    return value


class VolumeTopNParams(FilterParams):
    n: int = Field(ge=1, le=10_000)
    quote: str = "EUR"
    min_volume_quote: Decimal = Field(Decimal(0), ge=0, allow_inf_nan=False)

    @field_validator("quote")
    @classmethod
    def _quote(cls, v: str) -> str:
        return _check_asset(v)


class StaticListParams(FilterParams):
    markets: list[str] = Field(min_length=1)

    @field_validator("markets")
    @classmethod
    def _markets(cls, v: list[str]) -> list[str]:
        return _check_markets(v)


class DenyListParams(FilterParams):
    markets: list[str] = Field(min_length=1)

    @field_validator("markets")
    @classmethod
    def _markets(cls, v: list[str]) -> list[str]:
        return _check_markets(v, patterns=True)


class QuoteCurrencyParams(FilterParams):
    quotes: list[str] = Field(default_factory=lambda: ["EUR"], min_length=1)

    @field_validator("quotes")
    @classmethod
    def _quotes(cls, v: list[str]) -> list[str]:
        return [_check_asset(q) for q in v]


class MaxSpreadParams(FilterParams):
    max_bps: Decimal = Field(gt=0, allow_inf_nan=False)


class VolatilityRangeParams(FilterParams):
    """Bounds in percent (``min_pct``/``max_pct``) or as ratios (``min_ratio``/``max_ratio``, 0.05 = 5 %);
    one unit per bound. Missing lower bound: 0; missing upper bound: none."""

    min_pct: Decimal | None = Field(None, ge=0, allow_inf_nan=False)
    max_pct: Decimal | None = Field(None, gt=0, allow_inf_nan=False)
    min_ratio: Decimal | None = Field(None, ge=0, allow_inf_nan=False)
    max_ratio: Decimal | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_unit(self) -> VolatilityRangeParams:
        if self.min_pct is not None and self.min_ratio is not None:
            raise ValueError("min_pct and min_ratio: give one of them")
        if self.max_pct is not None and self.max_ratio is not None:
            raise ValueError("max_pct and max_ratio: give one of them")
        if self.low_ratio == 0 and self.high_ratio is None:
            raise ValueError("give a lower bound (min_pct/min_ratio) or an upper bound (max_pct/max_ratio)")
        if self.high_ratio is not None and self.low_ratio > self.high_ratio:
            raise ValueError("the lower bound is above the upper bound")
        return self

    @property
    def low_ratio(self) -> Decimal:
        if self.min_ratio is not None:
            return self.min_ratio
        return self.min_pct / HUNDRED if self.min_pct is not None else Decimal(0)

    @property
    def high_ratio(self) -> Decimal | None:
        if self.max_ratio is not None:
            return self.max_ratio
        return self.max_pct / HUNDRED if self.max_pct is not None else None


class MinPriceParams(FilterParams):
    min_price: Decimal = Field(gt=0, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# Filters


class UniverseFilter(ABC):
    """One link of the chain. A filter overrides ``check`` (one market at a time, order kept) or
    ``filter`` (the whole list, e.g. to sort); a generator (``GENERATES``) also ``generate``."""

    NAME: ClassVar[str]
    PARAMS: ClassVar[type[FilterParams]]
    GENERATES: ClassVar[bool] = False

    def __init__(self, params: FilterParams, position: int = 0) -> None:
        self.params = params
        self.position = position

    @classmethod
    def create(cls, position: int = 0, **params: Any) -> UniverseFilter:
        """Build from keyword parameters (validated; a bad one raises ConfigError)."""
        return build_filter({"method": cls.NAME, **params}, position)

    def describe(self) -> str:
        args = self.params.model_dump(mode="json", exclude_none=True)
        return f"{self.NAME}({', '.join(f'{k}={v}' for k, v in args.items())})"

    def reject(self, market: str, found: Reject) -> Rejection:
        return Rejection(market=market, filter=self.NAME, position=self.position, reason=found.reason,
                         details=dict(found.details), missing_data=found.missing_data)

    def generate(self, markets: Sequence[MarketView]) -> Step:
        raise NotImplementedError(f"{self.NAME} does not generate candidates")

    def filter(self, candidates: Sequence[Candidate]) -> Step:
        kept: list[Candidate] = []
        rejected: list[Rejection] = []
        for cand in candidates:
            verdict = self.check(cand.view)
            if isinstance(verdict, Reject):
                rejected.append(self.reject(cand.market, verdict))
            else:
                cand.reasons.append(f"{self.NAME}: {verdict}")
                kept.append(cand)
        return kept, rejected

    def check(self, view: MarketView) -> str | Reject:
        """Keep (a short line saying why) or drop (a ``Reject``) one market."""
        raise NotImplementedError


class VolumeTopN(UniverseFilter):
    """The ``n`` markets of one quote currency with the highest 24 h quote volume, most traded first.
    A market with no volume (no trade in 24 h) or below ``min_volume_quote`` never qualifies.
    As a later filter it sorts the candidates by volume and keeps the first ``n``."""

    NAME = "VolumeTopN"
    PARAMS = VolumeTopNParams
    GENERATES = True

    def __init__(self, params: VolumeTopNParams, position: int = 0) -> None:
        super().__init__(params, position)
        self.n = params.n
        self.quote = params.quote
        self.min_volume = params.min_volume_quote

    def _eligible(self, view: MarketView) -> Reject | None:
        if view.quote != self.quote:
            return Reject("quote_mismatch", {"quote": view.quote, "wanted": self.quote})
        vol = view.volume_quote
        if vol is None or vol <= 0:
            return Reject("no_volume", {"volume_quote": plain(vol) or "null"})
        if vol < self.min_volume:
            return Reject("below_min_volume", {"volume_quote": plain(vol) or "null",
                                               "min_volume_quote": plain(self.min_volume) or "0"})
        return None

    def _top(self, items: list[Candidate]) -> Step:
        kept: list[Candidate] = []
        rejected: list[Rejection] = []
        eligible: list[Candidate] = []
        for cand in items:
            why = self._eligible(cand.view)
            if why is not None:
                rejected.append(self.reject(cand.market, why))
            else:
                eligible.append(cand)
        # Most traded first; ties by name, so the order never depends on dict order.
        eligible.sort(key=lambda c: (-(c.view.volume_quote or 0), c.market))
        cutoff = eligible[self.n - 1].view.volume_quote if len(eligible) >= self.n else None
        for i, cand in enumerate(eligible, start=1):
            vol = plain(cand.view.volume_quote) or "0"
            if i <= self.n:
                cand.reasons.append(f"{self.NAME}: #{i} of {len(eligible)} {self.quote} markets by 24h volume "
                                    f"{vol} {self.quote}")
                kept.append(cand)
            else:
                rejected.append(self.reject(cand.market, Reject("not_in_top_n", {
                    "volume_rank": str(i), "n": str(self.n), "volume_quote": vol,
                    "cutoff_volume_quote": plain(cutoff) or "0"})))
        return kept, rejected

    def generate(self, markets: Sequence[MarketView]) -> Step:
        return self._top([Candidate(view) for view in markets])

    def filter(self, candidates: Sequence[Candidate]) -> Step:
        return self._top(list(candidates))


class StaticList(UniverseFilter):
    """As the generator: exactly these markets, in this order (those the ticker has seen; a listed
    market without ticker data is a missing-data rejection). As a filter: an allow list."""

    NAME = "StaticList"
    PARAMS = StaticListParams
    GENERATES = True

    def __init__(self, params: StaticListParams, position: int = 0) -> None:
        super().__init__(params, position)
        self.markets = list(dict.fromkeys(params.markets))
        self.allowed = frozenset(self.markets)

    def generate(self, markets: Sequence[MarketView]) -> Step:
        by_name = {v.market: v for v in markets}
        kept: list[Candidate] = []
        rejected: list[Rejection] = []
        for name in self.markets:
            view = by_name.get(name)
            if view is None:
                rejected.append(Rejection(market=name, filter=self.NAME, position=self.position,
                                          reason="no_ticker", missing_data=True))
            else:
                kept.append(Candidate(view, [f"{self.NAME}: listed"]))
        return kept, rejected

    def check(self, view: MarketView) -> str | Reject:
        if view.market in self.allowed:
            return "listed"
        return Reject("not_listed")


class DenyList(UniverseFilter):
    """Drops the listed markets; shell-style patterns allowed (``USDC-EUR``, ``*-USDC``)."""

    NAME = "DenyList"
    PARAMS = DenyListParams

    def __init__(self, params: DenyListParams, position: int = 0) -> None:
        super().__init__(params, position)
        self.patterns = tuple(params.markets)

    def check(self, view: MarketView) -> str | Reject:
        for pattern in self.patterns:
            if fnmatchcase(view.market, pattern):
                return Reject("denied", {"pattern": pattern})
        return "not denied"


class QuoteCurrency(UniverseFilter):
    """Keeps markets quoted in one of ``quotes`` (default EUR)."""

    NAME = "QuoteCurrency"
    PARAMS = QuoteCurrencyParams

    def __init__(self, params: QuoteCurrencyParams, position: int = 0) -> None:
        super().__init__(params, position)
        self.quotes = frozenset(params.quotes)

    def check(self, view: MarketView) -> str | Reject:
        if view.quote in self.quotes:
            return f"quoted in {view.quote}"
        return Reject("quote_mismatch", {"quote": view.quote, "wanted": ",".join(sorted(self.quotes))})


class MaxSpread(UniverseFilter):
    """Drops markets whose spread (bps of the mid) is above ``max_bps``. The spread comes from the
    newer of the book top (``bitvavo:book``) and the ticker's bid/ask; a market with neither has no
    quote: a missing-data rejection."""

    NAME = "MaxSpread"
    PARAMS = MaxSpreadParams

    def __init__(self, params: MaxSpreadParams, position: int = 0) -> None:
        super().__init__(params, position)
        self.max_bps = params.max_bps

    def check(self, view: MarketView) -> str | Reject:
        spread = view.spread_bps
        if spread is None:
            return Reject("no_quote", {"max_bps": plain(self.max_bps) or ""}, missing_data=True)
        numbers = {"spread_bps": plain(spread) or "", "max_bps": plain(self.max_bps) or "",
                   "source": view.spread_source or ""}
        if spread > self.max_bps:
            return Reject("spread_too_wide", numbers)
        return f"spread {plain(spread)} bps <= {plain(self.max_bps)} ({view.spread_source})"


class VolatilityRange(UniverseFilter):
    """Keeps markets whose 24 h range, (high - low) / last, lies within the bounds (inclusive).
    A market without a trade in 24 h has no range and is dropped (``no_trades``)."""

    NAME = "VolatilityRange"
    PARAMS = VolatilityRangeParams

    def __init__(self, params: VolatilityRangeParams, position: int = 0) -> None:
        super().__init__(params, position)
        self.low = params.low_ratio
        self.high = params.high_ratio

    def check(self, view: MarketView) -> str | Reject:
        vol = view.volatility
        bounds = {"min_ratio": plain(self.low) or "0", "max_ratio": plain(self.high) or "none"}
        if vol is None:
            return Reject("no_trades", bounds)
        numbers = {"volatility": plain(vol) or "", **bounds}
        if vol < self.low:
            return Reject("too_calm", numbers)
        if self.high is not None and vol > self.high:
            return Reject("too_volatile", numbers)
        upper = _pct(self.high) if self.high is not None else "inf"
        return f"24h range {_pct(vol)} within {_pct(self.low)}..{upper}"


class MinPrice(UniverseFilter):
    """Drops markets whose last price is below ``min_price`` (quote currency): tick sizes there are
    coarse compared to the price. No trade in 24 h (no last price): dropped (``no_trades``)."""

    NAME = "MinPrice"
    PARAMS = MinPriceParams

    def __init__(self, params: MinPriceParams, position: int = 0) -> None:
        super().__init__(params, position)
        self.min_price = params.min_price

    def check(self, view: MarketView) -> str | Reject:
        if view.last is None:
            return Reject("no_trades", {"min_price": plain(self.min_price) or ""})
        if view.last < self.min_price:
            return Reject("price_too_low", {"last": plain(view.last) or "", "min_price": plain(self.min_price) or ""})
        return f"last {plain(view.last)} >= {plain(self.min_price)}"


# The explicit registry: ``method`` name → class. An unknown name fails at start.
REGISTRY: dict[str, type[UniverseFilter]] = {
    cls.NAME: cls
    for cls in (VolumeTopN, StaticList, DenyList, QuoteCurrency, MaxSpread, VolatilityRange, MinPrice)
}


# ---------------------------------------------------------------------------------------------
# The chain


class FilterChain:
    """The configured filters in order: the first generates, the rest filter."""

    def __init__(self, filters: Sequence[UniverseFilter]) -> None:
        if not filters:
            raise ConfigError("UNIVERSE_FILTERS: the chain is empty; give at least one generator "
                              f"({', '.join(_generators())})")
        first = filters[0]
        if not first.GENERATES:
            raise ConfigError(f"UNIVERSE_FILTERS[0] ({first.NAME}): cannot generate candidates; the first "
                              f"filter must be one of {', '.join(_generators())}")
        self.filters = tuple(filters)

    @property
    def names(self) -> list[str]:
        return [f.NAME for f in self.filters]

    def describe(self) -> str:
        return " -> ".join(f.describe() for f in self.filters)

    def run(self, markets: Sequence[MarketView]) -> ChainResult:
        """The ranked members and every rejection, each market dropped by the first filter it failed."""
        candidates, rejected = self.filters[0].generate(markets)
        rejections = list(rejected)
        for flt in self.filters[1:]:
            if not candidates:
                break
            candidates, rejected = flt.filter(candidates)
            rejections.extend(rejected)
        return ChainResult(members=tuple(candidates), rejections=tuple(rejections))


def _generators() -> list[str]:
    return [name for name, cls in REGISTRY.items() if cls.GENERATES]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_filter(spec: Any, position: int = 0) -> UniverseFilter:
    """One filter from ``{"method": Name, ...params}``; ConfigError (one line) when it is not valid."""
    where = f"UNIVERSE_FILTERS[{position}]"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: must be an object such as {{\"method\": \"MaxSpread\", \"max_bps\": 50}}")
    method = spec.get("method")
    if not isinstance(method, str) or not method:
        raise ConfigError(f"{where}: missing \"method\" (one of {', '.join(REGISTRY)})")
    cls = REGISTRY.get(method)
    if cls is None:
        raise ConfigError(f"{where}: unknown filter method {method!r} (known: {', '.join(REGISTRY)})")
    params = {k: v for k, v in spec.items() if k != "method"}
    try:
        parsed = cls.PARAMS.model_validate(params)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown parameter (known: {', '.join(cls.PARAMS.model_fields)})"
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError(_one_line(f"{where} ({method}): {'; '.join(problems)}")) from None
    return cls(parsed, position)


def build_chain(config: str | Sequence[Any]) -> FilterChain:
    """The chain from ``UNIVERSE_FILTERS`` (a JSON string, numbers read as exact decimals) or a list."""
    if isinstance(config, str):
        try:
            specs = json.loads(config, parse_float=Decimal)
        except ValueError as exc:
            raise ConfigError(_one_line(f"UNIVERSE_FILTERS: not valid JSON: {exc}")) from None
    else:
        specs = config
    if not isinstance(specs, list):
        raise ConfigError("UNIVERSE_FILTERS: must be a JSON list of {\"method\": Name, ...params} objects")
    return FilterChain([build_filter(spec, i) for i, spec in enumerate(specs)])


__all__ = [
    "DEFAULT_FILTERS",
    "REGISTRY",
    "Candidate",
    "ChainResult",
    "DenyList",
    "FilterChain",
    "MarketView",
    "MaxSpread",
    "MinPrice",
    "QuoteCurrency",
    "Reject",
    "Rejection",
    "StaticList",
    "UniverseFilter",
    "VolatilityRange",
    "VolumeTopN",
    "build_chain",
    "build_filter",
    "plain",
    "spread_bps",
]
