"""Notifier: tells a person on Telegram what the stack does, and takes ``/status`` and ``/kill``
from the chats it is configured for (docs/notifier.md).

Off unless ``TELEGRAM_BOT_TOKEN`` and ``TELEGRAM_CHAT_IDS`` are both set: then it logs one line
(``notifier_disabled``), exports ``trader_notifier_enabled 0`` and idles (heartbeat and /metrics
only), so a stack without a bot runs unchanged. One of the two without the other is a config error.

Reads ``trading:events`` and ``orders:executed`` in its own group (new groups start at the end:
the first start tells no history), folding the reports through the kernel's ledger (rebuilt at
start) for the PnL of closed positions (notes.py). Polls ``trading:kill`` for its transitions.
The handler only queues notes into the bounded in-memory outbox (outbox.py) and acks; a task of
its own sends (bot.py), so Telegram being slow or down never holds back a commit. Writes only on
``/kill``: ``trading:kill``, ``trading:kill:reason`` and a ``kill_switch`` event, as the CLI does.
One active instance (a lease): a second one waits as a standby instead of sending every note twice.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
import redis
from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.trader_notifier.app import format as fmt
from services.trader_notifier.app.bot import CommandPoller, Commands, Sender
from services.trader_notifier.app.commands import Command, kill_reason, kill_record
from services.trader_notifier.app.format import Note
from services.trader_notifier.app.metrics import METRICS_PREFIX, Metrics
from services.trader_notifier.app.notes import Notes
from services.trader_notifier.app.outbox import Outbox
from services.trader_notifier.app.telegram import DEFAULT_API_URL, TelegramClient
from tradestack import streams
from tradestack.bus import REDIS_DOWN, Delivery, StreamSpec
from tradestack.config import CommonSettings, CsvList, split_csv
from tradestack.effects import Effect
from tradestack.logs import get_logger
from tradestack.messages import Message, TradingEvent, encode
from tradestack.ops.status import collect_status
from tradestack.service import Service, run_service

log = get_logger(__name__)

NAME = "trader_notifier"
READS = [streams.TRADING_EVENTS, streams.ORDERS_EXECUTED]
WRITES = [streams.TRADING_EVENTS]  # only the event of a /kill
KEYS = [streams.KILL, streams.KILL_REASON, streams.PNL, streams.POSITIONS]

ChatIds = Annotated[list[int], NoDecode, BeforeValidator(split_csv)]


class Settings(CommonSettings):
    metrics_port: int = Field(9606, ge=0, le=65535)
    telegram_api_url: str = DEFAULT_API_URL
    telegram_bot_token: SecretStr | None = None  # from @BotFather; empty: the notifier idles
    telegram_chat_ids: ChatIds = Field(default_factory=list)  # who is told, and who may command
    telegram_chat_rate_per_s: float = Field(1.0, gt=0, le=30)  # messages per second to one chat
    telegram_chat_burst: int = Field(1, ge=1, le=20)  # messages one chat may get at once
    telegram_group_per_min: int = Field(20, ge=1, le=60)  # messages per minute to a group (negative id)
    telegram_timeout_s: float = Field(10.0, gt=0, le=60)  # one API call
    telegram_poll_timeout_s: int = Field(25, ge=0, le=50)  # getUpdates long poll
    telegram_command_max_age_s: float = Field(120.0, gt=0)  # an older command is not carried out
    notifier_outbox_max: int = Field(1000, ge=10, le=100_000)  # notes per chat kept in memory
    notifier_kill_poll_s: float = Field(1.0, gt=0, le=60)  # trading:kill transitions are told this fast
    notifier_extra_event_kinds: CsvList = Field(default_factory=list)  # more event kinds worth a message
    notifier_startup_message: bool = True

    @field_validator("telegram_bot_token", mode="before")
    @classmethod
    def _empty_token(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("telegram_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local test server)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _both_or_neither(self) -> "Settings":
        if (self.telegram_bot_token is None) != (not self.telegram_chat_ids):
            raise ValueError("set both TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_IDS, or neither (notifier off)")
        return self

    @property
    def enabled(self) -> bool:
        return self.telegram_bot_token is not None and bool(self.telegram_chat_ids)


def setup(service: Service[Settings]) -> None:
    s = service.settings
    metrics = service.metrics
    assert isinstance(metrics, Metrics)
    # One active instance, idle or not: `tradestack status` and the lease alert see the same in both.
    service.use_lease()
    if not s.enabled or s.telegram_bot_token is None:
        metrics.enabled.set(0)
        log.info("notifier_disabled", note="TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_IDS are not set: idling")
        return
    metrics.enabled.set(1)
    clock = service.clock
    notes = Notes(s.mode, clock, s.notifier_extra_event_kinds)
    outbox = Outbox(s.telegram_chat_ids, clock.monotonic, max_notes=s.notifier_outbox_max,
                    chat_rate_per_s=s.telegram_chat_rate_per_s, chat_burst=s.telegram_chat_burst,
                    group_per_min=s.telegram_group_per_min)
    token = s.telegram_bot_token.get_secret_value()
    wake = asyncio.Event()

    def tell(batch: list[Note]) -> None:
        """Queue and return: the only thing the trading path ever does for Telegram."""
        for note in batch:
            dropped = outbox.put(note)
            metrics.notes.labels(kind=note.kind).inc()
            if dropped:
                metrics.dropped.labels(reason="outbox_full").inc(dropped)
        if batch:
            metrics.outbox.set(outbox.pending())
            wake.set()

    def handle(msg: Message, delivery: Delivery) -> list[Effect]:
        told = notes.on_message(msg)
        if not told and isinstance(msg, TradingEvent):
            metrics.skipped.labels(kind=msg.kind).inc()
        tell(told)
        return []  # the ack only

    async def read_kill() -> tuple[bool, dict[str, Any] | None]:
        on, raw = await service.redis.mget(streams.KILL, streams.KILL_REASON)
        try:
            record = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            record = None
        return on == b"1", record if isinstance(record, dict) else None

    async def start() -> None:
        on, record = await read_kill()
        told = notes.kill.start(on, record, clock.now_ms())
        if s.notifier_startup_message:
            told.insert(0, Note(fmt.started_text(s.mode, on, len(s.telegram_chat_ids)), "started"))
        tell(told)
        log.info("notifier_enabled", chats=len(s.telegram_chat_ids), api=s.telegram_api_url, kill_switch=on)

    async def watch_kill() -> list[Effect]:
        try:
            on, record = await read_kill()
        except REDIS_DOWN:
            return []  # the runtime's own kill-switch watcher logs the outage once
        tell(notes.kill.observe_key(on, record, clock.now_ms()))
        return []

    async def status() -> str:
        def collect() -> dict[str, Any]:
            sync = redis.Redis.from_url(s.redis_url, socket_timeout=s.redis_socket_timeout_s,
                                        socket_connect_timeout=s.redis_socket_timeout_s)
            try:
                return collect_status(sync, clock.now_ms())
            finally:
                sync.close()

        return fmt.status_text(await asyncio.to_thread(collect), s.mode)

    async def kill(cmd: Command) -> str:
        on, record = await read_kill()
        if on:
            reason, by = (record or {}).get("reason"), (record or {}).get("by")
            return f"Kill switch is already ON ({reason}, by {by}); left as it is"
        now = clock.now_ms()
        reason = kill_reason(cmd)
        event = service.messages.root(TradingEvent, key=f"telegram/kill/{cmd.update_id}", kind="kill_switch",
                                      severity="critical", message=f"kill switch ON: {reason}",
                                      details={"by": cmd.by, "reason": reason, "on": "true"})
        async with service.redis.pipeline(transaction=True) as pipe:
            pipe.set(streams.KILL, "1")
            pipe.set(streams.KILL_REASON, kill_record(cmd, now))
            pipe.xadd(streams.TRADING_EVENTS, encode(event))  # type: ignore[arg-type]
            await pipe.execute()
        log.critical("kill_switch_set", by=cmd.by, reason=reason, chat_id=cmd.chat_id)
        return (f"🛑 Kill switch ON ({reason}, by {cmd.by}). No new entries; exits still run. "
                f"Clearing it is done on the host: tradestack kill off --reason \"...\"")

    def reply(note: Note) -> None:
        tell([note])

    commands = Commands(s.telegram_chat_ids, reply, metrics, clock, s.telegram_command_max_age_s, status, kill)
    # One HTTP session each: the long poll never queues a message behind it.
    sender = Sender(TelegramClient(s.telegram_api_url, token, s.telegram_timeout_s), outbox, metrics, service.stop, wake)
    poller = CommandPoller(TelegramClient(s.telegram_api_url, token, s.telegram_timeout_s), commands, metrics,
                           service.stop, s.telegram_poll_timeout_s)

    async def send() -> None:
        try:
            await sender.run()
        finally:
            await sender.client.close()

    async def poll() -> None:
        try:
            await poller.run()
        finally:
            await poller.client.close()

    service.on_start(start)
    service.consume([StreamSpec(streams.TRADING_EVENTS, start="$"), StreamSpec(streams.ORDERS_EXECUTED, start="$")],
                    handle, stateful=True)
    service.rebuild(streams.ORDERS_EXECUTED, notes.fold)
    service.every(s.notifier_kill_poll_s, watch_kill, name="kill_watch")
    service.add_task("telegram_sender", send)
    service.add_task("telegram_commands", poll)


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup, metrics=Metrics)
