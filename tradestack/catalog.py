"""Where market rules come from: the exchange's ``/markets``, with the last answer kept in
``trading:markets`` so a process can start while the exchange is unreachable (the core and the
executor both need the rules before they size, round or check an order)."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from tradestack import streams
from tradestack.bitvavo.rest import BitvavoRest, RestError
from tradestack.clock import Clock
from tradestack.errors import FatalError
from tradestack.logs import get_logger
from tradestack.markets import MarketCatalog

log = get_logger(__name__)


async def load_catalog(redis: aioredis.Redis, rest_url: str, clock: Clock) -> tuple[MarketCatalog, int]:
    """(catalog, fetched at ms) from ``/markets``, cached in ``trading:markets``; the cached copy when
    the exchange cannot be reached. Neither: FatalError (nothing can be sized or rounded without the
    rules; the process stops and systemd restarts it)."""
    rest = BitvavoRest(rest_url, max_attempts=3)
    try:
        entries = await rest.markets()
        fetched_ms = clock.now_ms()
        await redis.set(streams.MARKETS, orjson.dumps({"fetched_ms": fetched_ms, "markets": entries}))
        return MarketCatalog.from_json(entries), fetched_ms
    except (RestError, OSError, TimeoutError) as exc:
        raw = await redis.get(streams.MARKETS)
        if raw is None:
            raise FatalError(f"no market rules: /markets failed ({exc}) and trading:markets holds no copy") from None
        cached = orjson.loads(raw)
        log.warning("markets_from_cache", error=str(exc), fetched_ms=cached["fetched_ms"])
        return MarketCatalog.from_json(cached["markets"]), int(cached["fetched_ms"])
    finally:
        await rest.close()


__all__ = ["load_catalog"]
