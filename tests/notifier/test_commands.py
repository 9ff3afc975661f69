"""Commands: parsing Telegram updates, who may command, stale commands, and what /kill records;
``Commands.on_update`` with stub status/kill functions (no Redis, no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis

from services.trader_notifier.app.bot import Commands
from services.trader_notifier.app.commands import Command, allowed, kill_record, parse_update, stale
from services.trader_notifier.app.format import HELP, Note
from services.trader_notifier.app.metrics import Metrics
from tests.notifier import T0
from tradestack.clock import FakeClock

ALLOWED = 111


def update(text: str, chat_id: int = ALLOWED, user_id: int = 42, username: str | None = "alice",
           date_s: int = T0 // 1000, update_id: int = 7) -> dict[str, Any]:
    sender: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": "A"}
    if username:
        sender["username"] = username
    return {"update_id": update_id, "message": {"message_id": 1, "from": sender, "date": date_s, "text": text,
                                                "chat": {"id": chat_id, "type": "private"}}}


def test_parse_commands() -> None:
    cmd = parse_update(update("/kill"))
    assert cmd == Command(name="kill", word="kill", args="", chat_id=ALLOWED, user_id=42, username="alice",
                          date_ms=T0, update_id=7)
    assert cmd.by == "telegram:alice"
    grouped = parse_update(update("/kill@tradestack_bot flash crash", chat_id=-100, username=None))
    assert grouped is not None and grouped.name == "kill" and grouped.args == "flash crash"
    assert grouped.by == "telegram:42"
    assert parse_update(update("/Status")).name == "status"  # type: ignore[union-attr]
    assert parse_update(update("/start")).name == "help"  # type: ignore[union-attr]
    assert parse_update(update("/rm -rf")).name == "other"  # type: ignore[union-attr]
    assert parse_update(update("hello")) is None
    assert parse_update({"update_id": 1, "edited_message": {}}) is None
    assert parse_update({"update_id": 1, "message": {"text": "/kill", "chat": {}}}) is None


def test_only_configured_chats_and_fresh_commands() -> None:
    cmd = parse_update(update("/kill"))
    stranger = parse_update(update("/kill", chat_id=999))
    assert cmd is not None and stranger is not None
    assert allowed(cmd, {ALLOWED}) and not allowed(stranger, {ALLOWED})
    assert not stale(cmd, T0 + 120_000, 120) and stale(cmd, T0 + 120_001, 120)


def test_kill_record_is_the_format_every_writer_uses() -> None:
    cmd = parse_update(update("/kill"))
    assert cmd is not None
    assert orjson.loads(kill_record(cmd, T0 + 5)) == {"on": True, "reason": "telegram /kill", "by": "telegram:alice",
                                                     "ts": T0 + 5}
    with_reason = parse_update(update("/kill exchange acting up"))
    assert with_reason is not None
    assert orjson.loads(kill_record(with_reason, T0))["reason"] == "telegram /kill: exchange acting up"


class Harness:
    def __init__(self, now_ms: int = T0 + 1000, fail: BaseException | None = None) -> None:
        self.replies: list[Note] = []
        self.killed: list[Command] = []
        self.metrics = Metrics()
        self.fail = fail

        async def status() -> str:
            if self.fail is not None:
                raise self.fail
            return "status text"

        async def kill(cmd: Command) -> str:
            self.killed.append(cmd)
            return "killed"

        self.commands = Commands([ALLOWED], self.replies.append, self.metrics, FakeClock(now_ms), 120, status, kill)

    def run(self, upd: dict[str, Any]) -> None:
        asyncio.run(self.commands.on_update(upd))

    def count(self, command: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value("trader_notifier_commands_total",
                                                       {"command": command, "outcome": outcome})
        return value or 0.0


def test_a_stranger_is_ignored_without_an_answer() -> None:
    h = Harness()
    h.run(update("/kill", chat_id=999))
    h.run(update("/status", chat_id=999))
    assert h.replies == [] and h.killed == []
    assert h.count("kill", "unauthorized") == 1 and h.count("status", "unauthorized") == 1


def test_an_allowed_chat_is_answered_in_its_chat() -> None:
    h = Harness()
    h.run(update("/kill"))
    h.run(update("/status"))
    h.run(update("/whatever"))
    assert [c.by for c in h.killed] == ["telegram:alice"]
    assert [(n.text, n.chat_id, n.kind) for n in h.replies] == [("killed", ALLOWED, "reply"),
                                                                ("status text", ALLOWED, "reply"),
                                                                (HELP, ALLOWED, "reply")]
    assert h.count("kill", "ok") == 1 and h.count("status", "ok") == 1 and h.count("other", "ok") == 1


def test_a_stale_kill_is_not_carried_out() -> None:
    h = Harness(now_ms=T0 + 3_600_000)
    h.run(update("/kill"))
    assert h.killed == [] and h.count("kill", "stale") == 1
    assert "not carried out" in h.replies[0].text and h.replies[0].chat_id == ALLOWED


@pytest.mark.parametrize("error,says", [(redis.ConnectionError("down"), "Redis unavailable"),
                                        (KeyError("bug"), "a bug")])
def test_a_failing_command_is_answered_and_counted(error: BaseException, says: str) -> None:
    h = Harness(fail=error)
    h.run(update("/status"))
    assert says in h.replies[0].text and h.count("status", "error") == 1
