"""Settings: every variable documented in .env.example, safe defaults, lists parsed, bad values named."""

from __future__ import annotations

import importlib
import re

import pytest

from tests.conftest import ROOT
from tradestack.config import CommonSettings, load_settings
from tradestack.errors import ConfigError

SETTINGS_CLASSES = [
    "tradestack.config:CommonSettings",
    "ingest.ticker24h:Settings", "ingest.orderbook:Settings", "ingest.candles:Settings",
    "services.trader_universe_selector.app.service:Settings", "services.trader_signal_engine.app.service:Settings",
    "services.trading_core.trading_core.service:Settings", "services.trader_executor.app.service:Settings",
    "services.trader_pnl_orchestrator.app.service:Settings",
]


def load_class(path: str) -> type[CommonSettings]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def test_env_example_documents_every_setting_with_a_comment() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    missing = {}
    for path in SETTINGS_CLASSES:
        for field in load_class(path).model_fields:
            if field.upper() not in documented:
                missing.setdefault(path, []).append(field.upper())
    assert not missing, f".env.example lacks: {missing}"
    # Every variable belongs to a group of lines headed by a comment.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z][A-Z0-9_]+=", line):
            j = i - 1
            while j >= 0 and re.match(r"^[A-Z][A-Z0-9_]+=", lines[j]):
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f"{line!r} has no comment above its group"


def test_defaults_are_safe(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # no .env here
    s = CommonSettings()
    assert s.dry_run is True and s.enable_live_trading is False and s.live_allowed_markets == []
    assert s.metrics_addr == "127.0.0.1" and s.mode == "paper" and s.bitvavo_api_key is None


def test_lists_come_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVE_ALLOWED_MARKETS", "BTC-EUR, ETH-EUR")
    assert load_settings(CommonSettings).live_allowed_markets == ["BTC-EUR", "ETH-EUR"]


def test_mode_follows_the_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRY_RUN", "false")
    monkeypatch.setenv("BITVAVO_REST_URL", "http://127.0.0.1:9999/v2")
    assert load_settings(CommonSettings).mode == "sandbox"
    monkeypatch.setenv("BITVAVO_REST_URL", "https://api.bitvavo.com/v2")
    assert load_settings(CommonSettings).mode == "live"


def test_secrets_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITVAVO_OPERATOR_ID", "not-a-number")
    monkeypatch.setenv("BITVAVO_API_SECRET", "s3cret")
    with pytest.raises(ConfigError) as err:
        load_settings(CommonSettings)
    assert "BITVAVO_OPERATOR_ID" in str(err.value) and "s3cret" not in str(err.value)
