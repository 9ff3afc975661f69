"""SignalEngine: known signals, ids stable across replays, duplicates, gates, universe, warm-up,
restarts and malformed input. Pure: messages built here, a FakeClock, no Redis."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.trader_signal_engine.app.engine import CANDLE_OUTCOMES, SignalEngine, atr_decimal, signal_id
from services.trader_signal_engine.app.gates import REASONS, Gates, GateSettings
from services.trader_signal_engine.app.indicators import WilderATR
from services.trader_signal_engine.app.strategies import DEFAULT_STRATEGIES, build_strategies
from tradestack.clock import FakeClock
from tradestack.effects import Output
from tradestack.errors import ConfigError, PoisonMessage
from tradestack.messages import CandleUpdated, MessageFactory, SignalEmitted, Trace, decode, derive_id, encode

from . import MARKET, MINUTE, T0, book, candle, candles_from_closes, momentum_series

SRC = "trader_signal_engine"
# The known signals of momentum_series() with the default strategies: (candle index, strategy, side).
KNOWN = [(64, "momentum", "sell"), (67, "mean_reversion", "buy"), (74, "momentum", "buy"),
         (79, "mean_reversion", "sell")]


def make_engine(*, gates: GateSettings | None = None, universe: tuple[str, ...] = (MARKET,), atr_period: int = 14,
                intervals: tuple[str, ...] = ("1m",), stream: str | None = None) -> tuple[SignalEngine, FakeClock]:
    clock = FakeClock(T0)
    engine = SignalEngine(build_strategies(DEFAULT_STRATEGIES), gates or GateSettings(), intervals,
                          MessageFactory(SRC, clock), stream or "signals:baseline", clock, atr_period=atr_period)
    engine.set_universe(universe)
    return engine, clock


def live(engine: SignalEngine, clock: FakeClock, msgs: list[CandleUpdated], *, spread_bps: float = 2.0,
         with_book: bool = True, book_lag_ms: int = 0, late_ms: int = 1_000) -> list[SignalEmitted]:
    """Candles as the loop hands them over, each ``late_ms`` after its close, a book top just before."""
    out: list[SignalEmitted] = []
    for m in msgs:
        clock.set(m.open_ts + MINUTE + late_ms)
        if with_book:
            assert engine.on_book(book(m.market, ts=clock.now_ms() - book_lag_ms, spread_bps=spread_bps)) == []
        for effect in engine.on_candle(m):
            assert isinstance(effect, Output) and isinstance(effect.msg, SignalEmitted)
            out.append(effect.msg)
    return out


def summary(signals: list[SignalEmitted]) -> list[tuple[int, str, str]]:
    return [((s.candle_open_ts - T0) // MINUTE, s.strategy, s.side) for s in signals]


SERIES = candles_from_closes(momentum_series())


# -- known signals and their content -----------------------------------------------------------------


def test_known_series_gives_known_signals() -> None:
    engine, clock = make_engine()
    signals = live(engine, clock, SERIES)
    assert summary(signals) == KNOWN
    assert engine.signals == {("momentum", "buy"): 1, ("momentum", "sell"): 1, ("mean_reversion", "buy"): 1,
                              ("mean_reversion", "sell"): 1}
    assert engine.suppressed == dict.fromkeys(REASONS, 0)
    assert engine.candles["processed"] == len(SERIES)


def test_signal_content() -> None:
    engine, clock = make_engine()
    outputs = []
    atr = WilderATR(14)
    atr_at: dict[int, float] = {}
    for m in SERIES:
        value = atr.update(float(m.high), float(m.low), float(m.close))
        if value is not None:
            atr_at[m.open_ts] = value
        clock.set(m.open_ts + MINUTE + 500)
        engine.on_book(book(ts=clock.now_ms()))
        for effect in engine.on_candle(m):
            outputs.append((m, clock.now_ms(), effect))
    assert len(outputs) == 4
    strategies = {s.name: s for s in engine.strategies}
    for m, now, effect in outputs:
        assert isinstance(effect, Output) and effect.stream == "signals:baseline"
        s = effect.msg
        assert isinstance(s, SignalEmitted)
        assert s.id == signal_id(MARKET, s.strategy, "1m", m.open_ts)
        assert s.id == derive_id(f"signal/{MARKET}/{s.strategy}/1m/{m.open_ts}")
        assert s.trace == m.trace and s.ts == now and s.src == SRC and s.v == 2
        assert s.market == MARKET and s.interval == "1m" and s.candle_open_ts == m.open_ts
        assert s.ref_price == m.close and isinstance(s.ref_price, Decimal)
        assert s.atr == atr_decimal(atr_at[m.open_ts])
        assert s.atr is not None and len(s.atr.as_tuple().digits) <= 12
        assert s.params == strategies[s.strategy].param_strings
        assert 0.0 <= s.strength <= 1.0 and s.features["close"] == float(m.close)
        fields: dict[bytes | str, bytes | str] = dict(encode(s).items())
        assert decode(fields) == s  # travels as is


def test_custom_stream() -> None:
    engine, clock = make_engine(stream="signals:test")
    clock.set(T0)
    outs = []
    for m in SERIES:
        clock.set(m.open_ts + MINUTE)
        engine.on_book(book(ts=clock.now_ms()))
        outs += engine.on_candle(m)
    assert outs and {o.stream for o in outs if isinstance(o, Output)} == {"signals:test"}


# -- one signal per (market, strategy, interval, candle) ------------------------------------------------


def test_replay_gives_same_ids_and_no_new_signal() -> None:
    engine, clock = make_engine()
    first = live(engine, clock, SERIES)
    # A fresh engine (a restart) replaying the series: the same ids.
    again, clock2 = make_engine()
    assert [s.id for s in live(again, clock2, SERIES)] == [s.id for s in first]
    # The same engine seeing the series again: nothing new, every candle a duplicate.
    assert live(engine, clock, SERIES) == []
    assert engine.candles["duplicate"] == len(SERIES)
    assert sum(engine.signals.values()) == len(first)


def test_republished_candle_with_another_entry_id_is_a_duplicate() -> None:
    engine, clock = make_engine()
    first = live(engine, clock, SERIES[:65])
    assert summary(first) == [(64, "momentum", "sell")]
    copy = candle(64, float(SERIES[64].open), float(SERIES[64].high), float(SERIES[64].low),
                  float(SERIES[64].close), entry="republished")
    assert copy.id != SERIES[64].id
    assert live(engine, clock, [copy]) == []
    assert engine.candles["duplicate"] == 1
    # An older candle arriving late is ignored too (out of order).
    assert live(engine, clock, [SERIES[10]]) == [] and engine.candles["duplicate"] == 2


def test_signal_id_does_not_depend_on_the_candle_entry() -> None:
    engine, clock = make_engine()
    first = live(engine, clock, SERIES)
    other = [candle(i, float(m.open), float(m.high), float(m.low), float(m.close), entry="x")
             for i, m in enumerate(SERIES)]
    engine2, clock2 = make_engine()
    second = live(engine2, clock2, other)
    assert [s.id for s in second] == [s.id for s in first]
    assert [s.trace for s in second] != [s.trace for s in first]  # the trace is each candle's own


@settings(derandomize=True, database=None, deadline=None, max_examples=40)
@given(st.lists(st.tuples(st.integers(0, len(SERIES) - 1), st.integers(0, 89)), max_size=40))
def test_duplicates_anywhere_change_nothing(dups: list[tuple[int, int]]) -> None:
    """Re-sending any earlier candle at any point (re-published, replayed, late) leaves the signals
    exactly those of the clean run."""
    clean_engine, clean_clock = make_engine()
    clean = live(clean_engine, clean_clock, SERIES)
    engine, clock = make_engine()
    inject: dict[int, list[int]] = {}
    for at, which in dups:
        if which <= at:
            inject.setdefault(at, []).append(which)
    out: list[SignalEmitted] = []
    for i, m in enumerate(SERIES):
        out += live(engine, clock, [m])
        for j in inject.get(i, []):
            assert engine.on_candle(SERIES[j]) == []
    assert [s.id for s in out] == [s.id for s in clean]
    assert engine.candles["duplicate"] == sum(len(v) for v in inject.values())


# -- what is ignored -----------------------------------------------------------------------------------


def test_out_of_universe_is_ignored_not_an_error() -> None:
    engine, clock = make_engine(universe=("ETH-EUR",))
    assert live(engine, clock, SERIES) == []
    assert engine.candles["out_of_universe"] == len(SERIES)
    assert not engine.ready(MARKET, "1m")
    assert (MARKET, "1m") not in engine.warmup_progress()


def test_open_candles_and_other_intervals_are_ignored() -> None:
    engine, _ = make_engine()
    forming = candle(0, 100, 101, 99, 100, closed=False)
    assert engine.on_candle(forming) == [] and engine.candles["not_closed"] == 1
    five = candle(0, 100, 101, 99, 100, interval="5m")
    assert engine.on_candle(five) == [] and engine.candles["other_interval"] == 1
    assert engine.candles["processed"] == 0


# -- gates -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason, gates, kwargs", [
    ("no_book", None, {"with_book": False}),
    ("stale_book", None, {"book_lag_ms": 60_001}),
    ("spread", None, {"spread_bps": 30.0}),
    ("vol_low", GateSettings(min_vol=0.5, max_vol=1.0), {}),
    ("vol_high", GateSettings(min_vol=0.0, max_vol=0.001), {}),
    ("stale_candle", None, {"late_ms": 60_001}),
])
def test_each_gate_suppresses_what_it_should(reason: str, gates: GateSettings | None, kwargs: dict) -> None:
    engine, clock = make_engine(gates=gates)
    assert live(engine, clock, SERIES, **kwargs) == []
    assert engine.suppressed == {**dict.fromkeys(REASONS, 0), reason: len(KNOWN)}
    assert sum(engine.signals.values()) == 0
    assert engine.candles["processed"] == len(SERIES)  # the indicators still moved


def test_gates_let_through_at_their_limits_and_can_be_off() -> None:
    engine, clock = make_engine()
    assert summary(live(engine, clock, SERIES, spread_bps=24.9, book_lag_ms=60_000, late_ms=60_000)) == KNOWN
    off = GateSettings(max_book_age_ms=0, max_candle_age_ms=0)
    engine, clock = make_engine(gates=off)
    assert summary(live(engine, clock, SERIES, book_lag_ms=3_600_000, late_ms=3_600_000)) == KNOWN


def test_vol_measure_is_atr_over_close_per_hour() -> None:
    """The volatility the gate sees at the first signal is ATR/close * sqrt(60) for 1m candles."""
    atr = WilderATR(14)
    for m in SERIES[:65]:
        value = atr.update(float(m.high), float(m.low), float(m.close))
    assert value is not None
    vol = value / float(SERIES[64].close) * 60 ** 0.5
    below = GateSettings(min_vol=vol * 1.001, max_vol=1.0)
    above = GateSettings(min_vol=vol * 0.999, max_vol=1.0)
    engine, clock = make_engine(gates=below)
    assert (64, "momentum", "sell") not in summary(live(engine, clock, SERIES[:65]))
    engine, clock = make_engine(gates=above)
    assert summary(live(engine, clock, SERIES[:65])) == [(64, "momentum", "sell")]


def test_gate_order_and_newest_book_wins() -> None:
    gates = Gates(GateSettings())
    now = T0 + 10 * MINUTE
    assert gates.check(MARKET, now - 120_000, 0.01, now) == "stale_candle"
    assert gates.check(MARKET, now, 0.01, now) == "no_book"
    gates.on_book(book(ts=now - 1_000, spread_bps=50))
    gates.on_book(book(ts=now - 5_000, spread_bps=1))  # older: ignored
    assert gates.check(MARKET, now, 0.01, now) == "spread"
    gates.on_book(book(ts=now, spread_bps=1))
    assert gates.check(MARKET, now, 0.01, now) is None
    assert gates.check(MARKET, now, 0.0001, now) == "vol_low"
    assert gates.check(MARKET, now, 0.5, now) == "vol_high"


@pytest.mark.parametrize("kwargs", [{"min_vol": 0.2, "max_vol": 0.1}, {"max_spread_bps": -1.0},
                                    {"max_book_age_ms": -5}, {"min_vol": float("nan")}])
def test_bad_gate_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        GateSettings(**kwargs)


# -- warm-up, restarts, universe changes ------------------------------------------------------------------


def test_not_ready_means_no_signal() -> None:
    engine, clock = make_engine(atr_period=80)  # warm-up 80 candles: every known call comes earlier
    assert engine.warmup == 80
    assert live(engine, clock, SERIES[:79]) == []
    assert not engine.ready(MARKET, "1m")
    assert engine.warmup_progress() == {(MARKET, "1m"): 79 / 80}
    assert sum(engine.suppressed.values()) == 0  # not ready is not a gate: nothing was called
    live(engine, clock, SERIES[79:])
    assert engine.ready(MARKET, "1m")


def test_warmup_progress_and_ready() -> None:
    engine, clock = make_engine(universe=(MARKET, "ETH-EUR"), intervals=("1m", "5m"))
    assert engine.warmup == 50  # the trend EMA of the default momentum
    live(engine, clock, SERIES[:25])
    progress = engine.warmup_progress()
    assert progress == {(MARKET, "1m"): 0.5, (MARKET, "5m"): 0.0, ("ETH-EUR", "1m"): 0.0, ("ETH-EUR", "5m"): 0.0}
    live(engine, clock, SERIES[25:50])
    assert engine.ready(MARKET, "1m") and engine.warmup_progress()[(MARKET, "1m")] == 1.0
    assert not engine.ready("ETH-EUR", "1m")


def test_warm_never_emits_and_readies_the_series() -> None:
    engine, _ = make_engine()
    for m in SERIES:
        engine.warm(m)
    assert engine.ready(MARKET, "1m") and engine.candles["warmed"] == len(SERIES)
    assert sum(engine.signals.values()) == 0


def test_restart_history_then_backlog_emits_each_signal_once_with_the_same_ids() -> None:
    """At start the service warms from the stream's history, which also holds the entries the loop
    will hand over next (pending after a crash, or unread): their signals leave then, same ids."""
    baseline_engine, baseline_clock = make_engine()
    baseline = live(baseline_engine, baseline_clock, SERIES)
    engine, clock = make_engine()
    for m in SERIES:  # the whole history...
        engine.warm(m)
    backlog = SERIES[60:]  # ...of which the loop had not handled these
    out = live(engine, clock, backlog)
    assert [s.id for s in out] == [s.id for s in baseline]
    assert engine.candles["duplicate"] == len(backlog) - len(KNOWN)
    assert live(engine, clock, backlog) == []  # and once only


def test_restart_backlog_is_still_gated() -> None:
    engine, clock = make_engine()
    for m in SERIES:
        engine.warm(m)
    assert live(engine, clock, SERIES[60:], late_ms=3_600_000) == []  # an hour late: stale candles
    assert engine.suppressed["stale_candle"] == len(KNOWN)


def test_live_candles_before_history_rebuild_the_series() -> None:
    """A joining market: a few live candles reach on_candle before its history is read; warming
    then starts the series over from the history, which includes those candles."""
    baseline_engine, baseline_clock = make_engine()
    baseline = live(baseline_engine, baseline_clock, SERIES)
    engine, clock = make_engine()
    assert live(engine, clock, SERIES[50:55]) == []
    for m in SERIES[:55]:
        engine.warm(m)
    out = live(engine, clock, SERIES[55:])
    assert [s.id for s in out] == [s.id for s in baseline]
    assert engine.ready(MARKET, "1m")


def test_warm_skips_what_it_cannot_use() -> None:
    engine, _ = make_engine()
    engine.warm(candle(0, 100, 101, 99, 100, market="ETH-EUR"))  # not in the universe
    engine.warm(candle(0, 100, 101, 99, 100, closed=False))
    engine.warm(candle(0, 100, 99, 101, 100))  # malformed: high < low
    for m in SERIES[:10]:
        engine.warm(m)
    engine.warm(SERIES[5])  # older than what it has
    assert engine.candles["warm_skipped"] == 4 and engine.candles["warmed"] == 10


def test_set_universe_joins_and_leaves() -> None:
    engine, clock = make_engine(universe=())
    assert engine.set_universe({MARKET, "ETH-EUR"}) == {MARKET, "ETH-EUR"}
    live(engine, clock, SERIES[:60])
    assert engine.ready(MARKET, "1m")
    assert engine.set_universe({"ETH-EUR", "SOL-EUR"}) == {"SOL-EUR"}
    assert not engine.ready(MARKET, "1m") and engine.gates.book(MARKET) is None
    assert engine.on_candle(SERIES[60]) == [] and engine.candles["out_of_universe"] == 1
    # Rejoining starts from scratch: warm-up again.
    assert engine.set_universe({MARKET}) == {MARKET}
    live(engine, clock, SERIES[60:70])
    assert not engine.ready(MARKET, "1m")


# -- malformed input ------------------------------------------------------------------------------------


def raw_candle(**over: str) -> CandleUpdated:
    f = {"open": "100", "high": "101", "low": "99", "close": "100.5", "volume": "1"}
    f.update(over)
    return CandleUpdated(id="c", ts=T0, src="test", trace=Trace(id="c", ts=T0), market=MARKET, interval="1m",
                         open_ts=T0, open=Decimal(f["open"]), high=Decimal(f["high"]), low=Decimal(f["low"]),
                         close=Decimal(f["close"]), volume=Decimal(f["volume"]), closed=True)


@pytest.mark.parametrize("over, words", [
    ({"high": "98"}, "high 98 < low 99"),
    ({"low": "0"}, "must be > 0"),
    ({"open": "-1", "low": "-2"}, "must be > 0"),
    ({"close": "102"}, "outside"),
    ({"open": "98.5"}, "outside"),
    ({"volume": "-1"}, "volume -1 < 0"),
    ({"high": "1E+400"}, "out of range"),
])
def test_malformed_candle_is_poison(over: dict, words: str) -> None:
    engine, _ = make_engine()
    with pytest.raises(PoisonMessage) as info:
        engine.on_candle(raw_candle(**over))
    assert words in str(info.value) and MARKET in str(info.value)
    assert engine.candles["processed"] == 0


def test_malformed_book_is_poison() -> None:
    engine, _ = make_engine()
    good = book(ts=T0)
    with pytest.raises(PoisonMessage, match="not a book"):
        engine.on_book(good.model_copy(update={"bid": good.ask + 1}))
    with pytest.raises(PoisonMessage, match="not a book"):
        engine.on_book(good.model_copy(update={"bid": Decimal(0)}))
    with pytest.raises(PoisonMessage, match="spread_bps"):
        engine.on_book(good.model_copy(update={"spread_bps": Decimal(-1)}))
    assert engine.gates.book(MARKET) is None


# -- construction and counters -----------------------------------------------------------------------------


def test_counters_exist_from_the_start() -> None:
    engine, _ = make_engine()
    assert engine.signals == {(s, side): 0 for s in ("momentum", "mean_reversion") for side in ("buy", "sell")}
    assert engine.suppressed == dict.fromkeys(REASONS, 0)
    assert engine.candles == dict.fromkeys(CANDLE_OUTCOMES, 0)


def test_bad_engine_config() -> None:
    clock = FakeClock(T0)
    factory = MessageFactory(SRC, clock)
    strategies = build_strategies(DEFAULT_STRATEGIES)
    with pytest.raises(ConfigError, match="interval"):
        SignalEngine(strategies, GateSettings(), ["2m"], factory)
    with pytest.raises(ConfigError, match="no strategies"):
        SignalEngine([], GateSettings(), ["1m"], factory)
    with pytest.raises(ConfigError, match="unique"):
        SignalEngine(strategies + build_strategies('[{"method":"momentum"}]'), GateSettings(), ["1m"], factory)
    engine = SignalEngine(strategies, GateSettings(), ["1m"], factory)
    assert engine.clock is clock and engine.stream == "signals:baseline" and engine.universe == frozenset()


def test_random_walk_many_markets_deterministic() -> None:
    """Several markets interleaved: each market's signals are those it gets alone, ids unique."""
    rng = random.Random(7)
    markets = ["AAA-EUR", "BBB-EUR", "CCC-EUR"]
    series = {}
    for market in markets:
        x, closes = 100.0, []
        for _ in range(400):
            x *= 1 + rng.gauss(0, 0.004)
            closes.append(round(x, 2))
        series[market] = candles_from_closes(closes, market=market, wiggle=0.1)
    engine, clock = make_engine(universe=tuple(markets))
    together = []
    for i in range(400):
        together += live(engine, clock, [series[m][i] for m in markets])
    assert len({s.id for s in together}) == len(together) > 0
    for market in markets:
        alone_engine, alone_clock = make_engine(universe=(market,))
        alone = live(alone_engine, alone_clock, series[market])
        assert [s.id for s in together if s.market == market] == [s.id for s in alone]
