"""Bot commands, the pure part: a Telegram update → a ``Command``, who may give it, what ``/kill`` writes.

Only messages from a configured chat id are answered. Anyone else (another chat that found the
bot's name) is ignored without an answer: logged and counted, nothing more. In a group chat every
member of the group may give commands: add the bot only to a group of people who may stop trading.

A command older than ``max_age_s`` (Telegram keeps unconfirmed updates for 24 h: a ``/kill`` sent
while the notifier was down, or before a restart confirmed it) is not carried out; it is counted
and answered as stale, so nobody is surprised by a switch set long after they asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

CommandName = Literal["status", "kill", "help", "other"]
KNOWN: dict[str, CommandName] = {"status": "status", "kill": "kill", "help": "help", "start": "help"}
KILL_REASON = "telegram /kill"


@dataclass(frozen=True, slots=True)
class Command:
    name: CommandName
    word: str  # as typed, without the slash and @botname
    args: str
    chat_id: int
    user_id: int | None
    username: str | None
    date_ms: int
    update_id: int

    @property
    def by(self) -> str:
        """Who gave it, as ``trading:kill:reason`` records it: ``telegram:<username or user id>``."""
        if self.username:
            return f"telegram:{self.username}"
        return f"telegram:{self.user_id if self.user_id is not None else 'chat' + str(self.chat_id)}"


def parse_update(update: dict[str, Any]) -> Command | None:
    """A ``/command`` in a message (``message`` or ``channel_post``); None for anything else."""
    msg = update.get("message") or update.get("channel_post")
    if not isinstance(msg, dict):
        return None
    text = msg.get("text")
    chat = msg.get("chat") or {}
    if not isinstance(text, str) or not text.startswith("/") or not isinstance(chat.get("id"), int):
        return None
    head, _, args = text.strip().partition(" ")
    word = head[1:].split("@", 1)[0].lower()  # "/kill@tradestack_bot" in groups
    if not word:
        return None
    sender = msg.get("from") or {}
    user_id = sender.get("id") if isinstance(sender.get("id"), int) else None
    username = sender.get("username") if isinstance(sender.get("username"), str) else None
    date = msg.get("date")
    if not isinstance(date, int):
        date = 0
    return Command(name=KNOWN.get(word, "other"), word=word, args=args.strip(), chat_id=chat["id"], user_id=user_id,
                   username=username, date_ms=date * 1000, update_id=int(update.get("update_id", 0)))


def allowed(cmd: Command, chat_ids: set[int] | frozenset[int]) -> bool:
    return cmd.chat_id in chat_ids


def stale(cmd: Command, now_ms: int, max_age_s: float) -> bool:
    return now_ms - cmd.date_ms > max_age_s * 1000


def kill_reason(cmd: Command) -> str:
    return f"{KILL_REASON}: {cmd.args}" if cmd.args else KILL_REASON


def kill_record(cmd: Command, now_ms: int) -> bytes:
    """``trading:kill:reason`` as the CLI, the executor and the PnL write it: ``{on, reason, by, ts}``."""
    return orjson.dumps({"on": True, "reason": kill_reason(cmd), "by": cmd.by, "ts": now_ms})
