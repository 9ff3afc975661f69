"""Rebuilding a service's in-memory state from stream history before it consumes (DESIGN §2).

A service registers ``service.rebuild(stream, fold)``; at start (after it holds its lease and its
consumer groups exist, before its loops read anything) the runtime reads the stream's history in
pages and hands every message to ``fold(msg, entry_id)``, a plain function that updates the state
the way the live handler would, but emits nothing.

Where the fold stops matters. For a stream the service also consumes, the fold covers exactly what
the group has already handled: entries up to the group's last-delivered id, minus those still
pending (the loop handles those again). The loop then reads what comes after. Nothing is counted
twice and nothing is missed, including with a group created at ``$``: creating it first fixes the
boundary. ``include_pending`` folds the pending entries as well, for a handler whose live path
ignores an input it already knows (the executor's intents). For a stream the service only writes
(the core's own intents), the fold runs to the end.

Bounds: memory is one page plus the state; ``since_ms`` limits the history read (e.g. indicators
need hours, not months); past ``timeout_s`` the start fails with one line rather than act on a
partial state. Entries that fail to decode are skipped and counted (they were dead-lettered live).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import redis.asyncio as aioredis

from tradestack.errors import FatalError, PoisonMessage
from tradestack.logs import get_logger
from tradestack.messages import Message, decode

log = get_logger(__name__)

Fold = Callable[[Message, str], None]


@dataclass(frozen=True)
class Rebuild:
    stream: str
    fold: Fold
    group: str | None = None  # stop where this group has read (it consumes the stream); None: to the end
    # With ``group``: fold the group's pending entries too (the loop still handles them again). For a
    # handler that must know at once what a crash left half done (the executor: an entry sent whose
    # report was never committed), rather than when the entry is claimed back (``claim_idle_ms``).
    include_pending: bool = False
    since_ms: int | None = None  # read history from this time on (None: from the start)
    timeout_s: float = 120.0
    page: int = 2000


@dataclass(frozen=True)
class RebuildResult:
    stream: str
    entries: int
    skipped: int
    seconds: float


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def group_bound(redis: aioredis.Redis, stream: str, group: str) -> tuple[str, set[str]]:
    """(last-delivered id, ids still pending) of ``group`` on ``stream``."""
    last = "0-0"
    pending_count = 0
    for g in await redis.xinfo_groups(stream):
        if _s(g["name"]) == group:
            last = _s(g["last-delivered-id"])
            pending_count = int(g["pending"])
            break
    else:
        raise FatalError(f"rebuild of {stream}: consumer group {group!r} does not exist yet")
    pending: set[str] = set()
    if pending_count:
        rows = await redis.xpending_range(stream, group, min="-", max="+", count=pending_count + 1000)
        pending = {_s(r["message_id"]) for r in rows}
    return last, pending


async def fold_history(redis: aioredis.Redis, rb: Rebuild) -> RebuildResult:
    started = time.monotonic()
    end: str = "+"
    skip: set[str] = set()
    if rb.group is not None:
        end, skip = await group_bound(redis, rb.stream, rb.group)
        if rb.include_pending:
            skip = set()
        if end == "0-0":
            return RebuildResult(rb.stream, 0, 0, time.monotonic() - started)
    start = f"{max(0, rb.since_ms)}-0" if rb.since_ms is not None else "-"
    entries = skipped = 0
    while True:
        page = await redis.xrange(rb.stream, min=start, max=end, count=rb.page) or []
        for raw_id, fields in page:
            entry_id = _s(raw_id)
            if entry_id in skip:
                continue
            try:
                msg = decode(fields)
            except PoisonMessage:
                skipped += 1
                continue
            rb.fold(msg, entry_id)
            entries += 1
        if len(page) < rb.page:
            break
        start = "(" + _s(page[-1][0])
        if time.monotonic() - started > rb.timeout_s:
            raise FatalError(f"rebuild of {rb.stream} did not finish within {rb.timeout_s:.0f} s ({entries} entries "
                             f"folded): refusing to act on a partial state; shorten its history window")
    seconds = time.monotonic() - started
    if skipped:
        log.warning("rebuild_skipped_entries", stream=rb.stream, skipped=skipped)
    return RebuildResult(rb.stream, entries, skipped, seconds)
