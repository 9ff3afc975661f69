"""Trimming order, execution, signal and event streams by age (DESIGN §2: ``XTRIM MINID``).

Market data is trimmed by length (``MAXLEN ~``) as it is written. The streams that carry decisions,
orders, fills and events never are: a length trim drops entries a lagging consumer group has not
read yet. They are trimmed by age instead, and never past what a group still needs.

The rule. ``XTRIM <stream> MINID <point>`` removes the entries whose id is below ``point``, with

    point = min( (now - max age, 0),
                 for every consumer group: its last-delivered-id,
                                           its oldest pending entry id (when it has pending entries),
                 the stream's newest entry id,
                 keep_from (the owner's floor, optional) )

ids compared as ``(ms, seq)`` pairs. So every entry removed is older than the max age, was
delivered to every group (its id is below each last-delivered-id) and acked by every group (below
each group's oldest unacked entry). The newest entry is always kept, so a stream is never emptied
(``pnl:snapshots``' last snapshot is what a restarting PnL continues from). ``keep_from`` lets the
process that trims keep what its rebuilt state still needs (see the caveat below).

A stream without any consumer group is left alone unless ``STREAM_TRIM_UNGROUPED=true``: nobody
has read it, so its age alone says nothing about whether anyone is done with it (a group created
later at ``0`` would find its history gone). ``STREAM_MAX_AGE_DAYS=0`` never trims.

Atomicity. The facts (groups, pending, newest entry) are read and the point computed here, in
plain Python (``trim_point``). The trim itself runs in a Lua script that re-checks, atomically with
the ``XTRIM``, that the point is at or below every group's last-delivered-id and oldest pending id;
a group created meanwhile (at ``0``), a group moved back (``XGROUP SETID``) or a group appearing on
a stream that had none makes it refuse, and the facts are read again. Groups otherwise only move
forward, so a point that was safe when read stays safe. The trim is exact and removes whole
radix-tree nodes at once (cheap even for a month of entries); it is idempotent and safe from any
process, so it needs no lease fencing.

Who trims which stream (``Service.trim_by_age`` in each setup; one owner per stream):

    trading core     orders:signals, orders:shadow
    executor         orders:executed
    PnL              pnl:snapshots, trading:events
    signal engine    its SIGNAL_STREAM (signals:baseline)

Redis permissions (deploy/redis/users.acl): ``XINFO GROUPS``, ``XPENDING``, ``XREVRANGE``,
``EVALSHA``/``SCRIPT LOAD``, and in the script ``EXISTS``, ``XINFO GROUPS``, ``XPENDING``, ``XTRIM``.
A refusal is logged (``trim_not_permitted``) and the process goes on.

Caveat. Services rebuild their state by folding a stream's history at start (``rebuild.py``): the
core, the executor and the PnL fold every ``orders:executed`` report, the core and the executor
fold ``orders:shadow``. An entry trimmed by age is gone from that fold too (a position opened
before the cut loses its entry fill; realized PnL loses old fills). Pass ``keep_from`` (the oldest
entry the state still needs) for such streams, or trim them only once the state restarts from a
checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from tradestack.logs import get_logger

log = get_logger(__name__)

StreamId = tuple[int, int]
DAY_MS = 86_400_000
ATTEMPTS = 3  # reads of the facts per round when the guard refuses (a group moved back meanwhile)


def parse_id(value: str | bytes) -> StreamId:
    """``"1700000000000-3"`` → ``(1700000000000, 3)``; ``"1700000000000"`` → ``(1700000000000, 0)``."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, sep, seq = text.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise ValueError(f"not a stream id: {text!r}")
    return int(ms), int(seq) if sep else 0


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def trim_point(now_ms: int, max_age_ms: int, groups_info: Sequence[Mapping[str, Any]],
               pending_oldest: Mapping[str, str | bytes | None], *, trim_ungrouped: bool = False,
               keep_from: str | bytes | None = None) -> str | None:
    """The ``MINID`` to trim ``XTRIM <stream> MINID <point>`` at, or None for "do not trim".

    ``groups_info``: ``XINFO GROUPS`` (each with ``name``, ``last-delivered-id``, ``pending``);
    ``pending_oldest``: group name → its oldest pending id (``XPENDING`` summary ``min``), needed for
    every group with pending entries (a group whose oldest pending entry is unknown stops the trim);
    ``keep_from``: an id the caller still needs (kept, with everything after it)."""
    if max_age_ms <= 0:
        return None
    if not groups_info and not trim_ungrouped:
        return None  # nobody has read it: age alone cannot say anyone is done with it
    bounds: list[StreamId] = [(max(0, now_ms - max_age_ms), 0)]
    for group in groups_info:
        name = _text(group["name"])
        bounds.append(parse_id(group["last-delivered-id"]))
        if int(group.get("pending") or 0) > 0:
            oldest = pending_oldest.get(name)
            if oldest is None:
                return None  # entries it has not acked, but which: fail safe
            bounds.append(parse_id(oldest))
    if keep_from is not None:
        bounds.append(parse_id(keep_from))
    point = min(bounds)
    if point <= (0, 0):
        return None
    return format_id(point)


# Atomically with the trim: the point is still at or below every group's last-delivered-id and oldest
# pending id (ids compared as (ms, seq), digit strings by length then text: exact for any 64-bit id).
# Returns the number of entries removed, or -1 when the point is no longer safe (read the facts again).
_GUARDED_TRIM = """
local function num_lt(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function id_lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return num_lt(am, bm) end
  return num_lt(as, bs)
end
local point = ARGV[1]
if not string.match(point, '^%d+-%d+$') then return redis.error_reply('bad point ' .. point) end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 and ARGV[2] ~= '1' then return -1 end
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if id_lt(f['last-delivered-id'], point) then return -1 end
  if f['pending'] > 0 then
    local summary = redis.call('XPENDING', KEYS[1], f['name'])
    if id_lt(summary[2], point) then return -1 end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', point)
"""


async def guarded_trim(redis: aioredis.Redis, stream: str, point: str, *, trim_ungrouped: bool = False) -> int:
    """``XTRIM <stream> MINID <point>`` if the point is still safe (see the module doc), atomically;
    the entries removed, or -1 when it is not."""
    script = redis.register_script(_GUARDED_TRIM)
    return int(await script(keys=[stream], args=[point, "1" if trim_ungrouped else "0"]))


async def read_facts(redis: aioredis.Redis, stream: str
                     ) -> tuple[list[Mapping[str, Any]], dict[str, str | bytes | None], bytes | str] | None:
    """(groups, group → oldest pending id, newest entry id) of ``stream``; None when it is missing or empty."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    pending: dict[str, str | bytes | None] = {}
    for group in groups:
        if int(group.get("pending") or 0) > 0:
            summary = await redis.xpending(stream, group["name"])
            pending[_text(group["name"])] = summary.get("min")
    newest = await redis.xrevrange(stream, count=1)
    if not newest or newest[0][0] is None:
        return None
    return list(groups), pending, newest[0][0]


async def trim_stream(redis: aioredis.Redis, stream: str, max_age_ms: int, now_ms: int, *,
                      trim_ungrouped: bool = False, keep_from: str | bytes | None = None) -> int:
    """Trim ``stream`` by age under the rule above; the number of entries removed."""
    if max_age_ms <= 0:
        return 0
    for _ in range(ATTEMPTS):
        facts = await read_facts(redis, stream)
        if facts is None:
            return 0
        groups, pending, newest = facts
        floor = newest if keep_from is None else format_id(min(parse_id(newest), parse_id(keep_from)))
        point = trim_point(now_ms, max_age_ms, groups, pending, trim_ungrouped=trim_ungrouped, keep_from=floor)
        if point is None:
            return 0
        removed = await guarded_trim(redis, stream, point, trim_ungrouped=trim_ungrouped)
        if removed >= 0:
            return removed
    log.warning("trim_deferred", stream=stream, attempts=ATTEMPTS,
                note="a consumer group moved back or appeared while trimming; trying again next round")
    return 0


def _not_permitted(exc: Exception) -> bool:
    """An ACL refusal: NOPERM, or inside a script on Redis 6.2 "The user executing the script can't ..."."""
    text = str(exc)
    return isinstance(exc, NoPermissionError) or any(
        words in text for words in ("NOPERM", "No permissions", "no permissions", "user executing the script can't"))


async def trim_round(redis: aioredis.Redis, streams_in: Iterable[str], max_age_ms: int, now_ms: int, *,
                     trim_ungrouped: bool = False, keep_from: Callable[[str], str | None] | None = None,
                     ) -> dict[str, int]:
    """One round over ``streams_in``: stream → entries removed. A stream this process may not trim
    (Redis ACL) is logged and skipped; Redis being away propagates (the timer logs and retries)."""
    removed: dict[str, int] = {}
    for stream in streams_in:
        try:
            n = await trim_stream(redis, stream, max_age_ms, now_ms, trim_ungrouped=trim_ungrouped,
                                  keep_from=keep_from(stream) if keep_from is not None else None)
        except ResponseError as exc:
            if not _not_permitted(exc):
                raise
            log.error("trim_not_permitted", stream=stream, error=str(exc),
                      note="the service's Redis user needs XTRIM, XREVRANGE, EXISTS, XINFO GROUPS, XPENDING, EVALSHA")
            continue
        removed[stream] = n
        if n:
            log.info("stream_trimmed", stream=stream, removed=n, max_age_days=round(max_age_ms / DAY_MS, 3))
    return removed
