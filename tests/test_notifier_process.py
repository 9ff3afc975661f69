"""The notifier as a process on a real Redis, talking to a fake Telegram Bot API on loopback
(tests/notifier/fake_telegram.py): fills, a closed position's PnL and a stop failure arrive as
messages; a burst of 50 events arrives batched, within one message a second per chat; /kill from a
configured chat sets the switch in the format every writer uses, with the sender as author; /kill
from anyone else changes nothing and gets no answer; /status answers. Without a token it idles."""

from __future__ import annotations

import re
import signal
import urllib.request
from typing import Iterator

import orjson
import pytest
import redis

from tests.conftest import spawn, wait_until
from tests.notifier import event, fill
from tests.notifier.fake_telegram import TOKEN, FakeTelegramThread
from tests.test_trading_core_process import messages, stop
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import TradingEvent, encode

NOTIFIER = ["-m", "services.trader_notifier"]
CHAT, GROUP, STRANGER = 111, -100222, 999


@pytest.fixture
def telegram() -> Iterator[FakeTelegramThread]:
    fake = FakeTelegramThread()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def notifier_env(redis_url: str, api_url: str, port: int, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "METRICS_PORT": str(port), "LEASE_TTL_MS": "1000", "DRY_RUN": "true",
            "TELEGRAM_API_URL": api_url, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_IDS": f"{CHAT},{GROUP}",
            "TELEGRAM_POLL_TIMEOUT_S": "5", "NOTIFIER_KILL_POLL_S": "0.1", "HEARTBEAT_EVERY_S": "0.5", **extra}


def metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def running(client: redis.Redis) -> bool:
    return b'"running"' in (client.get(streams.heartbeat("trader_notifier")) or b"")


def test_notifier_tells_commands_and_limits(redis_url: str, rclient: redis.Redis, telegram: FakeTelegramThread) -> None:
    api = telegram.api
    port = free_port()
    proc = spawn(NOTIFIER, notifier_env(redis_url, telegram.url, port))
    try:
        wait_until(lambda: running(rclient), what="the notifier running")
        wait_until(lambda: any("notifier started [paper]" in t for t in api.texts(CHAT)), what="the start message")

        # an entry fill and a stop that could not be placed; then the position closed by the stop
        now = int(rclient.time()[0]) * 1000
        rclient.xadd(streams.ORDERS_EXECUTED, encode(fill("pos-1", "buy", "0.001", "60", fee="0.15", ts=now)))
        rclient.xadd(streams.TRADING_EVENTS, encode(event(
            "stop_failed", "critical", "BTC-EUR: the stop could not be placed (3 tries): selling 0.001 at market",
            ts=now)))
        rclient.xadd(streams.ORDERS_EXECUTED, encode(fill("pos-1", "sell", "0.001", "59", fee="0.15", ts=now + 1,
                                                          purpose="emergency", reason="emergency")))
        wait_until(lambda: "realized PnL" in "\n".join(api.texts(CHAT)), what="the three notes")
        told = "\n".join(api.texts(CHAT))
        assert "🟢 BTC-EUR position opened: bought 0.001 @ 60000 (60.00 EUR, fee 0.15 EUR) [paper]" in told
        assert "🚨 stop_failed: BTC-EUR: the stop could not be placed" in told
        assert "🔻 BTC-EUR position closed (emergency): sold 0.001 @ 59000 (entry 60000); " \
               "realized PnL -1.30 EUR (-2.16%) [paper]" in told
        wait_until(lambda: "\n".join(api.texts(GROUP)) == told, what="the same in the group")  # every chat hears it

        # a burst of 50 events: batched, in order, never more than one message a second per chat
        before = len(api.texts(CHAT))
        for i in range(50):
            rclient.xadd(streams.TRADING_EVENTS, encode(event("order_missing", "critical", f"burst {i:02d}", ts=now + i)))
        wait_until(lambda: "burst 49" in "\n".join(api.texts(CHAT)), what="the whole burst")
        burst = api.texts(CHAT)[before:]
        lines = [line for text in burst for line in text.split("\n") if "burst" in line]
        assert lines == [f"🚨 order_missing: burst {i:02d}" for i in range(50)]
        assert len(burst) <= 3, burst

        # /kill from a stranger: nothing changes, no answer
        telegram.push(STRANGER, "/kill", user_id=666, username="mallory")
        wait_until(lambda: metric(port, "trader_notifier_commands_total", command="kill", outcome="unauthorized") == 1,
                   what="the stranger's /kill seen")
        assert rclient.get(streams.KILL) is None and rclient.get(streams.KILL_REASON) is None
        assert api.texts(STRANGER) == []

        # /kill from a configured chat: the switch, its reason with the sender, an event, an answer
        telegram.push(CHAT, "/kill", user_id=42, username="alice")
        wait_until(lambda: rclient.get(streams.KILL) == b"1", what="the kill switch set")
        why = orjson.loads(rclient.get(streams.KILL_REASON) or b"{}")
        assert {k: why[k] for k in ("on", "reason", "by")} == {"on": True, "reason": "telegram /kill",
                                                                "by": "telegram:alice"}
        assert isinstance(why["ts"], int) and abs(why["ts"] - now) < 60_000
        kill_events = [m for m in messages(rclient, streams.TRADING_EVENTS)
                       if isinstance(m, TradingEvent) and m.kind == "kill_switch"]
        assert [(e.severity, e.details["by"], e.details["on"]) for e in kill_events] == \
            [("critical", "telegram:alice", "true")]
        wait_until(lambda: any("Kill switch ON (telegram /kill, by telegram:alice)" in t for t in api.texts(CHAT)),
                   what="the answer to /kill")
        wait_until(lambda: any("🛑 Kill switch ON: telegram /kill (by telegram:alice)" in t for t in api.texts(GROUP)),
                   what="the switch told to the other chat")

        # /status
        rclient.hset(streams.PNL, mapping={"equity": "998.70", "daily_pnl": "-1.30", "realized": "-1.30",
                                           "unrealized": "0", "drawdown_pct": "0.13"})
        telegram.push(CHAT, "/status")
        wait_until(lambda: any(t.startswith("tradestack [") for t in api.texts(CHAT)), what="the /status answer")
        status = next(t for t in api.texts(CHAT) if t.startswith("tradestack ["))
        assert "kill switch ON (telegram /kill, by telegram:alice)" in status
        assert "equity 998.70 EUR, day -1.30" in status and "positions: none open" in status
        assert not any(t.startswith("tradestack [") for t in api.texts(GROUP))  # an answer goes to the asker only

        # the limits held all along: one message a second per chat (seen at the fake: arrival times carry
        # the machine's scheduling jitter, exact spacing is tests/notifier/test_outbox.py's), none over 4096
        for chat in (CHAT, GROUP):
            times = [s.at for s in api.sent if s.chat_id == chat]
            gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            assert min(gaps) >= 0.5 and times[-1] - times[0] >= len(gaps) - 0.5, (chat, gaps)
        assert max(len(s.text) for s in api.sent) <= 4096
        wait_until(lambda: metric(port, "trader_notifier_telegram_messages_total", outcome="sent") == len(api.sent),
                   what="every message counted")  # the count follows Telegram's answer
        assert metric(port, "trader_notifier_notes_dropped_total", reason="outbox_full") == 0
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    assert api.offsets and api.offsets[-1] is not None  # the handled updates were confirmed at stop


def test_without_a_token_it_idles(redis_url: str, rclient: redis.Redis) -> None:
    port = free_port()
    proc = spawn(NOTIFIER, {"REDIS_URL": redis_url, "METRICS_PORT": str(port), "TELEGRAM_BOT_TOKEN": "",
                            "TELEGRAM_CHAT_IDS": "", "HEARTBEAT_EVERY_S": "0.5"})
    try:
        wait_until(lambda: running(rclient), what="the idle notifier running")
        assert metric(port, "trader_notifier_enabled") == 0
        assert rclient.exists(streams.TRADING_EVENTS) == 0  # no group, nothing read
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()
    assert b'"notifier_disabled"' in out


def test_half_configured_is_a_config_error() -> None:
    proc = spawn(NOTIFIER, {"TELEGRAM_BOT_TOKEN": "123:abc", "TELEGRAM_CHAT_IDS": "", "METRICS_PORT": "0"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_IDS" in err.decode() and "123:abc" not in err.decode()
