"""The operator's command: kill switch, status, and `up` running the whole stack."""

from __future__ import annotations

import json
import signal
import sys

import orjson
import redis

from tests.conftest import ROOT, spawn, wait_until
from tradestack import streams
from tradestack.cli import PROCESSES, collect_status, main, set_kill
from tradestack.messages import decode


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
                                                     "mode": "paper", "consumer": "h:1", "metrics_port": 9603}
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
    assert b"stopped" in err and b"restarting" not in err
    assert not (data / "stack.json").exists()
    assert sys.executable and ROOT.exists()
