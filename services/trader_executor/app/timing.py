"""Intent → exchange latencies for the executor's metrics (pure; the service observes them).

An intent is timed from its own ``ts`` (when the core made it) to the first execution report that
shows: the order acknowledged by the exchange (it has an ``order_id``), the order filled, and, for
an entry, its protective stop resting (a ``stop`` report of the same position that is ``new`` or
``awaitingTrigger``). Intents learnt at a rebuild are not timed (their wait includes the downtime).
At most ``cap`` intents wait per measure; the oldest are forgotten first, so a stuck order cannot
grow memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tradestack.messages import OrderExecuted

RESTING = frozenset({"new", "awaitingTrigger", "partiallyFilled"})


@dataclass(frozen=True, slots=True)
class Latency:
    measure: str  # "ack", "fill" or "stop"
    purpose: str  # "entry" or "exit" ("entry" for a stop)
    seconds: float


class IntentTimer:
    def __init__(self, cap: int = 10_000) -> None:
        self.cap = cap
        self._ack: dict[str, tuple[int, str]] = {}  # intent id → (ts, purpose)
        self._fill: dict[str, tuple[int, str]] = {}
        self._stop: dict[str, int] = {}  # position id (= entry intent id) → ts

    def intent(self, intent_id: str, ts: int, purpose: str) -> None:
        """An intent the executor is about to act on (``purpose``: entry or exit)."""
        for waiting in (self._ack, self._fill):
            self._put(waiting, intent_id, (ts, purpose))
        if purpose == "entry":
            self._put(self._stop, intent_id, ts)

    def report(self, r: OrderExecuted, now_ms: int) -> list[Latency]:
        out: list[Latency] = []
        if r.purpose in ("entry", "exit"):
            key = r.intent_id
            if r.order_id and key in self._ack:
                ts, purpose = self._ack.pop(key)
                out.append(Latency("ack", purpose, max(now_ms - ts, 0) / 1000))
            if r.status == "filled" and key in self._fill:
                ts, purpose = self._fill.pop(key)
                out.append(Latency("fill", purpose, max(now_ms - ts, 0) / 1000))
            elif r.status in ("canceled", "expired", "rejected"):
                self._ack.pop(key, None)
                self._fill.pop(key, None)
                if r.purpose == "entry" and r.filled_amount <= 0:
                    self._stop.pop(key, None)  # nothing bought: no stop will come
        elif r.purpose == "stop" and r.position_id is not None and r.status in RESTING:
            ts_stop = self._stop.pop(r.position_id, None)
            if ts_stop is not None:
                out.append(Latency("stop", "entry", max(now_ms - ts_stop, 0) / 1000))
        return out

    def waiting(self) -> int:
        return len(self._ack) + len(self._fill) + len(self._stop)

    def _put(self, waiting: dict[str, Any], key: str, value: Any) -> None:
        if key in waiting:
            return
        if len(waiting) >= self.cap:
            waiting.pop(next(iter(waiting)))
        waiting[key] = value
