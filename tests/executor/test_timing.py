"""IntentTimer: intent → ack / fill / stop resting latencies from the execution reports (pure)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.trader_executor.app.timing import IntentTimer
from tradestack.messages import OrderExecuted, Trace

T0 = 1_700_000_000_000


def report(intent_id: str, purpose: str, status: str, *, order_id: str | None = "o1", filled: str = "0",
           position_id: str | None = None) -> OrderExecuted:
    fields: dict[str, Any] = dict(
        id=f"r-{intent_id}-{purpose}-{status}", ts=T0, src="test", trace=Trace(id="t", ts=T0), intent_id=intent_id,
        client_order_id=f"c-{intent_id}-{purpose}", order_id=order_id, market="BTC-EUR", side="buy", status=status,
        filled_amount=Decimal(filled), filled_quote=Decimal(0), avg_price=None, fee=Decimal(0), fee_currency="EUR",
        mode="paper", reason=None, position_id=position_id or intent_id, purpose=purpose)
    return OrderExecuted(**fields)


def test_entry_is_timed_to_ack_fill_and_its_stop_resting_once_each() -> None:
    timer = IntentTimer()
    timer.intent("e1", T0, "entry")
    assert timer.report(report("e1", "entry", "new", order_id=None), T0 + 5) == []  # not acknowledged yet
    ack = timer.report(report("e1", "entry", "new"), T0 + 20)
    assert [(x.measure, x.purpose, x.seconds) for x in ack] == [("ack", "entry", 0.02)]
    fill = timer.report(report("e1", "entry", "filled", filled="1"), T0 + 50)
    assert [(x.measure, x.seconds) for x in fill] == [("fill", 0.05)]
    stop = timer.report(report("e1-stop", "stop", "awaitingTrigger", position_id="e1"), T0 + 80)
    assert [(x.measure, x.purpose, x.seconds) for x in stop] == [("stop", "entry", 0.08)]
    # Later reports of the same orders time nothing again.
    assert timer.report(report("e1", "entry", "filled", filled="1"), T0 + 90) == []
    assert timer.report(report("e1-stop", "stop", "awaitingTrigger", position_id="e1"), T0 + 95) == []
    assert timer.waiting() == 0


def test_a_rejected_entry_stops_waiting_and_an_unknown_intent_is_not_timed() -> None:
    timer = IntentTimer()
    timer.intent("e2", T0, "entry")
    assert timer.report(report("e2", "entry", "rejected", order_id=None), T0 + 10) == []
    assert timer.waiting() == 0
    assert timer.report(report("x", "exit", "filled"), T0 + 10) == []  # learnt at a rebuild: not timed


def test_memory_is_bounded_oldest_forgotten_first() -> None:
    timer = IntentTimer(cap=3)
    for i in range(5):
        timer.intent(f"x{i}", T0 + i, "exit")
    assert timer.report(report("x0", "exit", "filled"), T0 + 10) == []
    assert [x.measure for x in timer.report(report("x4", "exit", "filled"), T0 + 10)] == ["ack", "fill"]
