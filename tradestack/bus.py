"""Publishing, and the one consumer loop every service runs.

The loop: create the group (ignore BUSYGROUP); first re-read this consumer's own pending
entries (id ``0``), then read new ones (``>``) with COUNT and BLOCK; decode; handle; write
the outputs and ack the input atomically; every few seconds take over entries that an idle
(dead or stuck) consumer left behind with XAUTOCLAIM.

Atomic commit. DESIGN §2 asks for outputs and the XACK in one MULTI/EXEC. We go one step
further with a Lua script (atomic the same way, one round trip per batch) because MULTI
cannot be conditional: the script writes a batch entry's outputs and acks it only if the
entry is *still pending for this consumer*. If a slow consumer's entry was claimed by
another one meanwhile, the slow one's outputs are dropped, so a claim race never writes a
duplicate downstream. A per-group marker on each input message id (``SET NX EX``) drops
messages that reach the group twice (e.g. an upstream replay): they are acked, outputs dropped.

Failure policy (see errors.py): a message that fails to decode or raises PoisonMessage is
dead-lettered to ``<stream>:dlq`` and acked; any other exception leaves it pending, to be
retried after ``claim_idle_ms``; past ``max_deliveries`` it is dead-lettered; FatalError
propagates without acking. Handlers do not own ordering: a retried entry may be handled
after newer ones.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tradestack import streams
from tradestack.backoff import Backoff
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.config import CommonSettings
from tradestack.errors import FatalError, PoisonMessage
from tradestack.logs import get_logger
from tradestack.messages import Message, decode, encode
from tradestack.metrics import ServiceMetrics

log = get_logger(__name__)

# Errors that mean "Redis is away for now": back off and retry, never crash.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError, OSError)

DLQ_MAXLEN = 100_000

# KEYS[1] = input stream, KEYS[2..] = output streams.
# ARGV = group, consumer, dedupe_ttl_s, n_inputs, first_id, last_id, pending_count, then per input:
#   entry_id, dedupe_key ('' = none), n_outputs, then per output: key_index, maxlen, n_fields, f1, v1, ...
# Returns a status per input: 1 written and acked, 2 duplicate (acked, outputs dropped),
# 0 no longer pending for this consumer (claimed by another; left to it).
# The ownership check and the ack are one call each per batch, not per entry.
COMMIT_LUA = """
local group, consumer, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local owned = {}
for _, row in ipairs(redis.call('XPENDING', KEYS[1], group, ARGV[5], ARGV[6], tonumber(ARGV[7]), consumer)) do
  owned[row[1]] = true
end
local i = 8
local result, acks = {}, {}
for k = 1, n do
  local eid, dkey, nout = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local status = 0
  if owned[eid] then
    status = 1
    if dkey ~= '' and ttl > 0 then
      if not redis.call('SET', dkey, '1', 'NX', 'EX', ttl) then status = 2 end
    end
    acks[#acks + 1] = eid
  end
  for o = 1, nout do
    local key, maxlen, nf = KEYS[tonumber(ARGV[i])], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    if status == 1 then
      local args = {key}
      if maxlen > 0 then
        args[2] = 'MAXLEN'; args[3] = '~'; args[4] = maxlen
      end
      args[#args + 1] = '*'
      for f = 1, 2 * nf do args[#args + 1] = ARGV[i + 2 + f] end
      redis.call('XADD', unpack(args))
    end
    i = i + 3 + 2 * nf
  end
  result[k] = status
end
for a = 1, #acks, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(acks, a, math.min(a + 999, #acks)))
end
return result
"""


@dataclass(frozen=True, slots=True)
class Output:
    """One message a handler wants written to a stream."""

    stream: str
    msg: Message


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the message in hand came from."""

    stream: str
    entry_id: str
    deliveries: int  # 1 on first delivery; higher when retried or claimed


Handler = Callable[[Message, Delivery], Iterable[Output] | Awaitable[Iterable[Output]]]


def consumer_name() -> str:
    """host:pid, so instances on several hosts share one group (DESIGN §2)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class LoopConfig:
    read_count: int = 256
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    claim_every_s: float = 5.0
    max_deliveries: int = 5
    dedupe_ttl_s: int = 86_400
    metrics_every_s: float = 5.0
    start_id: str = "0"  # where a new group starts: "0" = everything in the stream, "$" = only new
    maxlen: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s: CommonSettings, **overrides: Any) -> "LoopConfig":
        base = dict(read_count=s.read_count, block_ms=s.block_ms, claim_idle_ms=s.claim_idle_ms,
                    claim_every_s=s.claim_every_s, max_deliveries=s.max_deliveries,
                    dedupe_ttl_s=s.dedupe_ttl_s, maxlen=dict(s.stream_maxlen))
        base.update(overrides)
        return cls(**base)


class Publisher:
    """Writes messages to streams (for producers such as ingest, which read no stream)."""

    def __init__(self, redis: aioredis.Redis, metrics: ServiceMetrics | None = None,
                 maxlen: Mapping[str, int] | None = None) -> None:
        self.redis = redis
        self.metrics = metrics
        self.maxlen = dict(maxlen or {})

    async def publish(self, stream: str, msg: Message) -> str:
        limit = streams.maxlen_for(stream, self.maxlen)
        entry_id = await self.redis.xadd(stream, encode(msg), maxlen=limit or None, approximate=True)
        if self.metrics:
            self.metrics.published.labels(stream=stream).inc()
        return _s(entry_id)

    async def publish_many(self, outputs: Sequence[Output]) -> None:
        """One pipelined round trip for many messages (not atomic: use for market data)."""
        if not outputs:
            return
        pipe = self.redis.pipeline(transaction=False)
        for out in outputs:
            limit = streams.maxlen_for(out.stream, self.maxlen)
            pipe.xadd(out.stream, encode(out.msg), maxlen=limit or None, approximate=True)
        await pipe.execute()
        if self.metrics:
            for out in outputs:
                self.metrics.published.labels(stream=out.stream).inc()


class ConsumerLoop:
    """Reads ``streams`` as ``group``/``consumer`` and runs ``handler`` on every message."""

    def __init__(self, redis: aioredis.Redis, *, group: str, streams_in: Sequence[str], handler: Handler,
                 metrics: ServiceMetrics, config: LoopConfig | None = None, consumer: str | None = None,
                 clock: Clock = SYSTEM_CLOCK, on_health: Callable[[bool], None] | None = None) -> None:
        if not streams_in:
            raise ValueError("a consumer loop needs at least one stream")
        self.redis = redis
        self.group = group
        self.consumer = consumer or consumer_name()
        self.streams = list(streams_in)
        self.handler = handler
        self._handler_is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None))
        self.metrics = metrics
        self.config = config or LoopConfig()
        self.clock = clock
        self.on_health = on_health
        self._commit = redis.register_script(COMMIT_LUA)
        self._last_claim = clock.monotonic()
        self._last_metrics = float("-inf")
        self._last_error: dict[str, str] = {}  # entry id → last transient error, for the DLQ record
        self._backoff = Backoff(0.1, 5.0)
        self._healthy: bool | None = None
        self._children: dict[tuple[str, str, str], Any] = {}  # labels() is slow on the hot path
        self._inflight: asyncio.Future[None] | None = None  # the commit of the previous batch

    def _drop_inflight(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            # Its outcome no longer matters (Redis went away); retrieve it so asyncio stays quiet.
            inflight.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def flush(self) -> None:
        """Wait for the commit in flight, if any (its errors surface here)."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    def _metric(self, name: str, stream: str, outcome: str = "") -> Any:
        key = (name, stream, outcome)
        child = self._children.get(key)
        if child is None:
            metric = getattr(self.metrics, name)
            child = self._children[key] = (metric.labels(stream=stream, outcome=outcome) if outcome
                                           else metric.labels(stream=stream))
        return child

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: read, handle, commit. Redis outages degrade, never crash."""
        try:
            await self._run(stop)
        finally:
            try:
                await self.flush()  # the batch in hand is committed (acked) before we return
            except REDIS_DOWN as exc:
                log.warning("final_commit_failed", group=self.group, error=f"{type(exc).__name__}: {exc}",
                            note="its entries stay pending and are handled again")

    async def _run(self, stop: asyncio.Event) -> None:
        needs_setup = True
        while not stop.is_set():
            try:
                if needs_setup:
                    await self._ensure_groups()
                    await self._drain_own_pending(stop)
                    needs_setup = False
                self._set_health(True)
                now = self.clock.monotonic()
                if now - self._last_claim >= self.config.claim_every_s:
                    self._last_claim = now
                    await self.claim_idle()
                if now - self._last_metrics >= self.config.metrics_every_s:
                    self._last_metrics = now
                    await self.refresh_group_metrics()
                if self._inflight is not None:
                    # Never block while a commit is in flight: read what is there (overlapping the
                    # commit), and when nothing is, settle the commit so its errors surface now.
                    if not await self.read_once(">", block_ms=None, overlap=True):
                        await self.flush()
                else:
                    await self.read_once(">", block_ms=self.config.block_ms, overlap=True)
                self._backoff.reset()
            except REDIS_DOWN as exc:
                needs_setup = True
                self._drop_inflight()  # its entries stay pending; the own-pending drain redoes them
                self.metrics.redis_errors.inc()
                self._set_health(False, exc)
                await _wait(stop, self._backoff.next_delay())
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream or group vanished (e.g. Redis lost its data)
                    log.warning("consumer_group_missing", group=self.group, error=str(exc))
                    needs_setup = True
                    continue
                raise

    async def run_until_idle(self, stop: asyncio.Event, redis_wait_s: float = 10.0) -> int:
        """Handle everything pending and new, then return how many entries were read (``--once``).
        Gives up with ConnectionError if Redis stays away longer than ``redis_wait_s``."""
        waited = 0.0
        while True:
            try:
                await self._ensure_groups()
                await self._drain_own_pending(stop)
                total = await self.claim_idle()
                while not stop.is_set():
                    last = await self.read_once(">", block_ms=None)
                    if not last:
                        break
                    total += 1
                await self.refresh_group_metrics()
                return total
            except REDIS_DOWN as exc:
                self._set_health(False, exc)
                if waited >= redis_wait_s:
                    raise ConnectionError(f"Redis unreachable for {redis_wait_s:.0f} s: {exc}") from None
                delay = self._backoff.next_delay()
                waited += delay
                await _wait(stop, delay)

    def _set_health(self, ok: bool, exc: BaseException | None = None) -> None:
        if self._healthy is ok:
            return
        self._healthy = ok
        if ok:
            log.info("redis_connected", group=self.group, consumer=self.consumer)
        else:
            # One line per outage, not a traceback per retry.
            log.warning("redis_unavailable", group=self.group, error=f"{type(exc).__name__}: {exc}")
        if self.on_health:
            self.on_health(ok)

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id=self.config.start_id, mkstream=True)
                log.info("consumer_group_created", stream=stream, group=self.group, start_id=self.config.start_id)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _drain_own_pending(self, stop: asyncio.Event) -> None:
        """Entries delivered to this consumer but never acked (e.g. a commit lost to a Redis
        outage). Walks this consumer's history forward so an entry that fails again is left
        for the claim path instead of being re-read forever."""
        starts = {s: "0" for s in self.streams}
        while starts and not stop.is_set():
            last = await self.read_once(starts, block_ms=None, check_deliveries=True)
            starts = {s: last[s] for s in starts if s in last}

    # -- reading and handling ----------------------------------------------------------

    async def read_once(self, start: str | Mapping[str, str], block_ms: int | None,
                        check_deliveries: bool = False, overlap: bool = False) -> dict[str, str]:
        """One XREADGROUP; returns the last entry id read per stream (empty when nothing came)."""
        ids = {s: start for s in self.streams} if isinstance(start, str) else dict(start)
        resp = await self.redis.xreadgroup(self.group, self.consumer, ids,  # type: ignore[arg-type]
                                           count=self.config.read_count, block=block_ms)
        if not resp:
            return {}
        items = resp.items() if isinstance(resp, dict) else resp
        last: dict[str, str] = {}
        for stream, entries in items:
            if isinstance(entries, list) and entries and isinstance(entries[0], list) and not isinstance(entries[0][0], bytes):
                entries = entries[0]  # RESP3 shape
            if entries:
                name = _s(stream)
                last[name] = _s(entries[-1][0])
                await self.process(name, entries, check_deliveries=check_deliveries, overlap=overlap)
        return last

    async def process(self, stream: str, entries: Sequence[tuple[Any, Any]], check_deliveries: bool = False,
                      overlap: bool = False) -> None:
        """Decode, handle and commit one batch of entries from one stream.

        With ``overlap`` the commit is left running while the caller reads and handles the next
        batch (Python and Redis work at the same time); commits still happen one after another,
        in order, and ``flush()`` waits for the last one."""
        deliveries = await self._delivery_counts(stream, entries) if check_deliveries else {}
        debug = log.isEnabledFor(logging.DEBUG)  # once per batch: the hot path pays nothing at INFO
        batch: list[tuple[str, str, list[tuple[str, Mapping[Any, Any]]]]] = []
        newest_ts = 0
        for raw_id, fields in entries:
            entry_id = _s(raw_id)
            if fields is None:  # deleted (trimmed) while pending: nothing left to handle
                batch.append((entry_id, "", []))
                continue
            count = deliveries.get(entry_id, 1)
            if count > self.config.max_deliveries:
                last = self._last_error.pop(entry_id, "unknown")
                error = f"delivered {count} times (limit {self.config.max_deliveries}); last error: {last}"
                batch.append((entry_id, "", [self._dead_letter(stream, entry_id, fields, error)]))
                continue
            try:
                msg = decode(fields)
            except PoisonMessage as exc:
                batch.append((entry_id, "", [self._dead_letter(stream, entry_id, fields, str(exc))]))
                continue
            started = time.perf_counter()
            try:
                result = self.handler(msg, Delivery(stream, entry_id, count))
                if self._handler_is_async or inspect.isawaitable(result):
                    result = await result  # type: ignore[misc]
                outputs = [(out.stream, encode(out.msg)) for out in result]  # type: ignore[union-attr]
            except PoisonMessage as exc:
                batch.append((entry_id, "", [self._dead_letter(stream, entry_id, fields, str(exc))]))
                continue
            except FatalError:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # transient by policy: leave pending, retried after claim_idle_ms
                self._last_error[entry_id] = f"{type(exc).__name__}: {exc}"
                self._metric("messages", stream, "retry").inc()
                log.error("message_failed", stream=stream, entry_id=entry_id, msg_id=msg.id, type=msg.TYPE,
                          deliveries=count, error=f"{type(exc).__name__}: {exc}", exc_info=True)
                continue
            self._metric("handle_seconds", stream).observe(time.perf_counter() - started)
            dedupe = f"{streams.DEDUPE_PREFIX}{self.group}:{msg.id}" if self.config.dedupe_ttl_s else ""
            batch.append((entry_id, dedupe, outputs))
            newest_ts = max(newest_ts, msg.ts)
            if debug:
                log.debug("message_handled", stream=stream, entry_id=entry_id, msg_id=msg.id, type=msg.TYPE,
                          trace_id=msg.trace.id, outputs=len(outputs), deliveries=count)
        await self.flush()
        if batch:
            commit = self._commit_batch(stream, batch)
            if overlap:
                self._inflight = asyncio.ensure_future(commit)
            else:
                await commit
        if newest_ts:
            self._metric("last_event", stream).set(newest_ts / 1000.0)

    def _dead_letter(self, stream: str, entry_id: str, fields: Mapping[Any, Any], error: str) -> tuple[str, dict[str, Any]]:
        self._last_error.pop(entry_id, None)
        record: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, value in fields.items():
            k = _s(key)
            if k in ("type", "data"):
                record[k] = value
            else:
                extra[k] = _s(value) if isinstance(value, (bytes, str)) else str(value)
        record.update(error=error, source_stream=stream, source_id=entry_id, group=self.group,
                      consumer=self.consumer, failed_ts=str(self.clock.now_ms()))
        if extra:
            record["extra_fields"] = orjson.dumps(extra)
        self.metrics.dlq.labels(stream=stream).inc()
        log.warning("message_dead_lettered", stream=stream, entry_id=entry_id, error=error,
                    dlq=streams.dlq(stream))
        return streams.dlq(stream), record

    async def _commit_batch(self, stream: str, batch: list[tuple[str, str, list[tuple[str, Mapping[Any, Any]]]]]) -> None:
        keys = [stream]
        key_index: dict[str, int] = {}
        # XREADGROUP and XAUTOCLAIM return ids in ascending order.
        first, last = batch[0][0], batch[-1][0]
        # The PEL range may also hold this consumer's older failures: room for them too.
        args: list[Any] = [self.group, self.consumer, self.config.dedupe_ttl_s, len(batch), first, last,
                           2 * len(batch) + 1000]
        for entry_id, dedupe, outputs in batch:
            args += [entry_id, dedupe, len(outputs)]
            for out_stream, fields in outputs:
                idx = key_index.get(out_stream)
                if idx is None:
                    keys.append(out_stream)
                    idx = key_index[out_stream] = len(keys)
                if out_stream.endswith(streams.DLQ_SUFFIX):
                    limit = DLQ_MAXLEN
                else:
                    limit = streams.maxlen_for(out_stream, dict(self.config.maxlen))
                args += [idx, limit, len(fields)]
                for k, v in fields.items():
                    args += [k, v]
        statuses = await self._commit(keys=keys, args=args)
        outcomes: dict[str, int] = {}
        published: dict[str, int] = {}
        for (entry_id, dedupe, outputs), status in zip(batch, statuses):
            if status == 1:
                outcome = "dlq" if outputs and outputs[0][0].endswith(streams.DLQ_SUFFIX) else "ok"
                for out_stream, _ in outputs:
                    published[out_stream] = published.get(out_stream, 0) + 1
            elif status == 2:
                outcome = "duplicate"
                log.info("duplicate_dropped", stream=stream, entry_id=entry_id, dedupe_key=dedupe)
            else:
                outcome = "skipped"
                log.warning("entry_claimed_by_other_consumer", stream=stream, entry_id=entry_id)
            if self._last_error:
                self._last_error.pop(entry_id, None)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # Counted once per batch: per-message increments were a measurable share of the loop.
        for outcome, n in outcomes.items():
            self._metric("messages", stream, outcome).inc(n)
        for out_stream, n in published.items():
            self._metric("published", out_stream).inc(n)

    # -- taking over from dead consumers -------------------------------------------------

    async def claim_idle(self) -> int:
        """XAUTOCLAIM entries idle longer than claim_idle_ms (any consumer's, ours too) and handle them."""
        total = 0
        for stream in self.streams:
            start = "0-0"
            for _ in range(100):  # bounded: at most 100 pages per round
                resp = await self.redis.xautoclaim(stream, self.group, self.consumer,
                                                   min_idle_time=self.config.claim_idle_ms,
                                                   start_id=start, count=self.config.read_count)
                next_start, entries = resp[0], resp[1]
                if entries:
                    total += len(entries)
                    self.metrics.claimed.labels(stream=stream).inc(len(entries))
                    log.info("entries_claimed", stream=stream, count=len(entries), consumer=self.consumer)
                    await self.process(stream, entries, check_deliveries=True)
                if len(resp) > 2 and resp[2]:  # Redis 7: ids deleted while pending; XAUTOCLAIM already dropped them
                    log.info("pending_entries_deleted", stream=stream, count=len(resp[2]))
                start = _s(next_start)
                if start == "0-0":
                    break
        return total

    async def _delivery_counts(self, stream: str, entries: Sequence[tuple[Any, Any]]) -> dict[str, int]:
        if not entries:
            return {}
        ids = [_s(e[0]) for e in entries]
        rows = await self.redis.xpending_range(stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 1000)
        return {_s(r["message_id"]): int(r["times_delivered"]) for r in rows}

    # -- metrics -----------------------------------------------------------------------

    async def refresh_group_metrics(self) -> None:
        for stream in self.streams:
            groups = await self.redis.xinfo_groups(stream)
            for g in groups:
                if _s(g["name"]) != self.group:
                    continue
                self.metrics.pending.labels(stream=stream).set(int(g["pending"]))
                lag = g.get("lag")
                if lag is None:  # Redis < 7 has no lag field: count what is after last-delivered-id
                    last = _s(g["last-delivered-id"])
                    rest = await self.redis.xrange(stream, min=f"({last}", max="+", count=10_000)
                    lag = len(rest)
                self.metrics.lag.labels(stream=stream).set(int(lag))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep for a backoff delay, waking at once when asked to stop."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
