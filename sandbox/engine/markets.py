"""Market catalogue: default EUR markets with realistic tick sizes/decimals, or 400+ generated."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from decimal import Decimal

from .numbers import fmt, round_up

ORDER_TYPES = ["market", "limit", "stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"]
STATUSES = ("trading", "halted", "auction", "auctionMatching", "cancelOnly")


@dataclass
class MarketSpec:
    market: str
    base: str
    quote: str
    name: str  # asset display name
    tick_str: str  # tickSize exactly as Bitvavo prints it ("1.00", "0.000100")
    quantity_decimals: int
    notional_decimals: int
    price0: Decimal  # initial mid price
    vol_per_hour: float  # random-walk sigma per hour (fraction)
    trades_per_min: float  # aggressive flow rate
    status: str = "trading"

    def __post_init__(self) -> None:
        self.tick = Decimal(self.tick_str)
        self.min_quote = Decimal("5")
        # Bitvavo's minOrderInBaseAsset tracks ~5 EUR at the listing price.
        self.min_base = round_up(self.min_quote / self.price0, self.quantity_decimals)
        if self.min_base <= 0:
            self.min_base = Decimal(1).scaleb(-self.quantity_decimals)
        self.max_base = Decimal("1000000000")
        self.max_quote = Decimal("1000000000")

    def to_json(self) -> dict:
        return {
            "market": self.market,
            "status": self.status,
            "base": self.base,
            "quote": self.quote,
            "pricePrecision": None,
            "minOrderInBaseAsset": f"{self.min_base:.{self.quantity_decimals}f}",
            "minOrderInQuoteAsset": f"{self.min_quote:.{self.notional_decimals}f}",
            "maxOrderInBaseAsset": f"{self.max_base:.{self.quantity_decimals}f}",
            "maxOrderInQuoteAsset": f"{self.max_quote:.{self.notional_decimals}f}",
            "quantityDecimals": self.quantity_decimals,
            "notionalDecimals": self.notional_decimals,
            "tickSize": self.tick_str,
            "maxOpenOrders": 100,
            "feeCategory": "A",
            "orderTypes": list(ORDER_TYPES),
        }


# (base, name, tickSize, quantityDecimals, price, vol/hour, trades/min)
_DEFAULTS: list[tuple[str, str, str, int, str, float, float]] = [
    ("BTC", "Bitcoin", "1.00", 8, "60000", 0.006, 15),
    ("ETH", "Ethereum", "0.10", 8, "2500", 0.008, 12),
    ("SOL", "Solana", "0.01", 8, "140", 0.010, 10),
    ("XRP", "XRP", "0.00001", 6, "0.55", 0.009, 8),
    ("ADA", "Cardano", "0.00001", 6, "0.40", 0.010, 6),
    ("DOGE", "Dogecoin", "0.000001", 4, "0.12", 0.012, 6),
    ("LTC", "Litecoin", "0.01", 8, "75", 0.008, 8),
    ("DOT", "Polkadot", "0.001", 8, "5.5", 0.010, 6),
    ("LINK", "Chainlink", "0.001", 8, "13", 0.010, 6),
    ("AVAX", "Avalanche", "0.01", 8, "28", 0.011, 6),
    ("POL", "Polygon Ecosystem Token", "0.00001", 6, "0.45", 0.011, 5),
    ("TRX", "TRON", "0.000001", 4, "0.11", 0.006, 5),
    ("SHIB", "Shiba Inu", "0.000000010", 0, "0.000017", 0.013, 5),
    ("PEPE", "Pepe", "0.0000000001", 0, "0.0000090", 0.016, 6),
    ("BCH", "Bitcoin Cash", "0.10", 8, "350", 0.008, 5),
    ("XLM", "Stellar", "0.00001", 6, "0.10", 0.008, 5),
    ("ATOM", "Cosmos", "0.001", 8, "7.5", 0.010, 5),
    ("NEAR", "NEAR Protocol", "0.000100", 6, "4.5", 0.012, 6),
    ("TAO", "Bittensor", "0.0100", 6, "350", 0.015, 5),
    ("USDC", "USD Coin", "0.0001", 2, "0.92", 0.0005, 6),
    ("NOT", "Notcoin", "0.000000010", 3, "0.006", 0.018, 5),
]

DEFAULT_MARKETS = [f"{row[0]}-EUR" for row in _DEFAULTS]


def _default_specs() -> dict[str, MarketSpec]:
    specs = {}
    for base, name, tick, qd, price, vol, rate in _DEFAULTS:
        spec = MarketSpec(f"{base}-EUR", base, "EUR", name, tick, qd, 2, Decimal(price), vol, rate)
        specs[spec.market] = spec
    return specs


def _generated_specs(count: int) -> dict[str, MarketSpec]:
    """Deterministic made-up small-cap markets (independent of the seed: the catalogue is fixed)."""
    rng = random.Random("sandbox-catalogue")
    taken = {row[0] for row in _DEFAULTS}
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    names = ("".join(p) for p in itertools.product(letters, repeat=3))
    specs: dict[str, MarketSpec] = {}
    for base in names:
        if len(specs) >= count:
            break
        if base in taken or rng.random() < 0.7:  # spread names over the alphabet
            continue
        price = 10 ** rng.uniform(-6, 3.5)
        # ~4-5 significant digits of price resolution, as on Bitvavo's small coins.
        exp = math.floor(math.log10(price)) - 4
        tick = Decimal(1).scaleb(exp)
        tick_str = fmt(tick) if exp < 0 else f"{tick:.2f}"
        price_d = (Decimal(repr(price)) / tick).to_integral_value() * tick
        qd = max(0, min(8, 2 - math.floor(math.log10(price)) + 2))
        spec = MarketSpec(
            f"{base}-EUR", base, "EUR", base.title(), tick_str, qd, 2, price_d,
            rng.uniform(0.006, 0.02), rng.uniform(0.3, 2),
        )
        specs[spec.market] = spec
    return specs


def build_catalogue(markets: list[str] | None) -> dict[str, MarketSpec]:
    defaults = _default_specs()
    if markets is None:
        return defaults
    if [m.lower() for m in markets] == ["all"]:
        specs = dict(defaults)
        specs.update(_generated_specs(420 - len(defaults)))
        return dict(sorted(specs.items()))
    specs = {}
    unknown = []
    for market in markets:
        if market in defaults:
            specs[market] = defaults[market]
        else:
            unknown.append(market)
    if unknown:
        generated = _generated_specs(420)
        for market in unknown:
            if market in generated:
                specs[market] = generated[market]
            else:
                raise ValueError(f"unknown sandbox market {market!r}")
    return specs
