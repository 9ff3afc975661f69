"""Every process starts with its command, serves /metrics, writes its heartbeat, honours the
kill switch and exits 0 on SIGTERM; bad settings and a missing Redis get clear answers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest
import redis

from tests.conftest import ROOT, spawn, wait_until
from tradestack.cli import PROCESSES
from tradestack.embedded_redis import free_port

COMMANDS = [
    *PROCESSES,  # every process of DESIGN §1, as `tradestack up` starts them
    # The runbook's forms
    ("trader_signal_engine", ["-m", "services.trader_signal_engine.app"]),
    ("trader_executor", ["-m", "services.trader_executor.app"]),
    ("trader_pnl_orchestrator", ["-m", "services.trader_pnl_orchestrator.app"]),
    ("trader_universe_selector", ["-m", "services.trader_universe_selector.app"]),
]

PREFIX = {
    "ingest_ticker24h": "trader_ingest", "ingest_orderbook": "trader_ingest", "ingest_candles": "trader_ingest",
    "trader_universe_selector": "trader_universe", "trader_signal_engine": "trader_signal_engine",
    "trading_core": "trader_trading_core", "trader_executor": "trader_executor", "trader_pnl_orchestrator": "trader_pnl",
}


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def metric_value(text: str, line_prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("service,args", COMMANDS, ids=[" ".join(a) for _, a in COMMANDS])
def test_process_starts_serves_metrics_heartbeats_and_stops(service: str, args: list[str], redis_url: str,
                                                            rclient: redis.Redis, sandbox_env: dict[str, str],
                                                            tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = spawn(args, {"REDIS_URL": redis_url, "METRICS_PORT": str(port), "HEARTBEAT_EVERY_S": "0.2",
                        "PARQUET_DIR": str(tmp_path / "parquet"), **sandbox_env})
    try:
        prefix = PREFIX[service]
        text = wait_until(lambda: (t := scrape(port)) and f'{prefix}_state{{state="running"}} 1.0' in t and t,
                          what=f"{service} running on :{port}")
        assert metric_value(text, f"{prefix}_dry_run") == 1.0
        assert metric_value(text, f"{prefix}_kill_switch") == 0.0
        beat = json.loads(wait_until(lambda: rclient.get(f"trading:heartbeat:{service}"), what="heartbeat"))
        assert beat["service"] == service and beat["mode"] == "paper" and beat["metrics_port"] == port
        assert 0 < rclient.ttl(f"trading:heartbeat:{service}") <= 15
        rclient.set("trading:kill", "1")
        wait_until(lambda: metric_value(scrape(port), f"{prefix}_kill_switch") == 1.0, what="kill switch seen")
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in out + err
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert "service_started" in events and "kill_switch_changed" in events and events[-1] == "service_stopped"


def test_trading_core_once_processes_pending_and_exits(redis_url: str) -> None:
    proc = spawn(["-m", "services.trading_core", "--once"], {"REDIS_URL": redis_url})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"service_stopped" in out


def test_runbook_compile_check_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "compileall", "-q", "services/trading_core/trading_core",
                             "services/trader_signal_engine/app", "services/trader_executor/app",
                             "services/trader_pnl_orchestrator/app", "services/trader_universe_selector/app"],
                            cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_exports_are_thin_doors() -> None:
    from services.trading_core import Decision, Executor, Intent, MeanReversionIntent, Metrics, MomentumIntent
    from services.trader_signal_engine.app.exports import SIGNAL_STREAM
    from services.trader_signal_engine.app.exports import main as se_main
    from services.trader_signal_engine.app.service import main as se_impl
    from tradestack import messages

    assert Decision is messages.DecisionMade and Intent is messages.EntryIntent
    assert issubclass(MomentumIntent, Intent) and issubclass(MeanReversionIntent, Intent)
    assert MomentumIntent.TYPE == MeanReversionIntent.TYPE == "intent.entry"
    assert callable(Executor().outputs) and Metrics is not None
    assert se_main is se_impl and SIGNAL_STREAM == "signals:baseline"
    for name in ("trader_executor", "trader_pnl_orchestrator", "trader_universe_selector"):
        exports = __import__(f"services.{name}.app.exports", fromlist=["main", "READS", "WRITES"])
        assert callable(exports.main) and exports.READS and exports.WRITES


@pytest.mark.parametrize("env,needle", [
    ({"METRICS_PORT": "abc"}, "METRICS_PORT='abc': Input should be a valid integer"),
    ({"DRY_RUN": "maybe"}, "DRY_RUN='maybe': Input should be a valid boolean"),
    ({"REDIS_URL": "http://localhost"}, "REDIS_URL='http://localhost': Value error, must start with redis://"),
    ({"KILL_POLL_MS": "500"}, "KILL_POLL_MS='500': Input should be less than or equal to 100"),
    ({"INGEST_MARKETS": "btc-eur"}, "INGEST_MARKETS"),
])
def test_bad_settings_exit_2_with_one_line(env: dict[str, str], needle: str) -> None:
    args = ["-m", "ingest.ticker24h"] if "INGEST_MARKETS" in env else ["-m", "services.trader_executor"]
    proc = spawn(args, env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert lines[0].startswith("tradestack: config error: ")


def test_metrics_port_in_use_is_a_clear_error(redis_url: str) -> None:
    port = free_port()
    first = spawn(["-m", "services.trader_executor"], {"REDIS_URL": redis_url, "METRICS_PORT": str(port)})
    try:
        wait_until(lambda: scrape(port), what="first executor serving")
        second = spawn(["-m", "services.trader_executor"], {"REDIS_URL": redis_url, "METRICS_PORT": str(port)})
        _, err = second.communicate(timeout=30)
        assert second.returncode == 2
        assert f"cannot serve /metrics on 127.0.0.1:{port}" in err.decode()
    finally:
        stop(first)


def test_unreachable_redis_degrades_without_a_traceback_flood() -> None:
    port, dead = free_port(), free_port()
    proc = spawn(["-m", "services.trader_executor"], {"REDIS_URL": f"redis://127.0.0.1:{dead}/0",
                                                       "METRICS_PORT": str(port)})
    try:
        wait_until(lambda: 'trader_executor_state{state="degraded"} 1.0' in scrape(port), what="degraded state")
        # Fail safe: with Redis away the kill switch counts as on.
        assert metric_value(scrape(port), "trader_executor_kill_switch") == 1.0
    finally:
        code, out, err = stop(proc)
    assert code == 0
    assert "Traceback" not in out + err
    unavailable = [line for line in out.splitlines() if '"redis_unavailable"' in line]
    assert len(unavailable) == 1, "one line per outage, not one per retry"
