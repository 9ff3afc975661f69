"""The outbox: bounded, per chat, rate-limited, batching. Pure: time comes from an injected
``now()`` (monotonic seconds), so the limits are tested without waiting.

Handlers only ``put`` notes here (never a network call on the trading path); one sender task
``take``s batches when a chat's rate allows and hands back what Telegram refused for now.

Telegram's limits for a bot (core.telegram.org/bots/faq): about one message per second to one chat,
no more than 20 messages per minute to one group (group and channel ids are negative), about 30 per
second overall (not limited here: a handful of chats cannot reach it). Each chat gets a token bucket
(one a second, ``chat_burst`` at once), a group also a sliding window (at most ``group_per_min`` in
any minute); a message must pass both. Under a burst the notes pile up while the limits wait, and
the next message carries all of them that fit in 4096 characters, oldest first: a burst of 50
events becomes two messages, not 50.

Bounded: at most ``max_notes`` per chat. When full, the oldest note is dropped and counted (the
newest state of the stack is what a person needs most).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Union

from services.trader_notifier.app.format import MAX_CHARS, Note, truncate


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate_per_s``; a send takes one."""

    __slots__ = ("rate_per_s", "capacity", "tokens", "updated")

    def __init__(self, rate_per_s: float, capacity: float, now: float) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and a capacity of at least 1")
        self.rate_per_s = rate_per_s
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def wait_s(self, now: float) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate_per_s

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1


class SlidingWindow:
    """At most ``limit`` takes in any ``window_s`` (a token bucket would allow its capacity plus a
    window's refill: 40 in a minute for a 20-a-minute bucket)."""

    __slots__ = ("limit", "window_s", "taken")

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a sliding window needs a limit of at least 1 and a positive window")
        self.limit = limit
        self.window_s = window_s
        self.taken: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self.taken and self.taken[0] + self.window_s <= now:
            self.taken.popleft()

    def wait_s(self, now: float) -> float:
        self._expire(now)
        return 0.0 if len(self.taken) < self.limit else self.taken[0] + self.window_s - now

    def take(self, now: float) -> None:
        self._expire(now)
        self.taken.append(now)


Limit = Union[TokenBucket, SlidingWindow]


@dataclass(slots=True)
class Batch:
    """One Telegram message: the notes it carries (for a hand-back) and their text."""

    chat_id: int
    notes: list[Note]
    text: str


@dataclass(slots=True)
class _Chat:
    limits: list[Limit]
    notes: deque[Note] = field(default_factory=deque)
    blocked_until: float = 0.0  # Telegram said retry_after, or the network is failing


class Outbox:
    def __init__(self, chat_ids: list[int], now: Callable[[], float], *, max_notes: int = 1000,
                 chat_rate_per_s: float = 1.0, chat_burst: int = 1, group_per_min: int = 20,
                 max_chars: int = MAX_CHARS) -> None:
        if not chat_ids:
            raise ValueError("an outbox needs at least one chat")
        self.now = now
        self.max_notes = max_notes
        self.max_chars = max_chars
        t = now()
        self.chats: dict[int, _Chat] = {}
        for chat_id in chat_ids:
            limits: list[Limit] = [TokenBucket(chat_rate_per_s, chat_burst, t)]
            if chat_id < 0:  # a group or channel: also at most 20 in any minute
                limits.append(SlidingWindow(group_per_min, 60.0))
            self.chats[chat_id] = _Chat(limits)
        self.dropped = 0

    # -- in ---------------------------------------------------------------------------------------

    def put(self, note: Note) -> int:
        """Queue a note for its chat (or every chat); returns how many old notes were dropped to fit it.
        A reply to a chat that is not configured is dropped (counted)."""
        if note.chat_id is not None and note.chat_id not in self.chats:
            self.dropped += 1
            return 1
        if len(note.text) > self.max_chars:
            note = Note(truncate(note.text, self.max_chars), note.kind, note.severity, note.chat_id)
        targets = [self.chats[note.chat_id]] if note.chat_id is not None else list(self.chats.values())
        dropped = 0
        for chat in targets:
            chat.notes.append(note)
            dropped += self._trim(chat)
        return dropped

    def give_back(self, batch: Batch, retry_in_s: float) -> int:
        """Telegram did not take ``batch`` (429, network): its notes go back to the front of the queue
        and the chat waits ``retry_in_s``. Returns how many notes the bound dropped."""
        chat = self.chats[batch.chat_id]
        chat.notes.extendleft(reversed(batch.notes))
        chat.blocked_until = max(chat.blocked_until, self.now() + retry_in_s)
        return self._trim(chat)

    def _trim(self, chat: _Chat) -> int:
        dropped = 0
        while len(chat.notes) > self.max_notes:
            chat.notes.popleft()
            dropped += 1
        self.dropped += dropped
        return dropped

    # -- out --------------------------------------------------------------------------------------

    def pending(self) -> int:
        return sum(len(c.notes) for c in self.chats.values())

    def _wait_s(self, chat: _Chat, now: float) -> float:
        return max(chat.blocked_until - now, *(limit.wait_s(now) for limit in chat.limits), 0.0)

    def ready(self) -> list[int]:
        """Chats with notes whose limits allow a message now."""
        now = self.now()
        return [cid for cid, c in self.chats.items() if c.notes and self._wait_s(c, now) == 0]

    def next_due_s(self) -> float | None:
        """Seconds until some chat with notes may send (0: now); None when nothing is pending."""
        now = self.now()
        waits = [self._wait_s(c, now) for c in self.chats.values() if c.notes]
        return min(waits) if waits else None

    def take(self, chat_id: int, ignore_limits: bool = False) -> Batch | None:
        """The next message for a chat: as many of its oldest notes as fit in one text, one token of
        each of its limits. None when it has nothing or must wait (unless ``ignore_limits``)."""
        chat = self.chats[chat_id]
        now = self.now()
        if not chat.notes or (not ignore_limits and self._wait_s(chat, now) > 0):
            return None
        for limit in chat.limits:
            limit.take(now)
        notes = [chat.notes.popleft()]
        size = len(notes[0].text)
        while chat.notes and size + 1 + len(chat.notes[0].text) <= self.max_chars:
            note = chat.notes.popleft()
            notes.append(note)
            size += 1 + len(note.text)
        return Batch(chat_id, notes, "\n".join(n.text for n in notes))
