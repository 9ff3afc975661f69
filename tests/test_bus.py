"""The one consumer loop against a real Redis: delivery, claims, duplicates, poison, retries."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from tests.stubs import event
from tradestack import streams
from tradestack.bus import ConsumerLoop, Delivery, LoopConfig, Output, Publisher
from tradestack.errors import FatalError, PoisonMessage
from tradestack.messages import Message, decode, derive_id, encode
from tradestack.metrics import ServiceMetrics

IN, OUT = "test:in", "test:out"


def passthrough(tag: str = "out", seen: list[str] | None = None):
    def handle(msg: Message, delivery: Delivery) -> list[Output]:
        if seen is not None:
            seen.append(msg.id)
        return [Output(OUT, msg.model_copy(update={"id": derive_id(msg.id, tag)}))]
    return handle


def make_loop(url: str, handler: Any, consumer: str, **cfg: Any) -> ConsumerLoop:
    config = LoopConfig(**{"block_ms": 20, "claim_every_s": 3600, "metrics_every_s": 3600, **cfg})
    return ConsumerLoop(aioredis.Redis.from_url(url), group="svc", streams_in=[IN], handler=handler,
                        metrics=ServiceMetrics(f"t_{consumer.replace(':', '_').replace('-', '_')}"),
                        config=config, consumer=consumer)


def publish(client: redis.Redis, n: int, start: int = 0) -> list[str]:
    ids = []
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + n):
        msg = event(i)
        ids.append(msg.id)
        pipe.xadd(IN, encode(msg))
    pipe.execute()
    return ids


def out_ids(client: redis.Redis, stream: str = OUT) -> list[str]:
    return [decode(fields).id for _, fields in client.xrange(stream)]


def sample(loop: ConsumerLoop, name: str, **labels: str) -> float:
    """A metric's value as a scrape would see it."""
    value = loop.metrics.registry.get_sample_value(f"{loop.metrics.prefix}_{name}", labels)
    return value or 0.0


async def run_until(loops: list[ConsumerLoop], done: Any, timeout_s: float = 20.0) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop.run(stop)) for loop in loops]
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while not await done():
            for task in tasks:  # a crashed loop ends the wait at once, with its error
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("timed out waiting for the loops")
            await asyncio.sleep(0.01)  # polling a condition with a deadline
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for loop in loops:
            await loop.redis.aclose()


def test_competing_consumers_each_message_handled_exactly_once(redis_url: str, rclient: redis.Redis) -> None:
    sent = publish(rclient, 3000)
    seen_a: list[str] = []
    seen_b: list[str] = []
    loop_a = make_loop(redis_url, passthrough(seen=seen_a), "host-a:1", read_count=50)
    loop_b = make_loop(redis_url, passthrough(seen=seen_b), "host-b:2", read_count=50)

    async def done() -> bool:
        return rclient.xlen(OUT) >= len(sent)

    asyncio.run(run_until([loop_a, loop_b], done))
    assert seen_a and seen_b, "both consumers should have taken a share"
    assert not set(seen_a) & set(seen_b)
    assert sorted(seen_a + seen_b) == sorted(sent)
    assert sorted(out_ids(rclient)) == sorted(derive_id(i, "out") for i in sent)
    assert rclient.xpending(IN, "svc")["pending"] == 0


def test_slow_consumer_whose_entry_was_claimed_writes_nothing(redis_url: str, rclient: redis.Redis) -> None:
    """A consumer that is alive but slow loses its entry to a claim; only one output results."""
    (sent,) = publish(rclient, 1)

    async def scenario() -> None:
        gate = asyncio.Event()
        in_handler = asyncio.Event()

        async def slow(msg: Message, delivery: Delivery) -> list[Output]:
            in_handler.set()
            await gate.wait()
            return passthrough()(msg, delivery)

        slow_loop = make_loop(redis_url, slow, "slow:1")
        fast_loop = make_loop(redis_url, passthrough(), "fast:2", claim_idle_ms=0)
        await slow_loop.ensure_groups()
        slow_task = asyncio.create_task(slow_loop.read_once(">", block_ms=None))
        await in_handler.wait()
        assert await fast_loop.claim_idle() == 1  # takes over and handles it
        gate.set()
        await slow_task  # the slow one's commit finds the entry no longer its own
        assert sample(slow_loop, "messages_total", stream=IN, outcome="skipped") == 1
        for loop in (slow_loop, fast_loop):
            await loop.redis.aclose()

    asyncio.run(scenario())
    assert out_ids(rclient) == [derive_id(sent, "out")]
    assert rclient.xpending(IN, "svc")["pending"] == 0


def test_crash_between_handle_and_commit_writes_no_duplicate(redis_url: str, rclient: redis.Redis) -> None:
    """Death after handling but before the commit: nothing was written, the entry stays pending,
    another consumer claims it, and the output appears exactly once."""
    sent = publish(rclient, 5)

    class Died(BaseException):
        pass

    async def scenario() -> None:
        dying = make_loop(redis_url, passthrough(), "dying:1")

        async def die(*args: Any, **kwargs: Any) -> Any:
            raise Died()

        dying._commit = die  # type: ignore[assignment]
        await dying.ensure_groups()
        with pytest.raises(Died):
            await dying.read_once(">", block_ms=None)
        assert rclient.xlen(OUT) == 0
        assert rclient.xpending(IN, "svc")["pending"] == 5
        heir = make_loop(redis_url, passthrough(), "heir:2", claim_idle_ms=0)
        assert await heir.claim_idle() == 5
        assert await heir.claim_idle() == 0
        for loop in (dying, heir):
            await loop.redis.aclose()

    asyncio.run(scenario())
    assert sorted(out_ids(rclient)) == sorted(derive_id(i, "out") for i in sent)


def test_same_message_twice_is_dropped_downstream(redis_url: str, rclient: redis.Redis) -> None:
    msg = event(1)
    rclient.xadd(IN, encode(msg))
    rclient.xadd(IN, encode(msg))  # an upstream replay: same message id, new entry
    loop = make_loop(redis_url, passthrough(), "c:1")

    async def done() -> bool:
        return sample(loop, "messages_total", stream=IN, outcome="duplicate") == 1

    asyncio.run(run_until([loop], done))
    assert out_ids(rclient) == [derive_id(msg.id, "out")]
    assert rclient.xpending(IN, "svc")["pending"] == 0


POISON: list[tuple[dict[bytes, bytes], str]] = [
    ({b"foo": b"bar"}, "lacks the 'type' or 'data' field"),
    ({b"type": b"no.such.type", b"data": b"{}"}, "unknown message type 'no.such.type'"),
    ({b"type": b"event", b"data": b"{not json"}, "Invalid JSON"),
    ({b"type": b"event", b"data": b'{"id":"x"}'}, "missing field(s)"),
]


def test_poison_messages_go_to_the_dlq_and_the_loop_goes_on(redis_url: str, rclient: redis.Redis) -> None:
    extra = orjson.loads(encode(event(0))[b"data"])
    extra["surprise"] = 1
    cases = POISON + [({b"type": b"event", b"data": orjson.dumps(extra)}, "surprise: Extra inputs are not permitted")]
    good_before = publish(rclient, 3)
    for fields, _ in cases:
        rclient.xadd(IN, fields)
    good_after = publish(rclient, 3, start=10)

    def refuse(msg: Message, delivery: Delivery) -> list[Output]:
        if msg.trace.id == "refuse-me":
            raise PoisonMessage("handler refused: negative amount")
        return passthrough()(msg, delivery)

    refused = event(99).model_copy(update={"trace": event(99).trace.model_copy(update={"id": "refuse-me"})})
    rclient.xadd(IN, encode(refused))
    loop = make_loop(redis_url, refuse, "c:1")

    async def done() -> bool:
        return rclient.xlen(OUT) == 6 and rclient.xlen(streams.dlq(IN)) == len(cases) + 1

    asyncio.run(run_until([loop], done))
    assert sorted(out_ids(rclient)) == sorted(derive_id(i, "out") for i in good_before + good_after)
    dead = rclient.xrange(streams.dlq(IN))
    for (fields, expected), (_, record) in zip(cases, dead, strict=False):
        assert expected in record[b"error"].decode(), record
        assert record[b"source_stream"] == IN.encode()
        assert record.get(b"data") == fields.get(b"data")
    assert b"handler refused" in dead[-1][1][b"error"]
    assert rclient.xpending(IN, "svc")["pending"] == 0
    assert sample(loop, "dlq_total", stream=IN) == len(cases) + 1


def test_transient_failure_is_retried_then_dead_lettered_past_the_limit(redis_url: str, rclient: redis.Redis) -> None:
    flaky, broken = event(1), event(2)
    rclient.xadd(IN, encode(flaky))
    rclient.xadd(IN, encode(broken))
    attempts: dict[str, int] = {}

    def handle(msg: Message, delivery: Delivery) -> list[Output]:
        attempts[msg.id] = attempts.get(msg.id, 0) + 1
        if msg.id == flaky.id and attempts[msg.id] < 3:
            raise TimeoutError("exchange timed out")
        if msg.id == broken.id:
            raise ConnectionResetError("still broken")
        return passthrough()(msg, delivery)

    async def scenario() -> None:
        loop = make_loop(redis_url, handle, "c:1", claim_idle_ms=0, max_deliveries=3)
        await loop.ensure_groups()
        await loop.read_once(">", block_ms=None)
        for _ in range(4):  # each round re-delivers what is still pending
            await loop.claim_idle()
        await loop.redis.aclose()

    asyncio.run(scenario())
    assert attempts == {flaky.id: 3, broken.id: 3}
    assert out_ids(rclient) == [derive_id(flaky.id, "out")]
    (_, record), = rclient.xrange(streams.dlq(IN))
    assert b"delivered 4 times (limit 3)" in record[b"error"]
    assert b"ConnectionResetError: still broken" in record[b"error"]
    assert rclient.xpending(IN, "svc")["pending"] == 0


def test_raw_batches_are_handed_over_undecoded_and_a_failed_one_is_read_again(redis_url: str,
                                                                              rclient: redis.Redis) -> None:
    """raw_batch mode (the trading archive): a whole batch as read, no decode; when the call raises,
    nothing is acked and the claim hands the batch over again."""
    ids = publish(rclient, 5)
    rclient.xadd(IN, {b"type": b"no.such.type", b"data": b"{}"})  # not decoded, so not dead-lettered here
    batches: list[list[str]] = []
    fail = [True]

    def raw(stream: str, entries: list[tuple[str, Any]]) -> None:
        if fail[0]:
            fail[0] = False
            raise OSError("disk full")
        batches.append([orjson.loads(f[b"data"]).get("id", "?") for _, f in entries])

    async def scenario() -> None:
        loop = ConsumerLoop(aioredis.Redis.from_url(redis_url), group="svc", streams_in=[IN], handler=passthrough(),
                            metrics=ServiceMetrics("t_raw"), config=LoopConfig(block_ms=20, claim_idle_ms=0),
                            consumer="c:1", raw_batch=raw)
        await loop.ensure_groups()
        await loop.read_once(">", block_ms=None)
        assert rclient.xpending(IN, "svc")["pending"] == 6  # the failed batch is still pending
        await loop.claim_idle()
        await loop.flush()
        assert sample(loop, "messages_total", stream=IN, outcome="retry") == 6
        await loop.redis.aclose()

    asyncio.run(scenario())
    assert batches == [ids + ["?"]]
    assert rclient.xpending(IN, "svc")["pending"] == 0
    assert not rclient.exists(OUT) and not rclient.exists(streams.dlq(IN))


def test_fatal_error_propagates_without_ack(redis_url: str, rclient: redis.Redis) -> None:
    publish(rclient, 1)

    def handle(msg: Message, delivery: Delivery) -> list[Output]:
        raise FatalError("position book out of balance")

    async def scenario() -> None:
        loop = make_loop(redis_url, handle, "c:1")
        with pytest.raises(FatalError):
            await run_until([loop], lambda: asyncio.sleep(0, False), timeout_s=5)

    asyncio.run(scenario())
    assert rclient.xpending(IN, "svc")["pending"] == 1
    assert rclient.xlen(OUT) == 0


def test_own_pending_entries_are_handled_first_after_a_restart(redis_url: str, rclient: redis.Redis) -> None:
    """Entries read but never committed by this consumer (e.g. the commit was lost when Redis
    went away) are handled on the next start, before new ones."""
    rclient.xgroup_create(IN, "svc", id="0", mkstream=True)
    sent = publish(rclient, 4)
    rclient.xreadgroup("svc", "c:1", {IN: ">"}, count=4)  # delivered, never acked
    loop = make_loop(redis_url, passthrough(), "c:1")

    async def done() -> bool:
        return rclient.xlen(OUT) == 4

    asyncio.run(run_until([loop], done))
    assert out_ids(rclient) == [derive_id(i, "out") for i in sent]


def test_market_data_is_trimmed_orders_are_not(redis_url: str, rclient: redis.Redis) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        pub = Publisher(client, maxlen={streams.BOOK: 100})
        for i in range(2000):
            await pub.publish(streams.BOOK, event(i))
            await pub.publish(streams.ORDERS_SHADOW, event(i))
        await client.aclose()

    asyncio.run(scenario())
    assert rclient.xlen(streams.BOOK) < 400  # MAXLEN ~ trims in whole nodes
    assert rclient.xlen(streams.ORDERS_SHADOW) == 2000
