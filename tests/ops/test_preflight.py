"""`tradestack preflight`: each check fails with its fix on the fault it guards against, and the whole
checklist passes on a healthy stack (heartbeats and fake /metrics servers that follow the switch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.ops.fakes import FakeMetrics, HealthyStack, beat, context, fill_stack, follows_key, secrets_file
from tradestack import streams
from tradestack.embedded_redis import EmbeddedRedis
from tradestack.ops import preflight as pf
from tradestack.ops.processes import NAMES


@pytest.fixture
def own_client(own_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


@pytest.fixture
def stack(own_client: redis.Redis) -> Iterator[HealthyStack]:
    fake = HealthyStack(own_client)
    yield fake
    fake.close()


def only(results: list[pf.Result], name: str) -> pf.Result:
    (result,) = [r for r in results if r.name == name]
    return result


def test_a_healthy_stack_passes_every_row_and_the_switch_is_restored(own_client: redis.Redis, stack: HealthyStack,
                                                                     tmp_path: Path) -> None:
    own_client.set(streams.KILL, "0")
    own_client.set(streams.KILL_REASON, b'{"on": false, "reason": "before"}')
    report = pf.run_preflight(context(own_client, tmp_path))
    assert report.passed, pf.format_report(report)
    assert report.rows()[pf.KILL] == "pass" and set(report.rows()) == set(pf.ROWS)
    kill = only(report.results, "kill_switch")
    assert f"{len(NAMES)} services showed it within" in kill.detail
    assert own_client.get(streams.KILL) == b"0"
    assert own_client.get(streams.KILL_REASON) == b'{"on": false, "reason": "before"}'
    as_json = report.to_json()
    assert as_json["passed"] is True and {c["name"] for c in as_json["checks"]} >= {"compile", "dashboards", "ingest"}
    json.dumps(as_json)


def test_a_world_readable_secrets_file_fails_with_chmod(rclient: redis.Redis, tmp_path: Path) -> None:
    loose = secrets_file(tmp_path, 0o644)
    (result,) = pf.check_secrets_file(context(rclient, tmp_path, secrets=loose))
    assert result.status == "fail" and "mode 644" in result.detail and result.fix == f"chmod 600 {loose}"
    (ok,) = pf.check_secrets_file(context(rclient, tmp_path))
    assert ok.status == "pass"


def test_an_evicting_redis_fails_with_the_setting(rclient: redis.Redis, tmp_path: Path) -> None:
    before = rclient.config_get("maxmemory-policy")["maxmemory-policy"]
    rclient.config_set("maxmemory-policy", "allkeys-lru")
    try:
        (result,) = pf.check_redis_eviction(context(rclient, tmp_path))
    finally:
        rclient.config_set("maxmemory-policy", before)
    assert result.status == "fail" and "allkeys-lru" in result.detail
    assert "maxmemory-policy noeviction" in result.fix


def test_redis_without_aof_or_memory_to_spare_fails(rclient: redis.Redis, tmp_path: Path) -> None:
    ctx = context(rclient, tmp_path)
    (aof,) = pf.check_redis_aof(ctx)  # the test Redis runs without AOF
    assert aof.status == "fail" and "appendonly yes" in aof.fix
    used = int(rclient.info("memory")["used_memory"])
    rclient.config_set("maxmemory", str(int(used / 0.8)))
    try:
        (memory,) = pf.check_redis_memory(ctx)
    finally:
        rclient.config_set("maxmemory", "0")
    assert memory.status == "fail" and "of maxmemory" in memory.detail and "maxmemory" in memory.fix


def test_a_service_without_heartbeat_is_down_with_how_to_start_it(rclient: redis.Redis, tmp_path: Path) -> None:
    server = FakeMetrics("trader_executor", lambda: 0)
    try:
        beat(rclient, "trader_executor", server.port)
        beat(rclient, "trading_core", server.port, state="degraded")
        results = pf.check_services(context(rclient, tmp_path))
    finally:
        server.close()
    assert only(results, "service:trader_executor").status == "pass"
    core = only(results, "service:trading_core")
    assert core.status == "fail" and "degraded" in core.detail
    pnl = only(results, "service:trader_pnl_orchestrator")
    assert pnl.status == "fail" and "no heartbeat" in pnl.detail
    assert "systemctl start tradestack-pnl-orchestrator" in pnl.fix and pnl.row == pf.EXEC_PNL


def test_a_service_whose_metrics_do_not_answer_fails(rclient: redis.Redis, tmp_path: Path, free_tcp_port: int) -> None:
    beat(rclient, "trader_executor", free_tcp_port)  # nothing listens there
    result = pf.check_service(context(rclient, tmp_path), "trader_executor")
    assert result.status == "fail" and "does not answer" in result.detail and "METRICS_PORT" in result.fix


def test_a_service_that_never_shows_the_kill_switch_fails_it_and_the_switch_is_restored(
        rclient: redis.Redis, tmp_path: Path) -> None:
    good, deaf = FakeMetrics("trader_executor", follows_key(rclient)), FakeMetrics("trading_core", lambda: 0)
    try:
        beat(rclient, "trader_executor", good.port)
        beat(rclient, "trading_core", deaf.port)
        (result,) = pf.check_kill_switch(context(rclient, tmp_path))
    finally:
        good.close()
        deaf.close()
    assert result.status == "fail" and "trading_core: not seen within 0.3 s" in result.detail
    assert "trader_executor" in result.detail and "KILL_POLL_MS" in result.fix
    assert rclient.get(streams.KILL) is None and rclient.get(streams.KILL_REASON) is None


def test_the_kill_switch_already_on_is_left_on_and_fails(rclient: redis.Redis, tmp_path: Path) -> None:
    rclient.set(streams.KILL, "1")
    (result,) = pf.check_kill_switch(context(rclient, tmp_path))
    assert result.status == "fail" and "already on" in result.detail and "tradestack kill off" in result.fix
    assert rclient.get(streams.KILL) == b"1"


def test_restore_leaves_a_switch_someone_else_set_during_the_test(rclient: redis.Redis) -> None:
    rclient.set(streams.KILL, "1")
    rclient.set(streams.KILL_REASON, b'{"reason": "daily loss limit"}')  # the PnL breaker, meanwhile
    note = pf.restore_kill(rclient, b'{"test": "ours"}', None, None)
    assert "someone else" in note and rclient.get(streams.KILL) == b"1"


def test_no_recent_ingest_signal_or_decision_fails(rclient: redis.Redis, tmp_path: Path) -> None:
    ctx = context(rclient, tmp_path)
    rclient.xadd(streams.TICKER24H, {"type": "x", "data": "{}"}, id="1000-0")  # 1970: stale
    (ingest,) = pf.check_ingest(ctx)
    assert ingest.status == "fail" and "bitvavo:ticker24h" in ingest.detail and "bitvavo:book" in ingest.detail
    (signals,) = pf.check_signals(ctx)
    assert signals.status == "fail" and "signal engine" in signals.fix
    (dry,) = pf.check_dry_run(ctx)
    assert dry.status == "fail" and "DRY_RUN=true" in dry.fix
    fill_stack(rclient)
    rclient.xadd(streams.TICKER24H, {"type": "x", "data": "{}"})
    ctx = context(rclient, tmp_path)
    assert [r.status for f in (pf.check_ingest, pf.check_signals, pf.check_dry_run) for r in f(ctx)] == ["pass"] * 3


def test_dead_letters_warn_and_growing_ones_fail(rclient: redis.Redis, tmp_path: Path) -> None:
    rclient.xadd(streams.dlq(streams.ORDERS_SHADOW), {"error": "bad"})
    ctx = context(rclient, tmp_path)
    ctx.take_baseline()
    (held,) = pf.check_dlq(ctx)
    assert held.status == "warn" and "orders:shadow:dlq 1" in held.detail
    ctx = context(rclient, tmp_path)
    ctx.take_baseline()
    rclient.xadd(streams.dlq(streams.ORDERS_EXECUTED), {"error": "bad"})
    (grown,) = pf.check_dlq(ctx)
    assert grown.status == "fail" and "orders:executed:dlq 0 → 1" in grown.detail


def test_live_gates_are_information_in_paper_and_block_when_aiming_at_live(rclient: redis.Redis, tmp_path: Path) -> None:
    (paper,) = pf.check_live_gates(context(rclient, tmp_path))
    assert paper.status == "info" and "ENABLE_LIVE_TRADING is not true" in paper.detail
    live = context(rclient, tmp_path, overrides={"dry_run": False})
    assert live.aim == "live"
    (gates,) = pf.check_live_gates(live)
    assert gates.status == "fail" and "no go-live record" in gates.detail
    live.expect_record = True  # golive: the record is about to be written
    assert "go-live record" not in pf.check_live_gates(live)[0].detail
    (switch,) = pf.check_live_switch(live)
    assert switch.status == "pass"
    rclient.set(streams.KILL, "1")
    (switch,) = pf.check_live_switch(live)
    assert switch.status == "fail" and "kill off" in switch.fix


def test_parquet_dir_missing_and_broken_dashboards_fail(rclient: redis.Redis, tmp_path: Path) -> None:
    ctx = context(rclient, tmp_path, overrides={"parquet_dir": str(tmp_path / "nope")})
    (parquet,) = pf.check_parquet_dir(ctx)
    assert parquet.status == "fail" and "mkdir -p" in parquet.fix
    boards = tmp_path / "deploy" / "grafana" / "dashboards"
    boards.mkdir(parents=True)
    (boards / "broken.json").write_text("{")
    ctx.root = tmp_path
    (dash,) = pf.check_dashboards(ctx)
    assert dash.status == "fail" and "broken.json" in dash.detail


def test_unreachable_redis_fails_every_redis_row_without_raising(tmp_path: Path) -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    report = pf.run_preflight(context(client, tmp_path), only=["redis", "services", "kill_switch", "ingest"])
    assert [r.status for r in report.results] == ["fail"] * 4
    assert "start Redis" in report.results[0].fix and not report.passed


def test_the_operator_acl_user_can_run_the_preflight(own_client: redis.Redis, stack: HealthyStack,
                                                     own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """deploy/redis/users.acl's `operator` (no CONFIG, no WATCH): INFO for Redis's health, and the
    kill-switch test restores with a checked MULTI."""
    from tests.test_deploy_files import REDIS_DIR, acl_for, server_version

    line = next(ln for ln in acl_for(server_version(own_redis.binary)).splitlines() if ln.startswith("user operator "))
    own_client.execute_command("ACL", "SETUSER", *line.split()[1:])
    password = next(p[1:] for p in line.split() if p.startswith(">"))
    operator = redis.Redis(port=own_redis.port, username="operator", password=password)
    try:
        report = pf.run_preflight(context(operator, tmp_path), only=[
            "redis", "redis_memory", "redis_eviction", "redis_aof", "services", "executor_pnl", "signals", "dry_run",
            "kill_switch", "live_switch", "ingest", "dlq"])
    finally:
        operator.close()
    assert report.passed, pf.format_report(report)
    assert own_client.get(streams.KILL) is None and (REDIS_DIR / "users.acl").exists()
