"""Publishing, and the one consumer loop every service runs.

The loop: create the groups (ignore BUSYGROUP); first re-read this consumer's own pending
entries (id ``0``), then read new ones (``>``) with COUNT and BLOCK; decode; drop duplicates;
handle; write the handler's effects and ack the input atomically; every few seconds take over
entries that an idle (dead or stuck) consumer left behind with XAUTOCLAIM.

Duplicates are dropped *before* the handler (DESIGN §2): a message id this group has already
handled (the marker ``dedupe:<group>:<message id>``, set in the commit, or an id handled moments
ago whose commit is still in flight) never reaches it, so a replayed fill cannot change a
handler's in-memory positions twice. Market-data streams carry no marker (millions a day would
fill Redis); their consumers are idempotent by nature or dedupe in memory (nonce, candle id).

Atomic commit. DESIGN §2 asks for outputs and the XACK in one MULTI/EXEC; a Lua script is atomic
the same way, and can be conditional, which MULTI cannot:
- it writes a batch entry's effects (stream outputs and key/hash writes, effects.py) and acks it
  only if the entry is *still pending for this consumer*, so a slow consumer whose entry was
  claimed by another never writes a duplicate;
- ``SET NX`` of the duplicate marker in the same call: two consumers racing on copies of one
  message write its effects once;
- with a lease (lease.py) the whole batch is refused unless the lease still holds this process's
  fencing token, so a paused process that lost its lease writes nothing;
- ``IfKey`` effects pick a branch on a key's value inside the same call (the kill switch).

Failure policy (errors.py): a message that fails to decode or raises PoisonMessage is dead-
lettered to ``<stream>:dlq`` and acked; TransientError, a Redis/OS connection error or a timeout
leaves it pending, to be retried after ``claim_idle_ms`` and dead-lettered past
``max_deliveries``; FatalError propagates without acking. Any other exception is a bug in the
handler: retrying runs the same code on the same message, so it is dead-lettered at once (error
``bug: ...``) and counted; in a *stateful* loop the handler's memory may hold half of the change,
so the loop commits what is in hand and then stops the process (FatalError): the restart
rebuilds the state from history, and the bad message is in the DLQ, not in a crash loop.
Handlers do not own ordering: a retried entry may be handled after newer ones.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence, Union

import orjson
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tradestack import streams
from tradestack.aio import wait_or_stop
from tradestack.backoff import Backoff
from tradestack.clock import SYSTEM_CLOCK, Clock
from tradestack.config import CommonSettings
from tradestack.effects import DelKey, Effect, HashDel, HashSet, IfKey, Output, SetKey
from tradestack.errors import FatalError, PoisonMessage, TransientError
from tradestack.lease import Lease, LeaseLost
from tradestack.logs import get_logger
from tradestack.messages import Message, decode, encode
from tradestack.metrics import ServiceMetrics

log = get_logger(__name__)

# Errors that mean "Redis is away for now": back off and retry, never crash.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError, OSError)
# What a handler may raise to have its message retried later rather than dead-lettered.
TRANSIENT = (TransientError, TimeoutError, *REDIS_DOWN)

DLQ_MAXLEN = 100_000
RECENT_IDS = 50_000  # message ids handled lately, kept in memory for the duplicate filter
YIELD_EVERY_S = 0.01  # within a batch, let other tasks (lease renewal, heartbeat, timers) run this often

# KEYS[1] = input stream, KEYS[2..] = every key the effects touch (and the lease key).
# ARGV = group, consumer, dedupe_ttl_s, n_inputs, first_id, last_id, pending_count (0 = no input
#   stream: a timer's effects), lease key index (0 = none), lease value, then per input:
#   entry_id ('' = no input entry), dedupe_key ('' = none), n_ops, ops...
# An op: 'X' key maxlen nf f1 v1 ... | 'S' key ttl_ms value | 'H' key nf f1 v1 ... | 'D' key nf f1 ...
#   | 'K' key | 'C' name value n_then n_else then-ops else-ops  (key = an index into KEYS; name = a key
#   name: the condition's key is only read, and a service may hold read-only rights on it, e.g. the
#   core on trading:kill, while Redis 7's ACL wants write rights on every key declared in KEYS)
# Returns {statuses, branches}: per input 1 written and acked, 2 duplicate (acked, effects dropped),
# 0 no longer pending for this consumer (claimed by another; left to it); per 'C' op of a written
# input, 1 when the key matched. {-1} when the lease is not ours: nothing written.
COMMIT_LUA = """
local group, consumer, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n, npending, lease = tonumber(ARGV[4]), tonumber(ARGV[7]), tonumber(ARGV[8])
if lease > 0 and redis.call('GET', KEYS[lease]) ~= ARGV[9] then return {-1} end
local owned = {}
if npending > 0 then
  for _, row in ipairs(redis.call('XPENDING', KEYS[1], group, ARGV[5], ARGV[6], npending, consumer)) do
    owned[row[1]] = true
  end
end
local branches = {}
local function run(i, count, execute)
  for _ = 1, count do
    local op = ARGV[i]
    if op == 'X' then
      local maxlen, nf = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
      if execute then
        local args = {KEYS[tonumber(ARGV[i + 1])]}
        if maxlen > 0 then args[2] = 'MAXLEN'; args[3] = '~'; args[4] = maxlen end
        args[#args + 1] = '*'
        for f = 1, 2 * nf do args[#args + 1] = ARGV[i + 3 + f] end
        redis.call('XADD', unpack(args))
      end
      i = i + 4 + 2 * nf
    elseif op == 'S' then
      if execute then
        local pttl = tonumber(ARGV[i + 2])
        if pttl > 0 then redis.call('SET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 3], 'PX', pttl)
        else redis.call('SET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 3]) end
      end
      i = i + 4
    elseif op == 'H' then
      local nf = tonumber(ARGV[i + 2])
      if execute then
        local args = {KEYS[tonumber(ARGV[i + 1])]}
        for f = 1, 2 * nf do args[#args + 1] = ARGV[i + 2 + f] end
        redis.call('HSET', unpack(args))
      end
      i = i + 3 + 2 * nf
    elseif op == 'D' then
      local nf = tonumber(ARGV[i + 2])
      if execute then redis.call('HDEL', KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + nf)) end
      i = i + 3 + nf
    elseif op == 'K' then
      if execute then redis.call('DEL', KEYS[tonumber(ARGV[i + 1])]) end
      i = i + 2
    elseif op == 'C' then
      local nthen, nelse = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
      local matched = false
      if execute then
        matched = redis.call('GET', ARGV[i + 1]) == ARGV[i + 2]
        branches[#branches + 1] = matched and 1 or 0
      end
      i = run(i + 5, nthen, execute and matched)
      i = run(i, nelse, execute and not matched)
    else
      return redis.error_reply('commit: unknown op ' .. tostring(op))
    end
  end
  return i
end
local i = 10
local result, acks = {}, {}
for k = 1, n do
  local eid, dkey, nops = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local status = 0
  if eid == '' then
    status = 1
  elseif owned[eid] then
    status = 1
    if dkey ~= '' and ttl > 0 then
      if not redis.call('SET', dkey, '1', 'NX', 'EX', ttl) then status = 2 end
    end
    acks[#acks + 1] = eid
  end
  i = run(i, nops, status == 1)
  result[k] = status
end
for a = 1, #acks, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(acks, a, math.min(a + 999, #acks)))
end
return {result, branches}
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the message in hand came from."""

    stream: str
    entry_id: str
    deliveries: int  # 1 on first delivery; higher when retried or claimed


Handler = Callable[[Message, Delivery], Iterable[Effect] | Awaitable[Iterable[Effect]]]


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """Per-stream options of a consumer loop.

    ``start``: where a new group starts, ``"0"`` (the whole stream) or ``"$"`` (only new entries);
    default ``"$"`` for market data (its history is folded by a rebuild when needed), else the
    loop's ``start_id`` (``"0"``). ``dedupe``: the per-message duplicate marker; default off for
    market data, on for everything else."""

    name: str
    start: str | None = None
    dedupe: bool | None = None

    def resolved(self, default_start: str) -> "StreamSpec":
        market = streams.is_market_data(self.name)
        start = self.start if self.start is not None else ("$" if market else default_start)
        if start not in ("0", "$"):
            raise ValueError(f"stream {self.name}: start must be '0' or '$', not {start!r}")
        return StreamSpec(self.name, start, self.dedupe if self.dedupe is not None else not market)


StreamArg = Union[str, StreamSpec]


def consumer_name() -> str:
    """host:pid, so instances on several hosts share one group (DESIGN §2)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class LoopConfig:
    read_count: int = 256
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    claim_every_s: float = 5.0
    max_deliveries: int = 5
    dedupe_ttl_s: int = 86_400  # 0 turns the duplicate filter off for every stream
    metrics_every_s: float = 5.0
    start_id: str = "0"  # where a new group on a non-market-data stream starts
    maxlen: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s: CommonSettings, **overrides: Any) -> "LoopConfig":
        base: dict[str, Any] = dict(read_count=s.read_count, block_ms=s.block_ms, claim_idle_ms=s.claim_idle_ms,
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
        entry_id = await self.redis.xadd(stream, encode(msg), maxlen=limit or None, approximate=True)  # type: ignore[arg-type]
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
            pipe.xadd(out.stream, encode(out.msg), maxlen=limit or None, approximate=True)  # type: ignore[arg-type]
        await pipe.execute()
        if self.metrics:
            for out in outputs:
                self.metrics.published.labels(stream=out.stream).inc()


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    """A dead-letter record: written like an Output, but its fields are the raw entry's."""

    stream: str
    fields: Mapping[Any, Any]


# One input of a commit: (entry id or '' for none, duplicate-marker key or '', outcome, effects).
Item = tuple[str, str, str, Sequence[Union[Effect, _DeadLetter]]]


class Committer:
    """Writes effects atomically through the commit script: a loop's batches (with the acks of
    their inputs) or a timer's effects (no input). Fenced by the lease when there is one."""

    def __init__(self, redis: aioredis.Redis, *, group: str, consumer: str, metrics: ServiceMetrics,
                 dedupe_ttl_s: int = 86_400, maxlen: Mapping[str, int] | None = None,
                 lease: Lease | None = None) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.metrics = metrics
        self.dedupe_ttl_s = dedupe_ttl_s
        self.maxlen = dict(maxlen or {})
        self.lease = lease
        self._commit = redis.register_script(COMMIT_LUA)
        self._children: dict[tuple[str, str, str], Any] = {}  # labels() is slow on the hot path

    def _metric(self, name: str, stream: str, outcome: str = "") -> Any:
        key = (name, stream, outcome)
        child = self._children.get(key)
        if child is None:
            metric = getattr(self.metrics, name)
            child = self._children[key] = (metric.labels(stream=stream, outcome=outcome) if outcome
                                           else metric.labels(stream=stream))
        return child

    async def commit(self, stream: str | None, items: Sequence[Item]) -> list[int]:
        """Apply ``items`` in one atomic call; returns a status per item (see COMMIT_LUA).
        ``stream`` None: the items have no input entries (a timer's effects)."""
        keys: list[str] = [stream or ""]
        key_index: dict[str, int] = {}

        def kidx(key: str) -> int:
            idx = key_index.get(key)
            if idx is None:
                keys.append(key)
                idx = key_index[key] = len(keys)
            return idx

        lease_idx, lease_value = 0, ""
        if self.lease is not None:
            if not self.lease.held:
                raise LeaseLost(f"lease {self.lease.name!r} is not held: refusing to write")
            lease_idx, lease_value = kidx(self.lease.key), self.lease.value
        if stream is not None:
            # XREADGROUP and XAUTOCLAIM return ids in ascending order. The PEL range may also hold
            # this consumer's older failures: room for them too.
            first, last, npending = items[0][0], items[-1][0], 2 * len(items) + 1000
        else:
            first, last, npending = "-", "+", 0
        args: list[Any] = [self.group, self.consumer, self.dedupe_ttl_s, len(items), first, last, npending,
                           lease_idx, lease_value]
        conditionals: list[IfKey] = []
        for entry_id, dedupe, _, effects in items:
            args += [entry_id, dedupe, len(effects)]
            for effect in effects:
                self._encode(effect, args, kidx, conditionals, nested=False)
        if stream is None:
            keys[0] = keys[1]  # KEYS[1] is the input stream; a timer has none (it writes at least one key)
        reply = await self._commit(keys=keys, args=args)
        if reply and reply[0] == -1:
            assert self.lease is not None
            raise LeaseLost(f"commit refused: lease {self.lease.name!r} no longer holds token {self.lease.token}")
        statuses, branches = [int(s) for s in reply[0]], [int(b) for b in reply[1]]
        self._after_commit(stream, items, statuses, branches)
        return statuses

    def _encode(self, effect: Any, args: list[Any], kidx: Callable[[str], int], conditionals: list[IfKey],
                nested: bool) -> None:
        kind = type(effect)
        if kind is Output:
            fields = encode(effect.msg)
            args += ["X", kidx(effect.stream), streams.maxlen_for(effect.stream, self.maxlen), len(fields)]
            for k, v in fields.items():
                args += [k, v]
        elif kind is _DeadLetter:
            args += ["X", kidx(effect.stream), DLQ_MAXLEN, len(effect.fields)]
            for k, v in effect.fields.items():
                args += [k, v]
        elif kind is SetKey:
            args += ["S", kidx(effect.key), effect.ttl_ms, effect.value]
        elif kind is HashSet:
            if not effect.mapping:
                raise ValueError(f"HashSet on {effect.key} with nothing to set")
            args += ["H", kidx(effect.key), len(effect.mapping)]
            for k, v in effect.mapping.items():
                args += [k, v]
        elif kind is HashDel:
            if not effect.fields:
                raise ValueError(f"HashDel on {effect.key} with no fields")
            args += ["D", kidx(effect.key), len(effect.fields), *effect.fields]
        elif kind is DelKey:
            args += ["K", kidx(effect.key)]
        elif kind is IfKey:
            if nested:
                raise ValueError("IfKey effects cannot be nested")
            conditionals.append(effect)
            args += ["C", effect.key, effect.equals, len(effect.then), len(effect.otherwise)]
            for inner in (*effect.then, *effect.otherwise):
                self._encode(inner, args, kidx, conditionals, nested=True)
        else:
            raise TypeError(f"a handler returned {effect!r}, which is not an effect (tradestack.effects)")

    def _after_commit(self, stream: str | None, items: Sequence[Item], statuses: list[int], branches: list[int]) -> None:
        outcomes: dict[str, int] = {}
        published: dict[str, int] = {}
        taken = iter(branches)
        for (entry_id, dedupe, outcome, effects), status in zip(items, statuses, strict=True):
            if status == 1:
                for effect in effects:
                    if type(effect) is IfKey:
                        matched = next(taken) == 1
                        chosen = effect.then if matched else effect.otherwise
                        for inner in chosen:
                            if type(inner) is Output:
                                published[inner.stream] = published.get(inner.stream, 0) + 1
                        if effect.on_chosen is not None:
                            effect.on_chosen(matched)
                    elif type(effect) is Output or type(effect) is _DeadLetter:
                        published[effect.stream] = published.get(effect.stream, 0) + 1
            else:
                if status == 2:
                    outcome = "duplicate"
                    log.info("duplicate_dropped", stream=stream, entry_id=entry_id, dedupe_key=dedupe)
                else:
                    outcome = "skipped"
                    log.warning("entry_claimed_by_other_consumer", stream=stream, entry_id=entry_id)
                for effect in effects:  # nothing was written: say so to whoever waits on a branch
                    if type(effect) is IfKey and effect.on_chosen is not None:
                        effect.on_chosen(None)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # Counted once per batch: per-message increments were a measurable share of the loop.
        if stream is not None:
            for outcome, count in outcomes.items():
                self._metric("messages", stream, outcome).inc(count)
        for out_stream, count in published.items():
            self._metric("published", out_stream).inc(count)


# (stream, [(entry id, the entry's fields)]): a whole batch, undecoded (ConsumerLoop(raw_batch=...)).
RawBatchHandler = Callable[[str, list[tuple[str, Mapping[Any, Any]]]], None]

class ConsumerLoop(Committer):
    """Reads ``streams_in`` as ``group``/``consumer`` and runs ``handler`` on every message.

    ``stateful``: the handler keeps state in memory that the stream's history rebuilds at start
    (service.rebuild). Such a loop never lets its memory run ahead of what Redis holds: a handler
    bug stops the process after the commit, and a commit whose outcome is unknown (Redis went away
    mid-call) is checked after the reconnect; if it did not apply, the process stops to rebuild."""

    def __init__(self, redis: aioredis.Redis, *, group: str, streams_in: Sequence[StreamArg], handler: Handler,
                 metrics: ServiceMetrics, config: LoopConfig | None = None, consumer: str | None = None,
                 clock: Clock = SYSTEM_CLOCK, on_health: Callable[[bool], None] | None = None,
                 stateful: bool = False, lease: Lease | None = None,
                 raw_batch: RawBatchHandler | None = None) -> None:
        if not streams_in:
            raise ValueError("a consumer loop needs at least one stream")
        config = config or LoopConfig()
        super().__init__(redis, group=group, consumer=consumer or consumer_name(), metrics=metrics,
                         dedupe_ttl_s=config.dedupe_ttl_s, maxlen=config.maxlen, lease=lease)
        specs = (StreamSpec(s) if isinstance(s, str) else s for s in streams_in)
        self.specs = {spec.name: spec.resolved(config.start_id) for spec in specs}
        self.streams = list(self.specs)
        self.handler = handler
        self._handler_is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(type(handler), "__call__", None))  # noqa: B004 - an object whose __call__ is async
        self.config = config
        self.clock = clock
        self.on_health = on_health
        self.stateful = stateful
        self.raw_batch = raw_batch
        self.entries_read = 0
        self._last_claim = clock.monotonic()
        self._last_metrics = float("-inf")
        self._last_error: dict[str, str] = {}  # entry id → last transient error, for the DLQ record
        self._backoff = Backoff(0.1, 5.0)
        self._healthy: bool | None = None
        self._inflight: asyncio.Future[None] | None = None  # the commit of the previous batch
        self._short_read = False  # the last read returned fewer entries than READ_COUNT on every stream
        self._recent: dict[str, None] = {}  # message ids handled lately (insertion-ordered, bounded)
        # Batches handled whose commit is not known to have applied: their duplicate markers.
        self._unconfirmed: list[list[tuple[str, str]]] = []
        self._bug: BaseException | None = None

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
                    await self.ensure_groups()
                    await self._resolve_unconfirmed()
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
                    # commit), and when nothing is, settle the commit so its errors surface now. After a
                    # short batch the stream was drained a moment ago: settle the commit and block at once
                    # (an empty read there cost a round trip per message at low rates).
                    if self._short_read:
                        await self.flush()
                        await self.read_once(">", block_ms=self.config.block_ms, overlap=True)
                    elif not await self.read_once(">", block_ms=None, overlap=True):
                        await self.flush()
                else:
                    await self.read_once(">", block_ms=self.config.block_ms, overlap=True)
                self._backoff.reset()
            except REDIS_DOWN as exc:
                needs_setup = True
                self._drop_inflight()  # its entries stay pending; the own-pending drain redoes them
                self.metrics.redis_errors.inc()
                self._set_health(False, exc)
                await wait_or_stop(stop, self._backoff.next_delay())
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
        before = self.entries_read
        while True:
            try:
                await self.ensure_groups()
                await self._resolve_unconfirmed()
                await self._drain_own_pending(stop)
                await self.claim_idle()
                while not stop.is_set():
                    if not await self.read_once(">", block_ms=None):
                        break
                await self.refresh_group_metrics()
                return self.entries_read - before
            except REDIS_DOWN as exc:
                self._set_health(False, exc)
                if waited >= redis_wait_s:
                    raise ConnectionError(f"Redis unreachable for {redis_wait_s:.0f} s: {exc}") from None
                delay = self._backoff.next_delay()
                waited += delay
                await wait_or_stop(stop, delay)

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

    async def ensure_groups(self) -> None:
        for spec in self.specs.values():
            try:
                await self.redis.xgroup_create(spec.name, self.group, id=spec.start or "0", mkstream=True)
                log.info("consumer_group_created", stream=spec.name, group=self.group, start_id=spec.start)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _resolve_unconfirmed(self) -> None:
        """After Redis came back: did the commits we lost track of apply? Their markers tell."""
        if not self._unconfirmed:
            return
        pairs = [pair for batch in self._unconfirmed for pair in batch]
        values = await self.redis.mget([key for _, key in pairs]) if pairs else []
        missing = [msg_id for (msg_id, _), value in zip(pairs, values, strict=True) if value is None]
        self._unconfirmed.clear()
        for msg_id in missing:  # not written: the entries are still pending and must be handled again
            self._recent.pop(msg_id, None)
        if missing and self.stateful:
            raise FatalError(f"{len(missing)} message(s) were handled but their commit did not apply (Redis went "
                             f"away mid-commit); stopping so a restart rebuilds the state from history")

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
        self._short_read = True
        if not resp:
            return {}
        items: Any = resp.items() if isinstance(resp, dict) else resp
        last: dict[str, str] = {}
        for stream, entries in items:
            if isinstance(entries, list) and entries and isinstance(entries[0], list) and not isinstance(entries[0][0], bytes):
                entries = entries[0]  # RESP3 shape
            if entries:
                name = _s(stream)
                last[name] = _s(entries[-1][0])
                if len(entries) >= self.config.read_count:
                    self._short_read = False
                await self.process(name, entries, check_deliveries=check_deliveries, overlap=overlap)
        return last

    def _remember(self, msg_id: str) -> None:
        recent = self._recent
        recent[msg_id] = None
        if len(recent) > RECENT_IDS:
            del recent[next(iter(recent))]

    async def process(self, stream: str, entries: Sequence[tuple[Any, Any]], check_deliveries: bool = False,
                      overlap: bool = False) -> None:
        """Decode, drop duplicates, handle and commit one batch of entries from one stream.

        With ``overlap`` the commit is left running while the caller reads and handles the next
        batch (Python and Redis work at the same time); commits still happen one after another,
        in order, and ``flush()`` waits for the last one."""
        self.entries_read += len(entries)
        if self.raw_batch is not None:
            await self._process_raw(stream, entries, overlap)
            return
        deliveries = await self._delivery_counts(stream, entries) if check_deliveries else {}
        debug = log.isEnabledFor(logging.DEBUG)  # once per batch: the hot path pays nothing at INFO
        dedupe = self.specs[stream].dedupe and self.dedupe_ttl_s > 0
        prefix = f"{streams.DEDUPE_PREFIX}{self.group}:"
        decoded: list[tuple[str, Any, Message | None, str]] = []
        for raw_id, fields in entries:
            entry_id = _s(raw_id)
            if fields is None:  # deleted (trimmed) while pending: nothing left to handle
                decoded.append((entry_id, None, None, ""))
                continue
            count = deliveries.get(entry_id, 1)
            if count > self.config.max_deliveries:
                last = self._last_error.pop(entry_id, "unknown")
                error = f"delivered {count} times (limit {self.config.max_deliveries}); last error: {last}"
                decoded.append((entry_id, fields, None, error))
                continue
            try:
                decoded.append((entry_id, fields, decode(fields), ""))
            except PoisonMessage as exc:
                decoded.append((entry_id, fields, None, str(exc)))
        seen: set[str] = set()
        if dedupe:
            recent = self._recent
            ask = [m.id for _, _, m, _ in decoded if m is not None and m.id not in recent]
            if ask:
                values = await self.redis.mget([prefix + i for i in ask])
                seen = {i for i, v in zip(ask, values, strict=True) if v is not None}

        batch: list[Item] = []
        markers: list[tuple[str, str]] = []
        newest_ts = 0
        yielded = time.perf_counter()
        for entry_id, fields, msg, error in decoded:
            if msg is None:
                if fields is None:
                    batch.append((entry_id, "", "ok", ()))
                else:
                    batch.append((entry_id, "", "dlq", (self._dead_letter(stream, entry_id, fields, error),)))
                continue
            if dedupe and (msg.id in seen or msg.id in self._recent):
                batch.append((entry_id, "", "duplicate", ()))  # acked, never handled
                if debug:
                    log.debug("duplicate_dropped", stream=stream, entry_id=entry_id, msg_id=msg.id)
                continue
            count = deliveries.get(entry_id, 1)
            started = time.perf_counter()
            try:
                result = self.handler(msg, Delivery(stream, entry_id, count))
                if self._handler_is_async or inspect.isawaitable(result):
                    result = await result  # type: ignore[misc]
                effects = list(result)
            except PoisonMessage as exc:
                batch.append((entry_id, "", "dlq", (self._dead_letter(stream, entry_id, fields, str(exc)),)))
                continue
            except FatalError:
                raise
            except TRANSIENT as exc:  # leave pending: retried after claim_idle_ms, DLQ past max_deliveries
                self._last_error[entry_id] = f"{type(exc).__name__}: {exc}"
                self._metric("messages", stream, "retry").inc()
                log.error("message_failed", stream=stream, entry_id=entry_id, msg_id=msg.id, type=msg.TYPE,
                          deliveries=count, error=f"{type(exc).__name__}: {exc}")
                continue
            except Exception as exc:  # a bug: the same code would fail the same way on a retry
                error = f"bug: {type(exc).__name__}: {exc}"
                self.metrics.handler_errors.labels(stream=stream).inc()
                log.critical("handler_bug", stream=stream, entry_id=entry_id, msg_id=msg.id, type=msg.TYPE,
                             error=error, stateful=self.stateful, exc_info=exc)
                batch.append((entry_id, "", "dlq", (self._dead_letter(stream, entry_id, fields, error),)))
                if self.stateful:
                    self._bug = exc
                    break  # commit what is in hand, then stop: the state may hold half a change
                continue
            done = time.perf_counter()
            self._metric("handle_seconds", stream).observe(done - started)
            if done - yielded > YIELD_EVERY_S:
                # A long batch of heavy handlers must not starve the other tasks (the lease renewal
                # above all: a lease lost to a busy loop stops the process).
                await asyncio.sleep(0)
                yielded = time.perf_counter()
            marker = ""
            if dedupe:
                marker = prefix + msg.id
                self._remember(msg.id)
                markers.append((msg.id, marker))
            batch.append((entry_id, marker, "ok", effects))
            newest_ts = max(newest_ts, msg.ts)
            if debug:
                log.debug("message_handled", stream=stream, entry_id=entry_id, msg_id=msg.id, type=msg.TYPE,
                          trace_id=msg.trace.id, effects=len(effects), deliveries=count)
        await self.flush()
        if batch:
            if markers:
                self._unconfirmed.append(markers)
            commit = self._commit_batch(stream, batch, markers)
            if overlap and self._bug is None:
                self._inflight = asyncio.ensure_future(commit)
            else:
                await commit
        if newest_ts:
            self._metric("last_event", stream).set(newest_ts / 1000.0)
        if self._bug is not None:
            bug, self._bug = self._bug, None
            raise FatalError(f"handler bug in a stateful loop ({type(bug).__name__}: {bug}); the message is in "
                             f"{streams.dlq(stream)}; stopping so a restart rebuilds the state") from bug

    async def _process_raw(self, stream: str, entries: Sequence[tuple[Any, Any]], overlap: bool) -> None:
        """``raw_batch`` mode: the whole batch's entries as read (no decode, no duplicate filter, no
        per-message handler) go to ``raw_batch(stream, [(entry_id, fields)])`` in one call, then are
        acked in one commit. For a consumer that only copies what was published (the trading
        archive): decoding a message to write back its own bytes was most of its cost. When the call
        raises, nothing is acked: the batch is read again after ``claim_idle_ms``."""
        rows = [(_s(raw_id), fields) for raw_id, fields in entries if fields is not None]
        assert self.raw_batch is not None
        try:
            if rows:
                self.raw_batch(stream, rows)
        except Exception as exc:  # noqa: BLE001 - disk full, a bug: leave pending, retried, never a crash loop
            self._metric("messages", stream, "retry").inc(len(rows))
            log.error("raw_batch_failed", stream=stream, entries=len(rows), error=f"{type(exc).__name__}: {exc}",
                      exc_info=exc)
            return
        await self.flush()
        batch: list[Item] = [(_s(raw_id), "", "ok", ()) for raw_id, _ in entries]
        commit = self._commit_batch(stream, batch, [])
        if overlap:
            self._inflight = asyncio.ensure_future(commit)
        else:
            await commit

    async def _commit_batch(self, stream: str, batch: list[Item], markers: list[tuple[str, str]]) -> None:
        await self.commit(stream, batch)
        # Applied: the markers are in Redis now (or were, for entries another consumer had claimed).
        if markers:
            self._unconfirmed = [m for m in self._unconfirmed if m is not markers]
        if self._last_error:
            for entry_id, *_ in batch:
                self._last_error.pop(entry_id, None)

    def _dead_letter(self, stream: str, entry_id: str, fields: Mapping[Any, Any], error: str) -> _DeadLetter:
        self._last_error.pop(entry_id, None)
        record: dict[Any, Any] = {}
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
        return _DeadLetter(streams.dlq(stream), record)

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
                    lag = len(rest or [])
                self.metrics.lag.labels(stream=stream).set(int(lag))
