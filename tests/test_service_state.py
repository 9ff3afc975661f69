"""A service is not 'running' until Redis has told it the kill switch is off (pure unit test)."""

from __future__ import annotations

import asyncio

import fakeredis.aioredis

from tradestack.config import CommonSettings
from tradestack.service import Service


def test_a_healthy_component_alone_does_not_make_the_service_running() -> None:
    async def scenario() -> tuple[str, bool, str, bool]:
        svc = Service("unit", CommonSettings(), "trader_unit", redis=fakeredis.aioredis.FakeRedis())
        svc.report_health("exchange_ws", True)  # e.g. the WS connected before the first kill-switch read
        before = (svc.state, svc.kill_switch)
        svc._report("redis", True)  # what the watcher does once GET trading:kill answered
        return (*before, svc.state, svc.kill_switch)

    state_before, kill_before, state_after, _ = asyncio.run(scenario())
    assert (state_before, kill_before) == ("starting", True)
    assert state_after == "running"
