"""Notes from the stack's messages: positions opened and closed (PnL from the kernel's ledger), stop
failures, reconciliation, the breaker, the kill switch's transitions told once; the rest skipped."""

from __future__ import annotations

from services.trader_notifier.app.notes import Notes
from tests.notifier import T0, event, fill
from tradestack.clock import FakeClock


def notes(mode: str = "paper", **kw: object) -> Notes:
    return Notes(mode, FakeClock(T0), **kw)  # type: ignore[arg-type]


def texts(found: list) -> list[str]:  # type: ignore[type-arg]
    return [n.text for n in found]


def test_an_entry_fill_opens_a_position_once_when_final() -> None:
    n = notes()
    partial = fill("p1", "buy", "0.0005", "30", status="partiallyFilled", seq=0)
    assert n.on_report(partial) == []
    done = fill("p1", "buy", "0.001", "60", fee="0.15", seq=1)
    [note] = n.on_report(done)
    assert note.kind == "position_opened" and note.chat_id is None
    assert note.text == "🟢 BTC-EUR position opened: bought 0.001 @ 60000 (60.00 EUR, fee 0.15 EUR) [paper]"
    assert n.on_report(done) == []  # the same report again: booked once, told once


def test_a_stop_loss_closes_the_position_with_its_realized_pnl_net_of_fees() -> None:
    n = notes()
    n.on_report(fill("p1", "buy", "0.001", "60", fee="0.15"))
    [note] = n.on_report(fill("p1", "sell", "0.001", "59", fee="0.15", purpose="stop", reason="stop_loss"))
    assert note.kind == "position_closed"
    # 59 - 0.15 - (60 + 0.15) = -1.30 on a cost of 60.15: -2.16 %
    assert note.text == ("🔻 BTC-EUR position closed (stop_loss): sold 0.001 @ 59000 (entry 60000); "
                         "realized PnL -1.30 EUR (-2.16%) [paper]")
    assert n.trades == {}


def test_a_partial_take_profit_then_the_stop_sums_the_whole_position() -> None:
    n = notes()
    n.on_report(fill("p1", "buy", "0.002", "120"))
    [reduced] = n.on_report(fill("p1", "sell", "0.001", "65", purpose="exit", reason="take_profit"))
    assert reduced.kind == "position_reduced"
    assert "sold 0.001 @ 65000, 0.001 left; realized +5.00 EUR" in reduced.text
    [closed] = n.on_report(fill("p1", "sell", "0.001", "61", purpose="stop", reason="stop_loss"))
    assert "sold 0.002 @ 63000 (entry 60000); realized PnL +6.00 EUR (+5.00%)" in closed.text
    assert closed.text.startswith("✅ BTC-EUR position closed (stop_loss)")


def test_a_position_opened_before_a_restart_is_closed_with_its_whole_pnl() -> None:
    before = notes()
    buy = fill("p1", "buy", "0.001", "60")
    before.on_report(buy)
    after = notes()
    after.fold(buy)  # the rebuild at start
    [closed] = after.on_report(fill("p1", "sell", "0.001", "66", purpose="emergency", reason="emergency"))
    assert "position closed (emergency)" in closed.text and "+6.00 EUR (+10.00%)" in closed.text


def test_reports_of_another_mode_and_impossible_ones_are_not_told() -> None:
    n = notes()
    assert n.on_report(fill("p1", "buy", "0.001", "60", mode="sandbox")) == []
    assert n.on_report(fill("p2", "sell", "1", "60", purpose="exit")) == []  # a sell of nothing held
    assert n.unbookable == 1


def test_stop_failures_reconciliation_and_the_breaker_are_told() -> None:
    n = notes()
    cases = [("stop_rejected", "warning"), ("stop_failed", "critical"), ("emergency_failed", "critical"),
             ("orphan_order", "critical"), ("order_adopted", "warning"), ("order_missing", "critical"),
             ("loss_breaker", "critical")]
    for kind, severity in cases:
        [note] = n.on_event(event(kind, severity, f"BTC-EUR: {kind} details"))
        assert note.kind == f"event:{kind}" and note.severity == severity
        assert note.text == f"{'🚨' if severity == 'critical' else '⚠️'} {kind}: BTC-EUR: {kind} details"


def test_other_events_are_skipped_unless_critical_or_asked_for() -> None:
    n = notes()
    assert n.on_event(event("stop_placed", "info")) == []
    assert n.on_event(event("universe_stale", "warning")) == []
    assert len(n.on_event(event("balance_drift", "critical"))) == 1  # any critical event
    assert len(notes(extra_kinds=["universe_stale"]).on_event(event("universe_stale", "warning"))) == 1


def test_an_old_event_says_when_it_happened() -> None:
    n = notes()
    [note] = n.on_event(event("stop_failed", "critical", "x", ts=T0 - 3_600_000))
    assert note.text.endswith("(at 2023-11-14 21:13:20Z)")


def test_kill_switch_transitions_are_told_once_from_the_key_or_the_event() -> None:
    n = notes()
    assert n.kill.start(False, None, T0) == []
    # the core's "entry blocked: kill_switch" events are noise
    assert n.on_event(event("kill_switch", "warning", "entry blocked in BTC-EUR: kill_switch", decision_id="d")) == []
    # the CLI's event (it carries the reason), then the key seen by the poll: one note
    [on] = n.on_event(event("kill_switch", "critical", "kill switch ON: maintenance", ts=T0 + 10, on="true",
                            reason="maintenance", by="ops@vps"))
    assert on.text.startswith("🛑 Kill switch ON: maintenance (by ops@vps)") and on.severity == "critical"
    assert n.kill.observe_key(True, {"on": True, "reason": "maintenance", "by": "ops@vps", "ts": T0 + 10}, T0 + 20) == []
    # cleared by hand (redis-cli SET trading:kill 0, the record still says on): told, without a stale reason
    [off] = n.kill.observe_key(False, {"on": True, "reason": "maintenance", "by": "ops@vps"}, T0 + 30)
    assert off.text.startswith("▶️ Kill switch off: entries allowed") and off.severity == "warning"
    # an older event arriving late changes nothing
    assert n.on_event(event("kill_switch", "critical", "old", ts=T0 + 5, on="true", reason="r", by="b")) == []


def test_the_switch_on_at_start_is_told() -> None:
    [note] = notes().kill.start(True, {"on": True, "reason": "daily loss 5%", "by": "trader_pnl_orchestrator"}, T0)
    assert note.text == "🛑 Kill switch is ON: daily loss 5% (by trader_pnl_orchestrator); no new entries are made"
