"""The two long-running tasks that talk to Telegram, apart from the trading path.

``Sender``: takes batches from the outbox when a chat's rate allows, sends them, and hands back
what Telegram did not take (429: after its ``retry_after``; no answer: after a capped backoff).
A refused message (400/403) is dropped and counted. At stop it tries once more, briefly, for what
is pending; what it cannot send then is counted as dropped (``stopped``) and logged.

``CommandPoller``: long-polls ``getUpdates`` and hands each update to ``Commands``, which answers
configured chats only (commands.py). On stop it confirms the updates it handled, so a restart does
not see them again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

import redis

from services.trader_notifier.app import format as fmt
from services.trader_notifier.app.commands import Command, allowed, parse_update, stale
from services.trader_notifier.app.format import Note
from services.trader_notifier.app.metrics import Metrics
from services.trader_notifier.app.outbox import Batch, Outbox
from services.trader_notifier.app.telegram import Refused, RetryAfter, TelegramClient, Unavailable
from tradestack.aio import wait_or_stop
from tradestack.backoff import Backoff
from tradestack.bus import REDIS_DOWN
from tradestack.clock import Clock
from tradestack.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")
STOP_FLUSH_S = 1.5  # of the runtime's 4 s stop budget
IDLE_WAKE_S = 60.0


class Stopped(Exception):
    pass


async def until_stop(coro: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
    """``await coro``, or cancel it and raise ``Stopped`` as soon as ``stop`` is set."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Stopped()
    return task.result()


class Sender:
    def __init__(self, client: TelegramClient, outbox: Outbox, metrics: Metrics, stop: asyncio.Event,
                 wake: asyncio.Event, backoff: Backoff | None = None) -> None:
        self.client = client
        self.outbox = outbox
        self.metrics = metrics
        self.stop = stop
        self.wake = wake
        self.backoff = backoff or Backoff(1.0, 60.0)
        self._failing = False

    async def run(self) -> None:
        while not self.stop.is_set():
            self.wake.clear()
            for chat_id in self.outbox.ready():
                batch = self.outbox.take(chat_id)
                if batch is not None:
                    try:
                        await until_stop(self.send(batch), self.stop)
                    except Stopped:
                        self.outbox.give_back(batch, 0.0)  # it may have gone out: a duplicate beats a loss
                        break
            self.metrics.outbox.set(self.outbox.pending())
            due = self.outbox.next_due_s()
            if due == 0:
                continue
            await self._wait(IDLE_WAKE_S if due is None else due)
        await self.flush_at_stop()

    async def _wait(self, seconds: float) -> None:
        waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(self.stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def send(self, batch: Batch) -> bool:
        """One message; True when Telegram took it."""
        try:
            await self.client.send_message(batch.chat_id, batch.text)
        except RetryAfter as exc:
            self.metrics.telegram.labels(outcome="retried").inc()
            self._dropped("outbox_full", self.outbox.give_back(batch, exc.retry_after_s))
            log.warning("telegram_rate_limited", chat_id=batch.chat_id, retry_after_s=exc.retry_after_s,
                        notes=len(batch.notes))
            return False
        except Unavailable as exc:
            self.metrics.telegram.labels(outcome="retried").inc()
            self.metrics.telegram_ok.set(0)
            delay = self.backoff.next_delay()
            self._dropped("outbox_full", self.outbox.give_back(batch, delay))
            if not self._failing:  # one line per outage
                self._failing = True
                log.warning("telegram_unavailable", error=str(exc), retry_in_s=round(delay, 2),
                            pending=self.outbox.pending())
            return False
        except Refused as exc:
            self.metrics.telegram.labels(outcome="failed").inc()
            self._dropped("refused", len(batch.notes))
            log.error("telegram_message_refused", chat_id=batch.chat_id, error=str(exc), notes=len(batch.notes))
            return False
        self.metrics.telegram.labels(outcome="sent").inc()
        self.metrics.telegram_ok.set(1)
        self.backoff.reset()
        if self._failing:
            self._failing = False
            log.info("telegram_available")
        log.info("telegram_message_sent", chat_id=batch.chat_id, notes=len(batch.notes), chars=len(batch.text))
        return True

    def _dropped(self, reason: str, count: int) -> None:
        if count:
            self.metrics.dropped.labels(reason=reason).inc(count)

    async def flush_at_stop(self, budget_s: float = STOP_FLUSH_S) -> None:
        """One last message per chat (limits or not), within ``budget_s``; the rest is lost and counted."""
        deadline = time.monotonic() + budget_s
        for chat_id in list(self.outbox.chats):
            left = deadline - time.monotonic()
            batch = self.outbox.take(chat_id, ignore_limits=True) if left > 0 else None
            if batch is None:
                continue
            try:
                sent = await asyncio.wait_for(self.send(batch), timeout=left)
            except asyncio.TimeoutError:
                self.outbox.give_back(batch, 0.0)  # counted with the rest below
                sent = False
            if not sent:
                break
        lost = self.outbox.pending()
        if lost:
            self._dropped("stopped", lost)
            log.warning("notes_lost_at_stop", notes=lost,
                        note="pending in memory only; see docs/notifier.md (restart trade-off)")
        self.metrics.outbox.set(0)


class Commands:
    """Answers configured chats: ``/status``, ``/kill``, ``/help``; ignores everyone else."""

    def __init__(self, chat_ids: list[int], reply: Callable[[Note], None], metrics: Metrics, clock: Clock,
                 max_age_s: float, status: Callable[[], Awaitable[str]],
                 kill: Callable[[Command], Awaitable[str]]) -> None:
        self.chat_ids = frozenset(chat_ids)
        self.reply = reply
        self.metrics = metrics
        self.clock = clock
        self.max_age_s = max_age_s
        self.status = status
        self.kill = kill

    async def on_update(self, update: dict[str, Any]) -> None:
        cmd = parse_update(update)
        if cmd is None:
            return
        if not allowed(cmd, self.chat_ids):
            self.metrics.commands.labels(command=cmd.name, outcome="unauthorized").inc()
            log.warning("command_ignored", command=cmd.word[:32], chat_id=cmd.chat_id, user_id=cmd.user_id,
                        username=cmd.username, note="chat not in TELEGRAM_CHAT_IDS; no answer")
            return
        if stale(cmd, self.clock.now_ms(), self.max_age_s):
            self.metrics.commands.labels(command=cmd.name, outcome="stale").inc()
            log.warning("command_stale", command=cmd.word, chat_id=cmd.chat_id, by=cmd.by, date_ms=cmd.date_ms)
            self.reply(Note(f"/{cmd.word} sent at {fmt.clock_time(cmd.date_ms)} not carried out: older than "
                            f"{self.max_age_s:g} s. Send it again if still meant.", "reply", "warning", cmd.chat_id))
            return
        outcome = "ok"
        try:
            if cmd.name == "status":
                text = await self.status()
            elif cmd.name == "kill":
                text = await self.kill(cmd)
            else:
                text = fmt.HELP
        except (*REDIS_DOWN, redis.RedisError, asyncio.TimeoutError) as exc:
            outcome = "error"
            text = f"/{cmd.word} failed: Redis unavailable ({type(exc).__name__}); try again, or act on the host"
            log.error("command_failed", command=cmd.word, by=cmd.by, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug: loud in the log, an answer to the person, and the bot keeps running
            outcome = "error"
            text = f"/{cmd.word} failed (a bug, see the notifier's log)"
            log.critical("command_crashed", command=cmd.word, by=cmd.by, error=f"{type(exc).__name__}: {exc}",
                         exc_info=exc)
        self.metrics.commands.labels(command=cmd.name, outcome=outcome).inc()
        log.info("command_handled", command=cmd.word, by=cmd.by, chat_id=cmd.chat_id, outcome=outcome)
        self.reply(Note(text, "reply", "info", cmd.chat_id))


class CommandPoller:
    def __init__(self, client: TelegramClient, commands: Commands, metrics: Metrics, stop: asyncio.Event,
                 poll_timeout_s: int = 25, backoff: Backoff | None = None) -> None:
        self.client = client
        self.commands = commands
        self.metrics = metrics
        self.stop = stop
        self.poll_timeout_s = poll_timeout_s
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.offset: int | None = None

    async def run(self) -> None:
        failing = False
        while not self.stop.is_set():
            try:
                updates = await until_stop(self.client.get_updates(self.offset, self.poll_timeout_s), self.stop)
            except Stopped:
                break
            except RetryAfter as exc:
                await wait_or_stop(self.stop, exc.retry_after_s)
                continue
            except (Unavailable, Refused) as exc:
                self.metrics.telegram_ok.set(0)
                if not failing:
                    failing = True  # one line per streak (409: another poller or a webhook on this bot)
                    log.warning("telegram_updates_failed", error=str(exc))
                await wait_or_stop(self.stop, self.backoff.next_delay())
                continue
            if failing:
                failing = False
                log.info("telegram_updates_available")
            self.backoff.reset()
            self.metrics.telegram_ok.set(1)
            for update in updates:
                update_id = update.get("update_id")
                if isinstance(update_id, int):
                    self.offset = max(self.offset or 0, update_id + 1)
                await self.commands.on_update(update)
        if self.offset is not None:  # confirm what was handled: a restart must not carry it out again
            try:
                await asyncio.wait_for(self.client.get_updates(self.offset, 0), timeout=1.0)
            except (Unavailable, Refused, RetryAfter, asyncio.TimeoutError) as exc:
                log.warning("telegram_updates_not_confirmed", offset=self.offset, error=str(exc))
