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
from hypothesis import given, settings

from tests.conftest import ROOT, spawn, wait_until
from tests.test_messages import message_strategy
from tradestack import messages
from tradestack.cli import PROCESSES
from tradestack.embedded_redis import free_port

COMMANDS = [
    *PROCESSES,  # every process of DESIGN §1, as `tradestack up` starts them
    # The runbook's forms
    ("trader_signal_engine", ["-m", "services.trader_signal_engine.app"]),
    ("trader_executor", ["-m", "services.trader_executor.app"]),
    ("trader_pnl_orchestrator", ["-m", "services.trader_pnl_orchestrator.app"]),
    ("trader_universe_selector", ["-m", "services.trader_universe_selector.app"]),
    ("trader_notifier", ["-m", "services.trader_notifier.app"]),
]

PREFIX = {
    "ingest_ticker24h": "trader_ingest", "ingest_orderbook": "trader_ingest", "ingest_candles": "trader_ingest",
    "trader_universe_selector": "trader_universe", "trader_signal_engine": "trader_signal_engine",
    "trading_core": "trader_trading_core", "trader_executor": "trader_executor", "trader_pnl_orchestrator": "trader_pnl",
    "trader_notifier": "trader_notifier",
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
        assert beat["pid"] == proc.pid and beat["metrics_port"] == port  # this process wrote it, not a leftover
        assert beat["service"] == service and beat["mode"] == "paper" and beat["dry_run"] is True
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
    from tests.core import MARKETS_JSON
    from tests.core import signal as make_signal
    from tradestack import streams
    from tradestack.messages import encode

    client = redis.Redis.from_url(redis_url)
    client.set(streams.MARKETS, json.dumps({"fetched_ms": 1, "markets": MARKETS_JSON}))
    client.xadd(streams.SIGNALS_BASELINE, encode(make_signal(1, "BTC-EUR", "60000")))
    proc = spawn(["-m", "services.trading_core", "--once"],
                 {"REDIS_URL": redis_url, "BITVAVO_REST_URL": "http://127.0.0.1:1/v2"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines if "event" in line]
    assert events[0] == "service_started_once" and events[-1] == "service_stopped", events
    summary, = [line for line in lines if "event" not in line]
    assert summary["decisions"] == {"accepted": 1}
    assert client.xlen(streams.ORDERS_SIGNALS) == 1
    assert client.xpending(streams.SIGNALS_BASELINE, "trading_core")["pending"] == 0
    client.close()


def test_trading_core_without_market_rules_stops_with_one_line(redis_url: str) -> None:
    """No /markets and no cached copy: nothing can be sized or rounded, so the core refuses to start."""
    proc = spawn(["-m", "services.trading_core", "--once"],
                 {"REDIS_URL": redis_url, "BITVAVO_REST_URL": "http://127.0.0.1:1/v2"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert b"Traceback" not in out + err
    assert "no market rules" in err.decode().strip().splitlines()[-1]


def test_trading_core_once_without_redis_fails() -> None:
    """--once is a smoke test: it must not report success when it could not reach Redis."""
    proc = spawn(["-m", "services.trading_core", "--once"],
                 {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_SOCKET_TIMEOUT_S": "1"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, out.decode() + err.decode()
    assert b'"redis_unavailable"' in out and b"Traceback" not in out + err


def test_runbook_compile_check_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "compileall", "-q", "services/trading_core/trading_core",
                             "services/trader_signal_engine/app", "services/trader_executor/app",
                             "services/trader_pnl_orchestrator/app", "services/trader_universe_selector/app"],
                            cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_exports_are_thin_doors() -> None:
    import importlib

    from services import trading_core
    from services.trading_core.trading_core import executor as core_executor
    from services.trading_core.trading_core import service as core_service
    from tradestack import streams

    known_streams = {v for k, v in vars(streams).items() if k.isupper() and isinstance(v, str)}

    def known(names: list[str]) -> bool:
        return all(n in known_streams or n.startswith(streams.CANDLES_PREFIX) for n in names)

    # Every door (package, `python -m` forms, exports) leads to the one implementation.
    for name in ("trader_signal_engine", "trader_executor", "trader_pnl_orchestrator", "trader_universe_selector"):
        impl = importlib.import_module(f"services.{name}.app.service")
        exports = importlib.import_module(f"services.{name}.app.exports")
        for door in (f"services.{name}.__main__", f"services.{name}.app.__main__", f"services.{name}.app.exports"):
            assert importlib.import_module(door).main is impl.main, door
        assert exports.NAME == impl.NAME == name  # the heartbeat key and consumer group
        assert (exports.READS, exports.WRITES, exports.KEYS) == (impl.READS, impl.WRITES, impl.KEYS)
        assert known(exports.READS + exports.WRITES + exports.KEYS), (name, exports.READS, exports.WRITES)
    se_exports = importlib.import_module("services.trader_signal_engine.app.exports")
    assert se_exports.SIGNAL_STREAM == streams.SIGNALS_BASELINE and se_exports.WRITES == [streams.SIGNALS_BASELINE]

    assert trading_core.main is core_service.main and core_service.NAME == "trading_core"
    assert importlib.import_module("services.trading_core.__main__").main is core_service.main
    assert known(core_service.READS + core_service.WRITES + core_service.KEYS)
    assert trading_core.Decision is messages.DecisionMade and trading_core.Intent is messages.EntryIntent
    assert trading_core.Executor is core_executor.Executor and trading_core.Metrics is core_service.Metrics
    registry = trading_core.Metrics().registry
    assert registry.get_sample_value("trader_trading_core_kill_switch") == 0.0  # the standard set, prefixed
    assert any(m.name == "trader_trading_core_decisions" for m in registry.collect())


@settings(max_examples=20, deadline=None)
@given(message_strategy(messages.EntryIntent))
def test_preset_intents_travel_as_entry_intents(entry: messages.EntryIntent) -> None:
    from services import trading_core

    fields = {k: v for k, v in entry.model_dump().items() if k != "strategy"}
    for cls, strategy in ((trading_core.MomentumIntent, "momentum"), (trading_core.MeanReversionIntent, "mean_reversion")):
        wire = messages.encode(cls(**fields))
        back = messages.decode(wire)
        assert wire[b"type"] == b"intent.entry" and type(back) is messages.EntryIntent
        assert back == messages.EntryIntent(**fields, strategy=strategy)


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
    # The universe selector: a service that needs nothing from the exchange to keep running.
    first = spawn(["-m", "services.trader_universe_selector"], {"REDIS_URL": redis_url, "METRICS_PORT": str(port)})
    try:
        wait_until(lambda: scrape(port), what="first selector serving")
        second = spawn(["-m", "services.trader_universe_selector"], {"REDIS_URL": redis_url,
                                                                     "METRICS_PORT": str(port)})
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
