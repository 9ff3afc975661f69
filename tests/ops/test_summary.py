"""The summary `tradestack up --for` ends with, from what a run left in Redis; children's log lines
prefixed with their name."""

from __future__ import annotations

import io
import subprocess
import sys

import orjson
import redis

from tests.ops.fakes import decision
from tradestack import streams
from tradestack.ops.logprefix import LogPrefixer
from tradestack.ops.summary import collect_summary, format_summary, percentile, stream_counts


def report(coid: str, purpose: str, status: str, fills: list[str]) -> dict[str, bytes | str]:
    return {"type": "order.executed", "data": orjson.dumps({
        "client_order_id": coid, "purpose": purpose, "status": status, "market": "BTC-EUR",
        "fills": [{"fill_id": f} for f in fills]})}


def test_summary_counts_what_the_run_did_and_measures_tick_to_intent(rclient: redis.Redis) -> None:
    rclient.xadd(streams.ORDERS_SIGNALS, decision(), id="1000-0")  # before the run: not counted
    before = stream_counts(rclient)
    since = 2_000_000
    for i in range(3):
        rclient.xadd(streams.TICKER24H, {"type": "x", "data": "{}"}, id=f"{since + i}-0")
    rclient.xadd(streams.SIGNALS_BASELINE, {"type": "signal", "data": orjson.dumps(
        {"strategy": "momentum", "side": "buy"})}, id=f"{since}-0")
    rclient.xadd(streams.ORDERS_SIGNALS, decision(), id=f"{since + 1}-0")
    rclient.xadd(streams.ORDERS_SIGNALS, decision(False, reasons=["kill_switch", "max_open_positions"]),
                 id=f"{since + 2}-0")
    for i, latency in enumerate([10, 20, 30, 400]):  # written `latency` ms after the market event
        rclient.xadd(streams.ORDERS_SHADOW, {"type": "intent.entry", "data": orjson.dumps(
            {"trace": {"id": "t", "ts": since + 100 * i}})}, id=f"{since + 100 * i + latency}-0")
    rclient.xadd(streams.ORDERS_EXECUTED, report("a", "entry", "new", []), id=f"{since + 5}-0")
    rclient.xadd(streams.ORDERS_EXECUTED, report("a", "entry", "filled", ["f1", "f2"]), id=f"{since + 6}-0")
    rclient.xadd(streams.ORDERS_EXECUTED, report("b", "stop", "awaitingTrigger", []), id=f"{since + 7}-0")
    rclient.hset(streams.UNIVERSE, mapping={"BTC-EUR": "{}", "ETH-EUR": "{}"})
    rclient.hset(streams.PNL, mapping={"equity": "999.5", "drawdown_pct": "0.05"})
    rclient.hset(streams.POSITIONS, "BTC-EUR", orjson.dumps({"size": "0.01", "avg_cost": "50000"}))

    s = collect_summary(rclient, since, since + 10_000, before)
    assert s["messages"][streams.TICKER24H] == {"added": 3, "exact": True}
    assert s["messages"][streams.ORDERS_SIGNALS]["added"] == 2
    assert s["universe"] == 2 and s["signals"]["by_strategy_side"] == {"momentum buy": 1}
    assert s["decisions"]["by_outcome"] == {"accepted": 1, "blocked": 1}
    assert s["decisions"]["blocked_by_reason"] == {"kill_switch": 1}
    assert s["intents"]["by_kind"] == {"entry": 4}
    assert s["orders"]["by_purpose_status"] == {"entry filled": 1, "stop awaitingTrigger": 1}
    assert s["fills"] == {"total": 2, "by_purpose": {"entry": 2}}
    assert s["tick_to_intent_ms"] == {"count": 4, "p50": 20.0, "p99": 400.0}
    text = format_summary(s, [("trading_core", "exit 0")])
    for line in ("trading_core exit 0", "universe: 2 markets", "decisions: 2 (accepted 1, blocked 1)",
                 "orders: 2 (entry filled 1, stop awaitingTrigger 1)", "open positions: BTC-EUR 0.01 @ 50000",
                 "equity 999.5 EUR", "p50 20 ms, p99 400 ms"):
        assert line in text, line


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.99) == 5.0
    assert percentile([float(v) for v in range(1, 101)], 0.99) == 99.0


def test_children_lines_are_prefixed_with_their_name() -> None:
    child = subprocess.Popen([sys.executable, "-c", "print('one'); print('two', end='')"], stdout=subprocess.PIPE)
    assert child.stdout is not None
    out = io.BytesIO()
    logs = LogPrefixer(["trading_core", "sandbox"], colour=False)
    logs.attach("sandbox", child.stdout, out)
    child.wait()
    logs.join()
    assert out.getvalue() == b"sandbox      | one\nsandbox      | two\n"
    coloured = LogPrefixer(["trading_core"], colour=True).prefix("trading_core", out)
    assert coloured.startswith(b"\x1b[") and b"trading_core" in coloured
