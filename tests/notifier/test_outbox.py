"""The outbox with an injected clock: Telegram's rates per chat and per group, bursts batched into
messages of at most 4096 characters, oldest first, bounded with drop-oldest, hand-backs first."""

from __future__ import annotations

from services.trader_notifier.app.format import Note
from services.trader_notifier.app.outbox import Outbox, TokenBucket
from tradestack.clock import FakeClock

CHAT, GROUP = 111, -100200


def note(i: int, size: int = 0, chat_id: int | None = None) -> Note:
    text = f"note {i}"
    return Note(text + "." * max(0, size - len(text)), "event", chat_id=chat_id)


def box(clock: FakeClock, chats: list[int] | None = None, **kw: object) -> Outbox:
    return Outbox(chats or [CHAT], clock.monotonic, **kw)  # type: ignore[arg-type]


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(1.0, 1, now=0.0)
    assert bucket.wait_s(0.0) == 0
    bucket.take(0.0)
    assert bucket.wait_s(0.0) == 1.0 and bucket.wait_s(0.25) == 0.75 and bucket.wait_s(1.0) == 0


def test_one_message_per_second_per_chat_and_a_burst_becomes_one_message() -> None:
    clock = FakeClock()
    out = box(clock)
    out.put(note(0))
    first = out.take(CHAT)
    assert first is not None and first.text == "note 0"
    for i in range(1, 51):  # a burst of 50 while the chat's bucket refills
        out.put(note(i))
    assert out.ready() == [] and out.take(CHAT) is None and out.next_due_s() == 1.0
    clock.advance(999)
    assert out.ready() == []
    clock.advance(1)
    batch = out.take(CHAT)
    assert batch is not None and len(batch.notes) == 50
    assert batch.text.split("\n") == [f"note {i}" for i in range(1, 51)]  # in order, one line each
    assert out.pending() == 0 and out.next_due_s() is None


def test_a_batch_never_exceeds_4096_characters() -> None:
    clock = FakeClock()
    out = box(clock)
    for i in range(100):
        out.put(note(i, size=100))
    sizes = []
    while out.pending():
        batch = out.take(CHAT)
        assert batch is not None
        assert len(batch.text) <= 4096
        sizes.append(len(batch.notes))
        clock.advance(1000)
    assert sizes == [40, 40, 20]  # 40 x 100 + 39 newlines = 4039; one more would be 4140


def test_a_note_longer_than_a_message_is_cut() -> None:
    clock = FakeClock()
    out = box(clock)
    out.put(note(0, size=5000))
    batch = out.take(CHAT)
    assert batch is not None and len(batch.text) == 4096 and batch.text.endswith("…")


def test_a_group_gets_at_most_20_messages_a_minute() -> None:
    clock = FakeClock()
    out = box(clock, [GROUP])
    sent_at = []
    for i in range(25):
        out.put(note(i))
        due = out.next_due_s()
        assert due is not None
        clock.advance(int(due * 1000))
        assert out.take(GROUP) is not None
        sent_at.append(clock.monotonic())
    assert sent_at[:20] == [float(i) for i in range(20)]  # one a second while the minute allows
    assert sent_at[20:] == [60.0, 61.0, 62.0, 63.0, 64.0]  # then the minute of the first ones has passed
    assert max(sum(1 for t in sent_at if s <= t < s + 60) for s in sent_at) == 20  # never 21 in any minute


def test_a_burst_allowance_sends_the_first_notes_at_once() -> None:
    clock = FakeClock()
    out = box(clock, chat_burst=3)
    for i in range(3):
        out.put(note(i))
        assert out.take(CHAT) is not None
    out.put(note(3))
    assert out.take(CHAT) is None


def test_full_outbox_drops_the_oldest_and_counts() -> None:
    clock = FakeClock()
    out = box(clock, max_notes=10)
    dropped = sum(out.put(note(i)) for i in range(15))
    assert dropped == 5 and out.dropped == 5 and out.pending() == 10
    batch = out.take(CHAT)
    assert batch is not None and batch.notes[0].text == "note 5"


def test_notes_go_to_every_chat_and_replies_to_one() -> None:
    clock = FakeClock()
    out = box(clock, [CHAT, GROUP])
    out.put(note(0))
    out.put(note(1, chat_id=GROUP))
    assert out.put(note(2, chat_id=999)) == 1  # a reply to a chat that is not configured
    assert out.ready() == [CHAT, GROUP]
    chat, group = out.take(CHAT), out.take(GROUP)
    assert chat is not None and chat.text == "note 0"
    assert group is not None and group.text == "note 0\nnote 1"


def test_a_batch_handed_back_goes_first_after_the_wait() -> None:
    clock = FakeClock()
    out = box(clock)
    out.put(note(0))
    batch = out.take(CHAT)
    assert batch is not None
    out.put(note(1))
    out.give_back(batch, retry_in_s=5.0)  # Telegram: 429, retry_after 5
    clock.advance(1000)
    assert out.ready() == [] and out.next_due_s() == 4.0  # the bucket is full again; Telegram's wait is not over
    clock.advance(4000)
    again = out.take(CHAT)
    assert again is not None and again.text == "note 0\nnote 1"


def test_stop_may_ignore_the_limits() -> None:
    clock = FakeClock()
    out = box(clock)
    out.put(note(0))
    out.take(CHAT)
    out.put(note(1))
    assert out.take(CHAT) is None
    last = out.take(CHAT, ignore_limits=True)
    assert last is not None and last.text == "note 1"
