"""What the trading core keeps to decide fast always equals what it stands for, recomputed from scratch.

Not timing tests: the in-flight counts and sums (``_add_flight``/``_drop_flight``/``_add_filled``)
against a walk over every intent in flight, after random sequences of decisions (some retracted at
commit by the kill switch), fills (partial, over-filled), cancels, stop-outs, marks, hand-made
intents and restarts; the ledger's kept views against its positions; and every shortcut a decision
takes (validation skipped, a cached check, a power-of-ten tick, a memoised UTC day) against the slow
way, equal in value *and* in the way the number is written (``Decimal('1.50')`` is not ``'1.5'`` on
the wire)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.trading_core.trading_core import core as core_module
from services.trading_core.trading_core import guards as guards_module
from services.trading_core.trading_core.core import CoreConfig, TradingCore, utc_day
from services.trading_core.trading_core.exits import ExitConfig
from services.trading_core.trading_core.guards import GuardChain, guard_check
from services.trading_core.trading_core.sizing import RiskConfig, size_entry
from tests.core import T0, TRACE, book, catalog, report, signal
from tradestack import streams
from tradestack.clock import FakeClock
from tradestack.effects import Effect, IfKey, Output
from tradestack.errors import PoisonMessage
from tradestack.ledger import PositionLedger
from tradestack.markets import MarketRules
from tradestack.messages import (
    DecisionMade,
    EntryIntent,
    ExitIntent,
    GuardCheck,
    Message,
    MessageFactory,
    OrderExecuted,
    Sizing,
    decode,
    derive_id,
    encode,
)

D = Decimal
ZERO = Decimal(0)
PRICES = {"BTC-EUR": D(60000), "ETH-EUR": D(2500), "SOL-EUR": D(140), "DOGE-EUR": D("0.12"),
          "SHIB-EUR": D("0.000017"), "NOPE-EUR": D(1)}
# Permissive enough that many entries are in flight at once, with caps that still bind now and then.
OPEN_GUARDS: list[dict[str, Any]] = [
    {"method": "KillSwitch"}, {"method": "MaxAssetExposure", "max_exposure_eur": "1200"},
    {"method": "MaxGlobalExposure", "max_exposure_eur": "4000"}, {"method": "MaxOrderNotional", "max_notional_eur": "70"},
    {"method": "DailyLossLimit", "max_loss_eur": "40"}, {"method": "StopOutCooldown", "cooldown_secs": 60},
    {"method": "ExchangeRules"},
]


def exact(value: Decimal) -> tuple[Any, ...]:
    """A Decimal as it is written (sign, digits, exponent), not only its value."""
    return tuple(value.as_tuple())


def exact_map(values: dict[str, Decimal]) -> dict[str, tuple[Any, ...]]:
    return {k: exact(v) for k, v in values.items()}


def assert_aggregates_match(core: TradingCore) -> None:
    """Everything kept incrementally equals its recomputation from the intents in flight."""
    flights = list(core._inflight.values())
    entries = [f for f in flights if f.kind == "entry"]
    assert core._flight_kinds == Counter(f.kind for f in flights)
    assert core._entry_markets == Counter(f.market for f in entries)
    assert set(core._left) == {f.intent_id for f in entries}
    for f in entries:
        left = max(f.notional - core._filled_quote.get(f.intent_id, ZERO), ZERO)
        assert exact(core._left[f.intent_id][0]) == exact(left)
        assert core._left[f.intent_id][1] == left.as_tuple().exponent
    by_asset: dict[str, list[Decimal]] = {}
    for f in entries:
        by_asset.setdefault(f.asset, []).append(core._left[f.intent_id][0])
    assert set(core._left_by_asset) == set(by_asset)
    for asset, lefts in by_asset.items():
        kept = core._left_by_asset[asset]
        assert kept.n == len(lefts) and kept.exact == sum(lefts, ZERO)
        assert kept.min_exp() == min([0, *(v.as_tuple().exponent for v in lefts)])
    lefts = [core._left[f.intent_id][0] for f in entries]
    assert core._left_total.n == len(entries) and core._left_total.exact == sum(lefts, ZERO)
    assert core._left_total.min_exp() == min([0, *(v.as_tuple().exponent for v in lefts)])

    per_asset, total = core._exposures_scan()
    kept_per_asset, kept_total = core._exposures()
    assert exact_map(kept_per_asset) == exact_map(per_asset) and exact(kept_total) == exact(total)
    for asset in {*per_asset, "BTC", "ETH", "SOL", "DOGE", "SHIB", "XRP", "NOPE", "ADA"}:
        held, summed = core._exposure_of(asset)
        assert exact(held) == exact(per_asset.get(asset, ZERO)) and exact(summed) == exact(total)

    markets = set(core.ledger.positions) | {f.market for f in entries}
    assert core._open_positions() == core.open_positions() == len(markets)
    for market in [*PRICES, "XRP-EUR", "ADA-EUR"]:
        assert core._entry_in_flight(market) == any(f.market == market for f in entries)
        assert core._has_position(market) == (core.ledger.size(market) > 0 or core._entry_in_flight(market))
    assert core.in_flight_counts() == {"entry": len(entries), "exit": len(flights) - len(entries)}
    assert_ledger_views_match(core.ledger, core._bids)


def assert_ledger_views_match(ledger: PositionLedger, marks: dict[str, Decimal]) -> None:
    everything = ledger._positions
    open_ = {m: p for m, p in everything.items() if p.size > 0}
    assert list(ledger.positions.items()) == list(open_.items())  # same positions, same order
    assert exact(ledger.realized) == exact(sum((p.realized for p in everything.values()), ZERO))
    expected = {m: p.size * marks[m] if m in marks else p.cost for m, p in open_.items()}
    assert list(ledger.exposure(marks).items()) == list(expected.items())
    assert exact_map(ledger.exposure(marks)) == exact_map(expected)
    unrealized = sum((p.unrealized(marks[m]) for m, p in everything.items() if p.size > 0 and m in marks), ZERO)
    assert exact(ledger.unrealized(marks)) == exact(unrealized)


def rebuild(shadow: list[Message], executed: list[OrderExecuted], clock: FakeClock, rnd: random.Random,
            config: CoreConfig, marks: dict[str, Decimal]) -> TradingCore:
    core = TradingCore(config, catalog(), MessageFactory("trading_core", clock), clock)
    a, b = list(shadow), list(executed)
    while a or b:
        if a and (not b or rnd.random() < 0.5):
            core.on_intent(a.pop(0))
        else:
            try:
                core.on_executed(b.pop(0))
            except PoisonMessage:
                pass
    for market, bid in marks.items():
        core.prime_book(book(market, str(bid)))
    return core


def hand_made(n: int, market: str, amount: str, stop: str, price: str | None) -> EntryIntent:
    """An intent the core did not decide (no signal, no ref price): counted in flight all the same."""
    return EntryIntent(id=f"hand-{n}", ts=T0 + n, src="operator", trace=TRACE, v=2, decision_id=f"hand-{n}",
                       signal_id=None, market=market, side="buy", order_type="limit" if price else "market",
                       amount=D(amount), price=D(price) if price else None, ref_price=None, stop_price=D(stop),
                       take_profit_price=None, trailing_distance=None, time_stop_secs=None, strategy="manual",
                       strategy_params={}, checks=[], sizing=None, mode="paper")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_in_flight_sums_and_counts_equal_a_recount_after_any_sequence(data: st.DataObject) -> None:
    clock = FakeClock(T0)
    config = dataclasses.replace(
        CoreConfig(), guards=GuardChain.from_config(data.draw(st.sampled_from([OPEN_GUARDS, None]), label="chain")),
        risk=RiskConfig("percent", D(3)),
        exits=data.draw(st.sampled_from([ExitConfig(), ExitConfig(trailing="pct", trailing_pct=D(1), take_profit_pct=None)])),
        entry_order_type=data.draw(st.sampled_from(["market", "limit"])))
    core = TradingCore(config, catalog(), MessageFactory("trading_core", clock), clock)
    rnd = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    shadow: list[Message] = []
    executed: list[OrderExecuted] = []
    open_orders: dict[str, dict[str, Any]] = {}  # intent id → its buy/sell order as reported so far
    marks: dict[str, Decimal] = {}
    kill = False
    odd_digits = data.draw(st.booleans(), label="fills with more digits than the context")  # the sums' fallback

    def commit(effects: list[Effect]) -> None:
        """What the bus does: an IfKey picks a branch (the switch set meanwhile, at random)."""
        for effect in effects:
            chosen: tuple[Effect, ...] | list[Effect] = [effect]
            if isinstance(effect, IfKey):
                killed = data.draw(st.sampled_from([False, False, False, True]), label="killed at commit")
                chosen = effect.then if killed else effect.otherwise
                if effect.on_chosen is not None:
                    effect.on_chosen(killed)
            for out in chosen:
                assert isinstance(out, Output)
                if out.stream == streams.ORDERS_SHADOW:
                    shadow.append(out.msg)
                    if isinstance(out.msg, (EntryIntent, ExitIntent)):
                        open_orders[out.msg.id] = dict(intent=out.msg, amount=ZERO, quote=ZERO)

    def execute(r: OrderExecuted) -> None:
        executed.append(r)
        try:
            core.on_executed(r)
        except PoisonMessage:
            pass

    for seq in range(1, data.draw(st.integers(5, 70), label="steps") + 1):
        op = data.draw(st.sampled_from(["signal"] * 5 + ["burst", "fill", "fill", "overfill", "odd_fill", "cancel",
                                                         "stop_out", "mark", "hand", "kill", "wait", "restart"]),
                       label="op")
        if op in ("signal", "burst"):
            for i in range(1 if op == "signal" else 12):  # a burst: a candle close on many markets
                market = data.draw(st.sampled_from(list(PRICES)), label="market")
                jitter = D(data.draw(st.integers(-400, 400))) / 10000
                price = PRICES[market] * (1 + jitter)
                commit(core.on_signal_gated(signal(seq * 100 + i, market=market, price=str(price)), kill))
        elif op in ("fill", "overfill", "odd_fill", "cancel"):
            pending = [o for o in open_orders.values() if not o.get("final")]
            if not pending:
                continue
            order = data.draw(st.sampled_from(pending), label="order")
            it = order["intent"]
            if isinstance(it, EntryIntent):
                px = it.ref_price or it.price or D("0.6")
            else:
                px = it.trigger_price or D(1)
            if op == "cancel":
                amount, status = order["amount"], data.draw(st.sampled_from(["canceled", "expired", "rejected"]))
                quote = order["quote"]
            else:
                part = data.draw(st.sampled_from([D(1), D("0.5"), D("0.37")]), label="part")
                amount = min(it.amount, order["amount"] + (it.amount * part).quantize(D("0.00000001")))
                status = "filled" if amount == it.amount else "partiallyFilled"
                # fills at other prices (more digits), or for more than planned (the clamp at 0)
                slip = D("1.05") if op == "overfill" else 1 + D(data.draw(st.integers(-99, 99))) / 100000
                quote = order["quote"] + (amount - order["amount"]) * px * slip
                if op == "odd_fill" and odd_digits:  # more digits than the context keeps
                    quote += D("1E-30")
                if amount == order["amount"]:
                    quote = order["quote"]
            fee = (quote * D("0.0025")).quantize(D("0.01"))
            order.update(amount=amount, quote=quote, final=status != "partiallyFilled")
            execute(report(it.id, it.market, it.side, status, str(amount), str(quote), fee=str(fee), seq=seq,
                           ts=clock.now_ms()))
        elif op == "stop_out":
            held = list(core.ledger.positions)
            if not held:
                continue
            market = data.draw(st.sampled_from(held), label="stopped")
            size = core.ledger.size(market)
            quote = size * PRICES.get(market, D(1)) * D("0.97")
            execute(report(f"stop-{seq}", market, "sell", "filled", str(size), str(quote),
                           fee=str((quote * D("0.0025")).quantize(D("0.01"))), seq=seq, reason="stop_loss",
                           ts=clock.now_ms()))
        elif op == "mark":
            market = data.draw(st.sampled_from(["BTC-EUR", "ETH-EUR", "SOL-EUR", "DOGE-EUR", "XRP-EUR"]))
            bid = PRICES.get(market, D("0.5")) * (1 + D(data.draw(st.integers(-900, 900))) / 10000)
            bid = bid.quantize(catalog()[market].tick_size) if market in catalog() else bid
            marks[market] = bid
            commit(core.on_book(book(market, str(bid), i=seq)))
        elif op == "hand":
            market = data.draw(st.sampled_from(["XRP-EUR", "SOL-EUR"]), label="hand market")
            intent = hand_made(seq, market, "3.3", "0.4", data.draw(st.sampled_from([None, "0.61"])))
            shadow.append(intent)
            open_orders[intent.id] = dict(intent=intent, amount=ZERO, quote=ZERO)
            core.on_intent(intent)
        elif op == "kill":
            kill = not kill
        elif op == "wait":
            clock.advance(data.draw(st.integers(0, 120_000)))
        elif op == "restart":
            core = rebuild(shadow, executed, clock, rnd, config, marks)
        assert_aggregates_match(core)


def test_deciding_never_walks_the_intents_in_flight() -> None:
    """A decision reads the kept counts and sums, whatever is in flight: O(1) in the intents."""

    class NoWalk(dict[str, Any]):
        def values(self) -> Any:
            raise AssertionError("the decision walked the intents in flight")

        items = values
        __iter__ = values

    clock = FakeClock(T0)
    config = dataclasses.replace(CoreConfig(), guards=GuardChain.from_config(
        [{"method": "KillSwitch"}, {"method": "MaxOrderNotional", "max_notional_eur": "100"}, {"method": "ExchangeRules"}]))
    core = TradingCore(config, catalog(), MessageFactory("trading_core", clock), clock)
    core._inflight = NoWalk()
    for n in range(300):
        market = list(PRICES)[n % 4]
        core.on_signal_gated(signal(n, market=market, price=str(PRICES[market])), kill_switch=False)
    assert len(core._inflight) == 300 and core.in_flight_counts() == {"entry": 300, "exit": 0}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**31), st.integers(-30, 5)), max_size=12), st.integers(1, 40))
def test_a_kept_sum_is_the_left_to_right_sum_or_says_it_cannot_be(terms: list[tuple[int, int]], prec: int) -> None:
    values = [Decimal(c).scaleb(e) for c, e in terms]
    kept = core_module._Sum()
    for v in values:
        kept.add(v, v.as_tuple().exponent)  # type: ignore[arg-type]
    # and some come and go again
    for v in values[::2]:
        kept.add(v, v.as_tuple().exponent)  # type: ignore[arg-type]
        kept.remove(v, v.as_tuple().exponent)  # type: ignore[arg-type]
    got = core_module._as_summed(kept.exact, kept.min_exp(), prec)
    with decimal.localcontext() as ctx:
        ctx.prec = prec
        ctx.clear_flags()
        expected = sum(values, ZERO)
        rounded = ctx.flags[decimal.Rounded]
    if got is not None:
        assert exact(got) == exact(expected)
    else:
        assert rounded  # None only when the sum itself rounds: the caller recomputes it


@settings(max_examples=200, deadline=None)
@given(equity=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10**7), places=4),
       pct=st.decimals(min_value=Decimal("0.1"), max_value=Decimal(5), places=2),
       price=st.decimals(min_value=Decimal("0.00001"), max_value=Decimal(100000), places=6),
       stop_pct=st.decimals(min_value=Decimal("0.5"), max_value=Decimal(30), places=1),
       room=st.one_of(st.none(), st.decimals(min_value=Decimal(-10), max_value=Decimal(1000), places=3)),
       market=st.sampled_from(["BTC-EUR", "DOGE-EUR", "SHIB-EUR", "SOL-EUR"]))
def test_sizing_built_without_validation_is_the_validated_one(equity: Decimal, pct: Decimal, price: Decimal,
                                                              stop_pct: Decimal, room: Decimal | None,
                                                              market: str) -> None:
    rules = catalog()[market]
    entry = rules.round_price(price, "up")
    stop = rules.round_price(entry * (100 - stop_pct) / 100, "down") if entry * (100 - stop_pct) / 100 >= \
        rules.tick_size else entry
    outcome = size_entry(equity=equity, risk=RiskConfig("percent", pct), entry_price=entry, stop_price=stop,
                         rules=rules, rooms={"max_order_notional": D(100), "max_asset_exposure": room})
    if outcome.sizing is None:
        return
    validated = Sizing(**outcome.sizing.model_dump())
    assert outcome.sizing == validated and outcome.sizing.model_fields_set == validated.model_fields_set
    assert outcome.sizing.model_dump_json() == validated.model_dump_json()


def test_sizing_inputs_that_are_not_finite_decimals_are_still_refused() -> None:
    rules = catalog()["BTC-EUR"]
    for equity in (Decimal("Infinity"), 1000):
        with pytest.raises(ValueError):
            size_entry(equity=equity, risk=RiskConfig("fixed", D(5)),  # type: ignore[arg-type]
                       entry_price=D("60000.00"), stop_price=D("58800.00"), rules=rules, rooms={})


def test_decisions_built_without_validation_are_the_validated_ones() -> None:
    clock = FakeClock(T0)
    core = TradingCore(CoreConfig(), catalog(), MessageFactory("trading_core", clock), clock)
    seen = 0
    for n in range(60):
        market = list(PRICES)[n % len(PRICES)]
        out = core.on_signal(signal(n, market=market, price=str(PRICES[market] * (1 + D(n) / 1000)),
                                    side="sell" if n % 7 == 3 else "buy"), kill_switch=n % 5 == 0)
        for effect in out:
            assert isinstance(effect, Output)
            msg = effect.msg
            validated = type(msg).model_validate(msg.model_dump())
            assert msg == validated and encode(msg) == encode(validated) and decode(encode(msg)) == msg  # type: ignore[arg-type]
            assert msg.model_fields_set == validated.model_fields_set
            seen += isinstance(msg, DecisionMade)
    assert seen == 60
    # a clock that is not integer ms, or a mode no message may carry, goes through validation
    odd = TradingCore(dataclasses.replace(CoreConfig(), mode="backtest"),  # type: ignore[arg-type]
                      catalog(), MessageFactory("trading_core", clock), clock)
    with pytest.raises(ValueError):
        odd.on_signal(signal(1), kill_switch=False)


def test_a_check_is_shared_only_with_an_equal_one_and_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guards_module, "_CHECKS_MAX", 3)
    monkeypatch.setattr(guards_module, "_CHECKS", {})
    made = [guard_check("x", True, str(i), "1") for i in range(10)]
    assert all(c == GuardCheck(name="x", passed=True, value=str(i), limit="1") for i, c in enumerate(made))
    assert len(guards_module._CHECKS) <= 3
    again = guard_check("x", True, "9", "1")
    assert again is made[9] and guard_check("x", False, "9", "1", "r") != again


@settings(max_examples=500, deadline=None)
@given(coefficient=st.integers(1, 10**70), exp=st.integers(-25, 8),
       tick=st.sampled_from(["1.00", "0.01", "0.10", "0.000001", "0.000000010", "10", "1E+2", "0.05", "0.25", "5",
                             "0.0001", "2.5E-7"]),
       direction=st.sampled_from(["down", "up", "nearest"]))
def test_rounding_to_a_power_of_ten_tick_is_the_division_rounding(coefficient: int, exp: int, tick: str,
                                                                 direction: str) -> None:
    rules = dataclasses.replace(catalog()["BTC-EUR"], tick_size=Decimal(tick))
    price = Decimal(coefficient).scaleb(exp)
    ctx = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation,
                                                                            decimal.DivisionByZero])
    rounding = {"down": decimal.ROUND_FLOOR, "up": decimal.ROUND_CEILING, "nearest": decimal.ROUND_HALF_EVEN}
    try:
        steps = ctx.divide(price, rules.tick_size).to_integral_value(rounding=rounding[direction])
        expected: Decimal | type[Exception] = ctx.multiply(steps, rules.tick_size).quantize(rules.tick_size, context=ctx)
    except decimal.InvalidOperation:
        expected = decimal.InvalidOperation
    if expected is decimal.InvalidOperation:
        with pytest.raises(decimal.InvalidOperation):
            rules.round_price(price, direction)  # type: ignore[arg-type]
    else:
        assert isinstance(expected, Decimal)
        assert exact(rules.round_price(price, direction)) == exact(expected)  # type: ignore[arg-type]


def test_rules_keep_their_derived_values_through_replace() -> None:
    btc = catalog()["BTC-EUR"]
    assert btc.amount_step == D("1E-8") and btc._tick_unit == D(1)
    doge = dataclasses.replace(btc, quantity_decimals=4, tick_size=D("0.05"))
    assert doge.amount_step == D("0.0001") and doge._tick_unit is None
    assert doge == MarketRules(**{f.name: getattr(doge, f.name) for f in dataclasses.fields(doge) if f.init})


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**12), 10**14) | st.sampled_from([T0, 0, -1, 86_400_000, 86_399_999, 1_700_006_399_999]))
def test_utc_day_is_the_calendar_day(ts_ms: int) -> None:
    assert utc_day(ts_ms) == dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).date().isoformat()


def test_the_ledger_views_follow_every_booking_and_context() -> None:
    ledger = PositionLedger()
    marks = {"BTC-EUR": D("61000.5")}
    steps = [
        report("a", "BTC-EUR", "buy", "partiallyFilled", "0.01", "600.123", fee="1.5", seq=1),
        report("a", "BTC-EUR", "buy", "filled", "0.02", "1200.2461", fee="3", seq=2),
        report("b", "ETH-EUR", "buy", "filled", "1", "2500.000000001", fee="6.25", seq=3),
        report("c", "BTC-EUR", "sell", "filled", "0.02", "1250.7", fee="3.1", seq=4, client_order_id="s1"),
        report("d", "BTC-EUR", "buy", "filled", "0.5", "30000", seq=5, client_order_id="d1"),
        report("e", "ETH-EUR", "sell", "partiallyFilled", "0.3", "760.33333333333333333", fee="1.9", seq=6,
               client_order_id="s2"),
    ]
    for r in steps:
        ledger.apply(r)
        assert_ledger_views_match(ledger, marks)
        assert_ledger_views_match(ledger, {})
        with decimal.localcontext() as ctx:  # another precision: the realized total summed again in it
            ctx.prec = 6
            assert exact(ledger.realized) == exact(sum((p.realized for p in ledger._positions.values()), ZERO))
        restored = PositionLedger.restore(ledger.snapshot())
        assert_ledger_views_match(restored, marks)
        assert restored.positions == ledger.positions and restored.realized == ledger.realized


def test_a_decision_id_and_intent_id_are_what_the_factory_makes() -> None:
    clock = FakeClock(T0)
    core = TradingCore(CoreConfig(), catalog(), MessageFactory("trading_core", clock), clock)
    sig = signal(1)
    out = core.on_signal(sig, kill_switch=False)
    decision, intent = (e.msg for e in out if isinstance(e, Output))
    factory = MessageFactory("trading_core", clock)
    assert decision.id == factory.child(sig, DecisionMade, **{k: getattr(decision, k) for k in DecisionMade.model_fields
                                                              if k not in ("id", "ts", "src", "trace", "v")}).id
    assert intent.id == derive_id(decision.id, EntryIntent.TYPE) and intent.ts == decision.ts == T0
    assert (decision.src, intent.src, decision.trace, intent.trace) == ("trading_core", "trading_core", sig.trace,
                                                                         sig.trace)
