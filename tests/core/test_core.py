"""TradingCore: one decision per signal, guards never passed in a storm (also across a rebuild),
the kill switch blocks entries but not exits, bad input blocks with a reason."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.trading_core.trading_core.core import CoreConfig, TradingCore, utc_day
from services.trading_core.trading_core.exits import ExitConfig
from services.trading_core.trading_core.guards import GuardChain
from services.trading_core.trading_core.sizing import RiskConfig
from tests.core import T0, book, catalog, report, signal
from tradestack import streams
from tradestack.clock import FakeClock
from tradestack.effects import Effect, Output
from tradestack.errors import ConfigError, PoisonMessage
from tradestack.messages import (
    DecisionMade,
    EntryIntent,
    ExitIntent,
    Message,
    MessageFactory,
    OrderExecuted,
    StopAmendIntent,
    TradingEvent,
    decode,
    derive_id,
    encode,
)

D = Decimal
FEE = D("0.0025")


def make_core(clock: FakeClock | None = None, **over: Any) -> TradingCore:
    clock = clock or FakeClock(T0)
    cfg = dataclasses.replace(CoreConfig(), **over)
    return TradingCore(cfg, catalog(), MessageFactory("trading_core", clock), clock)


def msgs(effects: list[Effect], cls: type[Message]) -> list[Any]:
    return [e.msg for e in effects if isinstance(e, Output) and isinstance(e.msg, cls)]


def one(effects: list[Effect], cls: type[Message]) -> Any:
    found = msgs(effects, cls)
    assert len(found) == 1, effects
    return found[0]


def fill(intent: EntryIntent | ExitIntent, price: str | None = None, status: str = "filled",
         amount: Decimal | None = None, seq: int = 0, reason: str | None = None) -> OrderExecuted:
    amount = intent.amount if amount is None else amount
    px = D(price) if price is not None else (intent.ref_price if isinstance(intent, EntryIntent) else None)
    assert px is not None
    quote = amount * px
    return report(intent.id, intent.market, intent.side, status, str(amount), str(quote),
                  fee=str((quote * FEE).quantize(D("0.01"))), seq=seq, reason=reason)


# -- one decision per signal ----------------------------------------------------------------

def test_an_accepted_signal_is_one_auditable_decision_and_intent() -> None:
    core = make_core()
    sig = signal(1)
    out = core.on_signal(sig, kill_switch=False)
    decision: DecisionMade = one(out, DecisionMade)
    intent: EntryIntent = one(out, EntryIntent)
    assert [e.stream for e in out if isinstance(e, Output)] == [streams.ORDERS_SIGNALS, streams.ORDERS_SHADOW]
    assert decision.accepted and decision.reasons == [] and decision.v == 2 and intent.v == 2
    assert decision.id == derive_id(sig.id, "decision") and intent.id == derive_id(decision.id, "intent.entry")
    assert decision.intent_id == intent.id and intent.decision_id == decision.id and intent.signal_id == sig.id
    assert intent.trace == sig.trace and decision.strategy_params == intent.strategy_params == sig.params
    assert intent.mode == decision.mode == "paper"
    names = [c.name for c in decision.checks]
    assert names[:4] == ["signal", "exit_plan", "kill_switch", "market_allow_list"]
    assert all(c.passed for c in decision.checks) and intent.checks == decision.checks
    # default: 1% of 1000 EUR, stop 2% below 60000 → capped at the 100 EUR order notional
    s = intent.sizing
    assert s is not None and intent.ref_price is not None
    assert s.risk_eur == D(10) and s.capped_by == "max_order_notional" and s.rounded_size == intent.amount
    assert intent.amount * intent.ref_price <= D(100) and intent.stop_price == D("58800.00")
    assert intent.take_profit_price == D("62400.00") and intent.order_type == "market" and intent.price is None
    for m in (decision, intent):
        assert decode(encode(m)) == m  # type: ignore[arg-type]


def test_a_hundred_copies_make_one_decision_and_one_intent() -> None:
    core = make_core()
    sig = signal(7)
    outs = [core.on_signal(sig.model_copy(), kill_switch=False) for _ in range(100)]
    assert len({one(o, DecisionMade).id for o in outs}) == 1
    assert len({one(o, EntryIntent).id for o in outs}) == 1
    assert all(o == outs[0] for o in outs)
    assert core.summary()["decisions"] == {"accepted": 1} and len(core.in_flight()) == 1


def test_signal_storm_on_one_market_makes_one_intent() -> None:
    core = make_core()
    intents = [i for n in range(50) for i in msgs(core.on_signal(signal(n), kill_switch=False), EntryIntent)]
    assert len(intents) == 1
    assert core.blocked_reasons["position_open"] == 49


# -- kill switch, bad input -----------------------------------------------------------------

def test_kill_switch_blocks_entries_while_exits_flow() -> None:
    clock = FakeClock(T0)
    core = make_core(clock)
    intent = one(core.on_signal(signal(1), kill_switch=False), EntryIntent)
    core.on_executed(fill(intent))
    out = core.on_signal(signal(2, market="ETH-EUR", price="2500"), kill_switch=True)
    decision = one(out, DecisionMade)
    assert not decision.accepted and decision.reasons[0] == "kill_switch" and not msgs(out, EntryIntent)
    event: TradingEvent = one(out, TradingEvent)
    assert event.kind == "kill_switch" and event.details["decision_id"] == decision.id
    clock.advance(1000)
    exit_intent: ExitIntent = one(core.on_book(book("BTC-EUR", "62400", "62401")), ExitIntent)
    assert exit_intent.reason == "take_profit" and exit_intent.amount == intent.amount
    assert exit_intent.position_id == intent.id and exit_intent.side == "sell"


@pytest.mark.parametrize("kwargs,reason", [
    (dict(market="NOPE-EUR"), "unknown_market"),
    (dict(price="0"), "bad_price"),
    (dict(price="-5"), "bad_price"),
    (dict(market="ADA-EUR", price="0.4"), "market_not_trading"),
    (dict(price="60000", side="sell"), "spot_long_only"),
])
def test_bad_input_is_a_blocked_decision_with_its_reason(kwargs: dict[str, str], reason: str) -> None:
    core = make_core()
    out = core.on_signal(signal(1, **kwargs), kill_switch=False)
    decision = one(out, DecisionMade)
    assert not decision.accepted and reason in decision.reasons and not msgs(out, EntryIntent)
    assert core.in_flight() == []


def test_no_atr_under_atr_mode() -> None:
    core = make_core(exits=ExitConfig(mode="atr"))
    out = core.on_signal(signal(1, atr=None), kill_switch=False)
    decision = one(out, DecisionMade)
    assert decision.reasons[0] == "no_atr" and decision.sizing is None and not msgs(out, EntryIntent)
    assert decision.reasons == ["no_atr", "no_size"]  # the exchange check cannot pass without a size
    ok = one(core.on_signal(signal(2, atr="500"), kill_switch=False), EntryIntent)
    assert ok.stop_price == D("59000.00") and ok.take_profit_price == D("61500.00")


def test_a_sell_signal_with_a_position_is_ignored_not_an_exit() -> None:
    core = make_core()
    core.on_executed(fill(one(core.on_signal(signal(1), kill_switch=False), EntryIntent)))
    out = core.on_signal(signal(2, side="sell"), kill_switch=False)
    assert one(out, DecisionMade).reasons == ["sell_signal_ignored"] and len(out) == 1


def test_below_minimum_is_blocked_not_bumped_up() -> None:
    core = make_core(risk=RiskConfig("fixed", D("0.05")))
    decision = one(core.on_signal(signal(1), kill_switch=False), DecisionMade)
    assert not decision.accepted and decision.reasons == ["below_min_base"]
    assert decision.sizing is not None and decision.sizing.rounded_size * 60000 < 5


def test_blocked_events_are_rate_limited_per_kind() -> None:
    clock = FakeClock(T0)
    core = make_core(clock, event_interval_secs=60)
    events = []
    for n in range(30):
        events += msgs(core.on_signal(signal(n, market="ETH-EUR", price="2500"), kill_switch=True), TradingEvent)
        clock.advance(1000)
    events += msgs(core.on_signal(signal(99, market="NOPE-EUR"), kill_switch=False), TradingEvent)
    assert [e.kind for e in events] == ["kill_switch", "unknown_market"]
    clock.advance(60_000)
    [later] = msgs(core.on_signal(signal(100, market="ETH-EUR", price="2500"), kill_switch=True), TradingEvent)
    assert later.details["suppressed_since_last"] == "29" and core.events_suppressed == 29


# -- executions: in-flight, cooldown, daily loss ---------------------------------------------

def test_fills_move_intents_from_in_flight_to_positions_and_stop_out_cools_down() -> None:
    clock = FakeClock(T0)
    core = make_core(clock)
    intent = one(core.on_signal(signal(1), kill_switch=False), EntryIntent)
    half = (intent.amount / 2).quantize(D("0.00000001"))
    core.on_executed(fill(intent, status="partiallyFilled", amount=half, seq=1))
    assert len(core.in_flight()) == 1 and core.ledger.size("BTC-EUR") == half
    exposure = core.exposure()["BTC"]
    assert exposure == intent.amount * intent.ref_price + (half * intent.ref_price * FEE).quantize(D("0.01"))
    core.on_executed(fill(intent, seq=2))
    assert core.in_flight() == [] and core.ledger.size("BTC-EUR") == intent.amount
    clock.advance(5000)
    stop = report(intent.id, "BTC-EUR", "sell", "filled", str(intent.amount), str(intent.amount * D(58800)),
                  fee="0.24", seq=3, reason="stop_loss", client_order_id="stop-1", ts=clock.now_ms())
    core.on_executed(stop)
    assert core.ledger.positions == {} and "BTC-EUR" not in core.monitor.plans
    assert core.daily_loss() > D(2) and core.cooldowns() == {"BTC-EUR": clock.now_ms() + 3_600_000}
    decision = one(core.on_signal(signal(2), kill_switch=False), DecisionMade)
    assert decision.reasons == ["cooldown"]
    clock.advance(3_600_000)
    assert one(core.on_signal(signal(3), kill_switch=False), DecisionMade).accepted


def test_daily_loss_limit_uses_the_utc_day() -> None:
    clock = FakeClock(T0)  # 22:13 UTC
    core = make_core(clock, guards=GuardChain.from_config([
        {"method": "KillSwitch"}, {"method": "DailyLossLimit", "max_loss_eur": "1"}, {"method": "ExchangeRules"}]))
    intent = one(core.on_signal(signal(1), kill_switch=False), EntryIntent)
    core.on_executed(fill(intent))
    core.on_executed(report(intent.id, "BTC-EUR", "sell", "filled", str(intent.amount),
                            str(intent.amount * D(58000)), fee="0.2", client_order_id="x", seq=2, ts=T0 + 10))
    assert one(core.on_signal(signal(2, market="ETH-EUR", price="2500"), kill_switch=False),
               DecisionMade).reasons == ["daily_loss"]
    clock.set(T0 + 2 * 3_600_000)  # past midnight UTC
    assert utc_day(clock.now_ms()) != utc_day(T0)
    assert one(core.on_signal(signal(3, market="ETH-EUR", price="2500"), kill_switch=False), DecisionMade).accepted


def test_a_report_that_cannot_be_booked_is_poison_and_changes_nothing() -> None:
    core = make_core()
    with pytest.raises(PoisonMessage):
        core.on_executed(report("x", "BTC-EUR", "sell", "filled", "1", "60000"))
    assert core.ledger.positions == {}


def test_trailing_amends_flow_and_are_learned() -> None:
    clock = FakeClock(T0)
    core = make_core(clock, exits=ExitConfig(trailing="pct", trailing_pct=D(1), take_profit_pct=None))
    intent = one(core.on_signal(signal(1), kill_switch=False), EntryIntent)
    core.on_executed(fill(intent))
    amend: StopAmendIntent = one(core.on_book(book("BTC-EUR", "61000")), StopAmendIntent)
    assert amend.stop_price == D("60390.00") and amend.previous_stop == D("58800.00")
    assert amend.position_id == intent.id and amend.amount == intent.amount
    assert core.on_book(book("BTC-EUR", "61500", i=1)) == []  # rate limited (30 s)
    clock.advance(30_000)
    assert one(core.on_book(book("BTC-EUR", "61500", i=2)), StopAmendIntent).stop_price == D("60885.00")
    hit: ExitIntent = one(core.on_book(book("BTC-EUR", "60800", i=3)), ExitIntent)
    assert hit.reason == "trailing_stop" and hit.level == D("60885.00") and hit.trigger_price == D("60800")


# -- rebuild ------------------------------------------------------------------------------------

def state(core: TradingCore) -> dict[str, Any]:
    s = core.summary()
    plans = {m: (p.position_id, p.stop, p.take_profit, p.size, p.opened_ms, p.exit_intent_id, p.exit_attempts,
                 p.last_amend_ms, p.initial_stop) for m, p in core.monitor.plans.items()}
    keep = ("exposure_eur", "global_exposure_eur", "open_positions", "positions", "in_flight", "equity_eur",
            "realized_eur", "daily_loss_eur", "cooldowns")
    return {k: s[k] for k in keep} | {"plans": plans}


def rebuild(shadow: list[Message], executed: list[OrderExecuted], clock: FakeClock, seed: int,
            **over: Any) -> TradingCore:
    """A fresh core folding both streams, each in order, interleaved at random (as a rebuild may)."""
    core = make_core(clock, **over)
    rnd = random.Random(seed)
    a, b = list(shadow), list(executed)
    while a or b:
        if a and (not b or rnd.random() < 0.5):
            assert core.on_intent(a.pop(0)) == []
        else:
            try:
                assert core.on_executed(b.pop(0)) == []
            except PoisonMessage:
                pass  # dead-lettered live too
    return core


def test_rebuild_from_own_outputs_reproduces_the_live_state() -> None:
    clock = FakeClock(T0)
    over: dict[str, Any] = dict(exits=ExitConfig(trailing="pct", trailing_pct=D(1), take_profit_pct=None,
                                                 time_stop_secs=7200))
    live = make_core(clock, **over)
    shadow: list[Message] = []
    executed: list[OrderExecuted] = []

    def run(effects: list[Effect]) -> list[Effect]:
        shadow.extend(e.msg for e in effects if isinstance(e, Output) and e.stream == streams.ORDERS_SHADOW)
        return effects

    def exe(r: OrderExecuted) -> None:
        executed.append(r)
        live.on_executed(r)

    btc = one(run(live.on_signal(signal(1), kill_switch=False)), EntryIntent)
    eth = one(run(live.on_signal(signal(2, market="ETH-EUR", price="2500"), kill_switch=False)), EntryIntent)
    sol = one(run(live.on_signal(signal(3, market="SOL-EUR", price="140"), kill_switch=False)), EntryIntent)
    exe(fill(btc, seq=1))
    exe(fill(eth, status="partiallyFilled", amount=(eth.amount / 3).quantize(D("0.00000001")), seq=2))
    clock.advance(10_000)
    run(live.on_book(book("BTC-EUR", "61000")))  # trailing amend
    clock.advance(40_000)
    run(live.on_book(book("BTC-EUR", "61500", i=1)))  # another
    exe(fill(sol, seq=3))
    clock.advance(1000)
    sold = one(run(live.on_book(book("SOL-EUR", "138.20", i=2))), ExitIntent)  # trailing hit (1% of 140 → 138.60)
    exe(fill(sold, price="138.20", amount=(sold.amount / 2).quantize(D("0.00000001")), status="canceled", seq=4))
    assert len(shadow) == 6
    last_books = [book("BTC-EUR", "61500", i=1), book("SOL-EUR", "138.20", i=2)]
    for seed in range(5):
        rebuilt = rebuild(shadow, executed, clock, seed, **over)
        for top in last_books:
            rebuilt.prime_book(top)
        assert state(rebuilt) == state(live)
    # and both go on deciding the same way
    sig = signal(9, market="DOGE-EUR", price="0.12")
    a, b = live.on_signal(sig, kill_switch=False), rebuilt.on_signal(sig, kill_switch=False)
    assert a and [e.msg.model_dump() for e in a] == [e.msg.model_dump() for e in b]  # type: ignore[union-attr]
    assert state(rebuilt) == state(live)
    # a signal decided before the restart makes nothing new in the rebuilt core
    assert rebuild(shadow, executed, clock, 0, **over).on_signal(signal(1), kill_switch=False) == []


def test_core_config_from_settings() -> None:
    class S:
        risk_mode = "fixed"
        risk_value = "25"
        exit_mode = "atr"
        exit_trailing = "atr"
        exit_time_stop_secs = 0
        core_guards = '[{"method": "KillSwitch"}, {"method": "ExchangeRules"}]'

    cfg = CoreConfig.from_settings(S(), "sandbox")
    assert cfg.risk.mode == "fixed" and cfg.risk.value == 25 and cfg.exits.mode == "atr"
    assert cfg.exits.time_stop_secs is None and cfg.mode == "sandbox" and len(cfg.guards.guards) == 2

    class Bad:
        risk_mode = "all-in"

    with pytest.raises(ConfigError, match="RISK_MODE"):
        CoreConfig.from_settings(Bad(), "paper")


# -- the storm --------------------------------------------------------------------------------

STORM_GUARDS: list[dict[str, Any]] = [
    {"method": "KillSwitch"}, {"method": "MarketAllowList", "markets": ["BTC-EUR", "ETH-EUR", "SOL-EUR", "DOGE-EUR"]},
    {"method": "OnePositionPerMarket"}, {"method": "MaxOpenPositions", "max_positions": 3},
    {"method": "MaxAssetExposure", "max_exposure_eur": "100"}, {"method": "MaxGlobalExposure", "max_exposure_eur": "180"},
    {"method": "MaxOrderNotional", "max_notional_eur": "70"}, {"method": "DailyLossLimit", "max_loss_eur": "3"},
    {"method": "StopOutCooldown", "cooldown_secs": 600}, {"method": "ExchangeRules"},
]
PRICES = {"BTC-EUR": D(60000), "ETH-EUR": D(2500), "SOL-EUR": D(140), "DOGE-EUR": D("0.12"), "SHIB-EUR": D("0.000017"),
          "NOPE-EUR": D(1)}


class Model:
    """What the limits mean, kept by the test from the core's outputs and the fills it feeds."""

    def __init__(self) -> None:
        self.intents: dict[str, dict[str, Any]] = {}
        self.pos: dict[str, dict[str, Decimal]] = {}
        self.realized: dict[str, Decimal] = {}
        self.stop_ts: dict[str, int] = {}

    def exposure(self, asset: str | None = None) -> Decimal:
        total = D(0)
        for market, p in self.pos.items():
            if p["size"] > 0 and (asset is None or market.startswith(asset + "-")):
                total += p["cost"]
        for i in self.intents.values():
            if not i["final"] and (asset is None or i["market"].startswith(asset + "-")):
                total += max(i["notional"] - i["quote"], D(0))
        return total

    def busy(self) -> set[str]:
        return {m for m, p in self.pos.items() if p["size"] > 0} | {
            i["market"] for i in self.intents.values() if not i["final"]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_signal_storms_never_pass_a_guard_limit(data: st.DataObject) -> None:
    clock = FakeClock(T0)
    over: dict[str, Any] = dict(guards=GuardChain.from_config(STORM_GUARDS), risk=RiskConfig("percent", D(2)))
    core = make_core(clock, **over)
    model = Model()
    shadow: list[Message] = []
    executed: list[OrderExecuted] = []
    kill = False
    seq = 0
    cat = catalog()
    last_signal = None  # copies are redelivered to the same core (a restart acked them all)
    out: list[Effect] = []
    for _ in range(data.draw(st.integers(10, 80), label="steps")):
        op = data.draw(st.sampled_from(["signal"] * 6 + ["fill", "cancel", "stop_out", "kill", "wait", "restart",
                                                         "copy"]))
        seq += 1
        if op == "signal" or (op == "copy" and last_signal is None):
            market = data.draw(st.sampled_from(list(PRICES)))
            jitter = D(data.draw(st.integers(-200, 200))) / 10000
            sig = signal(seq, market=market, price=str(PRICES[market] * (1 + jitter)))
            out = core.on_signal(sig, kill_switch=kill)
            decision = one(out, DecisionMade)
            assert decision.id == derive_id(sig.id, "decision")
            intents = msgs(out, EntryIntent)
            assert len(intents) == (1 if decision.accepted else 0)
            shadow.extend(intents)
            for new in intents:
                assert new.ref_price is not None
                notional = new.amount * new.ref_price
                asset = market.split("-")[0]
                day_loss = max(D(0), -model.realized.get(utc_day(clock.now_ms()), D(0)))
                assert not kill
                assert market not in model.busy() and len(model.busy()) + 1 <= 3
                assert model.exposure(asset) + notional <= 100 and model.exposure() + notional <= 180
                assert notional <= 70 and day_loss < 3
                assert clock.now_ms() - model.stop_ts.get(market, -10**15) >= 600_000
                assert cat[market].check_order(new.amount, new.ref_price) is None
                model.intents[new.id] = dict(intent=new, market=market, notional=notional, amount=D(0), quote=D(0),
                                            fee=D(0), final=False)
            last_signal = sig
        elif op == "copy":
            assert last_signal is not None and core.on_signal(last_signal, kill_switch=kill) == out
        elif op in ("fill", "cancel"):
            open_ = [i for i in model.intents.values() if not i["final"]]
            if not open_:
                continue
            rec = data.draw(st.sampled_from(open_))
            it: EntryIntent = rec["intent"]
            if op == "fill":
                part = data.draw(st.sampled_from([D(1), D("0.5")]))
                amount = min(it.amount, rec["amount"] + (it.amount * part).quantize(D("0.00000001")))
                status = "filled" if amount == it.amount else "partiallyFilled"
            else:
                amount, status = rec["amount"], "canceled"
            assert it.ref_price is not None
            quote = amount * it.ref_price
            fee = (quote * FEE).quantize(D("0.01"))
            r = report(it.id, it.market, "buy", status, str(amount), str(quote), fee=str(fee), seq=seq,
                       ts=clock.now_ms())
            p = model.pos.setdefault(it.market, {"size": D(0), "cost": D(0)})
            p["size"] += amount - rec["amount"]
            p["cost"] += (quote - rec["quote"]) + (fee - rec["fee"])
            rec.update(amount=amount, quote=quote, fee=fee, final=status != "partiallyFilled")
            executed.append(r)
            core.on_executed(r)
        elif op == "stop_out":
            held = [m for m, p in model.pos.items() if p["size"] > 0]
            if not held:
                continue
            market = data.draw(st.sampled_from(held))
            p = model.pos[market]
            quote = p["size"] * PRICES[market] * D("0.97")
            fee = (quote * FEE).quantize(D("0.01"))
            r = report(f"stop-{seq}", market, "sell", "filled", str(p["size"]), str(quote), fee=str(fee), seq=seq,
                       reason="stop_loss", ts=clock.now_ms())
            day = utc_day(clock.now_ms())
            model.realized[day] = model.realized.get(day, D(0)) + quote - fee - p["cost"]
            model.stop_ts[market] = clock.now_ms()
            p.update(size=D(0), cost=D(0))
            executed.append(r)
            core.on_executed(r)
        elif op == "kill":
            kill = not kill
        elif op == "wait":
            clock.advance(data.draw(st.integers(0, 900_000)))
        elif op == "restart":
            core = rebuild(shadow, executed, clock, seq, **over)
            last_signal = None
        # the core's own view never disagrees with the model
        assert core.summary()["open_positions"] == len(model.busy())
        assert sum(core.exposure().values(), D(0)) == model.exposure()
