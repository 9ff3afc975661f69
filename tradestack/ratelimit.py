"""Bitvavo's rate limit as one budget per API key and per IP, kept in Redis and shared by every
process that uses them (reference §7: 1000 weight points per minute per key when signed, per IP
when not; going over bans the key for a minute, the IP for 15).

Each process already has its own sliding-minute ``RateBudget`` (rest.py, its share). That alone
cannot stop the executor and the PnL orchestrator, which sign with the same key, or the three
ingest processes, which share the IP, from overrunning together. ``SharedRateBudget`` adds, per
scope (``key:<hash of the key>`` or ``ip:<exchange host>``), one Redis hash every process reads and
writes with atomic scripts:

- ``used``/``window``: points spent in the current minute (aligned on the minute, like Bitvavo's
  windows), by every process; a request that would pass ``limit_points`` waits for the next window;
- ``remaining``/``reset_at``: the exchange's own count from the ``bitvavo-ratelimit-*`` headers,
  counted down by every spend until the next answer restates it (never raised by a stale answer);
- ``banned_until``: a 105 ban seen by one process stops them all until it expires.

**Priority**: normal requests (entries, market data, reads) stop ``protective_reserve`` points
short of either limit; protective ones (stops, exits, emergency closes, cancels and lookups that
protect a position) may spend down to zero. So when the budget runs short, what protects money
still goes. The caller marks protective calls with ``protective()`` (a context variable read by
``BitvavoRest.request``), so no signature between the executor and the HTTP call has to carry it.

Fail-safe: when Redis does not answer, ``acquire`` returns ``None`` and the caller keeps to its
own per-process budget (which is conservative); it never blocks a protective order on Redis.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Literal

from redis.asyncio import Redis

from tradestack.bus import REDIS_DOWN
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.config import CommonSettings
from tradestack.errors import ConfigError
from tradestack.logs import get_logger

log = get_logger(__name__)

Priority = Literal["normal", "protective", "shared_budget"]
PRIORITY: ContextVar[Priority] = ContextVar("ratelimit_priority", default="normal")
MINUTE_MS = 60_000
KEY_PREFIX = "ratelimit:"


@contextmanager
def protective() -> Iterator[None]:
    """Requests made inside (in this task) spend the protective reserve."""
    token = PRIORITY.set("protective")
    try:
        yield
    finally:
        PRIORITY.reset(token)


def key_scope(api_key: str) -> str:
    """The scope of a signed request: the key itself never goes into Redis, a short hash does."""
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


def ip_scope(host: str) -> str:
    return f"ip:{host}"


# ARGV: now_ms, weight, limit, reserve, spend (1: spend when granted, 0: only look). Returns
# {wait_ms, left, why}: wait 0 = granted; why: 0 ok, 1 banned, 2 the exchange's remaining, 3 our
# minute window.
_ACQUIRE = """
local now = tonumber(ARGV[1]); local w = tonumber(ARGV[2])
local limit = tonumber(ARGV[3]); local reserve = tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'banned_until', 'remaining', 'reset_at', 'window', 'used')
local banned = tonumber(h[1]) or 0
if banned > now then return {banned - now, 0, 1} end
local window = now - (now % 60000)
local used = 0
if tonumber(h[4]) == window then used = tonumber(h[5]) or 0 end
local remaining = tonumber(h[2]); local reset_at = tonumber(h[3])
if remaining ~= nil and (reset_at == nil or reset_at <= now) then remaining = nil end
if remaining ~= nil and remaining - w < reserve then return {reset_at - now, remaining, 2} end
if used + w > limit - reserve then return {window + 60000 - now, limit - used, 3} end
if ARGV[5] == '0' then return {0, limit - used, 0} end
redis.call('HSET', KEYS[1], 'window', window, 'used', used + w)
local left = limit - used - w
if remaining ~= nil then
  redis.call('HSET', KEYS[1], 'remaining', remaining - w)
  if remaining - w < left then left = remaining - w end
end
redis.call('PEXPIRE', KEYS[1], math.max(120000, banned - now + 60000))
return {0, left, 0}
"""

# ARGV: remaining, reset_at. An answer from an older window is ignored; within the same window the
# lower count wins (another process may have spent since this answer was made).
_OBSERVE = """
local r = tonumber(ARGV[1]); local ra = tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'remaining', 'reset_at')
local cur = tonumber(h[1]); local cur_ra = tonumber(h[2])
if cur_ra ~= nil and ra < cur_ra then return 0 end
if cur_ra == nil or ra > cur_ra or cur == nil or r < cur then
  redis.call('HSET', KEYS[1], 'remaining', r, 'reset_at', ra)
  redis.call('PEXPIRE', KEYS[1], 120000)
  return 1
end
return 0
"""

# ARGV: banned_until_ms, now_ms. A later end wins.
_BAN = """
local u = tonumber(ARGV[1]); local now = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'banned_until')) or 0
if u > cur then redis.call('HSET', KEYS[1], 'banned_until', u) end
redis.call('PEXPIRE', KEYS[1], math.max(120000, math.max(u, cur) - now + 60000))
return math.max(u, cur)
"""


class SharedRateBudget:
    """The Redis side of the rate limit; one instance per process, any number of scopes."""

    def __init__(self, redis: Redis, *, limit_points: int = 900, protective_reserve: int = 200,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        if not 0 < limit_points <= 1000:
            raise ValueError(f"limit_points must be in 1..1000 (Bitvavo's limit), got {limit_points}")
        if not 0 <= protective_reserve < limit_points:
            raise ValueError(f"protective_reserve must be in 0..limit_points-1, got {protective_reserve}")
        self.redis = redis
        self.limit_points = limit_points
        self.protective_reserve = protective_reserve
        self.clock = clock
        self._acquire = redis.register_script(_ACQUIRE)
        self._observe = redis.register_script(_OBSERVE)
        self._ban = redis.register_script(_BAN)
        # For metrics: what this process last saw of each scope, and what it waited for.
        self.remaining: dict[str, int] = {}
        self.waits: Counter[str] = Counter()  # by priority
        self.bans: Counter[str] = Counter()  # by scope
        self.redis_down = 0
        self.last_why = ""  # why the last acquire said wait: banned, exchange_remaining, minute_budget

    def _reserve(self, priority: Priority) -> int:
        return 0 if priority == "protective" else self.protective_reserve

    async def acquire(self, scope: str, weight: int, priority: Priority | None = None, *,
                      spend: bool = True) -> float | None:
        """Spend ``weight`` points now and return 0, or return the seconds to wait before asking
        again (nothing spent). ``spend=False`` only asks whether it would be granted. ``None``: Redis
        did not answer; keep to the per-process budget."""
        priority = priority or PRIORITY.get()
        try:
            wait_ms, left, why = await self._acquire(
                keys=[KEY_PREFIX + scope],
                args=[self.clock.now_ms(), weight, self.limit_points, self._reserve(priority), int(spend)])
        except REDIS_DOWN as exc:
            self.redis_down += 1
            log.warning("ratelimit_redis_down", scope=scope, error=f"{type(exc).__name__}: {exc}",
                        fallback="the per-process budget")
            return None
        self.remaining[scope] = int(left)
        if int(wait_ms) <= 0:
            self.last_why = ""
            return 0.0
        self.waits[priority] += 1
        why_name = {1: "banned", 2: "exchange_remaining", 3: "minute_budget"}.get(int(why), str(why))
        self.last_why = why_name
        log.info("ratelimit_wait", scope=scope, priority=priority, wait_ms=int(wait_ms), why=why_name, left=int(left))
        return int(wait_ms) / 1000 + 0.01

    async def observe(self, scope: str, headers: Any) -> None:
        """Feed the exchange's ``bitvavo-ratelimit-remaining``/``-resetat`` headers of an answer."""
        remaining = headers.get("bitvavo-ratelimit-remaining")
        reset_at = headers.get("bitvavo-ratelimit-resetat")
        if remaining is None or reset_at is None:
            return
        r, ra = str(remaining), str(reset_at)
        if not (r.lstrip("-").isdigit() and ra.isdigit()):
            return
        try:
            await self._observe(keys=[KEY_PREFIX + scope], args=[int(r), int(ra)])
        except REDIS_DOWN:
            self.redis_down += 1
            return
        self.remaining[scope] = min(self.remaining.get(scope, int(r)), int(r))

    async def banned(self, scope: str, until_ms: int) -> None:
        """A 105 ban: every process of this scope waits until ``until_ms``."""
        self.bans[scope] += 1
        try:
            await self._ban(keys=[KEY_PREFIX + scope], args=[until_ms, self.clock.now_ms()])
        except REDIS_DOWN:
            self.redis_down += 1

    async def state(self, scope: str) -> dict[str, int]:
        """The scope's hash as numbers (for status and tests)."""
        raw = await self.redis.hgetall(KEY_PREFIX + scope)
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def shared_budget(redis: Redis, settings: CommonSettings, clock: Clock = SYSTEM_CLOCK) -> SharedRateBudget:
    """The process's handle on the shared budget, from ``RATELIMIT_*``."""
    try:
        return SharedRateBudget(redis, limit_points=settings.ratelimit_limit_points,
                                protective_reserve=settings.ratelimit_protective_reserve_points, clock=clock)
    except ValueError as exc:
        raise ConfigError(f"RATELIMIT_LIMIT_POINTS/RATELIMIT_PROTECTIVE_RESERVE_POINTS: {exc}") from None


__all__ = ["PRIORITY", "Priority", "SharedRateBudget", "ip_scope", "key_scope", "protective", "shared_budget"]
