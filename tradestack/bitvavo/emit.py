"""From a received exchange event to disk and Redis: the one write path of the ingest processes.

Ordering (the SIGKILL guarantee): for every batch, the rows are first appended to their JSONL
files and flushed to the OS (``ParquetSink.write``), and only then XADDed (one pipelined round
trip). So every entry in a stream has its row in a file the kernel holds: killing the process
at any point loses no row that reached Redis. (A row may be on disk but not in Redis if the
process dies between the two; ids are deterministic, so a reader can dedupe.)

Batching: ``emit`` is synchronous and only queues; the writer task takes everything queued
since its last round trip. Under load batches grow (throughput), when idle a row goes out
at once (latency). ``backpressure`` makes the reader pause when Redis cannot keep up.
"""

from __future__ import annotations

import asyncio
import hashlib
from time import perf_counter
from typing import Any, Callable, Mapping

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from tradestack import streams
from tradestack.backoff import Backoff
from tradestack.bus import REDIS_DOWN
from tradestack.logs import get_logger
from tradestack.storage import ParquetSink

log = get_logger(__name__)

# (stream or None for disk-only rows, type, data, dataset kind, recv_ms, receive perf_counter)
Row = tuple[str | None, bytes, bytes, str, int, float]

# One round trip and one reply per batch: KEYS = the stream of each entry, ARGV = per entry
# maxlen ('0' = no trim), type, data. (XADD with '*' in a script is replicated by effects.)
XADD_BATCH_LUA = """
for i = 1, #KEYS do
  local j = 3 * i - 2
  if ARGV[j] == '0' then
    redis.call('XADD', KEYS[i], '*', 'type', ARGV[j + 1], 'data', ARGV[j + 2])
  else
    redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[j], '*', 'type', ARGV[j + 1], 'data', ARGV[j + 2])
  end
end
return #KEYS
"""
XADD_BATCH_SHA = hashlib.sha1(XADD_BATCH_LUA.encode()).hexdigest().encode()
MAX_SCRIPT_ENTRIES = 5_000


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def pack_xadd_batch(entries: list[tuple[bytes, bytes, bytes, bytes]]) -> bytes:
    """RESP for ``EVALSHA <sha> n key... (maxlen type data)...``: packed here, because
    redis-py's per-argument packing was the largest cost of the hot path (bench/ingest.py)."""
    n = len(entries)
    parts = [b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (3 + 4 * n, XADD_BATCH_SHA), _bulk(b"%d" % n)]
    parts.extend(_bulk(e[0]) for e in entries)
    for _, maxlen, mtype, data in entries:
        parts.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n" % (len(maxlen), maxlen, len(mtype), mtype, len(data)))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class Emitter:
    def __init__(self, redis: aioredis.Redis, sink: ParquetSink, *, maxlen: Mapping[str, int] | None = None,
                 max_pending: int = 2_000, metrics: "object | None" = None,
                 on_redis: Callable[[bool], None] | None = None) -> None:
        self.redis = redis
        self.sink = sink
        self._maxlen_over = dict(maxlen or {})
        self._maxlen: dict[str, tuple[bytes, bytes]] = {}
        self.max_pending = max_pending
        self.metrics = metrics
        self.on_redis = on_redis
        self._pending: list[Row] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = 0
        self.latencies: list[float] | None = None  # the bench collects receive → XADD seconds here

    def emit(self, stream: str | None, mtype: bytes, data: bytes, kind: str, recv_ms: int, t0: float) -> None:
        self._pending.append((stream, mtype, data, kind, recv_ms, t0))
        self._idle.clear()
        self._wake.set()
        if len(self._pending) >= self.max_pending:
            self._room.clear()

    def backpressure(self) -> "asyncio.Future[Any] | None":
        """For the WS reader: an awaitable while full, else None."""
        return self._room.wait() if not self._room.is_set() else None  # type: ignore[return-value]

    async def drained(self) -> None:
        """Until everything emitted so far is on disk and in Redis."""
        await self._idle.wait()

    def _limit(self, stream: str) -> tuple[bytes, bytes]:
        cached = self._maxlen.get(stream)
        if cached is None:
            cached = self._maxlen[stream] = (stream.encode(), b"%d" % streams.maxlen_for(stream, self._maxlen_over))
        return cached

    async def _xadd(self, entries: list[tuple[bytes, bytes, bytes, bytes]]) -> None:
        pool = self.redis.connection_pool
        for i in range(0, len(entries), MAX_SCRIPT_ENTRIES):
            packed = pack_xadd_batch(entries[i:i + MAX_SCRIPT_ENTRIES])
            for attempt in (1, 2):
                conn = await pool.get_connection()
                try:
                    await conn.send_packed_command(packed, check_health=True)
                    await conn.read_response()
                    break
                except ResponseError as exc:
                    if attempt == 2 or not (isinstance(exc, NoScriptError) or "NOSCRIPT" in str(exc)):
                        raise
                    await self.redis.script_load(XADD_BATCH_LUA)  # first use, or Redis restarted
                except BaseException:
                    await conn.disconnect()
                    raise
                finally:
                    await pool.release(conn)

    async def run(self, stop: asyncio.Event, drain_s: float = 3.0) -> None:
        """Write batches until ``stop`` is set and everything queued is written (or ``drain_s`` passed)."""
        deadline = None
        while True:
            if not self._pending:
                self._idle.set()
                if stop.is_set():
                    return
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            if stop.is_set() and deadline is None:
                deadline = asyncio.get_running_loop().time() + drain_s
            batch, self._pending = self._pending, []
            self._room.set()
            await self._write(batch, stop, deadline)

    async def _write(self, batch: list[Row], stop: asyncio.Event, deadline: float | None) -> None:
        self.sink.write((kind, recv_ms, data) for _, _, data, kind, recv_ms, _ in batch)  # 1. disk (flushed)
        backoff = Backoff(0.05, 2.0)
        while True:  # 2. Redis, retried until it takes the batch (the rows are already on disk)
            try:
                limit = self._limit
                entries = [(*limit(stream), mtype, data) for stream, mtype, data, _, _, _ in batch if stream is not None]
                if entries:
                    await self._xadd(entries)
                if self.on_redis:
                    self.on_redis(True)
                break
            except REDIS_DOWN as exc:
                if self.on_redis:
                    self.on_redis(False)
                log.warning("redis_write_failed", rows=len(batch), error=f"{type(exc).__name__}: {exc}")
                if deadline is not None and asyncio.get_running_loop().time() > deadline:
                    log.error("rows_not_published_at_stop", rows=len(batch), note="they are on disk (JSONL)")
                    return
                await asyncio.sleep(backoff.next_delay())
        now = perf_counter()
        self.published += len(batch)
        m = self.metrics
        if m is not None:
            m.observe_batch(batch, now)  # type: ignore[attr-defined]
        if self.latencies is not None:
            self.latencies.extend(now - row[5] for row in batch if row[0] is not None)
