"""The Redis client every process uses (bytes in, bytes out; hiredis parser when installed)."""

from __future__ import annotations

from typing import Any, Callable

import redis.asyncio as aioredis

from tradestack.config import CommonSettings

_pack: Callable[..., bytes] | None
try:
    import hiredis

    _pack = hiredis.pack_command
except (ImportError, AttributeError):  # hiredis is a dependency, but never required
    _pack = None


class FastConnection(aioredis.Connection):
    """redis-py's asyncio connection packs commands in Python; hiredis does it in C.
    Measured: packing was ~25% of the consumer loop's time (bench/loop.py)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _pack is not None:
            if isinstance(args[0], str) and " " in args[0]:  # e.g. "CLIENT SETNAME": words go separately
                args = (*args[0].split(), *args[1:])
            try:
                return [_pack(args)]
            except TypeError:
                pass  # let redis-py raise its own, clearer error for a bad argument type
        return super().pack_command(*args)


def connect(url: str, *, socket_timeout_s: float = 5.0, block_ms: int = 1000, client_name: str | None = None) -> aioredis.Redis:
    """A lazy client: nothing connects until the first command, so a missing Redis is
    handled by the caller's retry loop rather than at construction."""
    # A blocking XREADGROUP must not hit the socket timeout.
    timeout = max(socket_timeout_s, block_ms / 1000 + 2.0)
    extra: dict[str, Any] = {"connection_class": FastConnection} if url.startswith("redis://") else {}
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=timeout,
        socket_connect_timeout=socket_timeout_s,
        health_check_interval=30,
        client_name=client_name,
        **extra,
    )


def connect_from_settings(settings: CommonSettings, client_name: str | None = None) -> aioredis.Redis:
    return connect(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_s,
                   block_ms=settings.block_ms, client_name=client_name)
