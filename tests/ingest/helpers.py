"""Helpers for the ingest end-to-end tests: an in-process sandbox and an in-process ingest service."""

from __future__ import annotations

import asyncio
import itertools
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from ingest.common import wire
from sandbox.server import SandboxSettings, run_sandbox
from tradestack.clock import SYSTEM_CLOCK
from tradestack.service import Service

_n = itertools.count()


class FastClock:
    """Wall time running ``speed`` times faster than real time (monotonic stays real), shared by
    the sandbox and the ingest under test so minutes of candles pass in seconds."""

    def __init__(self, speed: float, start_ms: int | None = None) -> None:
        self.speed = speed
        self._real0 = time.monotonic()
        now = start_ms if start_ms is not None else time.time_ns() // 1_000_000
        self._ms0 = now - now % 60_000 + 1_000  # just after a minute boundary

    def now_ms(self) -> int:
        return self._ms0 + int((time.monotonic() - self._real0) * 1000 * self.speed)

    def monotonic(self) -> float:
        return time.monotonic()


class FreezableClock:
    """Wall time until ``freeze``, then that instant for good (monotonic stays real). Given to the
    sandbox, it stops the simulated markets: a step with no time elapsed changes nothing."""

    def __init__(self) -> None:
        self.frozen_ms: int | None = None

    def now_ms(self) -> int:
        return self.frozen_ms if self.frozen_ms is not None else time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def freeze(self) -> None:
        self.frozen_ms = self.now_ms()


async def poll(cond: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition", every_s: float = 0.02) -> Any:
    """Poll a condition with a deadline (never a bare sleep as synchronisation)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)


@asynccontextmanager
async def sandbox(clock: Any = SYSTEM_CLOCK, **kw: Any) -> AsyncIterator[Any]:
    settings = SandboxSettings(history_hours=kw.pop("history_hours", 1.0), **kw)
    async with run_sandbox(None, settings, clock=clock) as sb:
        yield sb


@asynccontextmanager
async def ingest_service(name: str, settings: Any, make_feed: Callable[..., Any],
                         clock: Any = SYSTEM_CLOCK) -> AsyncIterator[tuple[Service, Any]]:
    service = Service(name, settings, f"t_{name}_{id(settings)}_{next(_n)}", clock=clock)
    feed = wire(service, lambda **kw: make_feed(service, **kw))
    task = asyncio.create_task(service.run())
    try:
        yield service, feed
    finally:
        service.request_stop("test done")
        code = await asyncio.wait_for(task, 10)
        assert code == 0
