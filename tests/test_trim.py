"""Order and event streams trimmed by age (tradestack/trim.py): never an entry a consumer group has
not read and acked, never a stream nobody reads (unless allowed), never the newest entry."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from tradestack import trim as trim_module
from tradestack.clock import FakeClock
from tradestack.config import CommonSettings
from tradestack.service import Service
from tradestack.trim import DAY_MS, guarded_trim, parse_id, trim_point, trim_stream

T = TypeVar("T")

S = "orders:test"
OLD = [f"{1_000 + i}-0" for i in range(10)]
YOUNG = [f"{5_000 + i}-0" for i in range(5)]
NOW, AGE = 6_000, 2_000  # the age cut: 4000-0, between OLD and YOUNG


def run(redis_url: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def trim(redis_url: str, max_age_ms: int = AGE, now_ms: int = NOW, **kw: Any) -> int:
    return run(redis_url, lambda r: trim_stream(r, S, max_age_ms, now_ms, **kw))


def seed(r: redis.Redis, ids: list[str] | None = None, stream: str = S) -> None:
    for entry_id in ids if ids is not None else OLD + YOUNG:
        r.xadd(stream, {"type": "test", "data": "{}"}, id=entry_id)


def ids(r: redis.Redis, stream: str = S) -> list[str]:
    return [e[0].decode() for e in r.xrange(stream)]


def read(r: redis.Redis, group: str, count: int | None = None, *, ack: bool = True, start: str = "0") -> list[str]:
    """Create ``group`` (at ``start``) if needed, read ``count`` new entries (all when None), ack them."""
    try:
        r.xgroup_create(S, group, id=start)
    except redis.ResponseError as exc:
        assert "BUSYGROUP" in str(exc)
    got = r.xreadgroup(group, "c1", {S: ">"}, count=count or 10_000)
    entry_ids = [e[0].decode() for e in got[0][1]] if got else []
    if ack and entry_ids:
        r.xack(S, group, *entry_ids)
    return entry_ids


# -- the pure rule -----------------------------------------------------------------------------


def group(name: str, last: str, pending: int = 0) -> dict[str, Any]:
    """As redis-py returns XINFO GROUPS (bytes values)."""
    return {"name": name.encode(), "consumers": 1, "pending": pending, "last-delivered-id": last.encode()}


def test_ids_compare_as_ms_seq_pairs_not_as_strings() -> None:
    # As strings "10-0" < "9-0" and "5-10" < "5-9": a string min would cut past the group that read less.
    assert trim_point(10**9, 1, [group("a", "9-0"), group("b", "10-0")], {}) == "9-0"
    assert trim_point(10**9, 1, [group("a", "5-10"), group("b", "5-9")], {}) == "5-9"
    assert trim_point(10**9, 1, [group("a", "100-0", pending=1)], {"a": b"99-7"}) == "99-7"
    assert parse_id("1700000000000-3") == (1_700_000_000_000, 3) and parse_id(b"12") == (12, 0)
    with pytest.raises(ValueError):
        parse_id("12-x")


def test_the_point_is_the_smallest_bound() -> None:
    groups = [group("a", "5004-0"), group("b", "5004-0")]
    assert trim_point(NOW, AGE, groups, {}) == "4000-0"  # every group ahead: age decides
    assert trim_point(NOW, AGE, [*groups, group("c", "1002-0")], {}) == "1002-0"  # the laggard decides
    assert trim_point(NOW, AGE, [group("a", "5004-0", pending=2)], {"a": "1004-0"}) == "1004-0"  # pending
    assert trim_point(NOW, AGE, groups, {}, keep_from="1006-0") == "1006-0"  # the owner's floor
    assert trim_point(NOW, AGE, groups, {}, keep_from="4500-0") == "4000-0"


def test_nothing_to_trim() -> None:
    groups = [group("a", "5004-0")]
    assert trim_point(NOW, 0, groups, {}) is None  # max age 0: never
    assert trim_point(NOW, -5, groups, {}) is None
    assert trim_point(NOW, AGE, [], {}) is None  # nobody reads it
    assert trim_point(NOW, AGE, [], {}, trim_ungrouped=True) == "4000-0"  # unless allowed
    assert trim_point(NOW, AGE, [group("a", "0-0")], {}) is None  # a group that has read nothing
    assert trim_point(1_000, AGE, groups, {}) is None  # nothing is that old yet
    # Pending entries whose oldest id is unknown: cannot tell what is unacked, so nothing.
    assert trim_point(NOW, AGE, [group("a", "5004-0", pending=1)], {}) is None


@given(
    entries=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 3)), min_size=1, max_size=40, unique=True),
    groups_spec=st.lists(st.tuples(st.integers(-1, 39), st.sets(st.integers(0, 39), max_size=5)), max_size=4),
    now=st.integers(0, 100), age=st.integers(-5, 80), ungrouped=st.booleans(),
)
def test_no_entry_removed_is_young_unread_or_unacked(entries: list[tuple[int, int]],
                                                     groups_spec: list[tuple[int, set[int]]],
                                                     now: int, age: int, ungrouped: bool) -> None:
    stream = sorted(entries)
    groups, pending_oldest, facts = [], {}, []
    for n, (last_index, pending_indexes) in enumerate(groups_spec):
        last = stream[min(last_index, len(stream) - 1)] if last_index >= 0 else (0, 0)
        pending = sorted(stream[i] for i in pending_indexes if i < len(stream) and stream[i] <= last)
        groups.append(group(f"g{n}", f"{last[0]}-{last[1]}", pending=len(pending)))
        if pending:
            pending_oldest[f"g{n}"] = f"{pending[0][0]}-{pending[0][1]}"
        facts.append((last, set(pending)))
    point = trim_point(now, age, groups, pending_oldest, trim_ungrouped=ungrouped)
    if point is None:
        return
    assert age > 0 and (groups or ungrouped)
    cut = parse_id(point)
    for entry in (e for e in stream if e < cut):  # what XTRIM MINID removes
        assert entry[0] < now - age  # older than the max age
        for last, pending in facts:
            assert entry < last and entry not in pending and all(entry < p for p in pending)


# -- against Redis ------------------------------------------------------------------------------


def test_old_entries_every_group_has_read_and_acked_are_removed(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    read(rclient, "a")
    read(rclient, "b")
    assert trim(redis_url) == len(OLD)
    assert ids(rclient) == YOUNG
    assert trim(redis_url) == 0  # idempotent


def test_a_lagging_group_keeps_what_it_has_not_read(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    read(rclient, "fast")
    assert read(rclient, "slow", 3) == OLD[:3]
    assert trim(redis_url) == 2
    assert ids(rclient) == OLD[2:] + YOUNG  # its last-delivered entry and everything after it stay
    assert read(rclient, "slow") == OLD[3:] + YOUNG  # it reads on, missing nothing
    assert trim(redis_url) == len(OLD) - 2
    assert ids(rclient) == YOUNG


def test_pending_entries_are_kept(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    read(rclient, "g", ack=False)
    rclient.xack(S, "g", *[i for i in OLD + YOUNG if i != OLD[4]])
    assert trim(redis_url) == 4
    assert ids(rclient) == OLD[4:] + YOUNG
    # The unacked entry can still be taken over and handled, fields and all.
    _, claimed, *_ = rclient.xautoclaim(S, "g", "c2", 0, "0-0")
    assert [(e[0].decode(), e[1]) for e in claimed] == [(OLD[4], {b"type": b"test", b"data": b"{}"})]
    rclient.xack(S, "g", OLD[4])
    assert trim(redis_url) == len(OLD) - 4
    assert ids(rclient) == YOUNG


def test_a_group_that_has_read_nothing_keeps_everything(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    read(rclient, "a")
    rclient.xgroup_create(S, "new", id="0")
    assert trim(redis_url) == 0
    assert ids(rclient) == OLD + YOUNG


def test_a_group_created_at_the_end_skipped_the_history_on_purpose(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    rclient.xgroup_create(S, "tail", id="$")
    assert trim(redis_url) == len(OLD)


def test_a_stream_without_groups_is_left_alone(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    assert trim(redis_url) == 0
    assert ids(rclient) == OLD + YOUNG
    assert trim(redis_url, trim_ungrouped=True) == len(OLD)  # STREAM_TRIM_UNGROUPED=true
    assert ids(rclient) == YOUNG


def test_max_age_zero_trims_nothing(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    read(rclient, "a")
    assert trim(redis_url, max_age_ms=0) == 0
    assert trim(redis_url, max_age_ms=0, trim_ungrouped=True) == 0
    assert ids(rclient) == OLD + YOUNG


def test_the_newest_entry_is_kept(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient, OLD)
    read(rclient, "a")
    assert trim(redis_url) == len(OLD) - 1
    assert ids(rclient) == OLD[-1:]
    assert trim(redis_url, trim_ungrouped=True) == 0


def test_the_owners_floor_is_kept(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    read(rclient, "a")
    assert trim(redis_url, keep_from=OLD[6]) == 6
    assert ids(rclient) == OLD[6:] + YOUNG


def test_a_missing_stream_is_nothing_to_trim(redis_url: str) -> None:
    assert trim(redis_url) == 0


def test_the_guard_refuses_a_point_past_any_group(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient)
    read(rclient, "a", 3)
    assert run(redis_url, lambda r: guarded_trim(r, S, "4000-0")) == -1  # past a's last-delivered 1002-0
    read(rclient, "a")
    read(rclient, "b", ack=False)
    rclient.xack(S, "b", *OLD[1:], *YOUNG)
    assert run(redis_url, lambda r: guarded_trim(r, S, "4000-0")) == -1  # past b's pending 1000-0
    rclient.xack(S, "b", OLD[0])
    rclient.xgroup_destroy(S, "a")
    rclient.xgroup_destroy(S, "b")
    assert run(redis_url, lambda r: guarded_trim(r, S, "4000-0")) == -1  # no groups any more
    assert ids(rclient) == OLD + YOUNG
    assert run(redis_url, lambda r: guarded_trim(r, S, "4000-0", trim_ungrouped=True)) == len(OLD)


def test_the_guard_compares_ids_as_numbers(redis_url: str, rclient: redis.Redis) -> None:
    seed(rclient, ["998-0", "999-0", "1000-0", "1000-9", "1000-10"])
    read(rclient, "a", 2)  # last-delivered 999-0: as text "999-0" > "1000-0"
    assert run(redis_url, lambda r: guarded_trim(r, S, "1000-0")) == -1
    assert run(redis_url, lambda r: guarded_trim(r, S, "999-0")) == 1
    read(rclient, "a", 2)  # last-delivered 1000-9: as text "1000-9" > "1000-10"
    assert run(redis_url, lambda r: guarded_trim(r, S, "1000-10")) == -1
    assert run(redis_url, lambda r: guarded_trim(r, S, "1000-9")) == 2
    assert ids(rclient) == ["1000-9", "1000-10"]


def test_a_group_created_while_trimming_keeps_the_history(redis_url: str, rclient: redis.Redis,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Between reading the groups and trimming, a new service creates its group at 0: the guard sees it."""
    seed(rclient)
    read(rclient, "a")
    original = trim_module.read_facts
    calls = []

    async def racing(r: aioredis.Redis, stream: str) -> Any:
        facts = await original(r, stream)
        calls.append(stream)
        if len(calls) == 1:
            rclient.xgroup_create(S, "late", id="0")
        return facts

    monkeypatch.setattr(trim_module, "read_facts", racing)
    assert trim(redis_url) == 0
    assert len(calls) == 2  # refused, read again, nothing to trim
    assert ids(rclient) == OLD + YOUNG


# -- the service timer --------------------------------------------------------------------------


def test_service_trims_on_a_timer_and_counts(redis_url: str, rclient: redis.Redis) -> None:
    now = 10 * DAY_MS
    old = [f"{DAY_MS + i}-0" for i in range(4)]
    young = [f"{now - DAY_MS // 2 + i}-0" for i in range(2)]
    seed(rclient, old + young)
    read(rclient, "a")
    seed(rclient, old + young, stream="trading:test")  # no group: left alone

    async def main() -> float | None:
        client = aioredis.Redis.from_url(redis_url)
        settings = CommonSettings(redis_url=redis_url, stream_max_age_days=1)
        service = Service("trimmer", settings, "test_trim", clock=FakeClock(now), redis=client)
        service.trim_by_age([S, "trading:test"], every_s=60)
        timer, = service._timers
        assert timer.name == "trim_by_age" and timer.every_s == 60
        await service.run_timer(timer)
        await service.run_timer(timer)
        counted = service.metrics.registry.get_sample_value("test_trim_trimmed_total", {"stream": S})
        off = Service("off", CommonSettings(redis_url=redis_url, stream_max_age_days=0), "test_off", redis=client)
        off.trim_by_age([S])
        assert off._timers == []  # STREAM_MAX_AGE_DAYS=0: no timer at all
        await client.aclose()
        return counted

    counted = asyncio.run(main())
    assert ids(rclient) == young and counted == len(old)
    assert ids(rclient, "trading:test") == old + young


def test_a_redis_user_without_xtrim_is_logged_and_skipped(redis_url: str, rclient: redis.Redis) -> None:
    """deploy/redis/users.acl must grant the trimming service XTRIM (and XREVRANGE, EXISTS); until it
    does, the round logs ``trim_not_permitted`` and goes on instead of failing the timer every hour."""
    seed(rclient)
    read(rclient, "a")
    rclient.acl_setuser("notrim", enabled=True, passwords=["+pw"], keys=["*"], reset=True,
                        commands=["+@all", "-xtrim"])
    try:
        host_port = redis_url.split("://", 1)[1]
        url = f"redis://notrim:pw@{host_port}"
        removed = run(url, lambda r: trim_module.trim_round(r, [S], AGE, NOW))
        assert removed == {} and ids(rclient) == OLD + YOUNG
    finally:
        rclient.acl_deluser("notrim")
