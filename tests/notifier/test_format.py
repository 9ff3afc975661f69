"""Message texts: numbers as a person reads them, the late mark, /status on a phone, the settings."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

import pytest

from services.trader_notifier.app import format as fmt
from services.trader_notifier.app.service import Settings
from tests.notifier import T0
from tradestack.config import load_settings
from tradestack.errors import ConfigError


def test_numbers() -> None:
    assert fmt.amount(D("0.00100000")) == "0.001" and fmt.amount(D("0E-8")) == "0" and fmt.amount(D("1E+2")) == "100"
    assert fmt.price(D("60000.00")) == "60000" and fmt.price(D("0.0000123456789")) == "0.00001235"
    assert fmt.price(None) == "?"
    assert fmt.eur(D("-1.305")) == "-1.30" and fmt.eur(D("1.2"), signed=True) == "+1.20"
    assert fmt.eur(D("-0.001"), signed=True) == "0.00"
    assert fmt.pct(D("-2.1612")) == "-2.16%" and fmt.pct(D("5")) == "+5.00%" and fmt.pct(None) == "?"


def test_late_and_truncate() -> None:
    assert fmt.late(T0, T0 + 60_000) == ""
    assert fmt.late(T0, T0 + 60_001) == " (at 2023-11-14 22:13:20Z)"
    assert fmt.truncate("x" * 5000) == "x" * 4095 + "…"


def status(**over: object) -> dict:  # type: ignore[type-arg]
    base = {"services": {"trader_executor": {"alive": True, "mode": "paper"}, "trading_core": {"alive": False}},
            "kill_switch": True, "kill_reason": {"on": True, "reason": "telegram /kill", "by": "telegram:alice"},
            "pnl": {"equity": "1000.85", "daily_pnl": "0.85", "realized": "0", "unrealized": "0.85",
                    "drawdown_pct": "0"},
            "positions": {"BTC-EUR": {"size": "0.001", "avg_cost": "60150.000000000000000001", "mark": "61000",
                                      "unrealized": "0.85"}},
            "dlq": {"orders:shadow": 2}, "last_fill": None}
    base.update(over)
    return base


def test_status_text() -> None:
    text = fmt.status_text(status(), "paper")
    assert text.split("\n") == [
        "tradestack [paper] kill switch ON (telegram /kill, by telegram:alice)",
        "equity 1000.85 EUR, day +0.85, realized 0.00, unrealized +0.85, drawdown 0%",
        "positions (1):",
        "  BTC-EUR 0.001 avg 60150 mark 61000 unrealized +0.85",
        "services: 1/2 up (down: trading_core)",
        "dead letters: 2",
    ]
    quiet = fmt.status_text(status(kill_switch=False, positions={}, pnl={}, dlq={}, services={}), "paper")
    assert quiet.split("\n") == ["tradestack [paper, nothing running] kill switch off", "positions: none open",
                                 "services: 0/0 up"]
    many = {f"M{i}-EUR": {"size": "1", "avg_cost": "1", "mark": "1", "unrealized": "0"} for i in range(200)}
    assert len(fmt.status_text(status(positions=many), "paper")) == 4096


def test_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_IDS", "TELEGRAM_API_URL"):
        monkeypatch.delenv(name, raising=False)
    off = load_settings(Settings)
    assert not off.enabled and off.metrics_port == 9606 and off.telegram_api_url == "https://api.telegram.org"
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "")
    monkeypatch.setenv("TELEGRAM_CHAT_IDS", "")
    assert not load_settings(Settings).enabled  # .env.example's empty values: off
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:secret-token")
    with pytest.raises(ConfigError, match="TELEGRAM_CHAT_IDS") as err:
        load_settings(Settings)
    assert "secret-token" not in str(err.value)
    monkeypatch.setenv("TELEGRAM_CHAT_IDS", "111, -1001234567890")
    monkeypatch.setenv("TELEGRAM_API_URL", "http://127.0.0.1:8081/")
    on = load_settings(Settings)
    assert on.enabled and on.telegram_chat_ids == [111, -1001234567890]
    assert on.telegram_api_url == "http://127.0.0.1:8081" and "secret-token" not in repr(on)
    monkeypatch.setenv("TELEGRAM_CHAT_IDS", "alice")
    with pytest.raises(ConfigError, match="TELEGRAM_CHAT_IDS"):
        load_settings(Settings)


def test_every_setting_is_in_env_example_and_both_doors_open_the_same_main() -> None:
    import importlib
    import re

    from tests.conftest import ROOT

    documented = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))
    assert {f.upper() for f in Settings.model_fields} - documented == set()
    service = importlib.import_module("services.trader_notifier.app.service")
    for door in ("services.trader_notifier.__main__", "services.trader_notifier.app.__main__",
                 "services.trader_notifier.app.exports"):
        assert importlib.import_module(door).main is service.main
