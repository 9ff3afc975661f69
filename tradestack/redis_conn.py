"""The Redis client every process uses (bytes in, bytes out; hiredis parser when installed)."""

from __future__ import annotations

import redis.asyncio as aioredis

from tradestack.config import CommonSettings


def connect(url: str, *, socket_timeout_s: float = 5.0, block_ms: int = 1000, client_name: str | None = None) -> aioredis.Redis:
    """A lazy client: nothing connects until the first command, so a missing Redis is
    handled by the caller's retry loop rather than at construction."""
    # A blocking XREADGROUP must not hit the socket timeout.
    timeout = max(socket_timeout_s, block_ms / 1000 + 2.0)
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=timeout,
        socket_connect_timeout=socket_timeout_s,
        health_check_interval=30,
        client_name=client_name,
    )


def connect_from_settings(settings: CommonSettings, client_name: str | None = None) -> aioredis.Redis:
    return connect(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_s,
                   block_ms=settings.block_ms, client_name=client_name)
