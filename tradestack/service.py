"""The lifecycle every process shares.

A service entry point builds its settings, then calls ``run_service`` with a ``setup``
function that registers consumer loops and tasks on the ``Service``. The runtime does the
rest, the same way everywhere: JSON logs, ``/metrics``, the Redis client, the heartbeat key,
the kill-switch watcher, SIGTERM/SIGINT, states, and systemd notify.

States: starting → running ⇄ degraded (Redis away) → stopping → stopped, or faulted; running
once prepared (groups, start hooks, rebuilds), so READY=1 and `status` mean ready to consume.
SIGTERM: stop reading, finish the batch in hand (commit = ack), flush, exit 0 within 5 s.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Generic, Iterable, Sequence, TypeVar

import orjson
import redis.asyncio as aioredis

from tradestack import streams
from tradestack.aio import wait_or_stop
from tradestack.backoff import Backoff
from tradestack.bus import (
    REDIS_DOWN,
    Committer,
    ConsumerLoop,
    Handler,
    LoopConfig,
    Publisher,
    StreamArg,
    StreamSpec,
    consumer_name,
)
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.config import CommonSettings, load_settings_or_exit
from tradestack.effects import Effect
from tradestack.errors import ConfigError, FatalError
from tradestack.lease import Lease
from tradestack.logs import configure_logging, get_logger
from tradestack.messages import MessageFactory
from tradestack.metrics import ServiceMetrics
from tradestack.rebuild import Fold, Rebuild, fold_history
from tradestack.redis_conn import connect_from_settings

log = get_logger(__name__)

GC_GEN0_THRESHOLD = 50_000
STOP_BUDGET_S = 4.0  # of the 5 s a SIGTERM allows; the rest is for closing connections

S = TypeVar("S", bound=CommonSettings)
TimerFn = Callable[[], "Iterable[Effect] | Awaitable[Iterable[Effect]] | None"]
Hook = Callable[[], "Awaitable[None] | None"]


@dataclass(frozen=True)
class Timer:
    name: str
    every_s: float
    fn: TimerFn


class Service(Generic[S]):
    """One process: its settings, metrics, Redis client, and the loops, timers and tasks it runs.

    Start-up, in order: Redis answers; the lease is held (``use_lease``: a standby waits here) and
    renewed from then on; consumer groups exist; ``on_start`` hooks run; ``rebuild`` folds history into the handlers'
    state; then the loops, timers and tasks run. Timers' effects go through the same atomic,
    lease-fenced commit as the loops'."""

    def __init__(self, name: str, settings: S, metrics_prefix: str, *,
                 clock: Clock = SYSTEM_CLOCK, redis: aioredis.Redis | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock
        self.consumer = consumer_name()
        self.metrics = metrics or ServiceMetrics(metrics_prefix)
        self.redis = redis or connect_from_settings(settings, client_name=f"{name}:{self.consumer}")
        self.publisher = Publisher(self.redis, self.metrics, settings.stream_maxlen)
        self.messages = MessageFactory(name, clock)
        self.stop = asyncio.Event()
        self.state = "starting"
        self.role = "active"  # "standby" while waiting for the lease
        self.metrics_port: int | None = None
        self.lease: Lease | None = None
        self.summary: Callable[[], str] | None = None  # printed by --once
        # Fail safe: until Redis has told us the switch is off, it counts as on.
        self.kill_switch = True
        self._kill_known = False
        # component -> healthy; None = not heard from yet. Redis starts unknown: a service is not
        # running before it has read the kill switch.
        self._health: dict[str, bool | None] = {"redis": None}
        self._redis_down = False  # one warning per outage
        self._loops: list[ConsumerLoop] = []
        self._timers: list[Timer] = []
        self._rebuilds: list[tuple[str, Fold, bool | None, float | None, float]] = []
        self._hooks: list[Hook] = []
        self._closers: list[Callable[[], None]] = []  # run at exit (e.g. the archive's open files)
        self._tasks: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._committer: Committer | None = None
        self._beat_now = asyncio.Event()  # a state change is published at once, not at the next beat
        self.metrics.dry_run.set(1 if settings.dry_run else 0)
        self.metrics.kill_switch.set(1)
        self.metrics.lease_held.set(1)

    # -- registration (called from setup) ------------------------------------------------

    def consume(self, streams_in: Sequence[StreamArg], handler: Handler, *, stateful: bool = False,
                **config: Any) -> ConsumerLoop:
        """Run the one consumer loop over ``streams_in`` (names or ``StreamSpec``s: start position,
        duplicate filter) with this service's name as the group. ``config`` overrides LoopConfig
        fields (e.g. ``read_count``). ``stateful``: see ConsumerLoop."""
        cfg = LoopConfig.from_settings(self.settings, **config)
        names = [s if isinstance(s, str) else s.name for s in streams_in]
        loop = ConsumerLoop(self.redis, group=self.name, streams_in=streams_in, handler=handler,
                            metrics=self.metrics, config=cfg, consumer=self.consumer, clock=self.clock,
                            on_health=functools.partial(self._report, f"loop:{','.join(names)}"),
                            stateful=stateful, lease=self.lease)
        self._loops.append(loop)
        return loop

    def archive(self, streams_in: Sequence[str]) -> None:
        """Keep these streams' messages in Parquet under ``${PARQUET_DIR}/YYYY-MM-DD/trading/``
        (storage.TradingArchive), read back from the streams by a loop of its own group,
        ``<name>.archive``: a row is written and flushed before its entry is acked, so what was
        committed is archived exactly as published, a crash loses none (a replay may write a row
        twice, with the same id: readers dedupe by id), and a decision the kill switch turned into
        a blocked one at commit time is archived as the blocked one. Compaction and retention run
        in a thread every ``PARQUET_COMPACT_EVERY_S``."""
        from tradestack.storage import ParquetSink, TradingArchive, trading_kind

        for stream in streams_in:
            trading_kind(stream)  # a stream that is not trading data fails here
        archive = TradingArchive(ParquetSink(self.settings.parquet_dir, self.clock,
                                             retention_days=self.settings.parquet_retention_days))

        def record(stream: str, entries: list[tuple[str, Any]]) -> None:
            # The entries' own bytes, undecoded, one flush a batch (decoding a message to write back its
            # JSON cost more than the service's own handling of it).
            archive.record_entries(stream, entries)

        def unused(msg: Any, delivery: Any) -> list[Effect]:
            raise AssertionError("the archive loop reads whole batches (raw_batch)")

        specs = [StreamSpec(stream, start="0", dedupe=False) for stream in streams_in]
        cfg = LoopConfig.from_settings(self.settings)
        self._loops.append(ConsumerLoop(
            self.redis, group=f"{self.name}.archive", streams_in=specs, handler=unused, metrics=self.metrics,
            config=cfg, consumer=self.consumer, clock=self.clock,
            on_health=functools.partial(self._report, "archive"), lease=self.lease, raw_batch=record))

        async def maintain() -> None:
            while not self.stop.is_set():
                try:
                    await asyncio.to_thread(archive.compact_due)
                    await asyncio.to_thread(archive.apply_retention)
                except Exception as exc:  # noqa: BLE001 - disk full, a bug: log, keep trading, retry next round
                    log.error("archive_maintenance_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                await wait_or_stop(self.stop, self.settings.parquet_compact_every_s)

        def close() -> None:
            archive.close()

        self.add_task("archive", maintain)
        self._closers.append(close)

    def trim_by_age(self, streams_in: Sequence[str], max_age_s: float | None = None, every_s: float = 3600.0, *,
                    keep_from: Callable[[str], str | None] | None = None) -> None:
        """Trim these order/event streams by age every ``every_s`` (tradestack/trim.py: ``XTRIM MINID``,
        never past an entry a consumer group has not read and acked; the newest entry is kept).
        ``max_age_s``: by default ``STREAM_MAX_AGE_DAYS`` (0: never; then no timer). ``keep_from(stream)``:
        the oldest entry id the service's state still needs, or None. One owner per stream: the core
        trims orders:signals and orders:shadow, the executor orders:executed, the PnL pnl:snapshots
        and trading:events, the signal engine its signal stream. Logs ``stream_trimmed``, counts
        ``<prefix>_trimmed_total{stream}``; the timer commits nothing."""
        from tradestack.trim import trim_round

        max_age_ms = int((self.settings.stream_max_age_days * 86_400 if max_age_s is None else max_age_s) * 1000)
        if max_age_ms <= 0:
            log.info("trim_by_age_off", service=self.name, streams=list(streams_in))
            return
        counter = self.__dict__.get("_trimmed_total")
        if counter is None:  # one counter, however many calls
            counter = self._trimmed_total = self.metrics.counter(
                "trimmed_total", "Entries removed from order and event streams by age", ["stream"])
        names = list(streams_in)

        async def trim() -> list[Effect]:
            removed = await trim_round(self.redis, names, max_age_ms, self.clock.now_ms(),
                                       trim_ungrouped=self.settings.stream_trim_ungrouped, keep_from=keep_from)
            for stream, n in removed.items():
                counter.labels(stream=stream).inc(n)
            return []  # nothing to commit

        self.every(every_s, trim, name="trim_by_age")

    def every(self, seconds: float, fn: TimerFn, name: str | None = None) -> None:
        """Call ``fn`` every ``seconds`` while active; the effects it returns are committed atomically
        (lease-fenced), like a handler's. An exception is logged and counted; the timer goes on."""
        if seconds <= 0:
            raise ValueError("a timer needs a positive interval")
        self._timers.append(Timer(name or str(getattr(fn, "__name__", "timer")), seconds, fn))

    def rebuild(self, stream: str, fold: Fold, *, bound_to_group: bool | None = None,
                history_s: float | None = None, timeout_s: float = 120.0) -> None:
        """Fold ``stream``'s history through ``fold(msg, entry_id)`` before any loop reads (see
        rebuild.py). ``bound_to_group``: stop where this service's group has read; by default, when
        one of its loops consumes the stream. ``history_s``: read only the last so many seconds."""
        self._rebuilds.append((stream, fold, bound_to_group, history_s, timeout_s))

    def on_start(self, hook: Hook) -> None:
        """Run ``hook`` once active, before the rebuild (e.g. load exchange rules, or a hash)."""
        self._hooks.append(hook)

    def use_lease(self, ttl_ms: int | None = None) -> Lease:
        """Act only while holding the lease ``lease:<name>`` (one active instance; others wait as
        hot standbys). Call before ``consume``. Every commit is fenced by its token."""
        if self._loops:
            raise RuntimeError("use_lease() must come before consume()")
        self.lease = Lease(self.redis, self.name, self.consumer, ttl_ms or self.settings.lease_ttl_ms)
        self.role = "standby"
        self.metrics.lease_held.set(0)
        return self.lease

    def add_task(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A long-running coroutine, started once active; it must return soon after ``self.stop``."""
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
                await wait_or_stop(self.stop, 1.0)
                continue
            await wait_or_stop(self.stop, interval)

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
            "service": self.name, "consumer": self.consumer, "state": self.state, "role": self.role,
            "lease_token": self.lease.token if self.lease else None, "mode": self.settings.mode,
            "dry_run": self.settings.dry_run, "ts": self.clock.now_ms(), "metrics_port": self.metrics_port,
            "pid": os.getpid(), "host": socket.gethostname(),
        })

    async def _heartbeat(self) -> None:
        key = streams.heartbeat(self.name)
        while not self.stop.is_set():
            # The watchdog says "this process is not hung": a process waiting out a Redis outage
            # is degraded, not hung, so a systemd restart would only add a restart per outage.
            _sd_notify("WATCHDOG=1")
            # Cleared before the value is taken: a state change during the SET beats again at once
            # instead of waiting a whole period.
            self._beat_now.clear()
            try:
                await self.redis.set(key, self.heartbeat_value(), ex=self.settings.heartbeat_ttl_s)
            except REDIS_DOWN:
                pass  # the kill-switch watcher reports the outage; the key expires on its own
            waiters = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self._beat_now.wait())]
            await asyncio.wait(waiters, timeout=self.settings.heartbeat_every_s, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    # -- becoming active -----------------------------------------------------------------

    async def _wait_for_redis(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while not self.stop.is_set():
            try:
                await self.redis.ping()
                return
            except REDIS_DOWN:
                await wait_or_stop(self.stop, backoff.next_delay())

    async def _acquire_lease(self, give_up_after_s: float | None = None) -> bool:
        assert self.lease is not None
        waited = 0.0
        poll_s = self.settings.lease_poll_ms / 1000.0
        logged = False
        while not self.stop.is_set():
            try:
                if await self.lease.try_acquire():
                    self.role = "active"
                    self.metrics.lease_held.set(1)
                    self.metrics.lease_token.set(self.lease.token)
                    log.info("lease_acquired", service=self.name, token=self.lease.token, holder=self.consumer)
                    self._beat_now.set()
                    return True
                if not logged:
                    logged = True
                    log.info("standby", service=self.name, holder=await self.lease.current(),
                             note="another instance is active; taking over when its lease expires")
            except REDIS_DOWN:
                pass  # the kill-switch watcher reports the outage
            if give_up_after_s is not None and waited >= give_up_after_s:
                return False
            await wait_or_stop(self.stop, poll_s)
            waited += poll_s
        return False

    async def _prepare(self) -> None:
        """Groups, start hooks, rebuilds: once, before any loop reads. A Redis outage in the middle
        would leave a half-folded state, so it stops the process (the restart folds afresh)."""
        try:
            for loop in self._loops:
                await loop.ensure_groups()
            for hook in self._hooks:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            consumed = {stream for loop in self._loops if loop.group == self.name for stream in loop.streams}
            now_ms = self.clock.now_ms()
            for stream, fold, bound, history_s, timeout_s in self._rebuilds:
                bound = stream in consumed if bound is None else bound
                since = None if history_s is None else now_ms - int(history_s * 1000)
                rb = Rebuild(stream, fold, group=self.name if bound else None, since_ms=since, timeout_s=timeout_s)
                folded = await fold_history(self.redis, rb)
                self.metrics.rebuild_seconds.labels(stream=stream).set(folded.seconds)
                self.metrics.rebuild_entries.labels(stream=stream).set(folded.entries)
                log.info("state_rebuilt", service=self.name, stream=stream, entries=folded.entries,
                         skipped=folded.skipped, seconds=round(folded.seconds, 3), bound_to_group=bound)
        except REDIS_DOWN as exc:
            raise FatalError(f"Redis went away while preparing ({type(exc).__name__}: {exc}); "
                             f"restarting to rebuild the state afresh") from exc

    def _timer_committer(self) -> Committer:
        if self._committer is None:
            self._committer = Committer(self.redis, group=self.name, consumer=self.consumer, metrics=self.metrics,
                                        dedupe_ttl_s=self.settings.dedupe_ttl_s, maxlen=self.settings.stream_maxlen,
                                        lease=self.lease)
        return self._committer

    async def run_timer(self, timer: Timer) -> None:
        """One run of a timer: call it, commit its effects. Public for tests and ``--once``."""
        result = timer.fn()
        if inspect.isawaitable(result):
            result = await result
        effects = list(result or ())
        if effects:
            await self._timer_committer().commit(None, [("", "", "ok", effects)])

    async def _timer_task(self, timer: Timer) -> None:
        while not await wait_or_stop(self.stop, timer.every_s):
            try:
                await self.run_timer(timer)
                self.metrics.timer_runs.labels(timer=timer.name, outcome="ok").inc()
            except FatalError:
                raise
            except REDIS_DOWN as exc:
                self.metrics.timer_runs.labels(timer=timer.name, outcome="error").inc()
                log.warning("timer_commit_failed", timer=timer.name, error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug: log it loudly and keep the process (and its exits) running
                self.metrics.timer_runs.labels(timer=timer.name, outcome="error").inc()
                log.critical("timer_failed", timer=timer.name, error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    async def _renew_lease(self) -> None:
        assert self.lease is not None
        interval = self.lease.ttl_ms / 3000.0
        while not await wait_or_stop(self.stop, interval):
            try:
                await self.lease.renew()  # LeaseLost stops the process: it must not act any more
            except REDIS_DOWN:
                pass  # unknown for now; the commit script's fence protects meanwhile

    async def _prepare_while_renewing(self, renewer: asyncio.Task[None] | None) -> bool:
        """``_prepare()``, given up at once if the lease is lost meanwhile (the renewer raises
        LeaseLost, which propagates) or the process is stopping (False)."""
        if renewer is None:
            await self._prepare()
            return True
        prep = asyncio.create_task(self._prepare(), name="prepare")
        done, _ = await asyncio.wait({prep, renewer}, return_when=asyncio.FIRST_COMPLETED)
        if prep not in done:
            prep.cancel()
            await asyncio.gather(prep, return_exceptions=True)
            renewer.result()  # LeaseLost propagates; a renewer that simply ended saw the stop
            return False
        prep.result()
        return True

    async def _active(self) -> None:
        """Wait for Redis and the lease, prepare, then run loops, timers and tasks until stopped."""
        await self._wait_for_redis()
        if self.lease is not None and not await self._acquire_lease():
            return
        if self.stop.is_set():
            return
        # Not "running" while preparing (groups, start hooks, rebuilds): `status`, preflight and
        # systemd's READY=1 mean ready to consume. A standby waiting above is running in its role.
        self._health["prepare"] = None
        if self.state == "running":
            self.set_state("starting")
        # The lease is renewed from the moment it is held: a start-up that outlasts its TTL (a long
        # rebuild, a start hook waiting out a 105 ban) must not lose it and crash on the first commit.
        renewer = asyncio.create_task(self._renew_lease(), name="lease") if self.lease is not None else None
        try:
            if not await self._prepare_while_renewing(renewer):
                return
        except BaseException:
            if renewer is not None:
                renewer.cancel()
            raise
        self._report("prepare", True)
        children = [asyncio.create_task(cl.run(self.stop), name=f"consume:{','.join(cl.streams)}")
                    for cl in self._loops]
        children += [asyncio.create_task(self._timer_task(t), name=f"timer:{t.name}") for t in self._timers]
        children += [asyncio.create_task(factory(), name=name) for name, factory in self._tasks]
        if renewer is not None:
            children.append(renewer)
        if not children:
            await self.stop.wait()
            return
        try:
            done, pending = await asyncio.wait(children, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if pending:
                await asyncio.wait(pending)
        finally:
            for task in children:
                if not task.done():
                    task.cancel()

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
            value = await self.redis.get(streams.KILL)
            self._set_kill(value == b"1", known=True)
            if self.lease is not None and not await self._acquire_lease(self.lease.ttl_ms / 1000.0 + 1.0):
                print(f"tradestack: another {self.name} is active ({await self.lease.current()}); "
                      f"--once does not decide beside it", file=sys.stderr, flush=True)
                await self._close()
                return 1
            await self._prepare()
            for cl in self._loops:
                handled = await cl.run_until_idle(self.stop)
                log.info("drained_once", service=self.name, streams=cl.streams, entries=handled)
            if self.summary is not None:
                print(self.summary(), flush=True)
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
                 redis=_redacted(self.settings.redis_url), lease=self.lease is not None)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)

        # Latency: objects alive after start-up never need collecting; move them out of the GC's
        # view, and collect the young generation less often (fewer ms-scale pauses on the hot path).
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        tasks: set[asyncio.Task[Any]] = {asyncio.create_task(self._watch_kill_switch(), name="kill_switch"),
                 asyncio.create_task(self._heartbeat(), name="heartbeat"),
                 asyncio.create_task(self._active(), name="active")}

        code = 0
        stop_waiter: asyncio.Task[Any] = asyncio.create_task(self.stop.wait())
        pending: set[asyncio.Task[Any]] = set(tasks)
        while pending and not self.stop.is_set():
            done, pending = await asyncio.wait(pending | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stop_waiter)
            for task in done:
                if task is stop_waiter or task.cancelled():
                    continue
                error = task.exception()
                if error is not None:
                    code = 1
                    self.set_state("faulted")
                    kind = "fatal_error" if isinstance(error, FatalError) else "task_crashed"
                    log.critical(kind, service=self.name, task=task.get_name(),
                                 error=f"{type(error).__name__}: {error}", exc_info=error)
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
        if self.lease is not None:
            try:  # a standby takes over at once instead of after the TTL
                await asyncio.wait_for(self.lease.release(), 0.5)
            except (*REDIS_DOWN, asyncio.TimeoutError):
                pass  # it expires by its TTL
            self.metrics.lease_held.set(0)
        try:
            # Say we stopped on purpose; the short TTL lets the key vanish soon after.
            await asyncio.wait_for(self.redis.set(streams.heartbeat(self.name), self.heartbeat_value(), ex=5), 0.5)
        except (*REDIS_DOWN, asyncio.TimeoutError):
            pass  # Redis away at shutdown: the key expires by its TTL
        try:
            await asyncio.wait_for(self.redis.aclose(), 0.5)
        except (*REDIS_DOWN, asyncio.TimeoutError):
            pass
        for close in self._closers:
            close()
        self.metrics.close()


def run_service(name: str, settings_cls: type[S], metrics_prefix: str,
                setup: Callable[[Service[S]], Awaitable[None] | None] | None = None,
                once: bool = False, metrics: Callable[[], ServiceMetrics] | None = None) -> int:
    """The whole of a process's ``main``: settings, logs, setup, run. Returns the exit code.
    ``metrics``: builds the service's own ServiceMetrics subclass (its extra metrics on the same
    registry and /metrics)."""
    settings = load_settings_or_exit(settings_cls)
    configure_logging(settings.log_level, service=name)

    async def _main() -> int:
        service = Service(name, settings, metrics_prefix, metrics=metrics() if metrics else None)
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
    except FatalError as exc:  # e.g. a start-up hook that cannot get what the service needs
        log.error("service_failed", service=name, error=str(exc))
        print(f"tradestack: {name}: {exc}", file=sys.stderr, flush=True)
        return 1


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
