"""The operator's command: kill switch, status (leases, last decision and fill, --json, --watch),
`up` running the whole stack, and a bounded `up --for` ending with a summary."""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys

import orjson
import pytest
import redis

from tests.conftest import ROOT, spawn, wait_until
from tests.ops.fakes import decision
from tradestack import streams
from tradestack.cli import PROCESSES, collect_status, main, parse_duration, set_kill
from tradestack.messages import decode
from tradestack.ops.status import CLEAR, format_status, watch


def test_kill_on_and_off_record_who_and_why_and_emit_an_event(rclient: redis.Redis) -> None:
    set_kill(rclient, True, "drill", now_ms=1_700_000_000_000)
    assert rclient.get(streams.KILL) == b"1"
    reason = orjson.loads(rclient.get(streams.KILL_REASON))
    assert reason["reason"] == "drill" and reason["on"] is True and "@" in reason["by"]
    set_kill(rclient, False, "drill over", now_ms=1_700_000_000_001)
    assert rclient.get(streams.KILL) == b"0"
    events = [decode(f) for _, f in rclient.xrange(streams.TRADING_EVENTS)]
    assert [e.details["on"] for e in events] == ["true", "false"]
    assert events[0].severity == "critical" and events[0].kind == "kill_switch"


def test_status_reports_services_streams_and_kill_switch(rclient: redis.Redis) -> None:
    rclient.set(streams.heartbeat("trader_executor"), orjson.dumps(
        {"state": "running", "ts": 1_700_000_000_000, "mode": "paper", "consumer": "h:1", "metrics_port": 9603}))
    rclient.xadd(streams.ORDERS_SHADOW, {"type": "x", "data": "{}"})
    rclient.xgroup_create(streams.ORDERS_SHADOW, "trader_executor", id="0")
    status = collect_status(rclient, now_ms=1_700_000_002_000)
    assert status["services"]["trader_executor"] == {"alive": True, "state": "running", "age_s": 2.0,
                                                     "mode": "paper", "consumer": "h:1", "metrics_port": 9603,
                                                     "role": "active"}
    assert status["services"]["trading_core"] == {"alive": False}
    shadow = status["streams"][streams.ORDERS_SHADOW]
    assert shadow["length"] == 1 and shadow["groups"][0]["group"] == "trader_executor"
    assert status["kill_switch"] is False


def test_status_without_redis_says_so(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["status"]) == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in capsys.readouterr().err


def test_up_runs_every_process_and_stops_them_all(tmp_path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """`tradestack up` with our own Redis and the sandbox: every process comes up running,
    `status` sees them, and SIGINT stops everything with exit 0."""
    data = tmp_path / "data"
    proc = spawn(["-m", "tradestack.cli", "--data-dir", str(data), "up", "--embedded-redis"],
                 {"METRICS_ADDR": "127.0.0.1", "HEARTBEAT_EVERY_S": "0.5"})
    try:
        stack = wait_until(lambda: (data / "stack.json").exists() and json.loads((data / "stack.json").read_text()),
                           timeout_s=30, what="stack.json")
        client = redis.Redis.from_url(stack["redis_url"])

        def all_up() -> bool:
            status = collect_status(client, now_ms=0)
            return all(s.get("state") in ("running", "degraded") for s in status["services"].values())

        wait_until(all_up, timeout_s=60, what="every process up")
        result = spawn(["-m", "tradestack.cli", "--data-dir", str(data), "status", "--json"], {})
        out, _ = result.communicate(timeout=30)
        assert set(json.loads(out)["services"]) == {n for n, _ in PROCESSES}
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"stopped" in err and b"restarting" not in err, err.decode()[-4000:]
    assert not (data / "stack.json").exists()
    assert sys.executable and ROOT.exists()


def fill_report(status: str, filled: str) -> dict[str, bytes | str]:
    return {"type": "order.executed", "data": orjson.dumps({
        "market": "BTC-EUR", "side": "buy", "purpose": "entry", "status": status, "filled_amount": filled,
        "avg_price": "50000", "fee": "0.25", "fee_currency": "EUR", "client_order_id": "c1", "mode": "paper"})}


def test_status_shows_lease_holders_last_decision_and_last_fill(rclient: redis.Redis, redis_url: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    rclient.set("lease:trader_executor", "7:vm:4242", px=3000)
    rclient.xadd(streams.ORDERS_SIGNALS, decision(False, reasons=["kill_switch"]))
    rclient.xadd(streams.ORDERS_EXECUTED, fill_report("filled", "0.002"))
    rclient.xadd(streams.ORDERS_EXECUTED, fill_report("awaitingTrigger", "0"))  # the stop: newer, nothing filled
    rclient.xadd(streams.dlq(streams.ORDERS_SHADOW), {"error": "bad"})
    rclient.hset(streams.PNL, mapping={"equity": "1001.5", "drawdown_pct": "0.3"})
    status = collect_status(rclient, now_ms=0)
    assert status["leases"]["trader_executor"]["holder"] == "vm:4242" and status["leases"]["trader_executor"]["token"] == 7
    assert status["leases"]["trading_core"] == {"held": False}
    assert status["last_decision"]["reasons"] == ["kill_switch"] and status["last_decision"]["accepted"] is False
    assert status["last_fill"]["status"] == "filled" and status["last_fill"]["filled_amount"] == "0.002"
    assert status["dlq"] == {streams.ORDERS_SHADOW: 1}
    text = format_status(status, "paper")
    for needle in ("trader_executor            vm:4242  token 7", "blocked: kill_switch", "BTC-EUR buy entry filled",
                   "equity 1001.5 EUR", "drawdown 0.3%", "dead letters: 1"):
        assert needle in text, needle
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["leases"]["trader_executor"]["holder"] == "vm:4242"
    assert out["last_decision"]["market"] == "BTC-EUR" and out["last_fill"]["purpose"] == "entry"


def test_watch_refreshes_in_place_and_ctrl_c_exits_zero() -> None:
    out = io.StringIO()
    frames = iter(["one", "two"])
    assert watch(lambda: next(frames), 0, out=out, rounds=2) == 0
    assert out.getvalue() == f"{CLEAR}one\n{CLEAR}two\n"

    def interrupted() -> str:
        raise KeyboardInterrupt

    assert watch(interrupted, 0, out=io.StringIO()) == 0


def test_durations() -> None:
    assert [parse_duration(v) for v in ("90s", "5m", "1.5h", "250ms", "2")] == [90, 300, 5400, 0.25, 2]
    for bad in ("", "5x", "-1s", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_up_for_a_while_stops_cleanly_and_ends_with_a_summary(tmp_path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    proc = spawn(["-m", "tradestack.cli", "--data-dir", str(tmp_path / "data"), "up", "--for", "1s",
                  "--only", "trader_universe_selector", "--no-sandbox"],
                 {"REDIS_URL": redis_url, "METRICS_PORT": "0", "LOG_LEVEL": "INFO"})
    out, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 0, text
    assert "--for 1 s is over" in text and "summary of the run" in text and "trader_universe_selector exit" in text
    for line in ("messages per stream:", "universe: 0 markets", "decisions: 0", "tick→intent latency: no intents"):
        assert line in text, line
    assert all(ln.startswith(b"trader_universe_selector | ") for ln in out.splitlines()), out[:300]
    assert not (tmp_path / "data" / "stack.json").exists()
