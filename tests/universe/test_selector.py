"""UniverseSelector: ranking, the atomic replace, change events, staleness, restarts, bad input.

Tier 1: stub messages and a FakeClock; no Redis, no sleeps, no wall clock."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.trader_universe_selector.app.filters import DEFAULT_FILTERS, build_chain
from services.trader_universe_selector.app.selector import UniverseSelector
from tradestack import streams
from tradestack.clock import FakeClock
from tradestack.effects import DelKey, Effect, HashSet, Output
from tradestack.errors import ConfigError, PoisonMessage
from tradestack.messages import (
    BookTopUpdated,
    MessageFactory,
    Ticker24hUpdated,
    Trace,
    TradingEvent,
    UniverseChanged,
    decode,
    encode,
)

T0 = 1_700_000_000_000
STALE_MS = 30_000
SRC = "trader_universe_selector"


def ticker(market: str, volume_quote: str | None = "1000000", last: str | None = "100", high: str | None = "105",
           low: str | None = "95", bid: str | None = "99.99", ask: str | None = "100.01", ts: int = T0,
           volume: str | None = "10000", **over: Any) -> Ticker24hUpdated:
    msg_id = f"ticker/{market}/{ts}"
    fields: dict[str, Any] = {"open": last, "high": high, "low": low, "last": last, "volume": volume,
                              "volume_quote": volume_quote, "bid": bid, "bid_size": "1" if bid else None, "ask": ask,
                              "ask_size": "1" if ask else None}
    fields.update(over)
    return Ticker24hUpdated(id=msg_id, ts=ts, src="ingest_ticker24h", trace=Trace(id=msg_id, ts=ts), market=market,
                            exchange_ts=ts, **fields)


def book(market: str, bid: str = "99.99", ask: str = "100.01", ts: int = T0, **over: Any) -> BookTopUpdated:
    msg_id = f"book/{market}/{ts}"
    fields: dict[str, Any] = {"bid": bid, "bid_size": "1", "ask": ask, "ask_size": "1", "mid": "100",
                              "spread_bps": "2", "nonce": 1}
    fields.update(over)
    return BookTopUpdated(id=msg_id, ts=ts, src="ingest_orderbook", trace=Trace(id=msg_id, ts=ts), market=market,
                          exchange_ts=ts, **fields)


def make(filters: str | list[dict[str, Any]] = DEFAULT_FILTERS, current: Any = None,
         clock: FakeClock | None = None, **kw: Any) -> tuple[UniverseSelector, FakeClock]:
    clock = clock or FakeClock(T0)
    sel = UniverseSelector(build_chain(filters), MessageFactory(SRC, clock), clock, STALE_MS, current=current, **kw)
    return sel, clock


def feed(sel: UniverseSelector, *msgs: Ticker24hUpdated | BookTopUpdated) -> None:
    for msg in msgs:
        out = sel.on_ticker(msg) if isinstance(msg, Ticker24hUpdated) else sel.on_book(msg)
        assert out == []


def hash_of(effects: list[Effect]) -> dict[str, dict[str, Any]]:
    [hs] = [e for e in effects if isinstance(e, HashSet)]
    assert hs.key == streams.UNIVERSE
    return {k: orjson.loads(v) for k, v in hs.mapping.items()}


def outputs(effects: list[Effect], cls: type) -> list[Any]:
    return [e.msg for e in effects if isinstance(e, Output) and isinstance(e.msg, cls)]


def changes(effects: list[Effect]) -> list[UniverseChanged]:
    return outputs(effects, UniverseChanged)


def warnings(effects: list[Effect]) -> list[TradingEvent]:
    return outputs(effects, TradingEvent)


def writes(effects: list[Effect]) -> bool:
    return any(isinstance(e, (DelKey, HashSet)) for e in effects)


MARKETS = {"BTC-EUR": "9000000", "ETH-EUR": "5000000", "SOL-EUR": "2000000"}


def fresh(sel: UniverseSelector, clock: FakeClock, volumes: dict[str, str] = MARKETS, **kw: Any) -> None:
    feed(sel, *(ticker(m, v, ts=clock.now_ms(), **kw) for m, v in volumes.items()))


# -- ranking and the atomic replace ----------------------------------------------------------------


def test_first_refresh_replaces_the_hash_atomically_and_announces_the_universe() -> None:
    sel, clock = make()
    fresh(sel, clock)
    feed(sel, book("BTC-EUR", "60000", "60001"))
    effects = sel.refresh()
    # DEL then one HSET: applied in one commit, no reader sees half a universe.
    assert [type(e) for e in effects] == [DelKey, HashSet, Output]
    assert effects[0] == DelKey(streams.UNIVERSE)
    out = effects[2]
    assert isinstance(out, Output) and out.stream == streams.TRADING_EVENTS
    universe = hash_of(effects)
    assert list(universe) == ["BTC-EUR", "ETH-EUR", "SOL-EUR"]
    assert universe["BTC-EUR"] == {
        "rank": 1, "score": "1.000000", "volume_quote": "9000000", "spread_bps": "0.1667", "spread_source": "book",
        "volatility": "0.100000", "last": "100", "updated_ms": T0,
        "reasons": ["VolumeTopN: #1 of 3 EUR markets by 24h volume 9000000 EUR",
                    "MaxSpread: spread 0.1667 bps <= 50 (book)",
                    "VolatilityRange: 24h range 10% within 0.5%..50%",
                    "MinPrice: last 100 >= 0.0001"],
    }
    assert [universe[m]["rank"] for m in universe] == [1, 2, 3]
    assert universe["ETH-EUR"]["score"] == "0.555556"  # 5M / 9M
    assert universe["ETH-EUR"]["spread_source"] == "ticker"  # no book for ETH: the ticker's bid/ask
    assert universe["ETH-EUR"]["spread_bps"] == "2.0000"
    [change] = changes(effects)
    assert change.members == ["BTC-EUR", "ETH-EUR", "SOL-EUR"]
    assert change.added == ["BTC-EUR", "ETH-EUR", "SOL-EUR"] and change.removed == []
    assert change.src == SRC and change.ts == T0
    entry: dict[bytes | str, bytes | str] = dict(encode(change).items())
    assert decode(entry) == change  # a valid wire message
    assert sel.size == 3 and sel.changes == 1 and sel.members == ("BTC-EUR", "ETH-EUR", "SOL-EUR")


def test_same_membership_rewrites_the_hash_without_an_event() -> None:
    sel, clock = make()
    fresh(sel, clock)
    sel.refresh()
    clock.advance(10_000)
    fresh(sel, clock, {"BTC-EUR": "9500000", "ETH-EUR": "1000000", "SOL-EUR": "2000000"})
    effects = sel.refresh()
    assert [type(e) for e in effects] == [DelKey, HashSet]
    universe = hash_of(effects)
    assert list(universe) == ["BTC-EUR", "SOL-EUR", "ETH-EUR"]  # re-ranked
    assert universe["ETH-EUR"]["rank"] == 3 and universe["ETH-EUR"]["volume_quote"] == "1000000"
    assert sel.changes == 1


def test_membership_change_says_what_was_added_and_removed() -> None:
    sel, clock = make('[{"method":"VolumeTopN","n":2}]')
    fresh(sel, clock)
    first = sel.refresh()
    assert changes(first)[0].members == ["BTC-EUR", "ETH-EUR"]
    clock.advance(10_000)
    fresh(sel, clock, {"BTC-EUR": "9000000", "ETH-EUR": "1000000", "SOL-EUR": "2000000"})
    [change] = changes(sel.refresh())
    assert change.members == ["BTC-EUR", "SOL-EUR"] and change.added == ["SOL-EUR"] and change.removed == ["ETH-EUR"]
    assert sel.changes == 2
    assert sel.rejects_last == {"VolumeTopN": 1}
    assert sel.rejects_total == {"VolumeTopN": 2}


def test_a_market_whose_volume_dries_up_leaves_at_the_next_refresh() -> None:
    sel, clock = make()
    fresh(sel, clock)
    assert sel.refresh()
    clock.advance(10_000)
    fresh(sel, clock, {"BTC-EUR": "9000000", "ETH-EUR": "0", "SOL-EUR": "2000000"})
    effects = sel.refresh()
    assert list(hash_of(effects)) == ["BTC-EUR", "SOL-EUR"]
    [change] = changes(effects)
    assert change.removed == ["ETH-EUR"] and change.added == []
    [why] = [r for r in sel.last_rejections if r.market == "ETH-EUR"]
    assert (why.filter, why.reason) == ("VolumeTopN", "no_volume")


def test_fresh_complete_data_that_rejects_everything_empties_the_universe() -> None:
    sel, clock = make()
    fresh(sel, clock)
    sel.refresh()
    clock.advance(10_000)
    # Every market now trades with a 5 % spread: data complete, thresholds fail: a real verdict.
    fresh(sel, clock, bid="97.5", ask="102.5")
    effects = sel.refresh()
    assert [type(e) for e in effects] == [DelKey, Output]  # no HSET of an empty mapping
    [change] = changes(effects)
    assert change.members == [] and change.removed == ["BTC-EUR", "ETH-EUR", "SOL-EUR"]
    assert sel.size == 0 and not sel.stale
    assert sel.rejects_last == {"VolumeTopN": 0, "MaxSpread": 3, "VolatilityRange": 0, "MinPrice": 0}


def test_the_same_inputs_give_the_same_effects() -> None:
    runs = []
    for _ in range(2):
        sel, clock = make()
        fresh(sel, clock)
        feed(sel, book("SOL-EUR", "99", "101"))
        runs.append(sel.refresh())
    assert runs[0] == runs[1]  # same ids, same JSON


# -- staleness ------------------------------------------------------------------------------------------


def test_stale_ticker_keeps_the_universe_and_warns_once_per_episode() -> None:
    sel, clock = make()
    fresh(sel, clock)
    sel.refresh()
    clock.advance(STALE_MS)
    assert [type(e) for e in sel.refresh()] == [DelKey, HashSet]  # exactly stale_after_ms: still fresh
    clock.advance(1)
    effects = sel.refresh()
    assert not writes(effects)
    [warn] = warnings(effects)
    assert warn.kind == "universe_stale" and warn.severity == "warning"
    assert warn.details["reason"] == "ticker_stale"
    assert warn.details["ticker_age_ms"] == str(STALE_MS + 1)
    assert warn.details["kept_members"] == "BTC-EUR,ETH-EUR,SOL-EUR"
    assert sel.stale and sel.stale_reason == "ticker_stale" and sel.size == 3
    for _ in range(5):  # the episode goes on: no more warnings, still no write
        clock.advance(60_000)
        assert sel.refresh() == []
    assert sel.stale_episodes == 1
    # Data comes back: the next refresh writes and clears the flag; a later episode warns again.
    fresh(sel, clock)
    assert [type(e) for e in sel.refresh()] == [DelKey, HashSet]
    assert not sel.stale and sel.stale_reason is None
    clock.advance(STALE_MS + 1)
    assert len(warnings(sel.refresh())) == 1
    assert sel.stale_episodes == 2


def test_no_ticker_after_start_is_warming_up_then_stale() -> None:
    sel, clock = make()
    assert sel.refresh() == []  # nothing read yet: not stale, no warning, no write
    assert not sel.stale
    clock.advance(STALE_MS - 1)
    assert sel.refresh() == []
    clock.advance(1)
    [warn] = warnings(sel.refresh())
    assert warn.details["reason"] == "no_ticker" and warn.details["ticker_age_ms"] == "never"
    assert sel.stale and sel.size == 0


def test_no_quote_anywhere_is_staleness_not_an_empty_universe() -> None:
    sel, clock = make(current=["BTC-EUR"])
    clock.advance(STALE_MS)  # past the start-up grace
    # Tickers without bid/ask and no book seen yet (book ingest restarting): every candidate lacks a quote.
    fresh(sel, clock, bid=None, ask=None)
    effects = sel.refresh()
    assert not writes(effects)
    [warn] = warnings(effects)
    assert warn.details["reason"] == "missing_data"
    assert warn.details["missing_data_markets"] == "BTC-EUR,ETH-EUR,SOL-EUR"
    assert sel.stale and sel.members == ("BTC-EUR",)
    assert sel.rejects_last["MaxSpread"] == 3
    # One book arrives: that market has a quote now, so the chain has a member: write.
    feed(sel, book("ETH-EUR", ts=clock.now_ms()))
    effects = sel.refresh()
    assert list(hash_of(effects)) == ["ETH-EUR"]
    assert changes(effects)[0].removed == ["BTC-EUR"]
    assert not sel.stale


def test_missing_data_right_after_start_waits_silently() -> None:
    sel, clock = make(current=["BTC-EUR"])
    fresh(sel, clock, bid=None, ask=None)
    assert sel.refresh() == []
    assert not sel.stale and sel.members == ("BTC-EUR",)


def test_a_listed_market_never_seen_is_missing_data() -> None:
    sel, clock = make('[{"method":"StaticList","markets":["NEW-EUR"]}]')
    clock.advance(STALE_MS)
    fresh(sel, clock)
    assert warnings(sel.refresh())[0].details["missing_data_markets"] == "NEW-EUR"


def test_a_market_without_a_quote_is_dropped_when_others_have_data() -> None:
    sel, clock = make()
    fresh(sel, clock)
    feed(sel, ticker("NOQ-EUR", "99000000", bid=None, ask=None, ts=clock.now_ms()))
    effects = sel.refresh()
    assert "NOQ-EUR" not in hash_of(effects)
    assert not sel.stale


def test_a_market_whose_ticker_stops_is_forgotten_after_the_expiry() -> None:
    sel, clock = make(market_expiry_ms=120_000)
    fresh(sel, clock)
    sel.refresh()
    for _ in range(12):  # ETH and SOL keep ticking; BTC falls silent
        clock.advance(10_000)
        fresh(sel, clock, {"ETH-EUR": "5000000", "SOL-EUR": "2000000"})
    assert "BTC-EUR" in hash_of(sel.refresh())  # 120 s: still known
    clock.advance(1)
    effects = sel.refresh()
    assert list(hash_of(effects)) == ["ETH-EUR", "SOL-EUR"]
    assert changes(effects)[0].removed == ["BTC-EUR"]


def test_input_ages_per_kind() -> None:
    sel, clock = make()
    assert sel.input_age_ms() == {"ticker": None, "book": None}
    feed(sel, ticker("BTC-EUR"))
    clock.advance(500)
    feed(sel, book("BTC-EUR"))
    clock.advance(250)
    assert sel.input_age_ms() == {"ticker": 750, "book": 250}


# -- restart --------------------------------------------------------------------------------------------


def test_restart_with_the_loaded_universe_announces_no_change() -> None:
    loaded = {b"BTC-EUR": b'{"rank":1}', b"ETH-EUR": b'{"rank":2}', b"SOL-EUR": b'{"rank":3}'}  # HGETALL
    sel, clock = make(current=loaded)
    assert sel.size == 3 and sel.members == ("BTC-EUR", "ETH-EUR", "SOL-EUR")
    fresh(sel, clock)
    effects = sel.refresh()
    assert [type(e) for e in effects] == [DelKey, HashSet]  # rewritten, nothing announced
    assert sel.changes == 0


def test_restart_with_stale_inputs_keeps_the_loaded_universe() -> None:
    sel, clock = make(current=["BTC-EUR", "ETH-EUR"])
    clock.advance(STALE_MS)
    effects = sel.refresh()
    assert not writes(effects) and len(warnings(effects)) == 1
    assert sel.members == ("BTC-EUR", "ETH-EUR")


def test_restart_with_a_different_universe_announces_only_the_difference() -> None:
    sel, clock = make(current=["BTC-EUR", "DOGE-EUR"])
    fresh(sel, clock)
    [change] = changes(sel.refresh())
    assert change.added == ["ETH-EUR", "SOL-EUR"] and change.removed == ["DOGE-EUR"]


# -- inputs ---------------------------------------------------------------------------------------------


def test_the_newer_quote_wins_between_book_and_ticker() -> None:
    sel, clock = make('[{"method":"StaticList","markets":["BTC-EUR"]}]')
    feed(sel, book("BTC-EUR", "99", "101"))  # 200 bps
    clock.advance(100)
    feed(sel, ticker("BTC-EUR", bid="99.9", ask="100.1", ts=clock.now_ms()))  # 20 bps, newer
    assert sel.views()[0].spread_source == "ticker" and sel.views()[0].spread_bps == Decimal("20.0000")
    clock.advance(100)
    feed(sel, book("BTC-EUR", "99.99", "100.01", ts=clock.now_ms()))
    assert sel.views()[0].spread_source == "book" and sel.views()[0].spread_bps == Decimal("2.0000")


def test_an_older_update_handled_late_does_not_overwrite_a_newer_one() -> None:
    sel, _ = make()
    feed(sel, ticker("BTC-EUR", "200", ts=T0 + 1000), ticker("BTC-EUR", "100", ts=T0))
    feed(sel, book("BTC-EUR", "1", "2", ts=T0 + 1000), book("BTC-EUR", "3", "4", ts=T0))
    [v] = sel.views()
    assert v.volume_quote == Decimal(200) and v.bid == Decimal(1)


@pytest.mark.parametrize(("msg", "reason"), [
    (lambda: ticker("BTC-EUR", volume_quote="-1"), "negative volume_quote -1"),
    (lambda: ticker("BTC-EUR", volume="-0.5"), "negative volume -0.5"),
    (lambda: ticker("BTC-EUR", bid="101", ask="100"), "crossed quote, bid 101 > ask 100"),
    (lambda: ticker("BTC-EUR", high="90", low="95"), "high 90 below low 95"),
    (lambda: ticker("BTC-EUR", last="0", open="100"), "last 0 is not a positive price"),
    (lambda: ticker("BTCEUR"), "market 'BTCEUR' is not BASE-QUOTE"),
    (lambda: book("BTC-EUR", "101", "100"), "crossed book, bid 101 > ask 100"),
    (lambda: book("BTC-EUR", "0", "100"), "must be positive prices"),
    (lambda: book("BTC-EUR", bid_size="-1"), "negative size"),
])
def test_malformed_input_is_a_poison_message(msg: Any, reason: str) -> None:
    sel, _ = make()
    m = msg()
    with pytest.raises(PoisonMessage, match=reason.replace("(", r"\(")):
        sel.on_ticker(m) if isinstance(m, Ticker24hUpdated) else sel.on_book(m)
    assert sel.views() == [] and sel.input_age_ms() == {"ticker": None, "book": None}


def test_bad_timing_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="stale_after_ms"):
        make(clock=FakeClock(T0), market_expiry_ms=STALE_MS - 1)
    clock = FakeClock(T0)
    with pytest.raises(ConfigError, match="stale_after_ms must be > 0"):
        UniverseSelector(build_chain(DEFAULT_FILTERS), MessageFactory(SRC, clock), clock, 0)


# -- properties -----------------------------------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("ticker"), st.sampled_from(["BTC-EUR", "ETH-EUR", "SOL-EUR"]),
              st.sampled_from(["0", "1000", "5000000"]), st.booleans()),
    st.tuples(st.just("book"), st.sampled_from(["BTC-EUR", "ETH-EUR", "SOL-EUR"]),
              st.sampled_from([("99.99", "100.01"), ("90", "110")]), st.just(False)),
    st.tuples(st.just("advance"), st.sampled_from([1_000, 20_000, 31_000, 200_000]), st.none(), st.just(False)),
    st.tuples(st.just("refresh"), st.none(), st.none(), st.just(False)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=ops, loaded=st.booleans())
def test_stale_inputs_never_empty_the_universe(ops: list[tuple[Any, Any, Any, Any]], loaded: bool) -> None:
    sel, clock = make(current=["BTC-EUR", "ETH-EUR"] if loaded else None, market_expiry_ms=10 * 60_000)
    last_ticker: int | None = None
    warned_since_write = 0
    for kind, a, b, no_quote in ops:
        if kind == "ticker":
            feed(sel, ticker(a, b, ts=clock.now_ms(), bid=None if no_quote else "99.99",
                             ask=None if no_quote else "100.01"))
            last_ticker = clock.now_ms()
        elif kind == "book":
            feed(sel, book(a, b[0], b[1], ts=clock.now_ms()))
        elif kind == "advance":
            clock.advance(a)
        else:
            before = sel.members
            effects = sel.refresh()
            ticker_stale = last_ticker is None or clock.now_ms() - last_ticker > STALE_MS
            if ticker_stale:
                assert not writes(effects) and sel.members == before
            if writes(effects):
                assert effects[0] == DelKey(streams.UNIVERSE)
                assert not sel.stale
                warned_since_write = 0
                has_hash = any(isinstance(e, HashSet) for e in effects)
                if not has_hash:  # emptied: only on complete data
                    assert not any(r.missing_data for r in sel.last_rejections)
                    assert sel.members == ()
            else:
                assert sel.members == before
            warned_since_write += len(warnings(effects))
            assert warned_since_write <= 1  # at most one warning per stale episode
            assert len(changes(effects)) == (1 if set(before) != set(sel.members) else 0)
