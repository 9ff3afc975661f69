"""One sender per API key (issue 12 item 11): a standby executor waits on the lease; when the active
one dies it takes over within a few seconds, rebuilt and reconciled before it reads an intent, and
carries on the positions the dead one opened (paper mode, real Redis)."""

from __future__ import annotations

import subprocess

import redis

from tests.conftest import spawn, wait_until
from tests.executor.test_manager import entry, exit_
from tests.test_executor_process import EXECUTOR, by_purpose, executor_env, now_ms, reports, top
from tests.test_trading_core_process import seed_rules, stop
from tradestack import streams
from tradestack.messages import encode


def holder(rclient: redis.Redis) -> str:
    raw = rclient.get("lease:trader_executor")
    return raw.decode().split(":", 1)[1] if raw else ""


def test_a_standby_executor_takes_over_and_carries_on_the_dead_ones_positions(rclient: redis.Redis,
                                                                                redis_url: str) -> None:
    seed_rules(rclient)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = spawn(EXECUTOR, executor_env(redis_url))
        procs.append(first)
        wait_until(lambda: holder(rclient).endswith(f":{first.pid}"), timeout_s=20, what="the first holding the lease")
        second = spawn(EXECUTOR, executor_env(redis_url))
        procs.append(second)
        wait_until(lambda: b'"standby"' in (rclient.get(streams.heartbeat("trader_executor")) or b"")
                   or second.poll() is not None, timeout_s=20, what="the second waiting as a standby")
        rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", "60000", "60010", size="5")))
        opened = entry(1, amount="0.001", stop="58000", order_type="limit", price="60010")
        rclient.xadd(streams.ORDERS_SHADOW, encode(opened.model_copy(update={"ts": now_ms(rclient)})))
        wait_until(lambda: by_purpose(rclient, "stop", "awaitingTrigger"), timeout_s=20, what="the stop resting")
        assert second.poll() is None and holder(rclient).endswith(f":{first.pid}")

        first.kill()
        first.wait(10)
        wait_until(lambda: holder(rclient).endswith(f":{second.pid}"), timeout_s=10,
                   what="the standby holding the lease (TTL 1 s)")
        count = len(reports(rclient))
        # The position opened by the dead executor is closed by the new one: stop canceled, coins sold.
        rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", "61000", "61010", size="5")))
        leave = exit_(opened.id, amount="0.001")
        rclient.xadd(streams.ORDERS_SHADOW, encode(leave.model_copy(update={"ts": now_ms(rclient)})))
        wait_until(lambda: by_purpose(rclient, "exit", "filled"), timeout_s=20, what="the exit sold by the standby")
        assert by_purpose(rclient, "stop", "canceled")
        new = reports(rclient)[count:]
        assert not [r for r in new if r.purpose == "entry"], "the takeover sent nothing for the old entry again"
    finally:
        for p in procs:
            stop(p)
