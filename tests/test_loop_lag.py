"""The loop-lag probe reports how long the event loop was kept from a due timer."""

from __future__ import annotations

import asyncio
import time

from tradestack.loop_lag import run_probe


def test_probe_reports_a_blocked_loop() -> None:
    async def scenario() -> list[float]:
        seen: list[float] = []
        tick = asyncio.Event()

        def observe(lag: float) -> None:
            seen.append(lag)
            tick.set()

        probe = asyncio.create_task(run_probe(observe, interval_s=0.001))
        await tick.wait()
        tick.clear()
        time.sleep(0.03)  # the behaviour under test: a callback that holds the loop for 30 ms
        await tick.wait()
        probe.cancel()
        return seen

    seen = asyncio.run(scenario())
    assert seen[-1] >= 0.029 - 0.001  # it was due 1 ms into the 30 ms block, reported once the loop was free
    assert all(lag >= 0 for lag in seen)
