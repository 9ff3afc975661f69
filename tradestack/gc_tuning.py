"""Garbage-collector settings for latency: short pauses, never a walk of the whole heap on the hot path.

A cyclic-GC pause lasts as long as it takes to walk every object in the generations it collects.
CPython starts a collection when allocations minus deallocations pass a threshold. A process
that keeps replacing long-lived objects (book levels, resting orders) frees about as many
old objects as it creates, so the young generation grows to tens of thousands of objects before
that count moves. Measured in the sandbox with 420 markets (docs/sandbox.md): 2-5 ms young
pauses, 35 ms middle ones, and 60-70 ms full ones. A REST request waited behind each.

The process's own loop drives the collector by time instead (``GcTuner.tick`` between two units
of work):
- ``settle()`` at start-up collects once, freezes (whatever is alive moves to the permanent
  generation, which is never walked), and turns automatic collection off;
- every ``young_s`` it collects the young generation: the survivors of a few milliseconds;
- every ``middle_s`` it collects the middle one: the survivors of 25 ms (about 0.6 ms, p99 1.3 ms,
  in the sandbox; every 100 ms it was 1.2 ms, p99 3.5 ms, and every second 15 ms);
- every ``freeze_s`` it freezes the old generation (one list splice, not a walk);
- every ``full_s`` it does one full collection (unfreeze, collect, freeze), logged with its pause.
  That frees cyclic garbage that reached the old generation (a closed connection's objects,
  say), so it is held for hours at most, not forever. Acyclic garbage is freed by reference
  counting as usual, frozen or not.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from tradestack.logs import get_logger

log = get_logger(__name__)

YOUNG_S = 0.005
MIDDLE_S = 0.025
FREEZE_S = 10.0
FULL_S = 6 * 3600.0


_driven = False  # settle() was called: automatic collection is off and tick() drives it


def settle() -> None:
    """Call once the process has built its long-lived state, before serving; from then on
    the process must call ``GcTuner.tick`` often (at least every ``young_s``, roughly)."""
    global _driven
    gc.collect()
    gc.freeze()
    gc.disable()
    _driven = True


def release() -> None:
    """Back to CPython's automatic collection (tests; a process that stops driving it)."""
    global _driven
    _driven = False
    gc.unfreeze()
    gc.enable()


class GcTuner:
    """Call ``tick()`` from the process's own loop, at a moment where a short pause is cheapest
    (between two units of work); it does nothing until a deadline has passed, nor in a process
    that did not ``settle()`` (a test process keeps CPython's own collection)."""

    def __init__(self, young_s: float = YOUNG_S, middle_s: float = MIDDLE_S, freeze_s: float = FREEZE_S,
                 full_s: float = FULL_S, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.young_s = young_s
        self.middle_s = middle_s
        self.freeze_s = freeze_s
        self.full_s = full_s
        self._mono = monotonic
        now = monotonic()
        self._next_young = now + young_s
        self._next_middle = now + middle_s
        self._next_freeze = now + freeze_s
        self._next_full = now + full_s
        self.freezes = 0
        self.full_collections = 0

    def tick(self) -> bool:
        """True if it collected (or froze): the caller may want to yield before more work."""
        if not _driven:
            return False
        now = self._mono()
        if now < self._next_young:
            return False
        self._next_young = now + self.young_s
        if now >= self._next_full:
            self._next_full = now + self.full_s
            self._next_freeze = now + self.freeze_s
            self._next_middle = now + self.middle_s
            self.full_collect()
        elif now >= self._next_freeze:
            self._next_freeze = now + self.freeze_s
            self._next_middle = now + self.middle_s
            gc.collect(1)  # what is garbage now is not frozen with the rest
            gc.freeze()
            self.freezes += 1
        elif now >= self._next_middle:
            self._next_middle = now + self.middle_s
            gc.collect(1)
        else:
            gc.collect(0)
        return True

    def full_collect(self) -> int:
        t0 = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self.full_collections += 1
        log.info("gc_full_collection", collected=collected, frozen=gc.get_freeze_count(),
                 pause_ms=round((time.perf_counter() - t0) * 1000, 1))
        return collected
