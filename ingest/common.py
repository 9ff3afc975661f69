"""Settings and wiring shared by the three ingest processes (no logic: that lives in
``tradestack.bitvavo``)."""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

from pydantic import Field, field_validator

from tradestack.aio import wait_or_stop
from tradestack.backoff import Backoff
from tradestack.bitvavo.emit import Emitter
from tradestack.bitvavo.feeds import Feed, IngestMetrics, follow_universe, resolve_markets
from tradestack.bitvavo.rest import BitvavoRest
from tradestack.bitvavo.ws import BitvavoWs
from tradestack.config import CommonSettings, CsvList
from tradestack.logs import get_logger
from tradestack.ratelimit import shared_budget
from tradestack.service import Service
from tradestack.storage import ParquetSink

METRICS_PREFIX = "trader_ingest"

log = get_logger(__name__)


class IngestSettings(CommonSettings):
    # A list (BTC-EUR,ETH-EUR), `all` (every trading market) or `universe` (follow trading:universe).
    ingest_markets: CsvList = ["BTC-EUR", "ETH-EUR"]

    ws_quiet_s: float = Field(30.0, gt=0)  # a feed silent this long is dead (probed half-way)
    ws_ping_every_s: float = Field(15.0, gt=0)
    ws_reconnect_base_s: float = Field(0.25, gt=0)
    ws_reconnect_cap_s: float = Field(30.0, gt=0)
    # Our share of the 1000 points/min (per IP) that all ingest processes on the host share.
    rest_points_per_min: int = Field(300, ge=1, le=1000)
    rest_reserve_points: int = Field(100, ge=0, le=1000)
    universe_poll_s: float = Field(2.0, gt=0)
    parquet_fsync: bool = False  # fsync JSONL before XADD (survives an OS crash; slower)
    compact_every_s: float = Field(60.0, gt=0)
    emit_max_pending: int = Field(2_000, ge=100)  # the WS reader pauses above this

    @field_validator("ingest_markets")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name markets (BTC-EUR,ETH-EUR), or be 'all' or 'universe'")
        if len(value) > 1 and any(v in ("all", "universe") for v in value):
            raise ValueError("'all' and 'universe' stand alone, not in a list")
        for market in value:
            if market not in ("all", "universe") and (market.upper() != market or "-" not in market):
                raise ValueError(f"{market!r} is not a market id like BTC-EUR")
        return value


FeedFactory = Callable[..., Feed]


SettingsT = TypeVar("SettingsT", bound=IngestSettings)


def wire(service: Service[SettingsT], make_feed: FeedFactory) -> Feed:
    """Register the ingest task: WS → feed → emitter (JSONL, then Redis), plus compaction,
    retention, market selection. ``make_feed(src=, emitter=, metrics=, clock=, rest=)``."""
    s = service.settings
    metrics = IngestMetrics(service.metrics)
    sink = ParquetSink(s.parquet_dir, service.clock, retention_days=s.parquet_retention_days, fsync=s.parquet_fsync)
    emitter = Emitter(service.redis, sink, maxlen=s.stream_maxlen, max_pending=s.emit_max_pending, metrics=metrics,
                      on_redis=lambda ok: service.report_health("redis_write", ok))
    rest = BitvavoRest(s.bitvavo_rest_url, points_per_min=s.rest_points_per_min, reserve=s.rest_reserve_points,
                       clock=service.clock, shared=shared_budget(service.redis, s, service.clock),
                       on_request=lambda ep, outcome: metrics.rest.labels(endpoint=ep, outcome=outcome).inc())
    feed = make_feed(src=service.name, emitter=emitter, metrics=metrics, clock=service.clock, rest=rest)

    def on_state(up: bool) -> None:
        feed.on_state(up)
        service.report_health("exchange_ws", up)  # down → the service state is `degraded`

    ws = BitvavoWs(s.bitvavo_ws_url, on_event=feed.on_event, on_connected=feed.on_connected, on_state=on_state,
                   on_unexpected=lambda reason: metrics.unexpected.labels(reason=reason).inc(),
                   quiet_s=s.ws_quiet_s, ping_every_s=s.ws_ping_every_s,
                   backoff=Backoff(s.ws_reconnect_base_s, s.ws_reconnect_cap_s), clock=service.clock,
                   backpressure=emitter.backpressure)
    feed.attach(ws)
    connects = {"n": 0}

    def counted_connect() -> None:
        connects["n"] += 1
        if connects["n"] > 1:
            metrics.reconnects.inc()
        feed.on_connected()

    ws.on_connected = counted_connect
    service.report_health("exchange_ws", False)

    async def maintenance(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                files = await asyncio.to_thread(sink.compact_due)
                metrics.parquet_files.inc(len(files))
                await asyncio.to_thread(sink.apply_retention)
            except Exception as exc:  # noqa: BLE001 - disk full, a bug: log, keep ingesting, retry next round
                log.error("parquet_maintenance_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            await wait_or_stop(stop, s.compact_every_s)

    async def run() -> None:
        stop = service.stop
        emit_stop = asyncio.Event()
        emitter_task = asyncio.create_task(emitter.run(emit_stop), name="emitter")
        tasks = [asyncio.create_task(ws.run(stop), name="ws"), asyncio.create_task(feed.run(stop), name="feed"),
                 asyncio.create_task(maintenance(stop), name="parquet")]
        try:
            markets = await resolve_markets(s.ingest_markets, rest, stop)
            if markets is None:
                tasks.append(asyncio.create_task(follow_universe(service.redis, [feed], stop, s.universe_poll_s),
                                                 name="universe"))
            else:
                await feed.set_markets(markets)
            await stop.wait()
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)
            emit_stop.set()  # the WS no longer delivers: write what is queued, then stop
            await emitter_task
            sink.close()
            await rest.close()
            log.info("ingest_stopped", published=emitter.published, gaps=getattr(feed, "gaps", None))

    service.add_task("ingest", run)
    return feed
