"""The shipped Alertmanager config (deploy/alertmanager/alertmanager.yml) delivers to Telegram.

``amtool`` checks the file and its routes as shipped. Then a real ``prometheus-alertmanager`` runs on
loopback with that file, rendered only where a test must differ from a VPS: the Telegram API URL
(a fake Bot API in this process), the bot token, and the route timings (1 s instead of 10 s–1 m,
to keep the test short; the routing, grouping, receivers and message template are the shipped ones).
The alerts are posted to ``/api/v2/alerts`` as Prometheus posts them, built from the rules in
deploy/prometheus/alerts.yml with the external labels of deploy/prometheus/prometheus.yml.

Skipped when the binaries are missing (``./dev test`` installs Debian's prometheus-alertmanager).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.notifier.fake_telegram import TOKEN, FakeTelegram
from tradestack.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AMTOOL = shutil.which("amtool")
DEADLINE_S = 15.0


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule(name: str) -> dict[str, Any]:
    for group in load(ALERTS)["groups"]:
        for r in group["rules"]:
            if r.get("alert") == name:
                return dict(r)
    raise AssertionError(f"no rule {name} in {ALERTS}")


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def as_prometheus_posts(name: str, extra_labels: dict[str, str] | None = None, resolved: bool = False) -> dict[str, Any]:
    """One alert as Prometheus sends it: the rule's labels and annotations, ``alertname``, the external
    labels, ``startsAt``, ``endsAt`` (now + 4 × the resend delay while firing; the end when resolved)."""
    r = rule(name)
    labels = {**load(PROMETHEUS)["global"].get("external_labels", {}), **(r.get("labels") or {}),
              **(extra_labels or {}), "alertname": name}
    now = datetime.now(timezone.utc)
    starts = now - timedelta(minutes=2)
    labels = {k: str(v) for k, v in labels.items()}

    def expand(text: str) -> str:  # Prometheus expands {{ $labels.x }} and {{ $value }} before sending
        text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), text)
        return re.sub(r"\{\{\s*\$value[^}]*\}\}", "1", text)

    return {"labels": labels,
            "annotations": {k: expand(str(v)) for k, v in (r.get("annotations") or {}).items()},
            "startsAt": iso(starts), "endsAt": iso(now - timedelta(seconds=1) if resolved else now + timedelta(minutes=4)),
            "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=..."}


def render(api_url: str) -> dict[str, Any]:
    config = load(CONFIG)
    config.setdefault("global", {})["telegram_api_url"] = api_url
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
    for receiver in config["receivers"]:
        for tg in receiver.get("telegram_configs", []):
            tg["bot_token"] = TOKEN
    return config


# -- as shipped ----------------------------------------------------------------------------------


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (Debian: prometheus-alertmanager)")
def test_amtool_checks_the_shipped_config_and_its_routes() -> None:
    assert AMTOOL is not None
    check = subprocess.run([AMTOOL, "check-config", str(CONFIG)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

    def receiver(*labels: str) -> str:
        out = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={CONFIG}", *labels],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert receiver("alertname=TradestackKillSwitchOn", "severity=critical") == "telegram-critical"
    assert receiver("alertname=TradestackStreamLag", "severity=warning", "service=trading_core") == "telegram-warning"
    assert receiver("alertname=TradestackEntriesClaimed", "severity=info") == "null"


def test_every_rule_severity_has_a_route() -> None:
    severities = {str((r.get("labels") or {}).get("severity")) for g in load(ALERTS)["groups"] for r in g["rules"]}
    routed = {"critical", "warning", "info"}
    assert severities <= routed, f"alerts.yml uses severities {severities - routed} the Alertmanager does not route"
    config = load(CONFIG)
    critical = next(r for r in config["route"]["routes"] if r["matchers"] == ['severity="critical"'])
    assert critical["receiver"] == "telegram-critical" and critical["group_wait"] == "10s"


# -- a real Alertmanager -------------------------------------------------------------------------


@pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager not installed")
def test_kill_switch_alert_reaches_telegram(tmp_path: Path) -> None:
    assert ALERTMANAGER is not None
    asyncio.run(asyncio.wait_for(_kill_switch_alert_reaches_telegram(tmp_path), 30))


async def _wait_for(predicate: Any, what: str, timeout_s: float = DEADLINE_S) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)  # a poll interval, not a synchronisation


async def _kill_switch_alert_reaches_telegram(tmp_path: Path) -> None:
    fake = FakeTelegram()
    api_url = await fake.start()
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(render(api_url), allow_unicode=True, sort_keys=False))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        str(ALERTMANAGER), f"--config.file={config_file}", f"--storage.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=debug",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                if proc.returncode is not None:
                    raise AssertionError(f"alertmanager exited {proc.returncode}")
                try:
                    async with http.get(f"{base}/-/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await _wait_for(ready, "Alertmanager ready")
            kill = as_prometheus_posts("TradestackKillSwitchOn")
            degraded = as_prometheus_posts("TradestackProcessDegraded", {"service": "trader_executor",
                                                                         "unit": "tradestack-executor.service"})
            claimed = as_prometheus_posts("TradestackEntriesClaimed", {"service": "trading_core",
                                                                      "stream": "signals:baseline"})
            async with http.post(f"{base}/api/v2/alerts", json=[kill, degraded, claimed]) as resp:
                assert resp.status == 200, await resp.text()

            async def delivered() -> list[Any]:
                return [s for s in fake.sent if "TradestackKillSwitchOn" in s.text]

            first = (await _wait_for(delivered, "the kill-switch alert on Telegram"))[0]
            assert first.chat_id == -1001234567890
            assert "🚨 FIRING: TradestackKillSwitchOn" in first.text
            assert "Kill switch is on" in first.text and "tradestack kill off" in first.text
            assert first.payload.get("parse_mode", "") == ""  # plain text
            assert str(first.payload.get("disable_notification", "false")).lower() == "false"  # critical pages

            async def warning() -> list[Any]:
                return [s for s in fake.sent if "TradestackProcessDegraded" in s.text]

            warned = (await _wait_for(warning, "the warning on Telegram"))[0]
            assert "⚠️ FIRING: TradestackProcessDegraded (trader_executor)" in warned.text
            assert "trader_executor is degraded" in warned.text and "{{" not in warned.text
            assert str(warned.payload.get("disable_notification")).lower() == "true"  # a warning is silent

            async with http.get(f"{base}/api/v2/alerts") as resp:
                routed = {a["labels"]["alertname"]: [r["name"] for r in a["receivers"]] for a in await resp.json()}
            assert routed == {"TradestackKillSwitchOn": ["telegram-critical"],
                              "TradestackProcessDegraded": ["telegram-warning"],
                              "TradestackEntriesClaimed": ["null"]}

            # resolved: the same alert with an end in the past
            async with http.post(f"{base}/api/v2/alerts",
                                 json=[as_prometheus_posts("TradestackKillSwitchOn", resolved=True)]) as resp:
                assert resp.status == 200

            async def resolved() -> list[Any]:
                return [s for s in fake.sent if s.text.startswith("✅ RESOLVED: TradestackKillSwitchOn")]

            await _wait_for(resolved, "the resolved message")
        assert not [s for s in fake.sent if "TradestackEntriesClaimed" in s.text], "info alerts are not sent"
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        await fake.stop()
    assert b"level=error" not in err or b"notify" not in err, err.decode()[-2000:]
