"""OrderManager: the executor's pure decisions (services/trader_executor/app/manager.py).

A tiny fake exchange answers the manager's commands (and can be told to fail them: rejected, unknown
outcome with or without the order landing); tests drive fills, triggers and cancels on it by hand.
No Redis, no clock: time is an integer that moves on every call."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.trader_executor.app.manager import (
    CLIENT_ORDER_NAMESPACE,
    Amend,
    Cancel,
    Command,
    DoorLimits,
    Failure,
    Lookup,
    OrderManager,
    Place,
    Step,
    emergency_client_id,
    entry_client_id,
    exit_client_id,
    stop_client_id,
)
from services.trading_core.trading_core.core import CoreConfig, TradingCore
from tests.core import MARKETS_JSON, T0, TRACE, book, catalog, signal
from tradestack.bitvavo.orders import Fill, OrderRequest, OrderState
from tradestack.clock import FakeClock
from tradestack.effects import Output
from tradestack.ledger import PositionLedger
from tradestack.markets import MarketCatalog
from tradestack.messages import (
    EntryIntent,
    ExitIntent,
    Message,
    MessageFactory,
    Mode,
    OrderExecuted,
    StopAmendIntent,
    Trace,
    TradingEvent,
    decode,
    derive_id,
    encode,
)

D = Decimal
CAT = catalog()
FEE = D("0.0025")
CENT = D("0.01")
Intent = EntryIntent | ExitIntent | StopAmendIntent
T = TypeVar("T")
STATS: Counter[str] = Counter()  # what the property test reached (for a look when tuning it)


# -- stubs -----------------------------------------------------------------------------------------


def entry(i: int = 0, market: str = "BTC-EUR", amount: str = "0.01", ref: str | None = "60000",
          stop: str = "58800.7", mode: Mode = "paper", order_type: str = "market", price: str | None = None,
          side: str = "buy") -> EntryIntent:
    return EntryIntent(
        id=f"entry-{market}-{i}", ts=T0 + i, src="trading_core", trace=Trace(id=f"tick-{i}", ts=T0 + i),
        decision_id=f"dec-{i}", signal_id=f"sig-{i}", market=market, side=side,  # type: ignore[arg-type]
        order_type=order_type,  # type: ignore[arg-type]
        amount=D(amount), price=D(price) if price is not None else None, ref_price=D(ref) if ref else None,
        stop_price=D(stop), take_profit_price=None, trailing_distance=None, time_stop_secs=None,
        strategy="momentum", strategy_params={}, checks=[], sizing=None, mode=mode)


def exit_(pid: str, i: int = 0, reason: str = "take_profit", market: str = "BTC-EUR", amount: str = "0.01",
          mode: Mode = "paper") -> ExitIntent:
    return ExitIntent(id=f"exit-{pid}-{i}", ts=T0 + 1000 + i, src="trading_core",
                      trace=Trace(id=f"tick-x{i}", ts=T0 + 1000 + i), position_id=pid, market=market, side="sell",
                      order_type="market", amount=D(amount), price=None, reason=reason,  # type: ignore[arg-type]
                      trigger_price=D("62500"), level=D("62400"), opened_ts=T0, mode=mode)


def amend(pid: str, stop: str, i: int = 0, market: str = "BTC-EUR", mode: Mode = "paper") -> StopAmendIntent:
    return StopAmendIntent(id=f"amend-{pid}-{i}", ts=T0 + 2000 + i, src="trading_core",
                           trace=Trace(id=f"tick-a{i}", ts=T0 + 2000 + i), position_id=pid, market=market,
                           amount=D("0.01"), stop_price=D(stop), previous_stop=D("58800"), high_price=D("62000"),
                           trailing_distance=D("900"), mode=mode)


class Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class FakeExchange:
    """Orders by client id (the newest order of a client id wins, as Bitvavo answers a lookup);
    market orders fill at once at the bid/ask up to ``depth`` (the rest is canceled)."""

    def __init__(self, price: str = "60000") -> None:
        self.bid = D(price)
        self.ask = D(price)
        self.depth: Decimal | None = None
        self.refuse_stops = False  # every stop placement refused (216) while set
        self.orders: dict[str, OrderState] = {}
        self.all: list[str] = []  # every order id ever made
        self.bought: dict[str, Decimal] = defaultdict(Decimal)
        self.sold: dict[str, Decimal] = defaultdict(Decimal)
        self.seq = 0
        self.now = T0

    def tick(self) -> int:
        self.now += 1
        return self.now

    def open_sells(self, market: str) -> Decimal:
        return sum(((o.amount or D(0)) - o.filled_amount for o in self.orders.values()
                    if o.market == market and o.side == "sell" and o.is_open), D(0))

    def held(self, market: str) -> Decimal:
        return self.bought[market] - self.sold[market]

    def fill(self, coid: str, amount: Decimal | str, price: Decimal | None = None,
             final: str | None = None) -> OrderState:
        o = self.orders[coid]
        amount = D(amount)
        px = price if price is not None else (self.ask if o.side == "buy" else self.bid)
        quote = amount * px
        fee = (quote * FEE).quantize(CENT)
        filled = o.filled_amount + amount
        assert o.amount is not None and filled <= o.amount
        f = Fill(fill_id=f"{o.order_id}/f{len(o.fills)}", order_id=o.order_id, market=o.market, side=o.side,
                 ts=self.tick(), amount=amount, price=px, taker=True, fee=fee, fee_currency="EUR")
        status = final or ("filled" if filled == o.amount else "partiallyFilled")
        new = dataclasses.replace(o, status=status, filled_amount=filled, filled_quote=o.filled_quote + quote,
                                  fee_paid=o.fee_paid + fee, fee_currency="EUR", fills=o.fills + (f,),
                                  amount_remaining=o.amount - filled, updated=self.tick())
        (self.bought if o.side == "buy" else self.sold)[o.market] += amount
        self.orders[coid] = new
        return new

    def end(self, coid: str, status: str = "canceled") -> OrderState:
        o = self.orders[coid]
        new = dataclasses.replace(o, status=status, updated=self.tick())
        self.orders[coid] = new
        return new

    def trigger(self, coid: str, amount: Decimal | None = None) -> OrderState:
        """The stop fires: a market sell of ``amount`` (all by default); less ends canceled."""
        o = self.orders[coid]
        assert o.status == "awaitingTrigger" and o.amount is not None
        amount = o.amount if amount is None else amount
        if amount <= 0:
            return self.end(coid, "canceledMarketProtection")
        return self.fill(coid, amount, final=None if amount == o.amount else "canceledMarketProtection")

    def place(self, req: OrderRequest) -> OrderState:
        old = self.orders.get(req.client_order_id)
        if old is not None and old.is_open:
            raise Refused(220)
        if self.refuse_stops and req.order_type == "stopLoss":
            raise Refused(216)
        self.seq += 1
        now = self.tick()
        o = OrderState(order_id=f"oid-{self.seq}", market=req.market, side=req.side, order_type=req.order_type,
                       status="awaitingTrigger" if req.order_type == "stopLoss" else "new",
                       client_order_id=req.client_order_id, amount=req.amount, amount_remaining=req.amount,
                       price=req.price, trigger_price=req.trigger_price, created=now, updated=now)
        self.orders[req.client_order_id] = o
        self.all.append(o.order_id)
        if req.order_type == "market":
            assert req.amount is not None
            can = req.amount if self.depth is None else min(req.amount, self.depth)
            if can <= 0:
                return self.end(req.client_order_id)
            return self.fill(req.client_order_id, can, final=None if can == req.amount else "canceled")
        return o

    def apply(self, cmd: Command) -> OrderState:
        if isinstance(cmd, Place):
            return self.place(cmd.request)
        o = self.orders.get(cmd.client_order_id)
        if o is None:
            raise Refused(240)
        if isinstance(cmd, Cancel):
            if not o.is_open:
                raise Refused(240)
            return self.end(cmd.client_order_id)
        assert isinstance(cmd, Amend)
        if o.status != "awaitingTrigger":
            raise Refused(233)
        new = dataclasses.replace(o, amount=cmd.amount or o.amount, trigger_price=cmd.trigger_price or o.trigger_price,
                                  updated=self.tick())
        self.orders[cmd.client_order_id] = new
        return new


class Harness:
    def __init__(self, mode: Mode = "paper", limits: DoorLimits | None = None, stop_retries: int = 2,
                 price: str = "60000") -> None:
        self.m = OrderManager(CAT, MessageFactory("trader_executor", FakeClock(T0)), mode, limits,
                              stop_retries=stop_retries)
        self.ex = FakeExchange(price)
        self.queue: list[Command] = []
        self.reports: list[OrderExecuted] = []
        self.events: list[TradingEvent] = []
        self.intents: list[Intent] = []
        self.kill = False
        self.placed: list[str] = []  # client ids of every Place answered ok

    def feed(self, step: Step) -> Step:
        self.reports.extend(step.reports)
        self.events.extend(step.events)
        self.queue.extend(step.commands)
        return step

    def intent(self, intent: Intent, kill: bool = False) -> Step:
        self.intents.append(intent)
        return self.feed(self.m.on_intent(intent, kill, self.ex.tick()))

    def take(self, cls: type[Any] | None = None) -> Any:
        for i, c in enumerate(self.queue):
            if cls is None or isinstance(c, cls):
                return self.queue.pop(i)
        raise AssertionError(f"no {cls} in {self.queue}")

    def do(self, cmd: Command | None = None, outcome: str = "ok", code: int | None = None) -> Step:
        """Perform a command: ok | reject | lost (unknown, did not happen) | landed (unknown, happened)."""
        if cmd is None:
            cmd = self.queue.pop(0)
        elif cmd in self.queue:
            self.queue.remove(cmd)
        now = self.ex.tick()
        if isinstance(cmd, Lookup):
            if outcome == "lost":
                return self.feed(self.m.on_failed(cmd, Failure("unknown", 109, "timeout"), now))
            return self.feed(self.m.on_lookup(cmd, self.ex.orders.get(cmd.client_order_id), now, kill_switch=self.kill))
        if outcome == "reject":
            return self.feed(self.m.on_failed(cmd, Failure("rejected", code, "refused"), now))
        if outcome == "lost":
            return self.feed(self.m.on_failed(cmd, Failure("unknown", None, "timeout"), now))
        try:
            state = self.ex.apply(cmd)
        except Refused as r:
            kind = "not_found" if r.code == 240 else "rejected"
            return self.feed(self.m.on_failed(cmd, Failure(kind, r.code, "refused"), now))  # type: ignore[arg-type]
        if isinstance(cmd, Place):
            self.placed.append(cmd.client_order_id)
        if outcome == "landed":
            return self.feed(self.m.on_failed(cmd, Failure("unknown", None, "timeout"), now))
        return self.feed(self.m.on_order(state, now))

    def push(self, coid: str) -> Step:
        """The exchange's current state of an order, as a WS event."""
        return self.feed(self.m.on_order(self.ex.orders[coid], self.ex.tick()))

    def settle(self, limit: int = 200) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            self.do()
        raise AssertionError(f"commands never settle: {self.queue}")

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def rebuilt(self, mode: Mode | None = None) -> OrderManager:
        m = OrderManager(CAT, MessageFactory("trader_executor", FakeClock(T0)), mode or self.m.mode,
                         self.m.limits, stop_retries=self.m.stop_retries)
        for i in self.intents:
            m.learn_intent(i)
        for r in self.reports:
            m.learn_report(r)
        return m


def last(h: Harness, coid: str) -> OrderExecuted:
    return [r for r in h.reports if r.client_order_id == coid][-1]


def only(items: list[T]) -> T:
    assert len(items) == 1, items
    return items[0]


def open_position(h: Harness, i: int = 0, amount: str = "0.01") -> tuple[EntryIntent, str]:
    """An entry filled at 60000 and its stop confirmed open; returns the intent and the stop's client id."""
    e = entry(i, amount=amount)
    h.intent(e)
    h.do()  # entry filled
    place = h.take(Place)
    h.do(place)
    return e, place.client_order_id


# -- 1. idempotency ----------------------------------------------------------------------------------


def test_client_ids_are_uuid5_of_documented_names() -> None:
    ns = CLIENT_ORDER_NAMESPACE
    assert entry_client_id("e1") == str(uuid.uuid5(ns, "e1/entry"))
    assert stop_client_id("e1", 2) == str(uuid.uuid5(ns, "e1/stop/2"))
    assert exit_client_id("x1") == str(uuid.uuid5(ns, "x1/exit"))
    assert emergency_client_id("e1", 1) == str(uuid.uuid5(ns, "e1/emergency/1"))
    assert ns == uuid.UUID("c9c695c0-52ad-4245-ab66-e37342732132")  # fixed forever


def test_entry_is_placed_once_and_duplicates_are_empty() -> None:
    h = Harness()
    e = entry()
    step = h.intent(e)
    place = only(step.commands)
    assert isinstance(place, Place) and place.purpose == "entry" and place.intent_id == e.id
    assert place.position_id == e.id
    req = place.request
    assert (req.market, req.side, req.order_type, req.amount, req.client_order_id) == (
        "BTC-EUR", "buy", "market", D("0.01"), entry_client_id(e.id))
    assert not h.intent(e) and not h.intent(e, kill=True)
    # learned at rebuild, then delivered again: nothing
    m = h.rebuilt()
    assert not m.on_intent(e, False, T0)
    x = exit_("nope")
    m.learn_intent(x)
    assert not m.on_intent(x, False, T0)


def test_report_ids_are_deterministic_and_only_changes_are_reported() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    step = h.do()
    rep = only(step.reports)
    coid = entry_client_id(e.id)
    assert rep.id == derive_id(coid, "filled/0.01/1.5")
    assert (rep.status, rep.filled_amount, rep.filled_quote, rep.fee, rep.avg_price) == (
        "filled", D("0.01"), D("600.00"), D("1.50"), D("60000"))
    assert (rep.intent_id, rep.position_id, rep.purpose, rep.reason, rep.side, rep.mode) == (
        e.id, e.id, "entry", "entry", "buy", "paper")
    assert rep.order_type == "market" and rep.amount == D("0.01") and rep.exchange_ts == h.ex.orders[coid].updated
    assert rep.fills[0].fill_id == h.ex.orders[coid].fills[0].fill_id and rep.fills[0].fee == D("1.50")
    assert rep.trace == e.trace and rep.src == "trader_executor" and rep.v == 2
    # the same state again (a WS echo) is no new report; the same inputs elsewhere make the same ids
    assert not h.push(coid).reports
    h2 = Harness()
    h2.intent(e)
    assert h2.do().reports[0].id == rep.id
    assert decode(dict(encode(rep))) == rep  # type: ignore[arg-type]


def test_stale_states_are_ignored() -> None:
    h = Harness()
    e = entry(order_type="limit", price="60000.5")
    h.intent(e)
    place = h.take(Place)
    assert place.request.price == D("60000.00") and place.request.order_type == "limit"
    h.do(place)
    coid = place.client_order_id
    new_state = h.ex.orders[coid]
    h.ex.fill(coid, "0.004")
    partial = h.ex.orders[coid]
    h.push(coid)
    n = len(h.reports)
    assert not h.feed(h.m.on_order(new_state, h.ex.tick())).reports  # older (less filled)
    h.ex.fill(coid, "0.006")
    h.push(coid)
    assert not h.feed(h.m.on_order(partial, h.ex.tick())).reports  # open state after the final one
    assert [r.status for r in h.reports[n:] if r.client_order_id == coid] == ["filled"]


# -- 2. door checks ---------------------------------------------------------------------------------


def _blocked(h: Harness, e: EntryIntent, reason: str, kill: bool = False) -> None:
    step = h.intent(e, kill=kill)
    assert not step.commands
    rep = only(step.reports)
    assert (rep.status, rep.reason, rep.filled_amount, rep.order_id, rep.purpose, rep.intent_id) == (
        "rejected", reason, 0, None, "entry", e.id)
    assert rep.client_order_id == entry_client_id(e.id) and rep.id == derive_id(rep.client_order_id, "rejected/0/0")
    ev = only(step.events)
    assert (ev.kind, ev.severity) == (reason, "warning")


def test_kill_switch_blocks_entries_but_not_exits_or_amends() -> None:
    h = Harness()
    _blocked(h, entry(1), "kill_switch", kill=True)
    e, stop = open_position(h)
    a = h.intent(amend(e.id, "59000"), kill=True)
    assert isinstance(only(a.commands), Amend)
    h.do()
    x = h.intent(exit_(e.id), kill=True)
    assert only(x.commands) == Cancel("BTC-EUR", stop, e.id)


def test_mode_mismatch_never_becomes_an_order() -> None:
    h = Harness(mode="live", limits=DoorLimits(allowed_markets=frozenset({"BTC-EUR"})))
    _blocked(h, entry(mode="paper"), "mode_mismatch")
    assert h.m.positions() == {}


@pytest.mark.parametrize("kwargs,reason", [
    ({"market": "NOPE-EUR"}, "unknown_market"),
    ({"side": "sell"}, "spot_long_only"),
    ({"amount": "0.00001"}, "below_min_base"),
    ({"amount": "0.00009", "ref": "50000", "stop": "40000"}, "below_min_quote"),
    ({"amount": "0"}, "no_size"),
    ({"stop": "60000"}, "bad_stop"),
    ({"stop": "0.5"}, "bad_stop"),
    ({"order_type": "limit", "price": None}, "no_limit_price"),
    ({"market": "ADA-EUR", "ref": "1", "stop": "0.9", "amount": "100"}, "market_not_trading"),
])
def test_entry_door_checks(kwargs: dict[str, Any], reason: str) -> None:
    _blocked(Harness(), entry(**kwargs), reason)


def test_amount_and_price_are_rounded_down_to_the_market_grid() -> None:
    h = Harness()
    step = h.intent(entry(amount="0.0123456789", order_type="limit", price="60000.99", stop="58800.99"))
    req = only(step.commands).request  # type: ignore[union-attr]
    assert (req.amount, req.price) == (D("0.01234567"), D("60000.00"))
    h.do()
    h.ex.fill(req.client_order_id, "0.01234567")
    h.push(req.client_order_id)
    stop = h.take(Place).request
    assert (stop.order_type, stop.trigger_price, stop.trigger_reference, stop.amount) == (
        "stopLoss", D("58800.00"), "bestBid", D("0.01234567"))


def test_live_door_limits() -> None:
    limits = DoorLimits(allowed_markets=frozenset({"BTC-EUR", "ETH-EUR"}), max_order_notional_eur=D("700"),
                        max_total_notional_eur=D("1000"))
    h = Harness(mode="live", limits=limits)
    _blocked(h, entry(1, market="SOL-EUR", mode="live", ref="150", stop="140", amount="1"), "market_not_allowed")
    _blocked(h, entry(2, mode="live", amount="0.012"), "max_order_notional")  # 720 EUR
    _blocked(h, entry(3, mode="live", ref=None), "no_reference_price")
    ok = h.intent(entry(4, mode="live", amount="0.01"))  # 600 EUR
    assert isinstance(only(ok.commands), Place)
    h.do()  # filled: 600 held
    _blocked(h, entry(5, mode="live", amount="0.007"), "max_total_notional")  # 600 + 420 > 1000
    assert isinstance(only(h.intent(entry(6, mode="live", amount="0.006")).commands), Place)  # 960
    # paper ignores the live limits; live without allowed markets does not start
    assert isinstance(only(Harness(limits=limits).intent(entry(2, amount="0.012")).commands), Place)
    with pytest.raises(ValueError, match="allowed markets"):
        OrderManager(CAT, MessageFactory("x", FakeClock(T0)), "live", DoorLimits())


def test_exchange_rejection_of_the_entry_is_final() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    step = h.do(outcome="reject", code=216)
    rep = only(step.reports)
    assert (rep.status, rep.reason, rep.intent_id, rep.filled_amount) == ("rejected", "exchange_rejected:216", e.id, 0)
    assert only(step.events).kind == "exchange_rejected:216"
    assert not step.commands and h.m.positions() == {}


# -- 3. never a position without a stop -------------------------------------------------------------


def test_a_fill_places_the_stop_at_once_with_position_ids() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    step = h.do()
    place = only(step.commands)
    assert isinstance(place, Place) and place.purpose == "stop" and place.position_id == e.id
    assert place.intent_id == e.id and place.client_order_id == stop_client_id(e.id, 1)
    assert [ev.kind for ev in step.events] == ["entry_filled"]
    step = h.do(place)
    rep = only(step.reports)
    assert (rep.status, rep.purpose, rep.reason, rep.intent_id, rep.position_id, rep.side) == (
        "awaitingTrigger", "stop", "stop_loss", e.id, e.id, "sell")
    assert (rep.order_type, rep.amount, rep.trigger_price) == ("stopLoss", D("0.01"), D("58800.00"))
    assert [ev.kind for ev in step.events] == ["stop_placed"]
    view = h.m.positions()[e.id]
    assert (view.held, view.stop_status, view.stop_amount) == (D("0.01"), "awaitingTrigger", D("0.01"))


def test_partial_entry_fills_get_a_stop_then_amends() -> None:
    h = Harness()
    e = entry(order_type="limit", price="60000", amount="0.01")
    h.intent(e)
    h.do()  # resting limit buy
    coid = entry_client_id(e.id)
    h.ex.fill(coid, "0.003")
    step = h.push(coid)
    stop = only(step.commands)
    assert isinstance(stop, Place) and stop.request.amount == D("0.003")
    # more fills before the stop is confirmed: wait for it, then amend
    h.ex.fill(coid, "0.002")
    assert not h.push(coid).commands
    step = h.do(stop)
    assert only(step.commands) == Amend("BTC-EUR", stop.client_order_id, e.id, D("0.005"), None)
    h.do()
    assert h.ex.orders[stop.client_order_id].amount == D("0.005")
    h.ex.fill(coid, "0.005")
    step = h.push(coid)
    assert only(step.commands) == Amend("BTC-EUR", stop.client_order_id, e.id, D("0.01"), None)
    step = h.do()
    rep = only(step.reports)
    assert rep.amount == D("0.01") and rep.id == derive_id(stop.client_order_id, "awaitingTrigger/0/0/0.01/58800")
    assert h.ex.open_sells("BTC-EUR") == h.ex.held("BTC-EUR") == D("0.01")
    assert "entry_filled" in h.kinds()


def test_stop_fails_three_times_then_emergency_sell_and_critical_event() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    h.do()
    for n in (1, 2, 3):
        place = h.take(Place)
        assert place.client_order_id == stop_client_id(e.id, n)
        step = h.do(place, outcome="reject", code=216)
        rep = only(step.reports)
        assert (rep.status, rep.purpose, rep.reason) == ("rejected", "stop", "stop_loss")
    emergency = only(step.commands)
    assert isinstance(emergency, Place) and emergency.purpose == "emergency"
    assert emergency.client_order_id == emergency_client_id(e.id, 1)
    assert (emergency.request.order_type, emergency.request.side, emergency.request.amount) == (
        "market", "sell", D("0.01"))
    crit = [ev for ev in step.events if ev.kind == "stop_failed"]
    assert len(crit) == 1 and crit[0].severity == "critical"
    assert h.kinds().count("stop_rejected") == 3
    step = h.do(emergency)
    rep = only(step.reports)
    assert (rep.status, rep.reason, rep.intent_id, rep.purpose) == ("filled", "emergency", e.id, "emergency")
    assert not step.commands and h.ex.held("BTC-EUR") == 0 and h.m.positions() == {}


def test_emergency_that_leaves_coins_halts_the_position() -> None:
    h = Harness(stop_retries=0)
    e = entry()
    h.intent(e)
    h.do()
    h.do(outcome="reject", code=203)
    emergency = h.take(Place)
    h.ex.depth = D("0.004")
    step = h.do(emergency)
    assert any(ev.kind == "emergency_incomplete" and ev.severity == "critical" for ev in step.events)
    assert not step.commands and h.m.positions()[e.id].halted
    assert not h.intent(amend(e.id, "59000")).commands  # no automatic orders any more
    # an exit is still carried out
    h.ex.depth = None
    x = h.intent(exit_(e.id))
    sell = only(x.commands)
    assert isinstance(sell, Place) and sell.request.amount == D("0.006")
    h.do(sell)
    assert h.ex.held("BTC-EUR") == 0 and h.m.positions() == {}


def test_stop_unknown_then_not_found_is_placed_again_with_the_same_client_id() -> None:
    h = Harness(stop_retries=1)
    e = entry()
    h.intent(e)
    h.do()
    place = h.take(Place)
    step = h.do(place, outcome="lost")
    assert only(step.commands) == Lookup("BTC-EUR", place.client_order_id, e.id) and not step.reports
    step = h.do()
    again = only(step.commands)
    assert isinstance(again, Place) and again.client_order_id == place.client_order_id
    h.do(again, outcome="lost")
    step = h.do()  # lookup: not there again: 2 failures > 1 retry → emergency
    assert [c.purpose for c in step.commands if isinstance(c, Place)] == ["emergency"]


def test_dust_gets_no_order_only_a_warning() -> None:
    h = Harness()
    e = entry(order_type="limit", price="60000")
    h.intent(e)
    h.do()
    coid = entry_client_id(e.id)
    h.ex.fill(coid, "0.00005")  # 3 EUR, below both minimums
    step = h.push(coid)
    assert not step.commands and [ev.kind for ev in step.events] == ["dust"]
    assert not h.push(coid).events  # said once
    h.ex.fill(coid, "0.00995")
    step = h.push(coid)
    again = only(step.commands)
    assert isinstance(again, Place) and again.request.amount == D("0.01")


def test_a_stop_the_exchange_canceled_is_replaced() -> None:
    h = Harness()
    e, stop = open_position(h)
    h.ex.end(stop, "canceled")
    step = h.push(stop)
    assert [ev.kind for ev in step.events] == ["stop_canceled"]
    place = only(step.commands)
    assert isinstance(place, Place) and place.client_order_id == stop_client_id(e.id, 2)


def test_stop_triggered_partially_gets_a_new_stop_for_the_rest() -> None:
    h = Harness()
    e, stop = open_position(h)
    h.ex.bid = D("58700")
    h.ex.trigger(stop, D("0.006"))
    step = h.push(stop)
    rep = only(step.reports)
    assert (rep.status, rep.reason, rep.filled_amount) == ("canceledMarketProtection", "stop_loss", D("0.006"))
    assert "stop_triggered" in [ev.kind for ev in step.events]
    place = only(step.commands)
    assert isinstance(place, Place) and place.request.amount == D("0.004") and place.request.order_type == "stopLoss"


# -- 4. exits ---------------------------------------------------------------------------------------


def test_take_profit_cancels_the_stop_then_sells() -> None:
    h = Harness()
    e, stop = open_position(h)
    x = exit_(e.id)
    step = h.intent(x)
    assert only(step.commands) == Cancel("BTC-EUR", stop, e.id)
    step = h.do()
    sell = only(step.commands)
    assert isinstance(sell, Place) and sell.purpose == "exit" and sell.intent_id == x.id
    assert sell.client_order_id == exit_client_id(x.id)
    assert (sell.request.order_type, sell.request.side, sell.request.amount) == ("market", "sell", D("0.01"))
    h.ex.bid = D("62500")
    step = h.do(sell)
    rep = only(step.reports)
    assert (rep.status, rep.intent_id, rep.reason, rep.purpose, rep.position_id) == (
        "filled", x.id, "take_profit", "exit", e.id)
    assert [ev.kind for ev in step.events] == ["exit_done"] and not step.commands
    assert h.ex.held("BTC-EUR") == 0 and h.m.positions() == {}


def test_race_the_stop_filled_before_the_cancel() -> None:
    h = Harness()
    e, stop = open_position(h)
    x = exit_(e.id)
    cancel = only(h.intent(x).commands)
    h.ex.trigger(stop)  # fills before the cancel arrives
    step = h.do(cancel)  # 240 → not found
    assert only(step.commands) == Lookup("BTC-EUR", stop, e.id)
    step = h.do()
    assert not step.commands  # nothing left: no sell
    exit_rep = [r for r in step.reports if r.purpose == "exit"]
    assert len(exit_rep) == 1
    assert (exit_rep[0].status, exit_rep[0].reason, exit_rep[0].intent_id, exit_rep[0].filled_amount) == (
        "canceled", "stop_triggered_first", x.id, 0)
    assert h.ex.sold["BTC-EUR"] == D("0.01") and h.m.positions() == {}


def test_race_the_stop_triggered_and_the_cancel_shows_it() -> None:
    h = Harness()
    e, stop = open_position(h)
    cancel = only(h.intent(exit_(e.id)).commands)
    h.ex.trigger(stop, D("0.004"))  # partly sold, then ended
    step = h.do(cancel)
    assert only(step.commands) == Lookup("BTC-EUR", stop, e.id)
    sell = only(h.do().commands)
    assert isinstance(sell, Place) and sell.request.amount == D("0.006")


def test_stop_partially_filled_then_canceled_sells_only_the_rest() -> None:
    h = Harness()
    e, stop = open_position(h)
    o = h.ex.orders[stop]
    h.ex.orders[stop] = dataclasses.replace(o, status="new")  # triggered
    h.ex.fill(stop, "0.003")  # partiallyFilled, still open
    h.push(stop)
    cancel = only(h.intent(exit_(e.id)).commands)
    assert isinstance(cancel, Cancel)
    sell = only(h.do(cancel).commands)
    assert isinstance(sell, Place) and sell.request.amount == D("0.007")
    h.do(sell)
    assert h.ex.held("BTC-EUR") == 0 and h.ex.sold["BTC-EUR"] == D("0.01")


def test_exit_partially_filled_gets_a_new_stop_for_the_rest() -> None:
    h = Harness()
    e, stop = open_position(h)
    x = exit_(e.id)
    h.intent(x)
    sell = h.take(Place) if any(isinstance(c, Place) for c in h.queue) else None
    assert sell is None
    sell = only(h.do().commands)
    h.ex.depth = D("0.004")
    step = h.do(sell)
    rep = [r for r in step.reports if r.purpose == "exit"][0]
    assert (rep.status, rep.filled_amount) == ("canceled", D("0.004"))
    place = only(step.commands)
    assert isinstance(place, Place) and place.purpose == "stop" and place.request.amount == D("0.006")
    assert place.client_order_id == stop_client_id(e.id, 2)
    h.do(place)
    assert h.ex.open_sells("BTC-EUR") == h.ex.held("BTC-EUR") == D("0.006")


def test_exit_without_position_in_progress_and_nothing_held() -> None:
    h = Harness()
    step = h.intent(exit_("unknown"))
    rep = only(step.reports)
    assert (rep.status, rep.reason, rep.purpose, rep.side) == ("canceled", "no_position", "exit", "sell")
    e, stop = open_position(h)
    h.intent(exit_(e.id, 1))
    step = h.intent(exit_(e.id, 2))
    rep = only(step.reports)
    assert (rep.status, rep.reason, rep.intent_id) == ("canceled", "exit_in_progress", exit_(e.id, 2).id)
    h.settle()
    step = h.intent(exit_(e.id, 3))
    assert only(step.reports).reason == "no_position" and not step.commands


def test_exit_rejected_puts_a_stop_back() -> None:
    h = Harness()
    e, stop = open_position(h)
    x = exit_(e.id)
    h.intent(x)
    sell = only(h.do().commands)
    step = h.do(sell, outcome="reject", code=423)
    rep = [r for r in step.reports if r.purpose == "exit"][0]
    assert (rep.status, rep.reason, rep.intent_id) == ("rejected", "exchange_rejected:423", x.id)
    place = only(step.commands)
    assert isinstance(place, Place) and place.purpose == "stop" and place.request.amount == D("0.01")


def test_exit_whose_stop_cannot_be_canceled_is_rejected_and_the_stop_stays() -> None:
    h = Harness()
    e, stop = open_position(h)
    x = exit_(e.id)
    cancel = only(h.intent(x).commands)
    step = h.do(cancel, outcome="reject", code=423)
    rep = only(step.reports)
    assert (rep.status, rep.reason, rep.intent_id) == ("rejected", "cancel_failed:423", x.id)
    assert not step.commands  # no retry loop
    assert h.ex.orders[stop].is_open
    # the next exit tries again
    assert only(h.intent(exit_(e.id, 1)).commands) == Cancel("BTC-EUR", stop, e.id)


def test_exit_cancels_an_open_entry_too() -> None:
    h = Harness()
    e = entry(order_type="limit", price="60000")
    h.intent(e)
    h.do()
    coid = entry_client_id(e.id)
    h.ex.fill(coid, "0.005")
    h.push(coid)
    stop = h.take(Place)
    h.do(stop)
    step = h.intent(exit_(e.id))
    assert set(step.commands) == {Cancel("BTC-EUR", coid, e.id), Cancel("BTC-EUR", stop.client_order_id, e.id)}
    h.settle()
    assert h.ex.held("BTC-EUR") == 0 and not h.ex.orders[coid].is_open
    entry_rep = last(h, coid)
    assert entry_rep.status == "canceled" and entry_rep.filled_amount == D("0.005")


# -- 5. stop amend ----------------------------------------------------------------------------------


def test_trailing_amend_moves_the_trigger_up_only() -> None:
    h = Harness()
    e, stop = open_position(h)
    step = h.intent(amend(e.id, "59100.7", 1))
    assert only(step.commands) == Amend("BTC-EUR", stop, e.id, None, D("59100.00"))
    h.do()
    assert h.ex.orders[stop].trigger_price == D("59100.00")
    assert not h.intent(amend(e.id, "59000", 2))  # lower: ignored
    assert h.m.positions()[e.id].stop_trigger == D("59100.00")


def test_amend_for_unknown_position_is_an_info_event() -> None:
    h = Harness()
    step = h.intent(amend("ghost", "59000"))
    assert not step.commands and not step.reports
    ev = only(step.events)
    assert (ev.kind, ev.severity) == ("amend_unknown_position", "info")


def test_amend_of_a_stop_that_triggered_looks_it_up() -> None:
    h = Harness()
    e, stop = open_position(h)
    am = only(h.intent(amend(e.id, "59500")).commands)
    h.ex.trigger(stop)
    step = h.do(am)  # 233: not active
    assert only(step.commands) == Lookup("BTC-EUR", stop, e.id)
    step = h.do()
    assert [r.status for r in step.reports] == ["filled"] and not step.commands
    assert "stop_triggered" in [ev.kind for ev in step.events] and h.m.positions() == {}


def test_amend_refused_for_another_reason_is_not_repeated() -> None:
    h = Harness()
    e, stop = open_position(h)
    am = only(h.intent(amend(e.id, "59500")).commands)
    step = h.do(am, outcome="reject", code=422)
    assert not step.commands and [ev.kind for ev in step.events] == ["stop_amend_failed"]
    assert not h.push(stop).commands  # no loop
    assert isinstance(only(h.intent(amend(e.id, "59600", 1)).commands), Amend)


# -- 6. unknown outcomes ----------------------------------------------------------------------------


def test_unknown_place_not_found_is_placed_again_with_the_same_client_id() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    place = h.take(Place)
    step = h.do(place, outcome="lost")
    assert only(step.commands) == Lookup("BTC-EUR", place.client_order_id, e.id)
    step = h.do()
    assert only(step.commands) == place  # the very same order
    h.do()
    assert len(h.ex.all) == 1 and h.placed == [place.client_order_id]


def test_unknown_place_found_filled_continues_without_a_second_entry() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    place = h.take(Place)
    step = h.do(place, outcome="landed")
    lookup = only(step.commands)
    assert isinstance(lookup, Lookup)
    step = h.do(lookup)
    assert [r.status for r in step.reports] == ["filled"]
    stop = only(step.commands)
    assert isinstance(stop, Place) and stop.purpose == "stop"
    assert len([o for o in h.ex.orders.values() if o.side == "buy"]) == 1


def test_entry_kept_unknown_is_given_up_after_three_tries() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    for _ in range(2):
        h.do(outcome="lost")
        assert isinstance(only(h.do().commands), Place)
    h.do(outcome="lost")
    step = h.do()
    rep = only(step.reports)
    assert (rep.status, rep.reason) == ("rejected", "place_unconfirmed") and not step.commands


def test_kill_switch_stops_a_re_send_of_an_entry_that_never_landed() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    h.do(outcome="lost")
    h.kill = True
    step = h.do()
    assert not step.commands and only(step.reports).reason == "kill_switch"


def test_transient_and_unknown_error_codes() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    place = h.take(Place)
    step = h.do(place, outcome="reject", code=105)  # rate limited: nothing happened, same command again
    assert only(step.commands) == place and not step.reports
    step = h.do(place, outcome="reject", code=101)  # unknown server error: may have happened
    assert only(step.commands) == Lookup("BTC-EUR", place.client_order_id, e.id)
    step = h.do(outcome="lost")  # the lookup itself timed out: ask again
    assert isinstance(only(step.commands), Lookup)
    step = h.do(place, outcome="reject", code=220)  # a stray answer for a Place no longer in flight
    assert not step


def test_cancel_and_amend_with_unknown_outcome_are_looked_up() -> None:
    h = Harness()
    e, stop = open_position(h)
    am = only(h.intent(amend(e.id, "59500")).commands)
    step = h.do(am, outcome="landed")
    assert only(step.commands) == Lookup("BTC-EUR", stop, e.id)
    assert not h.do().commands  # the lookup shows the new trigger: nothing more to do
    cancel = only(h.intent(exit_(e.id)).commands)
    step = h.do(cancel, outcome="landed")
    assert only(step.commands) == Lookup("BTC-EUR", stop, e.id)
    sell = only(h.do().commands)
    assert isinstance(sell, Place) and sell.purpose == "exit"


# -- 7. orphans, rebuild, reconcile -----------------------------------------------------------------


def test_orphan_open_orders_are_alerted_and_never_touched() -> None:
    h = Harness()
    e, stop = open_position(h)
    orphan = OrderState(order_id="x-1", market="ETH-EUR", side="sell", order_type="limit", status="new",
                        client_order_id=None, amount=D("1"), price=D("3000"))
    step = h.m.on_open_orders([h.ex.orders[stop], orphan], h.ex.tick())
    assert not step.commands and not step.reports
    ev = only(step.events)
    assert (ev.kind, ev.severity, ev.details["order_id"]) == ("orphan_order", "critical", "x-1")


def _scenario(h: Harness) -> tuple[EntryIntent, str]:
    """Two positions: one closed by take-profit, one with a partial fill, a stop, an amend."""
    e1, stop1 = open_position(h, 1)
    h.intent(exit_(e1.id))
    h.settle()
    e2 = entry(2, order_type="limit", price="60000")
    h.intent(e2)
    h.do()
    coid = entry_client_id(e2.id)
    h.ex.fill(coid, "0.004")
    h.push(coid)
    h.do()  # stop placed
    h.intent(amend(e2.id, "59300"))
    h.do()
    return e2, coid


def test_rebuild_restores_the_same_state() -> None:
    h = Harness()
    e2, coid = _scenario(h)
    h.ex.fill(coid, "0.003")
    h.push(coid)  # an amend is now in flight (not performed)
    assert isinstance(h.queue[-1], Amend)
    m = h.rebuilt()
    assert m.summary() == h.m.summary()
    view = m.positions()[e2.id]
    assert (view.held, view.stop_price, view.stop_trigger, view.entry_status) == (
        D("0.007"), D("59300.00"), D("59300.00"), "partiallyFilled")
    assert m.summary()["closed_positions"] == 1


def test_rebuild_then_reconcile_continues_a_stop_that_was_being_placed() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    h.do()  # filled; the stop's Place is in flight when the process dies
    stop = h.take(Place)
    for landed in (False, True):
        hh = Harness()
        hh.ex.orders = dict(h.ex.orders)
        hh.ex.bought = defaultdict(Decimal, h.ex.bought)
        hh.ex.now = h.ex.now
        if landed:
            hh.ex.place(stop.request)  # it had landed before the crash
        hh.intents, hh.reports = list(h.intents), list(h.reports)
        m = hh.rebuilt()
        assert m.summary() == h.m.summary()
        hh.m = m
        lookups = m.reconcile()
        assert lookups and all(isinstance(c, Lookup) for c in lookups)
        hh.queue.extend(lookups)
        hh.settle()
        placed_stops = [c for c in hh.placed if c == stop.client_order_id]
        assert placed_stops == ([] if landed else [stop.client_order_id])
        view = m.positions()[e.id]
        assert view.stop_client_order_id == stop.client_order_id and view.stop_status == "awaitingTrigger"
        assert hh.ex.open_sells("BTC-EUR") == hh.ex.held("BTC-EUR") == D("0.01")


def test_rebuild_then_reconcile_resumes_an_exit() -> None:
    h = Harness()
    e, stop = open_position(h)
    x = exit_(e.id)
    cancel = only(h.intent(x).commands)
    h.ex.apply(cancel)  # the cancel happened, its answer was lost with the process
    m = h.rebuilt()
    assert m.summary() == h.m.summary() and m.summary()["open_exits"] == [x.id]
    hh = Harness()
    hh.ex, hh.m, hh.intents, hh.reports = h.ex, m, list(h.intents), list(h.reports)
    hh.queue.extend(m.reconcile())
    assert hh.queue == [Lookup("BTC-EUR", stop, e.id)]
    hh.settle()
    assert hh.ex.held("BTC-EUR") == 0 and [r.intent_id for r in hh.reports if r.purpose == "exit"][-1] == x.id
    assert m.positions() == {} and m.summary()["open_exits"] == []
    # an exit intent delivered again after the rebuild is a duplicate
    assert not m.on_intent(x, False, T0)


def test_rebuild_adopts_our_stop_from_the_open_orders() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    h.do()
    stop = h.take(Place)
    h.ex.place(stop.request)  # landed, never answered
    m = h.rebuilt()
    step = m.on_open_orders([h.ex.orders[stop.client_order_id]], h.ex.tick())
    assert [ev.kind for ev in step.events][:1] == ["order_adopted"] and not step.commands
    assert m.positions()[e.id].stop_status == "awaitingTrigger"
    assert m.reconcile() == []  # everything is known


def test_entry_learned_without_report_is_probed_then_placed() -> None:
    h = Harness()
    e = entry()
    h.intents.append(e)  # crashed before handling it
    m = h.rebuilt()
    lookups = m.reconcile()
    assert lookups == [Lookup("BTC-EUR", entry_client_id(e.id), e.id)]
    h.m = m
    step = h.do(lookups[0])
    assert isinstance(only(step.commands), Place)


def test_a_rebuilt_paper_history_is_nothing_to_a_live_executor() -> None:
    h = Harness()
    _scenario(h)
    live = h.rebuilt(mode="live") if False else OrderManager(
        CAT, MessageFactory("x", FakeClock(T0)), "live", DoorLimits(allowed_markets=frozenset({"BTC-EUR"})))
    for i in h.intents:
        live.learn_intent(i)
    for r in h.reports:
        live.learn_report(r)
    assert live.positions() == {} and live.reconcile() == []


def test_exit_while_the_stop_is_still_being_placed_waits_for_it() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    h.do()
    stop = h.take(Place)
    assert not h.intent(exit_(e.id)).commands  # the stop's answer first
    step = h.do(stop)
    assert only(step.commands) == Cancel("BTC-EUR", stop.client_order_id, e.id)
    sell = only(h.do().commands)
    assert isinstance(sell, Place) and sell.purpose == "exit"


def test_exit_of_dust_is_canceled_dust() -> None:
    h = Harness()
    e = entry(order_type="limit", price="60000")
    h.intent(e)
    h.do()
    coid = entry_client_id(e.id)
    h.ex.fill(coid, "0.00005")
    h.push(coid)
    step = h.intent(exit_(e.id))
    assert [r.reason for r in step.reports if r.purpose == "exit"] == ["dust"]
    assert [c for c in step.commands if isinstance(c, Place)] == []


def test_emergency_rejected_is_critical_and_halts() -> None:
    h = Harness(stop_retries=0)
    e = entry()
    h.intent(e)
    h.do()
    h.do(outcome="reject", code=216)
    emergency = h.take(Place)
    step = h.do(emergency, outcome="reject", code=423)
    assert [(ev.kind, ev.severity) for ev in step.events] == [("emergency_failed", "critical")]
    assert not step.commands and h.m.positions()[e.id].halted
    assert h.m.summary()["halted"] == [e.id]


def test_emergency_cancels_an_open_entry() -> None:
    h = Harness(stop_retries=0)
    e = entry(order_type="limit", price="60000")
    h.intent(e)
    h.do()
    coid = entry_client_id(e.id)
    h.ex.fill(coid, "0.004")
    h.push(coid)
    step = h.do(outcome="reject", code=216)
    assert set(step.commands) == {Cancel("BTC-EUR", coid, e.id), *[c for c in step.commands if isinstance(c, Place)]}
    assert [c.purpose for c in step.commands if isinstance(c, Place)] == ["emergency"]
    h.settle()
    assert h.ex.held("BTC-EUR") == 0 and not h.ex.orders[coid].is_open


def test_exit_in_a_market_that_is_not_trading_keeps_the_stop() -> None:
    h = Harness()
    e, stop = open_position(h)
    halted = [dict(m, status="halted") if m["market"] == "BTC-EUR" else m for m in MARKETS_JSON]
    h.m.catalog = MarketCatalog.from_json(halted, strict=True)
    step = h.intent(exit_(e.id))
    assert not step.commands
    assert [(r.status, r.reason) for r in step.reports] == [("rejected", "market_not_trading")]
    assert h.ex.orders[stop].is_open


def test_lookup_failures() -> None:
    h = Harness()
    e, stop = open_position(h)
    cancel = only(h.intent(exit_(e.id)).commands)
    lookup = only(h.do(cancel, outcome="lost").commands)
    assert isinstance(lookup, Lookup)
    step = h.feed(h.m.on_failed(lookup, Failure("rejected", 310, "no permission"), h.ex.tick()))
    assert [(ev.kind, ev.severity) for ev in step.events] == [("order_missing", "critical")] and not step.commands
    assert not h.intent(amend(e.id, "59500")).commands  # hands off
    # not_found from the lookup is "no such order"; for an order that never landed it is placed again
    h2 = Harness()
    e2 = entry(1)
    h2.intent(e2)
    place = h2.take(Place)
    lookup = only(h2.do(place, outcome="lost").commands)
    step = h2.feed(h2.m.on_failed(lookup, Failure("not_found", 240, "No order found."), h2.ex.tick()))
    assert only(step.commands) == place


def test_an_order_we_saw_that_the_exchange_no_longer_knows_is_hands_off() -> None:
    h = Harness()
    e, stop = open_position(h)
    cancel = only(h.intent(exit_(e.id)).commands)
    lookup = only(h.do(cancel, outcome="lost").commands)
    del h.ex.orders[stop]
    step = h.do(lookup)
    assert [(ev.kind, ev.severity) for ev in step.events] == [("order_missing", "critical")] and not step.commands


def test_a_refused_stop_that_exists_after_all_is_followed() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    h.do()
    stop = h.take(Place)
    h.do(stop, outcome="reject", code=216)
    h.ex.place(stop.request)  # it did land
    step = h.push(stop.client_order_id)
    assert "order_resurrected" in [ev.kind for ev in step.events]
    # two stops now: the newer placement is kept, the other is canceled
    h.settle()
    assert h.ex.open_sells("BTC-EUR") == h.ex.held("BTC-EUR") == D("0.01")


def test_unsolicited_lookup_answer_and_transient_cancel_and_amend() -> None:
    h = Harness()
    e, stop = open_position(h)
    step = h.feed(h.m.on_lookup(Lookup("BTC-EUR", stop, e.id), None, h.ex.tick()))
    assert not step  # not waited for, nothing there: ignored
    am = only(h.intent(amend(e.id, "59500")).commands)
    assert only(h.do(am, outcome="reject", code=105).commands) == am
    step = h.do(am, outcome="reject", code=232)  # nothing to change: the stop already is so
    assert not step.commands
    assert not h.intent(amend(e.id, "59400", 1)).commands
    cancel = only(h.intent(exit_(e.id)).commands)
    assert only(h.do(cancel, outcome="reject", code=107).commands) == cancel


def test_closed_while_down_is_looked_up_and_booked() -> None:
    h = Harness()
    e, stop = open_position(h)
    h.ex.trigger(stop)  # filled while the executor was down
    m = h.rebuilt()
    hh = Harness()
    hh.ex, hh.m, hh.intents, hh.reports = h.ex, m, list(h.intents), list(h.reports)
    step = hh.feed(m.on_open_orders([], h.ex.tick()))
    assert only(step.commands) == Lookup("BTC-EUR", stop, e.id)
    assert m.reconcile() == []  # already asked
    step = hh.do()
    assert [(r.status, r.reason) for r in step.reports] == [("filled", "stop_loss")] and not step.commands
    assert m.positions() == {}


def test_a_poll_looks_up_our_open_orders_the_listing_no_longer_shows() -> None:
    """The account socket is down: a stop fills and an entry fills with no event. Each poll feeds the
    open orders to on_order, then reconcile(): what is listed is known, what left the listing is
    looked up (acceptance: tests/test_executor_acceptance.py, the account socket down)."""
    h = Harness()
    e, stop = open_position(h)
    resting = entry(1, order_type="limit", price="59000", stop="58000")
    h.intent(resting)
    h.do()  # the limit entry rests
    entry_coid = entry_client_id(resting.id)
    poll = lambda: [h.feed(h.m.on_order(o, h.ex.tick())) for o in h.ex.orders.values() if o.is_open]  # noqa: E731
    poll()
    assert h.m.reconcile() == []  # everything listed: nothing to ask
    h.ex.trigger(stop)  # the stop fills, no event
    h.ex.fill(entry_coid, D("0.01"), D("59000"))  # the entry fills, no event
    poll()
    lookups = h.m.reconcile()
    assert sorted(c.client_order_id for c in lookups) == sorted([stop, entry_coid])
    h.queue.extend(lookups)
    h.settle()
    assert last(h, stop).status == "filled" and last(h, entry_coid).status == "filled"
    new_stop = stop_client_id(resting.id, 1)
    assert last(h, new_stop).status == "awaitingTrigger"  # the filled entry got its stop
    poll()
    assert h.m.reconcile() == [] and list(h.m.positions()) == [resting.id]


def test_a_command_the_service_gives_up_on_is_made_again_after_the_next_reconcile() -> None:
    """The exchange keeps answering 107 ("overloaded, try again") to the stop: the service backs off,
    then gives up and hands the command back (abandon). The next reconcile() asks, and the stop is
    placed once the exchange takes it; without abandon it would count as in flight forever."""
    h = Harness()
    e = entry()
    h.intent(e)
    h.do()  # entry filled
    place = h.take(Place)
    assert h.do(place, outcome="reject", code=107).commands == [place]  # "try again": the same Place
    h.queue.remove(place)
    assert h.m.reconcile() == []  # in flight, as far as the manager knows
    h.m.abandon(place)
    lookups = h.m.reconcile()
    assert lookups == [Lookup("BTC-EUR", place.client_order_id, e.id)]
    h.queue.extend(lookups)
    h.settle()
    assert last(h, place.client_order_id).status == "awaitingTrigger" and h.placed.count(place.client_order_id) == 1
    # an amend given up on: its position is woken and the amend made again
    h.intent(amend(e.id, "59500"))
    change = h.take(Amend)
    h.m.abandon(change)
    h.queue.extend(h.m.reconcile())
    h.settle()
    assert h.ex.orders[place.client_order_id].trigger_price == D("59500")
    h.m.abandon(change)  # nothing in flight: nothing to do
    assert h.m.reconcile() == []


def test_exit_of_an_unknown_position_learned_without_report_is_answered_after_reconcile() -> None:
    h = Harness()
    x = exit_("ghost")
    h.intents.append(x)
    m = h.rebuilt()
    lookups = m.reconcile()
    assert lookups == [Lookup("BTC-EUR", exit_client_id(x.id), "ghost")]
    step = m.on_lookup(lookups[0], None, T0)
    assert [(r.status, r.reason, r.intent_id) for r in step.reports] == [("canceled", "no_position", x.id)]
    assert m.reconcile() == []


def test_v1_style_entry_reports_are_learned() -> None:
    h = Harness()
    e = entry()
    h.intent(e)
    h.do()
    rep = h.reports[0]
    v1 = rep.model_copy(update={"purpose": "unknown", "position_id": None})
    m = OrderManager(CAT, MessageFactory("x", FakeClock(T0)), "paper")
    m.learn_intent(e)
    m.learn_report(v1)
    assert m.positions()[e.id].bought == D("0.01")


# -- integration: the ledger and the trading core book the reports ----------------------------------


def _core() -> tuple[TradingCore, FakeClock]:
    clock = FakeClock(T0)
    return TradingCore(CoreConfig(), catalog(), MessageFactory("trading_core", clock), clock), clock


def _intents(effects: list[Any], cls: type[Message]) -> list[Any]:
    return [e.msg for e in effects if isinstance(e, Output) and isinstance(e.msg, cls)]


def _book_all(core: TradingCore, ledger: PositionLedger, reports: list[OrderExecuted], start: int) -> int:
    for r in reports[start:]:
        ledger.apply(r)
        core.on_executed(r)
    return len(reports)


def test_core_and_ledger_book_a_take_profit_round_trip() -> None:
    core, clock = _core()
    ledger = PositionLedger()
    h = Harness()
    h.ex.ask = h.ex.bid = D("60000")
    intent = _intents(core.on_signal(signal(1), kill_switch=False), EntryIntent)[0]
    h.intent(intent)
    h.do()
    seen = _book_all(core, ledger, h.reports, 0)
    assert core.in_flight() == []  # the entry's final report cleared it
    h.settle()
    seen = _book_all(core, ledger, h.reports, seen)
    assert h.m.positions()[intent.id].stop_status == "awaitingTrigger"
    tp = intent.take_profit_price
    assert tp is not None
    h.ex.bid = tp + 100
    exits = _intents(core.on_book(book("BTC-EUR", str(tp + 100), i=5)), ExitIntent)
    assert len(exits) == 1 and [f.kind for f in core.in_flight()] == ["exit"]
    h.intent(exits[0])
    h.settle()
    _book_all(core, ledger, h.reports, seen)
    assert core.in_flight() == [] and ledger.size("BTC-EUR") == 0 and core.ledger.size("BTC-EUR") == 0
    assert ledger.realized > 0 and "BTC-EUR" not in core.cooldowns()


def test_core_and_ledger_book_a_stop_out_and_a_raced_exit() -> None:
    core, clock = _core()
    ledger = PositionLedger()
    h = Harness()
    intent = _intents(core.on_signal(signal(2), kill_switch=False), EntryIntent)[0]
    h.intent(intent)
    h.settle()
    seen = _book_all(core, ledger, h.reports, 0)
    stop = h.m.positions()[intent.id].stop_client_order_id
    assert stop is not None
    # a time-stop style exit races the stop
    x = ExitIntent(id="x-race", ts=T0 + 9, src="trading_core", trace=TRACE, position_id=intent.id, market="BTC-EUR",
                   side="sell", order_type="market", amount=intent.amount, price=None, reason="time_stop",
                   trigger_price=None, level=None, opened_ts=None, mode="paper")
    core.on_intent(x)
    assert any(f.intent_id == "x-race" for f in core.in_flight())
    cancel = only(h.intent(x).commands)
    h.ex.bid = D("58000")
    h.ex.trigger(stop)
    h.do(cancel)
    h.settle()
    _book_all(core, ledger, h.reports, seen)
    assert core.in_flight() == [] and ledger.size("BTC-EUR") == 0
    assert "BTC-EUR" in core.cooldowns()  # the stop's reports carry reason stop_loss
    assert ledger.realized < 0


# -- property: never more coins in open sells than held, never sold more than bought ----------------


class ExecutorMachine(RuleBasedStateMachine):
    """Random interleavings of fills, answers (ok, refused, unknown), triggers, external cancels,
    stale echoes, exits and amends against the fake exchange."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.entries: list[EntryIntent] = []
        self.n = 0

    @initialize()
    def start(self) -> None:
        self.h = Harness()

    @rule(limit=st.booleans(), amount=st.sampled_from(["0.01", "0.004", "0.0002"]))
    def new_entry(self, limit: bool, amount: str) -> None:
        if len(self.entries) >= 3:
            return
        self.n += 1
        e = entry(self.n, amount=amount, order_type="limit" if limit else "market",
                  price="60000" if limit else None)
        self.entries.append(e)
        self.h.intent(e)

    @rule(i=st.integers(0, 50), outcome=st.sampled_from(["ok", "ok", "ok", "reject", "lost", "landed"]),
          code=st.sampled_from([216, 203, 233, 240, 101, 105, 220, 423]))
    def answer(self, i: int, outcome: str, code: int) -> None:
        if not self.h.queue:
            return
        cmd = self.h.queue[i % len(self.h.queue)]
        if isinstance(cmd, Lookup) and outcome in ("reject", "landed"):
            outcome = "ok"
        self.h.do(cmd, outcome=outcome, code=code)

    @rule(i=st.integers(0, 10), part=st.sampled_from(["0.001", "0.003", "all"]))
    def fill_entry(self, i: int, part: str) -> None:
        opens = [o for o in self.h.ex.orders.values() if o.side == "buy" and o.is_open]
        if not opens:
            return
        o = opens[i % len(opens)]
        assert o.amount is not None and o.client_order_id is not None
        left = o.amount - o.filled_amount
        amount = left if part == "all" else min(left, D(part))
        self.h.ex.fill(o.client_order_id, amount)
        self.h.push(o.client_order_id)

    @rule(i=st.integers(0, 10), part=st.sampled_from(["all", "some", "none"]), tell=st.booleans())
    def trigger_stop(self, i: int, part: str, tell: bool) -> None:
        stops = [o for o in self.h.ex.orders.values() if o.status == "awaitingTrigger"]
        if not stops:
            return
        o = stops[i % len(stops)]
        assert o.amount is not None and o.client_order_id is not None
        amount = {"all": o.amount, "some": (o.amount / 2).quantize(D("0.00000001")), "none": D(0)}[part]
        self.h.ex.trigger(o.client_order_id, amount)
        if tell:
            self.h.push(o.client_order_id)

    @rule(i=st.integers(0, 10))
    def exchange_cancels_a_stop(self, i: int) -> None:
        stops = [o for o in self.h.ex.orders.values() if o.status == "awaitingTrigger"]
        if stops:
            o = stops[i % len(stops)]
            assert o.client_order_id is not None
            self.h.ex.end(o.client_order_id, "canceled")
            self.h.push(o.client_order_id)

    @rule(i=st.integers(0, 50))
    def echo(self, i: int) -> None:
        if self.h.ex.orders:
            coid = list(self.h.ex.orders)[i % len(self.h.ex.orders)]
            self.h.push(coid)

    @rule(i=st.integers(0, 10), reason=st.sampled_from(["take_profit", "time_stop", "trailing_stop"]))
    def exit_position(self, i: int, reason: str) -> None:
        if self.entries:
            self.n += 1
            e = self.entries[i % len(self.entries)]
            self.h.intent(exit_(e.id, self.n, reason=reason))

    @rule(i=st.integers(0, 10), up=st.integers(1, 900))
    def trail(self, i: int, up: int) -> None:
        if self.entries:
            self.n += 1
            e = self.entries[i % len(self.entries)]
            self.h.intent(amend(e.id, str(58800 + up), self.n))

    @rule(sent=st.lists(st.booleans(), max_size=8), open_orders_first=st.booleans())
    def crash_and_restart(self, sent: list[bool], open_orders_first: bool) -> None:
        """The process dies: each queued command was sent (its answer lost) or not; a new manager
        is rebuilt from the streams, told the open orders, and reconciles."""
        h = self.h
        for cmd, was_sent in zip(list(h.queue), sent + [False] * len(h.queue), strict=False):
            if was_sent and not isinstance(cmd, Lookup):
                try:
                    h.ex.apply(cmd)
                except Refused:
                    pass
        h.queue.clear()
        h.m = h.rebuilt()
        opens = [o for o in h.ex.orders.values() if o.is_open]
        if open_orders_first:
            h.feed(h.m.on_open_orders(opens, h.ex.tick()))
            h.queue.extend(h.m.reconcile())
        else:
            h.queue.extend(h.m.reconcile())
            h.feed(h.m.on_open_orders(opens, h.ex.tick()))
        assert not any(e.kind == "orphan_order" for e in h.events)

    @rule(on=st.booleans())
    def refuse_stops(self, on: bool) -> None:
        self.h.ex.refuse_stops = on

    @rule(depth=st.sampled_from([None, None, "0.003", "0"]))
    def depth(self, depth: str | None) -> None:
        self.h.ex.depth = None if depth is None else D(depth)

    @invariant()
    def never_oversold(self) -> None:
        ex = self.h.ex
        assert ex.sold["BTC-EUR"] <= ex.bought["BTC-EUR"]
        assert ex.open_sells("BTC-EUR") <= ex.held("BTC-EUR")
        for o in ex.orders.values():
            assert o.filled_amount <= (o.amount or D(0))
        assert not any(o.kind == "oversold" for o in self.h.events)

    @invariant()
    def one_place_in_flight_per_client_id(self) -> None:
        places = [c.client_order_id for c in self.h.queue if isinstance(c, Place)]
        assert len(places) == len(set(places))

    def teardown(self) -> None:
        h = self.h
        h.ex.depth = None
        h.ex.refuse_stops = False
        for _ in range(5):  # the WS (or polling) catches up with every order, answers come back
            for coid in list(h.ex.orders):
                h.push(coid)
            h.settle(500)
        ex = h.ex
        assert ex.open_sells("BTC-EUR") <= ex.held("BTC-EUR")
        # every position is closed, dust, or protected by one stop covering what it holds; anything
        # else (halted, hands off) has raised a critical alert about that very position
        for pid, view in h.m.positions().items():
            alerted = any(e.severity == "critical" and e.details.get("position_id") == pid for e in h.events)
            if view.held <= 0 or view.held * 60000 < 5 or view.held < D("0.00008334"):
                continue
            protected = view.stop_status == "awaitingTrigger" and view.stop_amount == view.held
            assert view.exit_intent_id is None or alerted, (pid, view)
            assert protected or alerted, (pid, view)
            assert not view.halted or alerted
            STATS["protected" if protected else "alerted"] += 1
        # the reports book without error, and the ledger agrees with the exchange
        ledger = PositionLedger()
        for r in h.reports:
            ledger.apply(r)
        assert ledger.size("BTC-EUR") == ex.held("BTC-EUR")
        # and a rebuild says the same
        assert h.rebuilt().summary() == h.m.summary()


TestExecutorMachine = ExecutorMachine.TestCase
TestExecutorMachine.settings = settings(max_examples=300, stateful_step_count=50, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])


def test_an_account_event_saying_what_is_known_needs_no_rest_read() -> None:
    """knows(): the service skips the REST read of an order whose event says only what the manager
    holds (the state of the place answer); a fill, another status, an amended amount or trigger, or an
    order not ours is read."""
    h = Harness()
    _, stop_coid = open_position(h)
    stop_state = h.ex.orders[stop_coid]
    assert h.m.knows(stop_state)
    assert not h.m.knows(dataclasses.replace(stop_state, status="filled"))
    assert not h.m.knows(dataclasses.replace(stop_state, filled_amount=stop_state.filled_amount + D("0.001")))
    assert not h.m.knows(dataclasses.replace(stop_state, trigger_price=(stop_state.trigger_price or D(0)) + 1))
    assert not h.m.knows(dataclasses.replace(stop_state, client_order_id="someone-else", order_id="x"))
