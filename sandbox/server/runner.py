"""Build and run the sandbox in-process: ``async with run_sandbox(config, settings) as sb:``.

``SandboxThread`` runs the same thing in a background thread's event loop, for synchronous
clients such as the official (thread-based) SDK.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from sandbox.engine.config import AccountSpec, SandboxConfig
from sandbox.server.app import AdminApi, RestApi, build_app
from sandbox.server.dispatch import Dispatcher
from sandbox.server.faults import FaultInjector, FaultSpec, Sleep
from sandbox.server.market_loop import MarketLoop
from sandbox.server.metrics import Metrics
from sandbox.server.ratelimit import RateLimiter
from sandbox.server.settings import SandboxSettings
from sandbox.server.ws import Hub, WsHandler
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.logs import get_logger
from tradestack.loop_lag import run_probe

log = get_logger(__name__)
T = TypeVar("T")


def config_from_settings(settings: SandboxSettings) -> SandboxConfig:
    """Engine config from process settings: one funded account with the configured key."""
    account = AccountSpec(secret=settings.api_secret.get_secret_value(), balances={"EUR": settings.eur})
    return SandboxConfig(
        markets=settings.market_list(),
        seed=settings.seed,
        history_hours=settings.history_hours,
        accounts={settings.api_key: account},
        state_path=str(settings.state) if settings.state else None,
        replay_dir=str(settings.replay) if settings.replay else None,
        activity=settings.activity,
        book_event_per_change=settings.book_flush_ms == 0,
    )


@dataclass
class Sandbox:
    """A running sandbox: URLs, the engine and the server parts (touch them from its loop only)."""

    host: str
    port: int
    exchange: Any
    faults: FaultInjector
    limiter: RateLimiter
    hub: Hub
    metrics: Metrics
    loop: MarketLoop
    settings: SandboxSettings
    config: SandboxConfig
    started_ms: int = 0
    accounts: dict[str, str] = field(default_factory=dict)  # api_key -> secret

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}/v2"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v2/"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str:
        return next(iter(self.accounts))

    @property
    def api_secret(self) -> str:
        return self.accounts[self.api_key]


class _Targets:
    """What fault actions act on."""

    def __init__(self, exchange: Any, limiter: RateLimiter, hub: Hub) -> None:
        self.exchange, self.limiter, self.hub = exchange, limiter, hub

    def ban(self, api_key: str | None, ip: str | None, secs: float | None) -> int:
        ident, is_key = self.limiter.identity(api_key, ip or "127.0.0.1")
        return self.limiter.ban(ident, is_key, int(secs * 1000) if secs else None)

    def drop_ws(self, which: str | int, mode: str) -> int:
        return self.hub.drop(which, mode)

    def skip_book_nonce(self, market: str) -> None:
        self.exchange.skip_book_nonce(market)

    def reject_next_orders(self, n: int, error_code: int, order_type: str | None = None) -> None:
        self.exchange.set_reject_next_orders(n, error_code, order_type)

    def set_market_status(self, market: str, status: str) -> None:
        self.exchange.set_market_status(market, status)


@asynccontextmanager
async def run_sandbox(
    config: SandboxConfig | None = None,
    settings: SandboxSettings | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    sleep: Sleep | None = None,
    exchange_factory: Callable[[SandboxConfig, Callable[[], int]], Any] | None = None,
    on_ready: Callable[[Sandbox], None] | None = None,
) -> AsyncIterator[Sandbox]:
    """Start engine, market loop and HTTP/WS server on ``settings.host:port`` (0 = free port)."""
    settings = settings or SandboxSettings()
    config = config or config_from_settings(settings)
    now_ms = clock.now_ms
    metrics = Metrics()
    if exchange_factory is None:
        from sandbox.engine import Exchange

        exchange_factory = Exchange
    exchange = exchange_factory(config, now_ms)
    limiter = RateLimiter(
        now_ms,
        limit=settings.ratelimit_points_per_min,
        ban_key_ms=settings.ban_key_secs * 1000,
        ban_ip_ms=settings.ban_ip_secs * 1000,
        on_ban=lambda ident, is_key: metrics.bans.labels("key" if is_key else "ip").inc(),
    )
    faults = FaultInjector(
        settings.seed, sleep=sleep or asyncio.sleep, on_inject=lambda kind: metrics.faults.labels(kind).inc()
    )
    hub = Hub(metrics)
    faults.bind(_Targets(exchange, limiter, hub))
    loop = MarketLoop(
        exchange, hub, metrics, faults,
        step_ms=settings.step_ms, book_flush_ms=settings.book_flush_ms, ticker24h_ms=settings.ticker24h_ms,
    )
    dispatcher = Dispatcher(exchange, limiter, faults, metrics, after_call=loop.publish_pending)
    ws = WsHandler(hub, dispatcher, exchange, now_ms, max_queue=settings.ws_queue_max,
                   heartbeat_secs=settings.ws_heartbeat_secs)
    sb = Sandbox(
        host=settings.host, port=0, exchange=exchange, faults=faults, limiter=limiter, hub=hub,
        metrics=metrics, loop=loop, settings=settings, config=config, started_ms=now_ms(),
        accounts={k: a.secret for k, a in config.accounts.items()},
    )

    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "markets": len(exchange.market_ids),
            "ws_connections": len(hub.sessions),
            "loop_iterations": loop.iterations,
            "uptime_ms": now_ms() - sb.started_ms,
        }

    app = build_app(RestApi(dispatcher, exchange, now_ms, metrics), ws, AdminApi(exchange, faults, health), metrics)
    fault_text = settings.fault_text()
    if fault_text:
        faults.apply(FaultSpec.model_validate(orjson.loads(fault_text)))

    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None and server.sockets, "server did not bind"
    sb.port = server.sockets[0].getsockname()[1]
    loop.start()
    lag_probe = asyncio.create_task(run_probe(metrics.loop_lag_seconds.observe), name="sandbox-loop-lag")
    if on_ready is not None:
        on_ready(sb)  # before any log line: `python -m sandbox` prints its URL lines first
    log.info("sandbox_started", rest_url=sb.rest_url, ws_url=sb.ws_url, markets=len(exchange.market_ids))
    try:
        yield sb
    finally:
        lag_probe.cancel()
        await loop.stop()
        hub.close_all()
        await asyncio.sleep(0)  # let close frames go out
        if config.state_path:
            exchange.save_state()
            log.info("sandbox_state_saved", path=config.state_path)
        await runner.cleanup()
        log.info("sandbox_stopped")


class SandboxThread:
    """The sandbox on its own event loop in a daemon thread (for sync, thread-based clients)."""

    def __init__(self, config: SandboxConfig | None = None, settings: SandboxSettings | None = None, **kw: Any) -> None:
        self._args = (config, settings, kw)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.sb: Sandbox | None = None
        self._thread = threading.Thread(target=self._main, name="sandbox", daemon=True)

    def start(self, timeout: float = 30.0) -> Sandbox:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("sandbox did not start")
        if self._error is not None:
            raise RuntimeError("sandbox failed to start") from self._error
        assert self.sb is not None
        return self.sb

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        config, settings, kw = self._args
        self._stop = asyncio.Event()
        try:
            async with run_sandbox(config, settings, **kw) as sb:
                self.sb = sb
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the sandbox loop (the engine is not thread-safe) and return its result."""

        async def wrap() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

