"""The executor's mode gates: paper by default, sandbox with credentials, live only when every gate
holds, else one line naming each missing gate (DESIGN §3)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from services.trader_executor.app.gates import resolve_mode
from tradestack.config import BITVAVO_REST_URL, BITVAVO_WS_URL
from tradestack.errors import ConfigError

NOW = 1_800_000_000_000
KEY = "k" * 64


def settings(tmp_path: Path, **over: Any) -> SimpleNamespace:
    secrets = tmp_path / ".env"
    if not secrets.exists():
        secrets.write_text("BITVAVO_API_KEY=...\n")
        secrets.chmod(0o600)
    base: dict[str, Any] = dict(
        dry_run=False, bitvavo_rest_url=BITVAVO_REST_URL, bitvavo_ws_url=BITVAVO_WS_URL,
        bitvavo_api_key=SecretStr(KEY), bitvavo_api_secret=SecretStr("s" * 64), bitvavo_operator_id=7,
        enable_live_trading=True, live_allowed_markets=["BTC-EUR"], secrets_file=str(secrets),
        live_max_order_notional_eur=50, live_max_total_notional_eur=200,
        golive_record=str(tmp_path / "golive.json"), golive_max_age_hours=24.0)
    base.update(over)
    ns = SimpleNamespace(**base)
    ns.mode = "paper" if ns.dry_run else ("live" if ns.bitvavo_rest_url == BITVAVO_REST_URL else "sandbox")
    return ns


def record(tmp_path: Path, approvers: list[str], age_h: float = 1.0, passed: bool = True) -> None:
    (tmp_path / "golive.json").write_bytes(orjson.dumps({
        "approved_by": approvers, "preflight_passed": passed, "created_ms": NOW - int(age_h * 3_600_000)}))


def test_paper_is_the_default_and_needs_nothing(tmp_path: Path) -> None:
    assert resolve_mode(settings(tmp_path, dry_run=True, bitvavo_api_key=None), NOW) == "paper"


def test_sandbox_needs_credentials_and_names_what_is_missing(tmp_path: Path) -> None:
    s = settings(tmp_path, bitvavo_rest_url="http://127.0.0.1:8999/v2", bitvavo_operator_id=None,
                 bitvavo_api_secret=None)
    with pytest.raises(ConfigError) as err:
        resolve_mode(s, NOW)
    text = str(err.value)
    assert "BITVAVO_API_SECRET" in text and "BITVAVO_OPERATOR_ID" in text and "\n" not in text
    ok = settings(tmp_path, bitvavo_rest_url="http://127.0.0.1:8999/v2")
    assert resolve_mode(ok, NOW) == "sandbox"


def test_live_with_every_gate(tmp_path: Path) -> None:
    record(tmp_path, ["alice", "bob"])
    assert resolve_mode(settings(tmp_path), NOW) == "live"


def test_live_refused_naming_every_missing_gate(tmp_path: Path) -> None:
    secrets = tmp_path / ".env"
    secrets.write_text("x")
    secrets.chmod(0o644)
    s = settings(tmp_path, enable_live_trading=False, live_allowed_markets=[], bitvavo_api_key=SecretStr("short"),
                 live_max_total_notional_eur=None)
    with pytest.raises(ConfigError) as err:
        resolve_mode(s, NOW)
    text = str(err.value)
    for gate in ("ENABLE_LIVE_TRADING", "LIVE_ALLOWED_MARKETS", "64", "readable by others", "LIVE_MAX_TOTAL",
                 "no go-live record"):
        assert gate in text, gate
    assert "\n" not in text


@pytest.mark.parametrize("approvers,age_h,passed,needle", [
    (["alice", "Alice "], 1.0, True, "1 distinct approver"),
    (["alice", "bob"], 48.0, True, "h old"),
    (["alice", "bob"], 1.0, False, "preflight"),
])
def test_a_go_live_record_must_be_fresh_passed_and_four_eyes(tmp_path: Path, approvers: list[str], age_h: float,
                                                            passed: bool, needle: str) -> None:
    record(tmp_path, approvers, age_h, passed)
    with pytest.raises(ConfigError, match=needle):
        resolve_mode(settings(tmp_path), NOW)


def test_a_missing_secrets_file_blocks_live(tmp_path: Path) -> None:
    record(tmp_path, ["alice", "bob"])
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_mode(settings(tmp_path, secrets_file=str(tmp_path / "nope")), NOW)
    assert os.path.exists(tmp_path / ".env")
