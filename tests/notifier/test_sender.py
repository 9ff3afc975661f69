"""The sender's rules with a stub Telegram client and an injected clock: 429 waits Telegram's
``retry_after`` with the batch kept first in line, network errors back off, refusals drop and count,
and at stop one last try per chat within a budget, the rest counted as lost."""

from __future__ import annotations

import asyncio
import random

from services.trader_notifier.app.bot import Sender
from services.trader_notifier.app.format import Note
from services.trader_notifier.app.metrics import Metrics
from services.trader_notifier.app.outbox import Outbox
from services.trader_notifier.app.telegram import Refused, RetryAfter, Unavailable
from tradestack.backoff import Backoff
from tradestack.clock import FakeClock

CHATS = [111, 222]


class StubClient:
    def __init__(self, *answers: BaseException | None, hang: bool = False) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[int, str]] = []
        self.hang = hang

    async def send_message(self, chat_id: int, text: str) -> None:
        if self.hang:
            await asyncio.Event().wait()
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        self.sent.append((chat_id, text))


def make(client: StubClient, chats: list[int] | None = None) -> tuple[Sender, Outbox, FakeClock, Metrics]:
    clock = FakeClock()
    outbox = Outbox(chats or CHATS[:1], clock.monotonic)
    metrics = Metrics()
    sender = Sender(client, outbox, metrics, asyncio.Event(), asyncio.Event(),  # type: ignore[arg-type]
                    backoff=Backoff(1.0, 60.0, rng=random.Random(1)))
    return sender, outbox, clock, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"trader_notifier_{name}", labels) or 0.0


def take_and_send(sender: Sender, outbox: Outbox, chat_id: int = 111) -> bool:
    batch = outbox.take(chat_id)
    assert batch is not None
    return asyncio.run(sender.send(batch))


def test_a_429_waits_telegrams_retry_after_and_keeps_the_batch_first() -> None:
    client = StubClient(RetryAfter(5.0, "Too Many Requests: retry after 5"))
    sender, outbox, clock, metrics = make(client)
    outbox.put(Note("first", "event"))
    assert not take_and_send(sender, outbox)
    outbox.put(Note("second", "event"))
    assert outbox.next_due_s() == 5.0 and outbox.ready() == []
    clock.advance(5000)
    assert take_and_send(sender, outbox)
    assert client.sent == [(111, "first\nsecond")]
    assert sample(metrics, "telegram_messages_total", outcome="retried") == 1
    assert sample(metrics, "telegram_messages_total", outcome="sent") == 1


def test_network_errors_back_off_and_recover() -> None:
    client = StubClient(Unavailable("sendMessage: ClientConnectorError"), Unavailable("again"))
    sender, outbox, clock, metrics = make(client)
    outbox.put(Note("n", "event"))
    assert not take_and_send(sender, outbox)
    first_wait = outbox.next_due_s()
    assert first_wait is not None and 0.5 <= first_wait <= 1.0
    clock.advance(int(first_wait * 1000) + 1)
    assert not take_and_send(sender, outbox)
    second_wait = outbox.next_due_s()
    assert second_wait is not None and 0.5 <= second_wait <= 2.0
    clock.advance(int(second_wait * 1000) + 1)
    assert take_and_send(sender, outbox) and client.sent == [(111, "n")]
    assert sample(metrics, "telegram_ok") == 1 and sender.backoff.attempt == 0


def test_a_refused_message_is_dropped_and_counted() -> None:
    client = StubClient(Refused(403, "Forbidden: bot was blocked by the user"))
    sender, outbox, _, metrics = make(client)
    outbox.put(Note("a", "event"))
    outbox.put(Note("b", "event"))
    assert not take_and_send(sender, outbox)
    assert outbox.pending() == 0
    assert sample(metrics, "notes_dropped_total", reason="refused") == 2
    assert sample(metrics, "telegram_messages_total", outcome="failed") == 1


def test_at_stop_one_last_message_per_chat_ignoring_the_rate() -> None:
    client = StubClient()
    sender, outbox, _, metrics = make(client, CHATS)
    outbox.put(Note("before", "event"))
    for chat_id in CHATS:
        outbox.take(chat_id)  # both chats just sent: rate-limited now
    outbox.put(Note("pending", "event"))
    asyncio.run(sender.flush_at_stop())
    assert client.sent == [(111, "pending"), (222, "pending")]
    assert sample(metrics, "notes_dropped_total", reason="stopped") == 0


def test_at_stop_what_cannot_go_within_the_budget_is_counted_lost() -> None:
    client = StubClient(hang=True)
    sender, outbox, _, metrics = make(client, CHATS)
    outbox.put(Note("x", "event"))
    outbox.put(Note("y", "event"))
    asyncio.run(sender.flush_at_stop(budget_s=0.05))
    assert sample(metrics, "notes_dropped_total", reason="stopped") == 4  # both chats' notes, the cut-off one too
