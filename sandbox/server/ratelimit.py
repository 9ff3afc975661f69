"""Weight-based rate limits: 1000 points per minute per API key (per IP when unsigned).

Budgets are fixed minute windows aligned on the minute (``resetat`` = next whole minute, ms),
shared by REST and WS. Going over bans the identity: 1 minute for keys, 15 minutes for IPs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sandbox.server.errors import ApiError

MINUTE_MS = 60_000


@dataclass(slots=True)
class Bucket:
    window_start: int = 0
    used: int = 0
    banned_until: int = 0


@dataclass(frozen=True, slots=True)
class Budget:
    limit: int
    remaining: int
    reset_at: int

    def headers(self) -> dict[str, str]:
        return {
            "bitvavo-ratelimit-limit": str(self.limit),
            "bitvavo-ratelimit-remaining": str(self.remaining),
            "bitvavo-ratelimit-resetat": str(self.reset_at),
        }


def ban_error(until_ms: int) -> ApiError:
    # The SDK parses the ms with error.split(' at ')[1].split('.')[0]: no other " at " allowed.
    return ApiError(
        105,
        f"Your IP or API key has been banned for not respecting the rate limit. The ban expires at {until_ms}.",
        429,
    )


class RateLimiter:
    def __init__(
        self,
        now_ms: Callable[[], int],
        *,
        limit: int = 1000,
        ban_key_ms: int = 60_000,
        ban_ip_ms: int = 900_000,
        on_ban: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._now_ms = now_ms
        self.limit = limit
        self.ban_key_ms = ban_key_ms
        self.ban_ip_ms = ban_ip_ms
        self._on_ban = on_ban
        self._buckets: dict[str, Bucket] = {}

    @staticmethod
    def identity(api_key: str | None, ip: str) -> tuple[str, bool]:
        """(bucket id, is_key)."""
        return (f"key:{api_key}", True) if api_key else (f"ip:{ip}", False)

    def _bucket(self, ident: str, now: int) -> Bucket:
        b = self._buckets.get(ident)
        if b is None:
            b = self._buckets[ident] = Bucket()
        start = now - now % MINUTE_MS
        if b.window_start != start:
            b.window_start, b.used = start, 0
        return b

    def _budget(self, b: Bucket) -> Budget:
        return Budget(self.limit, max(self.limit - b.used, 0), b.window_start + MINUTE_MS)

    def peek(self, ident: str) -> Budget:
        return self._budget(self._bucket(ident, self._now_ms()))

    def charge(self, ident: str, weight: int, is_key: bool) -> Budget:
        """Take ``weight`` points or raise ApiError 105 (banned now or already banned)."""
        now = self._now_ms()
        b = self._bucket(ident, now)
        if b.banned_until > now:
            raise ban_error(b.banned_until)
        if b.used + weight > self.limit:
            b.used = self.limit
            self.ban(ident, is_key)
            raise ban_error(b.banned_until)
        b.used += weight
        return self._budget(b)

    def ban(self, ident: str, is_key: bool, duration_ms: int | None = None) -> int:
        now = self._now_ms()
        b = self._bucket(ident, now)
        b.banned_until = now + (duration_ms if duration_ms is not None else (self.ban_key_ms if is_key else self.ban_ip_ms))
        if self._on_ban is not None:
            self._on_ban(ident, is_key)
        return b.banned_until

    def unban_all(self) -> None:
        for b in self._buckets.values():
            b.banned_until = 0

    def bans(self) -> Mapping[str, int]:
        now = self._now_ms()
        return {k: b.banned_until for k, b in self._buckets.items() if b.banned_until > now}
