"""`tradestack golive`: two different approvers and a passing preflight, or no record; the record it
writes is one the executor's live gate accepts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import orjson
import pytest
import redis
from pydantic import SecretStr

from services.trader_executor.app.gates import resolve_mode
from services.trader_executor.app.service import Settings as ExecutorSettings
from tests.ops.fakes import HealthyStack, context, secrets_file
from tradestack import streams
from tradestack.cli import main
from tradestack.config import load_settings
from tradestack.embedded_redis import EmbeddedRedis
from tradestack.ops.golive import Refused, distinct_approvers, golive


@pytest.fixture
def own_client(own_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


def test_two_names_of_one_person_are_one_approver() -> None:
    assert distinct_approvers(["Alice", "bob", " alice "]) == ["Alice", "bob"]
    for names in (["alice"], ["Alice", " ALICE "], ["alice", "  "]):
        with pytest.raises(Refused, match="two different approvers"):
            distinct_approvers(names)


def test_golive_refuses_one_approver_or_the_same_person_twice_before_any_check(
        redis_url: str, rclient: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GOLIVE_RECORD", str(tmp_path / "golive.json"))
    for argv in (["--approved-by", "alice"], ["--approved-by", "alice", "--approved-by", " Alice"]):
        assert main(["golive", *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "golive refused: two different approvers are required" in err[0]
    assert not (tmp_path / "golive.json").exists()
    assert rclient.get(streams.KILL) is None and rclient.get(streams.KILL_REASON) is None  # no kill-switch test ran


def test_golive_refuses_when_the_preflight_fails(rclient: redis.Redis, tmp_path: Path) -> None:
    ctx = context(rclient, tmp_path, secrets=secrets_file(tmp_path, 0o644))
    with pytest.raises(Refused) as refused:
        golive(ctx, ["alice", "bob"], "none")
    assert "preflight failed" in str(refused.value) and "secrets_file" in str(refused.value)
    assert refused.value.report is not None and not refused.value.report.passed
    assert not (tmp_path / "golive").exists()


def test_golive_writes_a_dated_record_the_executor_accepts_for_live(own_client: redis.Redis, tmp_path: Path) -> None:
    fake = HealthyStack(own_client)
    try:
        report, paths = golive(context(own_client, tmp_path), [" Alice ", "Bob"], "first week: 50 EUR per order")
    finally:
        fake.close()
    assert report.passed
    record_path = tmp_path / "golive" / "golive.json"
    assert record_path in paths and record_path.with_suffix(".md") in paths
    dated = [p for p in paths if p.name.startswith("golive-") and p.suffix == ".json"]
    assert len(dated) == 1 and dated[0].read_bytes() == record_path.read_bytes()
    record = orjson.loads(record_path.read_bytes())
    assert record["approved_by"] == ["Alice", "Bob"] and record["preflight_passed"] is True
    assert record["risks"] == "first week: 50 EUR per order" and record["git"]["commit"]
    assert record["limits"]["guards"][0]["method"] == "KillSwitch" and "risk_value" in record["limits"]["risk"]
    assert any(c["name"] == "kill_switch" and c["status"] == "pass" for c in record["preflight"]["checks"])
    markdown = record_path.with_suffix(".md").read_text()
    assert "approved by: Alice, Bob" in markdown and "## Guard chain" in markdown and "| ok | kill_switch |" in markdown

    live = load_settings(ExecutorSettings, dry_run=False, enable_live_trading=True, live_allowed_markets=["BTC-EUR"],
                         bitvavo_api_key=SecretStr("k" * 64), bitvavo_api_secret=SecretStr("s" * 64),
                         bitvavo_operator_id=7, secrets_file=str(secrets_file(tmp_path)),
                         live_max_order_notional_eur=50, live_max_total_notional_eur=200,
                         golive_record=str(record_path))
    assert resolve_mode(live, int(time.time() * 1000)) == "live"
