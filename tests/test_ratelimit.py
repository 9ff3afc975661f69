"""The rate-limit budget shared in Redis by every process of an API key or IP (tradestack/ratelimit.py,
issue 12 item 8). The scripts run on a real Redis with a fake clock; the end-to-end case runs two
signed clients of one key against the sandbox with a small limit, on the same fake clock, so the
windows of both sides line up without depending on the wall clock."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

import pytest
import redis.asyncio as aioredis

from sandbox.server.runner import run_sandbox
from sandbox.server.settings import SandboxSettings
from tradestack.bitvavo.private import BitvavoPrivate
from tradestack.bitvavo.rest import BitvavoRest
from tradestack.clock import FakeClock
from tradestack.config import CommonSettings
from tradestack.errors import ConfigError
from tradestack.ratelimit import SharedRateBudget, key_scope, protective, shared_budget

T = TypeVar("T")
T0 = 1_700_000_080_000  # 40 s into a minute window
SCOPE = "key:test"


def run(redis_url: str, body: Callable[[aioredis.Redis, FakeClock], Awaitable[T]]) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await asyncio.wait_for(body(client, FakeClock(T0)), 30)
        finally:
            await client.aclose()

    return asyncio.run(main())


def budgets(client: aioredis.Redis, clock: FakeClock, n: int = 2, **kw: Any) -> list[SharedRateBudget]:
    kw.setdefault("limit_points", 30)
    kw.setdefault("protective_reserve", 10)
    return [SharedRateBudget(client, clock=clock, **kw) for _ in range(n)]


def test_two_processes_spend_one_minute_budget_and_protective_orders_keep_the_reserve(redis_url: str) -> None:
    async def body(client: aioredis.Redis, clock: FakeClock) -> None:
        a, b = budgets(client, clock)
        for _ in range(10):
            assert await a.acquire(SCOPE, 1) == 0
            assert await b.acquire(SCOPE, 1) == 0
        # 20 points spent together: normal requests stop 10 short of the 30, until the next window (20 s on).
        wait = await a.acquire(SCOPE, 1)
        assert wait is not None and 19.9 < wait < 20.1
        assert b.waits["normal"] == 0 and a.waits["normal"] == 1
        # Protective ones go on to the limit itself, then wait too.
        for _ in range(10):
            assert await b.acquire(SCOPE, 1, "protective") == 0
        assert await b.acquire(SCOPE, 1, "protective") > 0
        assert (await a.state(SCOPE))["used"] == 30
        # The next window starts empty.
        clock.advance(20_000)
        assert await a.acquire(SCOPE, 5) == 0
        assert (await a.state(SCOPE))["used"] == 5

    run(redis_url, body)


def test_the_priority_comes_from_the_context(redis_url: str) -> None:
    async def body(client: aioredis.Redis, clock: FakeClock) -> None:
        (a,) = budgets(client, clock, n=1)
        assert await a.acquire(SCOPE, 20) == 0
        assert await a.acquire(SCOPE, 1) > 0
        with protective():
            assert await a.acquire(SCOPE, 1) == 0
        assert await a.acquire(SCOPE, 1) > 0

    run(redis_url, body)


def test_a_look_spends_nothing(redis_url: str) -> None:
    async def body(client: aioredis.Redis, clock: FakeClock) -> None:
        (a,) = budgets(client, clock, n=1)
        for _ in range(5):
            assert await a.acquire(SCOPE, 20, spend=False) == 0
        assert (await a.state(SCOPE)).get("used", 0) == 0
        assert await a.acquire(SCOPE, 20) == 0
        assert await a.acquire(SCOPE, 1, spend=False) > 0

    run(redis_url, body)


def test_the_exchange_count_is_shared_counted_down_and_never_raised_by_a_stale_answer(redis_url: str) -> None:
    async def body(client: aioredis.Redis, clock: FakeClock) -> None:
        a, b = budgets(client, clock, limit_points=900, protective_reserve=10)
        reset = str(T0 + 20_000)
        await a.observe(SCOPE, {"bitvavo-ratelimit-remaining": "25", "bitvavo-ratelimit-resetat": reset})
        assert (await a.state(SCOPE))["remaining"] == 25
        # A later answer of the same window with a higher count was made before other spends: ignored.
        await b.observe(SCOPE, {"bitvavo-ratelimit-remaining": "40", "bitvavo-ratelimit-resetat": reset})
        assert (await a.state(SCOPE))["remaining"] == 25
        # An answer of an older window: ignored, even when lower.
        await b.observe(SCOPE, {"bitvavo-ratelimit-remaining": "1", "bitvavo-ratelimit-resetat": str(T0 - 40_000)})
        assert (await a.state(SCOPE))["remaining"] == 25
        # Spends count it down for everyone before the next answer restates it.
        assert await b.acquire(SCOPE, 10) == 0
        assert (await a.state(SCOPE))["remaining"] == 15
        wait = await a.acquire(SCOPE, 6)  # 15 - 6 < 10: normal waits for the exchange's reset
        assert wait is not None and 19.9 < wait < 20.1
        assert await a.acquire(SCOPE, 6, "protective") == 0
        assert a.remaining[SCOPE] == 9
        # A new window from the exchange replaces the count, even upwards.
        await a.observe(SCOPE, {"bitvavo-ratelimit-remaining": "1000", "bitvavo-ratelimit-resetat": str(T0 + 80_000)})
        assert (await a.state(SCOPE))["remaining"] == 1000
        # Malformed headers change nothing.
        await a.observe(SCOPE, {"bitvavo-ratelimit-remaining": "lots", "bitvavo-ratelimit-resetat": "soon"})
        assert (await a.state(SCOPE))["remaining"] == 1000

    run(redis_url, body)


def test_a_ban_seen_by_one_process_stops_every_process_of_the_scope(redis_url: str) -> None:
    async def body(client: aioredis.Redis, clock: FakeClock) -> None:
        a, b = budgets(client, clock)
        await a.banned(SCOPE, T0 + 5_000)
        await a.banned(SCOPE, T0 + 1_000)  # an earlier end never shortens the ban
        wait = await b.acquire(SCOPE, 1, "protective")
        assert wait is not None and 4.9 < wait < 5.1
        assert a.bans[SCOPE] == 2
        clock.advance(5_000)
        assert await b.acquire(SCOPE, 1, "protective") == 0
        assert await client.pttl("ratelimit:" + SCOPE) > 0  # the hash expires on its own

    run(redis_url, body)


def test_redis_away_falls_back_to_the_process_budget() -> None:
    async def main() -> None:
        from tradestack.embedded_redis import free_port

        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
        try:
            (a,) = budgets(client, FakeClock(T0), n=1)
            assert await a.acquire(SCOPE, 1) is None
            await a.observe(SCOPE, {"bitvavo-ratelimit-remaining": "5", "bitvavo-ratelimit-resetat": str(T0)})
            await a.banned(SCOPE, T0 + 1000)
            assert a.redis_down == 3
        finally:
            await client.aclose()

    asyncio.run(main())


def test_the_key_never_goes_into_redis_and_bad_settings_are_one_line() -> None:
    scope = key_scope("a" * 64)
    assert "aaaa" not in scope and scope.startswith("key:") and len(scope) == 20
    with pytest.raises(ValueError):
        SharedRateBudget(None, limit_points=1001)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="RATELIMIT"):
        shared_budget(aioredis.Redis(), CommonSettings(ratelimit_limit_points=50,
                                                       ratelimit_protective_reserve_points=60))


class _Stop(Exception):
    """Raised by the test's sleep: a client asked to wait for the next window."""


def _private(sb: Any, clock: FakeClock, shared: SharedRateBudget | None, waits: list[float]) -> BitvavoPrivate:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        raise _Stop

    rest = BitvavoRest(sb.rest_url, points_per_min=30, reserve=0, clock=clock, sleep=sleep, shared=shared)
    return BitvavoPrivate(rest, sb.api_key, sb.api_secret, operator_id=7)


async def _hammer(clients: list[BitvavoPrivate], n: int) -> int:
    """Up to ``n`` fee requests (weight 1) from each client in turn; how many went out before any
    client had to wait."""
    sent = 0
    for _ in range(n):
        for c in clients:
            try:
                await c.fees("BTC-EUR")
            except _Stop:
                return sent
            sent += 1
    return sent


def test_two_clients_of_one_key_stay_under_the_exchange_limit_only_with_the_shared_budget(redis_url: str) -> None:
    """Each client keeps to its own 30 points a minute; together they would spend 60 of the key's 30.
    Without the shared budget the sandbox bans the key (the failure this fixes); with it, they stop
    at the shared limit less the reserve, and a protective request still goes."""

    async def body(client: aioredis.Redis, clock: FakeClock) -> None:
        settings = SandboxSettings(markets="BTC-EUR", history_hours=0.01, ratelimit_points_per_min=30)
        async with run_sandbox(None, settings, clock=clock) as sb:
            # Baseline: two per-process budgets only.
            waits: list[float] = []
            alone = [_private(sb, clock, None, waits) for _ in range(2)]
            await _hammer(alone, 20)
            # Each saw the exchange's count after its own request, stale by the other's: one went over
            # and the key was banned (a 105; the client was told to wait out the ban, a minute).
            assert waits and waits[-1] > 55
            assert max(c.rest.budget.banned_until_ms for c in alone) > clock.now_ms()
            for c in alone:
                await c.rest.close()

            clock.advance(120_000)  # past the key's one-minute ban, into a fresh window
            await client.flushall()
            waits = []
            shared = [_private(sb, clock, SharedRateBudget(client, limit_points=30, protective_reserve=10,
                                                           clock=clock), waits) for _ in range(2)]
            try:
                sent = await _hammer(shared, 20)
                assert sent == 20  # 30 less the protective reserve of 10
                assert len(waits) == 1
                with protective():
                    for _ in range(10):
                        await shared[0].fees("BTC-EUR")
                assert (await shared[0].rest.shared.state(key_scope(sb.api_key)))["used"] == 30  # type: ignore[union-attr]
            finally:
                for c in shared:
                    await c.rest.close()

    run(redis_url, body)
