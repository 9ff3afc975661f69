"""The lifecycle every process shares.

A service entry point builds its settings, then calls ``run_service`` with a ``setup``
function that registers consumer loops and tasks on the ``Service``. The runtime does the
rest, the same way everywhere: JSON logs, ``/metrics``, the Redis client, the heartbeat key,
the kill-switch watcher, SIGTERM/SIGINT, states, and systemd notify.

States: starting → running ⇄ degraded (Redis away) → stopping → stopped, or faulted.
SIGTERM: stop reading, finish the batch in hand (commit = ack), flush, exit 0 within 5 s.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from typing import Any, Awaitable, Callable, Sequence

import orjson
import redis.asyncio as aioredis

from tradestack import streams
from tradestack.bus import REDIS_DOWN, ConsumerLoop, Handler, LoopConfig, Publisher, _wait, consumer_name
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.config import CommonSettings, load_settings_or_exit
from tradestack.errors import ConfigError, FatalError
from tradestack.logs import configure_logging, get_logger
from tradestack.metrics import ServiceMetrics
from tradestack.redis_conn import connect_from_settings

log = get_logger(__name__)

GC_GEN0_THRESHOLD = 50_000
STOP_BUDGET_S = 4.0  # of the 5 s a SIGTERM allows; the rest is for closing connections


class Service:
    """One process: its settings, metrics, Redis client, and the loops and tasks it runs."""

    def __init__(self, name: str, settings: CommonSettings, metrics_prefix: str, *,
                 clock: Clock = SYSTEM_CLOCK, redis: aioredis.Redis | None = None) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock
        self.consumer = consumer_name()
        self.metrics = ServiceMetrics(metrics_prefix)
        self.redis = redis or connect_from_settings(settings, client_name=f"{name}:{self.consumer}")
        self.publisher = Publisher(self.redis, self.metrics, settings.stream_maxlen)
        self.stop = asyncio.Event()
        self.state = "starting"
        self.metrics_port: int | None = None
        # Fail safe: until Redis has told us the switch is off, it counts as on.
        self.kill_switch = True
        self._kill_known = False
        # component -> healthy; None = not heard from yet. Redis starts unknown: a service is not
        # running before it has read the kill switch.
        self._health: dict[str, bool | None] = {"redis": None}
        self._redis_down = False  # one warning per outage
        self._loops: list[ConsumerLoop] = []
        self._tasks: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._beat_now = asyncio.Event()  # a state change is published at once, not at the next beat
        self.metrics.dry_run.set(1 if settings.dry_run else 0)
        self.metrics.kill_switch.set(1)

    # -- registration (called from setup) ------------------------------------------------

    def consume(self, streams_in: Sequence[str], handler: Handler, **config: Any) -> ConsumerLoop:
        """Run the one consumer loop over ``streams_in`` with this service's name as the group."""
        cfg = LoopConfig.from_settings(self.settings, **config)
        loop = ConsumerLoop(self.redis, group=self.name, streams_in=streams_in, handler=handler,
                            metrics=self.metrics, config=cfg, consumer=self.consumer, clock=self.clock,
                            on_health=lambda ok, key=f"loop:{','.join(streams_in)}": self._report(key, ok))
        self._loops.append(loop)
        return loop

    def add_task(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """A long-running coroutine; it must return soon after ``self.stop`` is set."""
        self._tasks.append((name, factory))

    # -- state -------------------------------------------------------------------------

    def set_state(self, state: str) -> None:
        if state == self.state:
            return
        log.info("state_changed", service=self.name, previous=self.state, state=state)
        self.state = state
        self.metrics.set_state(state)
        self._beat_now.set()

    def _report(self, component: str, ok: bool) -> None:
        self._health[component] = ok
        if self.state in ("running", "degraded", "starting"):
            values = self._health.values()
            if False in values:
                self.set_state("degraded")
            elif None not in values:
                if self.state == "starting":
                    _sd_notify("READY=1")
                self.set_state("running")

    def report_health(self, component: str, ok: bool) -> None:
        """Components that are not consumer loops (e.g. an exchange WS) report here."""
        self._report(component, ok)

    # -- built-in tasks ----------------------------------------------------------------

    async def _watch_kill_switch(self) -> None:
        """Poll trading:kill every kill_poll_ms: setting it takes effect within 100 ms."""
        interval = self.settings.kill_poll_ms / 1000.0
        while not self.stop.is_set():
            try:
                value = await self.redis.get(streams.KILL)
                self._set_kill(value == b"1", known=True)
                self._redis_down = False
                self._report("redis", True)
            except REDIS_DOWN as exc:
                if not self._redis_down:
                    self._redis_down = True
                    log.warning("redis_unavailable", service=self.name, error=f"{type(exc).__name__}: {exc}")
                self._report("redis", False)
                self._set_kill(True, known=False)
                await _wait(self.stop, 1.0)
                continue
            await _wait(self.stop, interval)

    def _set_kill(self, on: bool, known: bool) -> None:
        if on != self.kill_switch or known != self._kill_known:
            if known:
                log.info("kill_switch_changed", service=self.name, kill_switch=on)
            else:
                log.warning("kill_switch_unknown", service=self.name, note="Redis away: treating as on")
        self.kill_switch = on
        self._kill_known = known
        self.metrics.kill_switch.set(1 if on else 0)

    def heartbeat_value(self) -> bytes:
        return orjson.dumps({
            "service": self.name, "consumer": self.consumer, "state": self.state, "mode": self.settings.mode,
            "dry_run": self.settings.dry_run, "ts": self.clock.now_ms(), "metrics_port": self.metrics_port,
            "pid": os.getpid(), "host": socket.gethostname(),
        })

    async def _heartbeat(self) -> None:
        key = streams.heartbeat(self.name)
        while not self.stop.is_set():
            # The watchdog says "this process is not hung": a process waiting out a Redis outage
            # is degraded, not hung, so a systemd restart would only add a restart per outage.
            _sd_notify("WATCHDOG=1")
            try:
                await self.redis.set(key, self.heartbeat_value(), ex=self.settings.heartbeat_ttl_s)
            except REDIS_DOWN:
                pass  # the kill-switch watcher reports the outage; the key expires on its own
            self._beat_now.clear()
            waiters = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self._beat_now.wait())]
            await asyncio.wait(waiters, timeout=self.settings.heartbeat_every_s, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    # -- running -----------------------------------------------------------------------

    def request_stop(self, reason: str = "") -> None:
        if not self.stop.is_set():
            log.info("stop_requested", service=self.name, reason=reason)
            self.set_state("stopping")
            _sd_notify("STOPPING=1")
            self.stop.set()

    async def run_once(self) -> int:
        """Handle what is pending in every loop, then exit (``--once``, a dry-run smoke test)."""
        log.info("service_started_once", service=self.name, consumer=self.consumer, mode=self.settings.mode,
                 redis=_redacted(self.settings.redis_url))
        code = 0
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=self.settings.redis_socket_timeout_s)
            for cl in self._loops:
                handled = await cl.run_until_idle(self.stop)
                log.info("drained_once", service=self.name, streams=cl.streams, batches=handled)
        except (*REDIS_DOWN, asyncio.TimeoutError) as exc:
            log.error("redis_unavailable", service=self.name, error=f"{type(exc).__name__}: {exc}")
            code = 1
        await self._close()
        log.info("service_stopped", service=self.name, exit_code=code)
        return code

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        try:
            self.metrics_port = self.metrics.serve(self.settings.metrics_addr, self.settings.metrics_port)
        except OSError as exc:
            raise ConfigError(f"cannot serve /metrics on {self.settings.metrics_addr}:{self.settings.metrics_port} "
                              f"(METRICS_ADDR/METRICS_PORT): {exc.strerror or exc}") from None
        log.info("service_started", service=self.name, consumer=self.consumer, mode=self.settings.mode,
                 dry_run=self.settings.dry_run, metrics=f"http://{self.settings.metrics_addr}:{self.metrics_port}/metrics",
                 redis=_redacted(self.settings.redis_url))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)

        # Latency: objects alive after start-up never need collecting; move them out of the GC's
        # view, and collect the young generation less often (fewer ms-scale pauses on the hot path).
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        tasks = {asyncio.create_task(self._watch_kill_switch(), name="kill_switch"),
                 asyncio.create_task(self._heartbeat(), name="heartbeat")}
        for cl in self._loops:
            tasks.add(asyncio.create_task(cl.run(self.stop), name=f"consume:{','.join(cl.streams)}"))
        for name, factory in self._tasks:
            tasks.add(asyncio.create_task(factory(), name=name))

        code = 0
        stop_waiter = asyncio.create_task(self.stop.wait())
        pending = set(tasks)
        while pending and not self.stop.is_set():
            done, pending = await asyncio.wait(pending | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stop_waiter)
            for task in done:
                if task is stop_waiter or task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None:
                    code = 1
                    self.set_state("faulted")
                    kind = "fatal_error" if isinstance(exc, FatalError) else "task_crashed"
                    log.critical(kind, service=self.name, task=task.get_name(), error=f"{type(exc).__name__}: {exc}",
                                 exc_info=exc)
                    self.stop.set()
        stop_waiter.cancel()

        # Drain: loops see `stop` after their current batch (bounded by block_ms).
        if pending:
            done, still = await asyncio.wait(pending, timeout=STOP_BUDGET_S)
            for task in still:
                log.warning("task_cancelled_at_stop", service=self.name, task=task.get_name())
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=0.5)
            for task in done:
                if not task.cancelled() and task.exception() is not None and code == 0:
                    code = 1
                    log.critical("task_failed_at_stop", task=task.get_name(), error=str(task.exception()))
        await self._close()
        if code == 0:
            self.set_state("stopped")
        log.info("service_stopped", service=self.name, exit_code=code)
        return code

    async def _close(self) -> None:
        try:
            # Say we stopped on purpose; the short TTL lets the key vanish soon after.
            await asyncio.wait_for(self.redis.set(streams.heartbeat(self.name), self.heartbeat_value(), ex=5), 0.5)
        except (*REDIS_DOWN, asyncio.TimeoutError):
            pass  # Redis away at shutdown: the key expires by its TTL
        try:
            await asyncio.wait_for(self.redis.aclose(), 0.5)
        except (*REDIS_DOWN, asyncio.TimeoutError):
            pass
        self.metrics.close()


def run_service(name: str, settings_cls: type[CommonSettings], metrics_prefix: str,
                setup: Callable[[Service], Awaitable[None] | None] | None = None,
                once: bool = False) -> int:
    """The whole of a process's ``main``: settings, logs, setup, run. Returns the exit code."""
    settings = load_settings_or_exit(settings_cls)
    configure_logging(settings.log_level, service=name)

    async def _main() -> int:
        service = Service(name, settings, metrics_prefix)
        if setup is not None:
            result = setup(service)
            if asyncio.iscoroutine(result):
                await result
        return await (service.run_once() if once else service.run())

    try:
        return asyncio.run(_main())
    except ConfigError as exc:
        print(f"tradestack: {exc}", file=sys.stderr, flush=True)
        return 2


def _redacted(url: str) -> str:
    """The Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{host}"


def _sd_notify(state: str) -> None:
    """systemd Type=notify: READY=1 once serving, WATCHDOG=1 from the heartbeat."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", state=state, error=str(exc))
