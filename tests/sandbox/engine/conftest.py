"""Engine test fixtures (helpers live in helpers.py)."""

from __future__ import annotations

import pytest

from sandbox.engine import Exchange

from .helpers import Clock, quiet_exchange


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ex(clock: Clock) -> Exchange:
    return quiet_exchange(clock)
