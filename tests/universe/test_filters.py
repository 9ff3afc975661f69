"""Universe filters one by one, the chain, and the registry's errors (tier 1: no Redis)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from services.trader_universe_selector.app.filters import (
    DEFAULT_FILTERS,
    REGISTRY,
    Candidate,
    FilterChain,
    MarketView,
    MaxSpread,
    MinPrice,
    VolatilityRange,
    VolumeTopN,
    build_chain,
    build_filter,
    spread_bps,
)
from tradestack.errors import ConfigError


def view(market: str, volume_quote: str | None = "1000", last: str | None = "100", spread: str | None = "10",
         volatility: str | None = "0.05", source: str | None = "book") -> MarketView:
    base, quote = market.split("-")
    return MarketView(
        market=market, base=base, quote=quote,
        last=None if last is None else Decimal(last),
        volume_quote=None if volume_quote is None else Decimal(volume_quote),
        spread_bps=None if spread is None else Decimal(spread), spread_source=source if spread is not None else None,
        volatility=None if volatility is None else Decimal(volatility),
    )


def cands(*views: MarketView) -> list[Candidate]:
    return [Candidate(v) for v in views]


def names(cs: list[Candidate]) -> list[str]:
    return [c.market for c in cs]


# -- registry and configuration -------------------------------------------------------------------


def test_registry_names_every_filter_once() -> None:
    assert set(REGISTRY) == {"VolumeTopN", "StaticList", "DenyList", "QuoteCurrency", "MaxSpread",
                             "VolatilityRange", "MinPrice"}
    for name, cls in REGISTRY.items():
        assert cls.NAME == name


def test_default_filters_is_compact_json_and_builds() -> None:
    assert " " not in DEFAULT_FILTERS and "\n" not in DEFAULT_FILTERS  # survives `export $(... | xargs)`
    specs = json.loads(DEFAULT_FILTERS)
    assert [s["method"] for s in specs] == ["VolumeTopN", "MaxSpread", "VolatilityRange", "MinPrice"]
    chain = build_chain(DEFAULT_FILTERS)
    assert chain.names == ["VolumeTopN", "MaxSpread", "VolatilityRange", "MinPrice"]
    top, spread, vol, price = chain.filters
    assert isinstance(top, VolumeTopN) and top.n == 10 and top.quote == "EUR"
    assert isinstance(spread, MaxSpread) and spread.max_bps == Decimal(50)
    assert isinstance(vol, VolatilityRange) and vol.low == Decimal("0.005") and vol.high == Decimal("0.5")
    assert isinstance(price, MinPrice) and price.min_price == Decimal("0.0001")


def test_json_numbers_become_exact_decimals() -> None:
    chain = build_chain('[{"method":"VolumeTopN","n":3},{"method":"MaxSpread","max_bps":0.1}]')
    spread = chain.filters[1]
    assert isinstance(spread, MaxSpread)
    assert spread.max_bps == Decimal("0.1")  # not 0.1000000000000000055511151231257827
    assert str(spread.max_bps) == "0.1"


def test_a_list_of_dicts_works_as_well_as_json() -> None:
    chain = build_chain([{"method": "StaticList", "markets": ["BTC-EUR"]}, {"method": "MinPrice", "min_price": "1"}])
    assert chain.names == ["StaticList", "MinPrice"]


@pytest.mark.parametrize(("config", "expected"), [
    ('[{"method":"VolumeTopN","n":5},{"method":"Foo"}]', "UNIVERSE_FILTERS[1]: unknown filter method 'Foo'"),
    ('[{"method":"VolumeTopN","n":5},{"method":"MaxSpread","max_bps":-1}]',
     "UNIVERSE_FILTERS[1] (MaxSpread): max_bps: Input should be greater than 0"),
    ('[{"method":"VolumeTopN","n":5,"qoute":"EUR"}]', "UNIVERSE_FILTERS[0] (VolumeTopN): qoute: unknown parameter"),
    ('[{"method":"VolumeTopN"}]', "UNIVERSE_FILTERS[0] (VolumeTopN): n: Field required"),
    ('[{"method":"VolumeTopN","n":0}]', "UNIVERSE_FILTERS[0] (VolumeTopN): n:"),
    ('[{"method":"VolumeTopN","n":2.5}]', "UNIVERSE_FILTERS[0] (VolumeTopN): n:"),
    ('[{"method":"VolumeTopN","n":5,"quote":"eur"}]', "UNIVERSE_FILTERS[0] (VolumeTopN): quote: 'eur' is not"),
    ('[{"method":"StaticList","markets":["BTCEUR"]}]', "UNIVERSE_FILTERS[0] (StaticList): markets: 'BTCEUR' is not"),
    ('[{"method":"StaticList","markets":[]}]', "UNIVERSE_FILTERS[0] (StaticList): markets:"),
    ('[{"method":"VolumeTopN","n":5},{"method":"MaxSpread","max_bps":"NaN"}]',
     "UNIVERSE_FILTERS[1] (MaxSpread): max_bps:"),
    ('[{"method":"VolumeTopN","n":5},{"method":"VolatilityRange","min_pct":5,"max_pct":1}]',
     "UNIVERSE_FILTERS[1] (VolatilityRange): the lower bound is above the upper bound"),
    ('[{"method":"VolumeTopN","n":5},{"method":"VolatilityRange","min_pct":1,"min_ratio":0.01}]',
     "UNIVERSE_FILTERS[1] (VolatilityRange): min_pct and min_ratio: give one of them"),
    ('[{"method":"VolumeTopN","n":5},{"method":"VolatilityRange"}]',
     "UNIVERSE_FILTERS[1] (VolatilityRange): give a lower bound"),
    ('[{"method":"VolumeTopN","n":5},{"max_bps":5}]', "UNIVERSE_FILTERS[1]: missing \"method\""),
    ('[{"method":"VolumeTopN","n":5},"MaxSpread"]', "UNIVERSE_FILTERS[1]: must be an object"),
    ('[{"method":"MaxSpread","max_bps":5}]', "UNIVERSE_FILTERS[0] (MaxSpread): cannot generate candidates"),
    ('[{"method":"DenyList","markets":["USDC-EUR"]}]', "UNIVERSE_FILTERS[0] (DenyList): cannot generate candidates"),
    ("[]", "UNIVERSE_FILTERS: the chain is empty"),
    ('{"method":"VolumeTopN","n":5}', "UNIVERSE_FILTERS: must be a JSON list"),
    ('[{"method":"VolumeTopN",', "UNIVERSE_FILTERS: not valid JSON"),
])
def test_bad_configuration_fails_with_one_line_naming_it(config: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_chain(config)
    text = str(err.value)
    assert text.startswith(expected), text
    assert "\n" not in text


def test_create_validates_like_the_json_path() -> None:
    assert isinstance(MaxSpread.create(max_bps=50), MaxSpread)
    with pytest.raises(ConfigError, match=r"UNIVERSE_FILTERS\[3\] \(MaxSpread\): max_bps"):
        MaxSpread.create(position=3, max_bps=0)


def test_describe_names_the_parameters() -> None:
    assert build_chain(DEFAULT_FILTERS).describe() == (
        "VolumeTopN(n=10, quote=EUR, min_volume_quote=0) -> MaxSpread(max_bps=50) -> "
        "VolatilityRange(min_pct=0.5, max_pct=50) -> MinPrice(min_price=0.0001)")


# -- VolumeTopN -----------------------------------------------------------------------------------


def test_volume_top_n_ranks_by_quote_volume_ties_by_name() -> None:
    top = build_filter({"method": "VolumeTopN", "n": 3})
    kept, rejected = top.generate([view("ETH-EUR", "500"), view("BTC-EUR", "900"), view("ADA-EUR", "500"),
                                   view("XRP-EUR", "100")])
    assert names(kept) == ["BTC-EUR", "ADA-EUR", "ETH-EUR"]
    assert kept[0].reasons == ["VolumeTopN: #1 of 4 EUR markets by 24h volume 900 EUR"]
    [out] = rejected
    assert (out.market, out.filter, out.reason, out.missing_data) == ("XRP-EUR", "VolumeTopN", "not_in_top_n", False)
    assert out.details == {"volume_rank": "4", "n": "3", "volume_quote": "100", "cutoff_volume_quote": "500"}


def test_volume_top_n_keeps_its_quote_only_and_needs_volume() -> None:
    top = build_filter({"method": "VolumeTopN", "n": 10, "quote": "EUR", "min_volume_quote": "50"})
    kept, rejected = top.generate([view("BTC-EUR", "900"), view("ETH-BTC", "9000"), view("DEAD-EUR", "0"),
                                   view("NEW-EUR", None), view("THIN-EUR", "49.99")])
    assert names(kept) == ["BTC-EUR"]
    reasons = {r.market: r.reason for r in rejected}
    assert reasons == {"ETH-BTC": "quote_mismatch", "DEAD-EUR": "no_volume", "NEW-EUR": "no_volume",
                       "THIN-EUR": "below_min_volume"}
    assert not any(r.missing_data for r in rejected)  # no volume is a verdict, not missing data


def test_volume_top_n_as_a_later_filter_sorts_and_truncates() -> None:
    chain = build_chain([{"method": "StaticList", "markets": ["XRP-EUR", "BTC-EUR", "ETH-EUR"]},
                         {"method": "VolumeTopN", "n": 2}])
    result = chain.run([view("XRP-EUR", "1"), view("BTC-EUR", "3"), view("ETH-EUR", "2")])
    assert [c.market for c in result.members] == ["BTC-EUR", "ETH-EUR"]
    assert [(r.market, r.reason) for r in result.rejections] == [("XRP-EUR", "not_in_top_n")]


# -- StaticList, DenyList, QuoteCurrency ---------------------------------------------------------------


def test_static_list_generates_in_its_order_and_flags_unseen_markets_as_missing_data() -> None:
    static = build_filter({"method": "StaticList", "markets": ["ETH-EUR", "BTC-EUR", "NEW-EUR", "ETH-EUR"]})
    kept, rejected = static.generate([view("BTC-EUR"), view("ETH-EUR"), view("SOL-EUR")])
    assert names(kept) == ["ETH-EUR", "BTC-EUR"]  # listed order; the duplicate once; SOL not listed
    [missing] = rejected
    assert (missing.market, missing.reason, missing.missing_data) == ("NEW-EUR", "no_ticker", True)


def test_static_list_as_a_filter_is_an_allow_list() -> None:
    allow = build_filter({"method": "StaticList", "markets": ["BTC-EUR"]}, 1)
    kept, rejected = allow.filter(cands(view("ETH-EUR"), view("BTC-EUR")))
    assert names(kept) == ["BTC-EUR"]
    assert [(r.market, r.reason, r.position) for r in rejected] == [("ETH-EUR", "not_listed", 1)]


def test_deny_list_takes_names_and_patterns() -> None:
    deny = build_filter({"method": "DenyList", "markets": ["USDC-EUR", "*-BTC", "PEP?-EUR"]})
    kept, rejected = deny.filter(cands(view("USDC-EUR"), view("BTC-EUR"), view("ETH-BTC"), view("PEPE-EUR"),
                                       view("PEPEX-EUR")))
    assert names(kept) == ["BTC-EUR", "PEPEX-EUR"]
    assert {r.market: r.details["pattern"] for r in rejected} == {"USDC-EUR": "USDC-EUR", "ETH-BTC": "*-BTC",
                                                                  "PEPE-EUR": "PEP?-EUR"}
    assert all(r.reason == "denied" for r in rejected)


def test_quote_currency_defaults_to_eur() -> None:
    quote = build_filter({"method": "QuoteCurrency"})
    kept, rejected = quote.filter(cands(view("BTC-EUR"), view("ETH-USDC")))
    assert names(kept) == ["BTC-EUR"]
    assert rejected[0].reason == "quote_mismatch" and rejected[0].details == {"quote": "USDC", "wanted": "EUR"}
    both = build_filter({"method": "QuoteCurrency", "quotes": ["EUR", "USDC"]})
    assert names(both.filter(cands(view("BTC-EUR"), view("ETH-USDC")))[0]) == ["BTC-EUR", "ETH-USDC"]


# -- MaxSpread, VolatilityRange, MinPrice ---------------------------------------------------------------


def test_max_spread_threshold_is_inclusive_and_says_its_numbers() -> None:
    spread = build_filter({"method": "MaxSpread", "max_bps": "50"})
    kept, rejected = spread.filter(cands(view("AT-EUR", spread="50"), view("WIDE-EUR", spread="50.0001", source="ticker")))
    assert names(kept) == ["AT-EUR"]
    assert kept[0].reasons == ["MaxSpread: spread 50 bps <= 50 (book)"]
    [wide] = rejected
    assert wide.reason == "spread_too_wide" and not wide.missing_data
    assert wide.details == {"spread_bps": "50.0001", "max_bps": "50", "source": "ticker"}
    assert wide.describe() == "MaxSpread: spread_too_wide (spread_bps=50.0001, max_bps=50, source=ticker)"


def test_max_spread_without_any_quote_is_missing_data() -> None:
    spread = build_filter({"method": "MaxSpread", "max_bps": "50"})
    kept, [none] = spread.filter(cands(view("NOQ-EUR", spread=None)))
    assert kept == []
    assert none.reason == "no_quote" and none.missing_data


def test_volatility_range_in_percent_or_ratio_is_the_same_filter() -> None:
    pct = build_filter({"method": "VolatilityRange", "min_pct": "0.5", "max_pct": "50"})
    ratio = build_filter({"method": "VolatilityRange", "min_ratio": "0.005", "max_ratio": "0.5"})
    views = [view("CALM-EUR", volatility="0.004999"), view("LOW-EUR", volatility="0.005"),
             view("MID-EUR", volatility="0.1"), view("HIGH-EUR", volatility="0.5"),
             view("WILD-EUR", volatility="0.500001"), view("NONE-EUR", volatility=None)]
    for flt in (pct, ratio):
        kept, rejected = flt.filter(cands(*views))
        assert names(kept) == ["LOW-EUR", "MID-EUR", "HIGH-EUR"]
        assert {r.market: r.reason for r in rejected} == {"CALM-EUR": "too_calm", "WILD-EUR": "too_volatile",
                                                          "NONE-EUR": "no_trades"}
        assert not any(r.missing_data for r in rejected)
        wild = next(r for r in rejected if r.market == "WILD-EUR")
        assert wild.details == {"volatility": "0.500001", "min_ratio": "0.005", "max_ratio": "0.5"}
    kept, _ = pct.filter(cands(view("MID-EUR", volatility="0.1")))
    assert kept[0].reasons == ["VolatilityRange: 24h range 10% within 0.5%..50%"]


def test_volatility_range_with_one_bound() -> None:
    floor = build_filter({"method": "VolatilityRange", "min_pct": 1})
    kept, _ = floor.filter(cands(view("A-EUR", volatility="5"), view("B-EUR", volatility="0.001")))
    assert names(kept) == ["A-EUR"]
    cap = build_filter({"method": "VolatilityRange", "max_ratio": "0.2"})
    kept, _ = cap.filter(cands(view("A-EUR", volatility="0"), view("B-EUR", volatility="0.3")))
    assert names(kept) == ["A-EUR"]


def test_min_price() -> None:
    price = build_filter({"method": "MinPrice", "min_price": "0.0001"})
    kept, rejected = price.filter(cands(view("OK-EUR", last="0.0001"), view("SHIB-EUR", last="0.000017"),
                                        view("NEW-EUR", last=None)))
    assert names(kept) == ["OK-EUR"]
    assert {r.market: r.reason for r in rejected} == {"SHIB-EUR": "price_too_low", "NEW-EUR": "no_trades"}
    low = next(r for r in rejected if r.market == "SHIB-EUR")
    assert low.details == {"last": "0.000017", "min_price": "0.0001"}


# -- the chain ------------------------------------------------------------------------------------------


def test_chain_drops_each_market_at_the_first_filter_it_fails_and_collects_reasons() -> None:
    chain = build_chain(DEFAULT_FILTERS)
    result = chain.run([
        view("BTC-EUR", "9000", spread="1.5", volatility="0.05"),
        view("WIDE-EUR", "8000", spread="80", volatility="0.9"),  # fails spread first (and volatility)
        view("USDC-EUR", "7000", spread="1", volatility="0.002"),
        view("SHIB-EUR", "6000", last="0.000017", spread="12", volatility="0.1"),
        view("NOQ-EUR", "5000", spread=None),
        view("ETH-EUR", "4000", spread="2", volatility="0.06"),
    ])
    assert [c.market for c in result.members] == ["BTC-EUR", "ETH-EUR"]
    assert {r.market: (r.filter, r.reason) for r in result.rejections} == {
        "WIDE-EUR": ("MaxSpread", "spread_too_wide"), "USDC-EUR": ("VolatilityRange", "too_calm"),
        "SHIB-EUR": ("MinPrice", "price_too_low"), "NOQ-EUR": ("MaxSpread", "no_quote")}
    assert result.rejects_by_filter() == {"MaxSpread": 2, "VolatilityRange": 1, "MinPrice": 1}
    assert result.missing_data
    btc = result.members[0]
    assert [r.split(":")[0] for r in btc.reasons] == ["VolumeTopN", "MaxSpread", "VolatilityRange", "MinPrice"]


def test_chain_needs_a_generator_first() -> None:
    with pytest.raises(ConfigError, match="must be one of VolumeTopN, StaticList"):
        FilterChain([build_filter({"method": "MinPrice", "min_price": 1})])


def test_spread_bps_matches_the_book_ingest() -> None:
    from tradestack.bitvavo.book import mid_and_spread_bps

    for bid, ask in [("60000", "60001"), ("0.000017", "0.000018"), ("1", "1"), ("2499.9", "2500.1")]:
        assert spread_bps(Decimal(bid), Decimal(ask)) == mid_and_spread_bps(Decimal(bid), Decimal(ask))[1]
