"""The kernel's stateful pieces against a real Redis: the duplicate filter before the handler, state
writes committed with the ack, IfKey, timers, rebuild, the lease and its fence (issue 9).

In-process tests drive a ConsumerLoop directly; the process tests run tests/example_service.py,
the pattern every trading service copies, and SIGKILL / SIGSTOP it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from tests.conftest import spawn, wait_until
from tests.example_service import FILLS, OUT, SEEN, SNAPSHOT, TOTALS
from tests.stubs import TRACE, event
from tradestack import streams
from tradestack.bus import Committer, ConsumerLoop, Delivery, LoopConfig, StreamSpec
from tradestack.effects import HashSet, IfKey, Output, SetKey
from tradestack.embedded_redis import free_port
from tradestack.errors import FatalError
from tradestack.lease import Lease, LeaseLost
from tradestack.messages import Message, TradingEvent, decode, derive_id, encode, new_id
from tradestack.metrics import ServiceMetrics
from tradestack.rebuild import Rebuild, fold_history

IN, OUT_S, STATE = "k:in", "k:out", "k:state"


def loop_for(url: str, handler: Any, consumer: str = "c:1", *, stateful: bool = False, lease: Lease | None = None,
             streams_in: list[Any] | None = None, **cfg: Any) -> ConsumerLoop:
    config = LoopConfig(**{"block_ms": 20, "claim_every_s": 3600, "metrics_every_s": 3600, **cfg})
    client = lease.redis if lease is not None else aioredis.Redis.from_url(url)
    return ConsumerLoop(client, group="svc", streams_in=streams_in or [IN], handler=handler,
                        metrics=ServiceMetrics(f"k_{consumer.replace(':', '_')}_{new_id()[:8]}"), config=config,
                        consumer=consumer, stateful=stateful, lease=lease)


def with_state(seen: list[str]) -> Any:
    """Handler: one output and one hash write per message."""
    def handle(msg: Message, delivery: Delivery) -> list[Any]:
        seen.append(msg.id)
        out = msg.model_copy(update={"id": derive_id(msg.id, "out")})
        return [Output(OUT_S, out), HashSet(STATE, {msg.id: "1"})]
    return handle


def sample(loop: ConsumerLoop, name: str, **labels: str) -> float:
    return loop.metrics.registry.get_sample_value(f"{loop.metrics.prefix}_{name}", labels) or 0.0


# -- the duplicate filter runs before the handler ------------------------------------------


def test_a_replayed_message_never_reaches_the_handler(redis_url: str, rclient: redis.Redis) -> None:
    """100 copies of one message in one batch, then a replay after the loop restarted (memory
    gone, only the Redis marker left): the handler sees it once, the output is written once."""
    msg = event(1)
    for _ in range(100):
        rclient.xadd(IN, encode(msg))
    seen: list[str] = []

    async def scenario() -> None:
        first = loop_for(redis_url, with_state(seen))
        await first.ensure_groups()
        await first.run_until_idle(asyncio.Event(), redis_wait_s=0)
        rclient.xadd(IN, encode(msg))  # an upstream replay, hours later, to a fresh process
        second = loop_for(redis_url, with_state(seen))
        await second.run_until_idle(asyncio.Event(), redis_wait_s=0)
        assert sample(first, "messages_total", stream=IN, outcome="duplicate") == 99
        assert sample(second, "messages_total", stream=IN, outcome="duplicate") == 1
        for loop in (first, second):
            await loop.redis.aclose()

    asyncio.run(scenario())
    assert seen == [msg.id]
    assert rclient.xlen(OUT_S) == 1
    assert rclient.xpending(IN, "svc")["pending"] == 0


def test_market_data_gets_no_duplicate_marker(redis_url: str, rclient: redis.Redis) -> None:
    for i in range(50):
        rclient.xadd(streams.BOOK, encode(event(i)))
        rclient.xadd(IN, encode(event(100 + i)))
    seen: list[str] = []

    async def scenario() -> None:
        loop = loop_for(redis_url, with_state(seen), streams_in=[StreamSpec(streams.BOOK, start="0"), IN])
        await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        await loop.redis.aclose()

    asyncio.run(scenario())
    assert len(seen) == 100
    assert len(rclient.keys(f"{streams.DEDUPE_PREFIX}svc:*")) == 50  # only the k:in messages
    # a market-data group starts at "$" by default: its history is folded by a rebuild, not re-read
    assert StreamSpec(streams.BOOK).resolved("0") == StreamSpec(streams.BOOK, "$", False)
    assert StreamSpec(IN).resolved("0") == StreamSpec(IN, "0", True)


# -- state writes commit with the ack ---------------------------------------------------------


def test_state_write_and_output_are_both_absent_after_a_crash_before_the_commit(
        redis_url: str, rclient: redis.Redis) -> None:
    sent = [event(i) for i in range(5)]
    for msg in sent:
        rclient.xadd(IN, encode(msg))

    class Died(BaseException):
        pass

    async def scenario() -> None:
        dying = loop_for(redis_url, with_state([]))

        async def die(*args: Any, **kwargs: Any) -> Any:
            raise Died()

        dying._commit = die  # type: ignore[assignment]
        await dying.ensure_groups()
        with pytest.raises(Died):
            await dying.read_once(">", block_ms=None)
        assert rclient.xlen(OUT_S) == 0 and not rclient.exists(STATE)
        heir = loop_for(redis_url, with_state([]), "heir:2", claim_idle_ms=0)
        assert await heir.claim_idle() == 5
        for loop in (dying, heir):
            await loop.redis.aclose()

    asyncio.run(scenario())
    assert sorted(decode(f).id for _, f in rclient.xrange(OUT_S)) == sorted(derive_id(m.id, "out") for m in sent)
    assert set(rclient.hkeys(STATE)) == {m.id.encode() for m in sent}


def test_timer_effects_commit_without_an_input(redis_url: str, rclient: redis.Redis) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        committer = Committer(client, group="svc", consumer="c:1", metrics=ServiceMetrics("k_timer"))
        snap = TradingEvent(id=new_id(), ts=1, src="t", trace=TRACE, kind="snapshot", severity="info",
                            message="m", details={})
        statuses = await committer.commit(None, [("", "", "ok", [SetKey("k:snap", "1", ttl_ms=60_000),
                                                                 Output(OUT_S, snap)])])
        assert statuses == [1]
        await client.aclose()

    asyncio.run(scenario())
    assert rclient.get("k:snap") == b"1" and 0 < rclient.pttl("k:snap") <= 60_000
    assert rclient.xlen(OUT_S) == 1


def test_ifkey_picks_its_branch_inside_the_commit(redis_url: str, rclient: redis.Redis) -> None:
    """The kill switch set after the handler ran but before the commit: the blocked branch is
    what gets written, and the handler learns which branch was taken."""
    msgs = [event(1), event(2)]
    for msg in msgs:
        rclient.xadd(IN, encode(msg))
    chosen: list[bool | None] = []

    def handle(msg: Message, delivery: Delivery) -> list[Any]:
        if msg.id == msgs[0].id:
            rclient.set(streams.KILL, "1")  # flips between this handler and the batch's commit
        accepted = msg.model_copy(update={"id": derive_id(msg.id, "accepted")})
        blocked = msg.model_copy(update={"id": derive_id(msg.id, "blocked")})
        return [IfKey(streams.KILL, "1", then=(Output("k:blocked", blocked),),
                      otherwise=(Output("k:accepted", accepted),), on_chosen=chosen.append)]

    async def scenario() -> None:
        loop = loop_for(redis_url, handle)
        await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        await loop.redis.aclose()

    asyncio.run(scenario())
    assert chosen == [True, True]
    assert rclient.xlen("k:accepted") == 0 and rclient.xlen("k:blocked") == 2


# -- the exception tree decides -------------------------------------------------------------


def test_a_handler_bug_is_dead_lettered_at_once_and_stops_a_stateful_loop(redis_url: str, rclient: redis.Redis) -> None:
    good, bad, after = event(1), event(2), event(3)
    for msg in (good, bad, after):
        rclient.xadd(IN, encode(msg))
    calls: list[str] = []

    def handle(msg: Message, delivery: Delivery) -> list[Any]:
        calls.append(msg.id)
        if msg.id == bad.id:
            raise KeyError("an invariant the author forgot")
        return with_state([])(msg, delivery)

    async def scenario(stateful: bool) -> None:
        loop = loop_for(redis_url, handle, stateful=stateful)
        if stateful:
            with pytest.raises(FatalError, match="handler bug"):
                await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        else:
            await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        assert sample(loop, "handler_errors_total", stream=IN) == 1
        await loop.redis.aclose()

    asyncio.run(scenario(stateful=True))
    # what came before the bug is committed, the bad one is in the DLQ (once), the rest is left pending
    assert calls == [good.id, bad.id]
    assert rclient.xlen(OUT_S) == 1
    (_, record), = rclient.xrange(streams.dlq(IN))
    assert record[b"error"].startswith(b"bug: KeyError")
    assert rclient.xpending(IN, "svc")["pending"] == 1
    # after the restart the rest is handled; the bug is not retried
    calls.clear()

    async def restart() -> None:
        loop = loop_for(redis_url, handle, stateful=True)
        await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        await loop.redis.aclose()

    asyncio.run(restart())
    assert calls == [after.id]
    assert rclient.xlen(OUT_S) == 2 and rclient.xlen(streams.dlq(IN)) == 1


def test_a_lost_commit_stops_a_stateful_loop_and_is_redone_by_a_stateless_one(
        redis_url: str, rclient: redis.Redis) -> None:
    """Redis drops the connection during the commit call and the script never ran: a stateless
    loop handles the entries again after the reconnect; a stateful one stops (its memory holds
    changes Redis does not), so the restart rebuilds."""
    sent = [event(i) for i in range(3)]
    for msg in sent:
        rclient.xadd(IN, encode(msg))

    async def scenario(stateful: bool) -> list[str]:
        seen: list[str] = []
        loop = loop_for(redis_url, with_state(seen), stateful=stateful, claim_idle_ms=10)
        real = loop._commit
        failures = {"left": 1}

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise redis.exceptions.ConnectionError("connection reset by peer")
            return await real(*args, **kwargs)

        loop._commit = flaky  # type: ignore[assignment]
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        try:
            for _ in range(500):
                if task.done() or rclient.xlen(OUT_S) >= len(sent):
                    break
                await asyncio.sleep(0.01)  # polling a condition with a deadline
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await loop.redis.aclose()
        if stateful:
            assert isinstance(task.exception(), FatalError)
        else:
            assert task.exception() is None
        return seen

    seen = asyncio.run(scenario(stateful=True))
    assert rclient.xlen(OUT_S) == 0 and rclient.xpending(IN, "svc")["pending"] == 3
    assert len(seen) == 3
    seen = asyncio.run(scenario(stateful=False))
    assert sorted(seen) == sorted(m.id for m in sent * 2)  # handled, commit lost, handled again
    assert rclient.xlen(OUT_S) == 3 and rclient.xpending(IN, "svc")["pending"] == 0


# -- rebuild --------------------------------------------------------------------------------


def test_rebuild_folds_exactly_what_the_group_has_handled(redis_url: str, rclient: redis.Redis) -> None:
    """History up to the group's last-delivered id, minus what is still pending; the loop then
    handles the pending and the new entries: every entry counted once."""
    ids = [rclient.xadd(IN, encode(event(i))) for i in range(10)]
    rclient.xgroup_create(IN, "svc", id="0")
    rclient.xreadgroup("svc", "c:1", {IN: ">"}, count=6)
    rclient.xack(IN, "svc", *ids[:4])  # 0-3 handled, 4-5 pending, 6-9 new
    folded: list[str] = []

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        result = await fold_history(client, Rebuild(IN, lambda m, e: folded.append(e), group="svc"))
        assert result.entries == 4
        everything = await fold_history(client, Rebuild(IN, lambda m, e: None))
        assert everything.entries == 10
        with_pending = await fold_history(client, Rebuild(IN, lambda m, e: None, group="svc", include_pending=True))
        assert with_pending.entries == 6  # 0-5: what was read, handled or not; never the unread 6-9
        since = await fold_history(client, Rebuild(IN, lambda m, e: None, since_ms=int(ids[8].split(b"-")[0])))
        assert 2 <= since.entries <= 10
        await client.aclose()

    asyncio.run(scenario())
    assert folded == [i.decode() for i in ids[:4]]


# -- the lease -------------------------------------------------------------------------------


def test_a_stale_lease_holder_writes_nothing(redis_url: str, rclient: redis.Redis) -> None:
    rclient.xadd(IN, encode(event(1)))

    async def scenario() -> None:
        a = Lease(aioredis.Redis.from_url(redis_url), "svc", "host-a:1", ttl_ms=500)
        b = Lease(aioredis.Redis.from_url(redis_url), "svc", "host-b:2", ttl_ms=500)
        assert await a.try_acquire()
        assert not await b.try_acquire()
        loop = loop_for(redis_url, with_state([]), lease=a)
        await loop.ensure_groups()
        rclient.delete("lease:svc")  # a's TTL ran out while it was paused
        assert await b.try_acquire() and b.token == a.token + 1
        with pytest.raises(LeaseLost):
            await loop.read_once(">", block_ms=None)  # a wakes up and tries to commit
        with pytest.raises(LeaseLost):
            await a.renew()
        await b.release()
        assert await rclient_async_get(redis_url, "lease:svc") is None
        await a.redis.aclose()
        await b.redis.aclose()

    asyncio.run(scenario())
    assert rclient.xlen(OUT_S) == 0 and not rclient.exists(STATE)
    assert rclient.xpending(IN, "svc")["pending"] == 1  # left for the new holder


async def rclient_async_get(url: str, key: str) -> Any:
    client = aioredis.Redis.from_url(url)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


# -- the example service, as a process -------------------------------------------------------


def start_example(redis_url: str, **env: str) -> subprocess.Popen[bytes]:
    return spawn(["-m", "tests.example_service"],
                 {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "LOG_LEVEL": "WARNING",
                  "LEASE_TTL_MS": "1000", "LEASE_POLL_MS": "50", "CLAIM_IDLE_MS": "300", "CLAIM_EVERY_S": "0.2",
                  "BLOCK_MS": "50", **env})


def fill(i: int, market: str = "BTC-EUR") -> TradingEvent:
    return TradingEvent(id=new_id(), ts=1_700_000_000_000 + i, src="test", trace=TRACE, kind="fill",
                        severity="info", message="fill", details={"market": market, "amount": f"{i}.5"})


def publish_fills(client: redis.Redis, fills: list[TradingEvent]) -> None:
    pipe = client.pipeline(transaction=False)
    for f in fills:
        pipe.xadd(FILLS, encode(f))
    pipe.execute()


def parents_of_outputs(client: redis.Redis) -> list[str]:
    return [decode(f).details["fill"] for _, f in client.xrange(OUT)]  # type: ignore[attr-defined]


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(10)


def test_example_service_rebuilds_the_state_it_had_live(redis_url: str, rclient: redis.Redis) -> None:
    fills = [fill(i, "BTC-EUR" if i % 3 else "ETH-EUR") for i in range(60)]
    publish_fills(rclient, fills[:40])
    proc = start_example(redis_url)
    try:
        wait_until(lambda: rclient.xlen(OUT) == 40, what="40 outputs")
        wait_until(lambda: rclient.get(SNAPSHOT) and orjson.loads(rclient.get(SNAPSHOT))["count"] == 40,
                   what="the live snapshot")
        live = orjson.loads(rclient.get(SNAPSHOT))
    finally:
        kill(proc, signal.SIGTERM)
    assert proc.returncode == 0
    rclient.delete(SNAPSHOT)
    proc = start_example(redis_url)
    try:
        wait_until(lambda: rclient.get(SNAPSHOT), what="the rebuilt snapshot")
        assert orjson.loads(rclient.get(SNAPSHOT)) == live  # rebuilt from history = what it had live
        publish_fills(rclient, fills[40:])
        wait_until(lambda: rclient.xlen(OUT) == 60, what="60 outputs")
        wait_until(lambda: orjson.loads(rclient.get(SNAPSHOT))["count"] == 60, what="the final snapshot")
    finally:
        kill(proc, signal.SIGTERM)
    expected: dict[str, Decimal] = {}
    for f in fills:
        expected[f.details["market"]] = expected.get(f.details["market"], Decimal(0)) + Decimal(f.details["amount"])
    assert {k.decode(): Decimal(v.decode()) for k, v in rclient.hgetall(TOTALS).items()} == expected
    assert sorted(parents_of_outputs(rclient)) == sorted(f.id for f in fills)


def test_sigkill_at_any_point_leaves_state_and_outputs_in_step(redis_url: str, rclient: redis.Redis) -> None:
    """SIGKILL while fills stream in: at that moment the fills whose output exists are exactly
    those marked in the state hash; after the restart every fill is booked once."""
    fills = [fill(i) for i in range(400)]
    publish_fills(rclient, fills[:200])
    proc = start_example(redis_url, READ_COUNT="7")
    try:
        wait_until(lambda: rclient.xlen(OUT) >= 50, what="some outputs")
        publish_fills(rclient, fills[200:])
        kill(proc)  # mid-stream
        seen = {k.decode() for k in rclient.hkeys(SEEN)}
        assert seen == set(parents_of_outputs(rclient))  # both visible or both absent, per input
        assert 50 <= len(seen) < 400
        proc = start_example(redis_url)
        wait_until(lambda: rclient.xlen(OUT) == 400, what="every fill handled after the restart")
    finally:
        kill(proc, signal.SIGTERM)
    assert {k.decode() for k in rclient.hkeys(SEEN)} == {f.id for f in fills}
    total = sum(Decimal(f.details["amount"]) for f in fills)
    assert Decimal(rclient.hget(TOTALS, "BTC-EUR").decode()) == total


def test_standby_takes_over_and_a_paused_holder_writes_nothing(redis_url: str, rclient: redis.Redis) -> None:
    """Two instances: one acts, one waits. SIGSTOP the active one past its lease: the standby
    takes over; a fill delivered to the paused one is refused when it wakes (its token is stale,
    it stops) and is handled once, by the new holder."""
    a = start_example(redis_url)
    b = None
    try:
        wait_until(lambda: rclient.get("lease:example_tally"), what="a lease holder")
        first_holder = rclient.get("lease:example_tally").decode()
        assert first_holder.endswith(f":{a.pid}")
        b = start_example(redis_url)
        publish_fills(rclient, [fill(1)])
        wait_until(lambda: rclient.xlen(OUT) == 1, what="the first fill handled by the holder")
        os.kill(a.pid, signal.SIGSTOP)
        wait_until(lambda: (rclient.get("lease:example_tally") or b"").endswith(f":{b.pid}".encode()),
                   timeout_s=10, what="the standby to take over")
        second = rclient.get("lease:example_tally").decode()
        assert int(second.split(":")[0]) > int(first_holder.split(":")[0])
        publish_fills(rclient, [fill(2), fill(3)])
        os.kill(a.pid, signal.SIGCONT)
        wait_until(lambda: rclient.xlen(OUT) == 3, what="every fill handled by the new holder")
        wait_until(lambda: a.poll() is not None, what="the stale holder to stop")
        assert a.returncode != 0  # LeaseLost: it stopped instead of acting
        assert len(parents_of_outputs(rclient)) == len(set(parents_of_outputs(rclient))) == 3
    finally:
        for proc in (a, b):
            if proc is not None:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
                kill(proc, signal.SIGTERM)


def test_a_long_batch_of_heavy_handlers_does_not_starve_the_lease_renewal(redis_url: str, rclient: redis.Redis) -> None:
    """40 messages of 25 ms of CPU each (1 s, twice the lease's TTL) in one batch: the loop lets the
    renewal run in between, so the lease holds and the batch commits."""
    import time as _time

    for i in range(40):
        rclient.xadd(IN, encode(event(i)))

    def heavy(msg: Message, delivery: Delivery) -> list[Any]:
        _time.sleep(0.025)  # stands for CPU work in the handler (not a synchronisation)
        return [Output(OUT_S, msg.model_copy(update={"id": derive_id(msg.id, "out")}))]

    async def scenario() -> None:
        lease = Lease(aioredis.Redis.from_url(redis_url), "svc", "host-a:1", ttl_ms=500)
        assert await lease.try_acquire()
        stop = asyncio.Event()

        async def renew() -> None:
            while not stop.is_set():
                await lease.renew()  # LeaseLost here fails the test
                await asyncio.sleep(lease.ttl_ms / 3000)  # the runtime's renewal period

        renewer = asyncio.create_task(renew())
        loop = loop_for(redis_url, heavy, lease=lease, read_count=100)
        await loop.ensure_groups()
        await loop.read_once(">", block_ms=None)
        stop.set()
        await renewer
        await lease.release()
        await lease.redis.aclose()

    asyncio.run(scenario())
    assert rclient.xlen(OUT_S) == 40


def test_a_start_up_longer_than_the_lease_ttl_keeps_the_lease(redis_url: str, rclient: redis.Redis) -> None:
    """The lease is renewed from the moment it is held, start hooks and rebuilds included: a start-up
    that outlasts the TTL (a long rebuild, a hook waiting out a 105 ban) still commits afterwards,
    rather than crashing on LeaseLost at its first commit (found: an executor whose start-up hit a ban)."""
    from tradestack.config import CommonSettings
    from tradestack.service import Service

    settings = CommonSettings(redis_url=redis_url, lease_ttl_ms=500, heartbeat_every_s=0.2)
    rclient.xadd(IN, encode(event(1)))

    async def scenario() -> int:
        svc = Service("svc", settings, "t_slow_start")
        svc.use_lease()

        async def slow_start() -> None:
            await asyncio.sleep(1.5)  # the slow start-up under test (three TTLs), not a synchronisation

        svc.on_start(slow_start)
        svc.consume([IN], lambda msg, d: [Output(OUT_S, msg.model_copy(update={"id": derive_id(msg.id, "o")}))])
        task = asyncio.create_task(svc.run())
        deadline = asyncio.get_running_loop().time() + 20
        while not rclient.xlen(OUT_S):
            assert not task.done(), "the service stopped"
            assert asyncio.get_running_loop().time() < deadline, "no output"
            await asyncio.sleep(0.02)  # polling a condition with a deadline
        svc.request_stop("test done")
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(scenario()) == 0
    assert rclient.xlen(OUT_S) == 1


def test_a_service_is_running_only_once_prepared(redis_url: str, rclient: redis.Redis) -> None:
    """Start hooks and rebuilds run while the state says starting: `status`, preflight and READY=1
    mean ready to consume, not merely connected."""
    from tradestack.config import CommonSettings
    from tradestack.service import Service

    settings = CommonSettings(redis_url=redis_url, heartbeat_every_s=0.2)

    async def scenario() -> list[str]:
        svc = Service("svc", settings, "t_prepared")
        hook_entered, release = asyncio.Event(), asyncio.Event()
        seen: list[str] = []

        async def start() -> None:
            hook_entered.set()
            await release.wait()

        svc.on_start(start)
        svc.consume([IN], lambda msg, d: [])
        task = asyncio.create_task(svc.run())
        await asyncio.wait_for(hook_entered.wait(), 10)
        deadline = asyncio.get_running_loop().time() + 1.0
        while asyncio.get_running_loop().time() < deadline:  # the kill watcher has long answered by then
            seen.append(svc.state)
            await asyncio.sleep(0.05)  # sampling the state while the hook holds, bounded
        release.set()
        while svc.state != "running":
            assert not task.done()
            await asyncio.sleep(0.02)  # polling a condition with a deadline (the wait_for below)
        seen.append(svc.state)
        svc.request_stop("test done")
        assert await asyncio.wait_for(task, 10) == 0
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert set(seen[:-1]) == {"starting"} and seen[-1] == "running"
