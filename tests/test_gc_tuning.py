"""The GC policy: which collection runs when (simulated clock, recorded gc calls), and that a real
process hands collection back and forth without losing garbage."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from tradestack import gc_tuning
from tradestack.gc_tuning import GcTuner


class RecordingGc:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def collect(self, generation: int = 2) -> int:
        self.calls.append(("collect", generation))
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def get_freeze_count(self) -> int:
        return 0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def driven(monkeypatch: pytest.MonkeyPatch) -> RecordingGc:
    rec = RecordingGc()
    monkeypatch.setattr(gc_tuning, "gc", rec)
    monkeypatch.setattr(gc_tuning, "_driven", True)
    return rec


def test_schedule_young_middle_freeze_full(driven: RecordingGc) -> None:
    clock = Clock()
    tuner = GcTuner(young_s=0.005, middle_s=0.1, freeze_s=10.0, full_s=3600.0, monotonic=clock)
    assert tuner.tick() is False  # nothing due yet
    assert driven.calls == []

    clock.t += 0.005
    assert tuner.tick() is True
    assert driven.calls == [("collect", 0)]
    assert tuner.tick() is False  # not again within young_s

    driven.calls.clear()
    for _ in range(20):  # 100 ms in 5 ms steps: young collections, then one middle
        clock.t += 0.005
        tuner.tick()
    assert driven.calls.count(("collect", 1)) == 1
    assert driven.calls.count(("collect", 0)) == 19

    driven.calls.clear()
    clock.t += 10.0
    tuner.tick()
    assert driven.calls == [("collect", 1), "freeze"]  # garbage is collected before the freeze
    assert tuner.freezes == 1

    driven.calls.clear()
    clock.t += 3600.0
    tuner.tick()
    assert driven.calls == ["unfreeze", ("collect", 2), "freeze"]
    assert tuner.full_collections == 1


def test_tick_does_nothing_in_a_process_that_did_not_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingGc()
    monkeypatch.setattr(gc_tuning, "gc", rec)
    monkeypatch.setattr(gc_tuning, "_driven", False)
    clock = Clock()
    tuner = GcTuner(monotonic=clock)
    clock.t += 7 * 3600.0
    assert tuner.tick() is False
    assert rec.calls == []


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_then_ticks_collect_cycles_and_release_restores_automatic_gc() -> None:
    assert gc.isenabled()
    clock = Clock()
    gc_tuning.settle()
    try:
        assert not gc.isenabled()
        tuner = GcTuner(young_s=0.005, middle_s=0.1, monotonic=clock)
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: reference counting alone never frees it
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # automatic collection is off
        clock.t += 0.005
        assert tuner.tick() is True
        assert gone() is None  # the young collection freed it
    finally:
        gc_tuning.release()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
