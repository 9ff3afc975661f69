"""One active instance, with fencing (DESIGN §2): only one trading core and one executor act.

A lease is a Redis key ``lease:<name>`` holding ``<token>:<holder>`` with a TTL. Acquiring it
takes the next value of the counter ``lease:<name>:epoch`` as its token, so every acquisition has a
larger token than any before it. The holder renews the TTL from its loop; a standby polls and
takes the key over once it has expired (the holder died, or hung longer than the TTL).

Fencing: every commit of a leased service runs in the commit script (bus.py) only while the key
still holds the committer's own ``<token>:<holder>``. A paused process that wakes up after its
lease expired and was taken by a standby holds a stale token: its commit is refused whole, and it
stops (``LeaseLost``). Renewal alone could not guarantee this: the pause can fall between a renewal
and a commit.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from tradestack.errors import FatalError

LEASE_PREFIX = "lease:"

# KEYS[1] = lease key, KEYS[2] = epoch counter; ARGV[1] = holder, ARGV[2] = ttl ms.
# Returns the new token, or 0 when someone holds it.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', tonumber(ARGV[2]))
return token
"""

# KEYS[1] = lease key; ARGV[1] = our value, ARGV[2] = ttl ms. 1 = renewed, 0 = not ours any more.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""

# KEYS[1] = lease key; ARGV[1] = our value. Deletes it only when it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(FatalError):
    """This process no longer holds its lease: it must stop acting at once (a restart makes it a
    standby that rebuilds its state before acting again)."""


def lease_key(name: str) -> str:
    return LEASE_PREFIX + name


class Lease:
    """The lease ``name`` as seen by ``holder`` (host:pid)."""

    def __init__(self, redis: aioredis.Redis, name: str, holder: str, ttl_ms: int = 3000) -> None:
        if ttl_ms < 500:
            raise ValueError("a lease TTL under 500 ms would be lost to an ordinary pause")
        self.redis = redis
        self.name = name
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.key = lease_key(name)
        self.epoch_key = self.key + ":epoch"
        self.token = 0  # 0 = not held
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def value(self) -> str:
        """What the key holds while we hold the lease; the commit script compares against it."""
        return f"{self.token}:{self.holder}"

    @property
    def held(self) -> bool:
        return self.token > 0

    async def try_acquire(self) -> bool:
        token = int(await self._acquire(keys=[self.key, self.epoch_key], args=[self.holder, self.ttl_ms]))
        if token:
            self.token = token
        return bool(token)

    async def renew(self) -> None:
        """Extend the TTL; raises LeaseLost when the key is gone or someone else's."""
        if not self.held:
            raise LeaseLost(f"lease {self.name!r} is not held")
        if not int(await self._renew(keys=[self.key], args=[self.value, self.ttl_ms])):
            token, self.token = self.token, 0
            raise LeaseLost(f"lease {self.name!r} (token {token}) was lost: another instance may be acting")

    async def release(self) -> None:
        if self.held:
            value, self.token = self.value, 0
            await self._release(keys=[self.key], args=[value])

    async def current(self) -> str | None:
        """Who holds it now (``<token>:<holder>``), for status and tests."""
        raw = await self.redis.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw
