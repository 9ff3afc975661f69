"""Event-loop lag: how late a timer fires, i.e. how long anything ready (a request that just
arrived, say) could have waited for the loop. The operator's first check when latency grows.

``run_probe`` wakes every ``interval_s`` and reports how late it woke. A timer fires on the loop's
next turn once it is due, so the lateness is what the callbacks running ahead of it cost. When the
loop is idle, it also includes the selector's timeout rounding (epoll counts whole milliseconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

INTERVAL_S = 0.005
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


async def run_probe(observe: Callable[[float], None], interval_s: float = INTERVAL_S) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + interval_s
    while True:
        await asyncio.sleep(max(due - loop.time(), 0.0))
        now = loop.time()
        observe(max(now - due, 0.0))
        due = now + interval_s
