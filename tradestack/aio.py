"""Small asyncio helpers every long-running task shares."""

from __future__ import annotations

import asyncio


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, waking at once when ``stop`` is set. Returns True when stopped.

    The one cancellable wait of the project: backoff delays, polling intervals and timers use it, so
    SIGTERM is seen at once instead of after the sleep."""
    if stop.is_set():
        return True
    if seconds <= 0:
        return False
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        return False
    return True
