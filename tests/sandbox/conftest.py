"""Fixtures shared by the sandbox tests (helpers live in tests/sandbox/server/srv_helpers.py)."""

from __future__ import annotations

import pytest

from tradestack.clock import FakeClock


@pytest.fixture
def fake_clock() -> FakeClock:
    # Mid-minute, so a test never straddles a rate-limit window by accident.
    t = 1_790_000_000_000
    return FakeClock(t - t % 60_000 + 30_000)
