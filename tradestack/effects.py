"""What a handler returns: messages to write and state to set, committed with the input's ack.

A handler (or a timer) returns an iterable of effects. The consumer loop applies all the effects of
one input in the same atomic commit as that input's ``XACK`` (bus.py), so a stream output and a key
or hash write of one input are both visible or both absent, whatever crashes when. ``DelKey``
followed by ``HashSet`` on the same key replaces a hash atomically: no reader ever sees it half
written. Effects of one input are applied in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Union

from tradestack.messages import Message


@dataclass(frozen=True, slots=True)
class Output:
    """One message to append to a stream."""

    stream: str
    msg: Message


@dataclass(frozen=True, slots=True)
class SetKey:
    """``SET key value`` (``PX ttl_ms`` when ttl_ms > 0)."""

    key: str
    value: str | bytes
    ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class HashSet:
    """``HSET key field value ...``."""

    key: str
    mapping: Mapping[str, str | bytes]


@dataclass(frozen=True, slots=True)
class HashDel:
    """``HDEL key field ...``."""

    key: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DelKey:
    """``DEL key``."""

    key: str


@dataclass(frozen=True, slots=True)
class IfKey:
    """Effects chosen at commit time, inside the atomic commit: ``then`` when the key's value
    equals ``equals``, else ``otherwise``. The trading core uses it for the kill switch: an entry
    handled a moment before ``trading:kill`` was set is written as blocked if the switch is on when
    the commit runs, so no entry intent is ever committed after the switch. ``on_chosen(matched)``
    runs after the commit with the branch taken (e.g. to drop an in-flight intent that was never
    written); ``on_chosen(None)`` when neither was written (the input had been claimed by another
    consumer, or was a duplicate). Not nested."""

    key: str
    equals: str
    then: tuple["Effect", ...]
    otherwise: tuple["Effect", ...] = ()
    on_chosen: Callable[[bool | None], None] | None = None


StateWrite = Union[SetKey, HashSet, HashDel, DelKey]
Effect = Union[Output, SetKey, HashSet, HashDel, DelKey, IfKey]

__all__ = ["Output", "SetKey", "HashSet", "HashDel", "DelKey", "IfKey", "StateWrite", "Effect"]
