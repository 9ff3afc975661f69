"""The executor and the shared rate-limit budget against the sandbox (issue 12 item 8): when the key's
budget is down to the reserve kept for protective orders, a new entry is refused at the door (reported
rejected, nothing sent) while the exit of an open position, queued behind it, cancels its stop and
sells; the protective calls spend the reserve."""

from __future__ import annotations

import subprocess
from decimal import ROUND_DOWN, Decimal
from typing import Iterator

import pytest
import redis

from sandbox.server.runner import Sandbox, SandboxThread
from sandbox.server.settings import SandboxSettings
from tests.conftest import spawn, wait_until
from tests.executor.test_manager import entry, exit_
from tests.test_executor_process import EXECUTOR, by_purpose, now_ms
from tests.test_executor_sandbox import best_ask, env, exchange_orders
from tests.test_trading_core_process import stop
from tradestack import streams
from tradestack.messages import encode
from tradestack.ratelimit import KEY_PREFIX, key_scope


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[SandboxThread, Sandbox]]:
    thread = SandboxThread(None, SandboxSettings(markets="BTC-EUR", history_hours=0.05, eur=Decimal("10000")))
    sb = thread.start()
    try:
        yield thread, sb
    finally:
        thread.stop()


def test_a_short_budget_refuses_entries_and_lets_the_exit_behind_them_protect_the_position(
        redis_url: str, rclient: redis.Redis, sandbox: tuple[SandboxThread, Sandbox]) -> None:
    thread, sb = sandbox
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = spawn(EXECUTOR, env(redis_url, sb))
        wait_until(lambda: b'"running"' in (rclient.get(streams.heartbeat("trader_executor")) or b""),
                   timeout_s=20, what="the executor running")
        ask = best_ask(sb, "BTC-EUR")
        stop_price = (ask * Decimal("0.8")).quantize(Decimal(1), rounding=ROUND_DOWN)
        first = entry(1, amount="0.001", ref=None, stop=str(stop_price), mode="sandbox")
        rclient.xadd(streams.ORDERS_SHADOW, encode(first.model_copy(update={"ts": now_ms(rclient)})))
        wait_until(lambda: by_purpose(rclient, "stop", "awaitingTrigger"), timeout_s=20, what="the first stop")
        bought = by_purpose(rclient, "entry", "filled")[-1].filled_amount

        # The key's budget is down to the protective reserve (200) until a reset far away.
        scope = KEY_PREFIX + key_scope(sb.api_key)
        rclient.hset(scope, mapping={"remaining": 150, "reset_at": now_ms(rclient) + 600_000})
        second = entry(2, amount="0.001", ref=None, stop=str(stop_price), mode="sandbox")
        rclient.xadd(streams.ORDERS_SHADOW, encode(second.model_copy(update={"ts": now_ms(rclient)})))
        leave = exit_(first.id, amount=str(bought), mode="sandbox")
        rclient.xadd(streams.ORDERS_SHADOW, encode(leave.model_copy(update={"ts": now_ms(rclient)})))

        wait_until(lambda: by_purpose(rclient, "exit", "filled"), timeout_s=20, what="the exit sold")
        refused, = [r for r in by_purpose(rclient, "entry", "rejected") if r.intent_id == second.id]
        assert refused.reason == "rate_limit_budget"
        assert exchange_orders(thread, refused.client_order_id) == []  # nothing was sent for it
        stop_coid = by_purpose(rclient, "stop", "awaitingTrigger")[0].client_order_id
        assert exchange_orders(thread, stop_coid)[0]["status"] == "canceled"
        # The cancel, the sell and their lookups spent the reserve.
        assert int(rclient.hget(scope, "remaining") or 0) < 150
    finally:
        if proc is not None:
            err = stop(proc)
            assert proc.returncode == 0, err


def test_an_entry_waits_out_a_ban_longer_than_its_budget_wait_instead_of_being_refused(
        redis_url: str, rclient: redis.Redis, sandbox: tuple[SandboxThread, Sandbox]) -> None:
    """A 105 ban stops every request of the key, protective ones too: an entry is not refused for it
    (as it is when only the budget left after the reserve is short), it goes once the ban is over."""
    thread, sb = sandbox
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = spawn(EXECUTOR, {**env(redis_url, sb), "EXECUTOR_ENTRY_BUDGET_WAIT_S": "0.5"})
        wait_until(lambda: b'"running"' in (rclient.get(streams.heartbeat("trader_executor")) or b""),
                   timeout_s=20, what="the executor running")
        ask = best_ask(sb, "BTC-EUR")
        stop_price = (ask * Decimal("0.8")).quantize(Decimal(1), rounding=ROUND_DOWN)
        banned_until = now_ms(rclient) + 2_000
        rclient.hset(KEY_PREFIX + key_scope(sb.api_key), mapping={"banned_until": banned_until})
        intent = entry(3, amount="0.001", ref=None, stop=str(stop_price), mode="sandbox")
        rclient.xadd(streams.ORDERS_SHADOW, encode(intent.model_copy(update={"ts": now_ms(rclient)})))
        wait_until(lambda: [r for r in by_purpose(rclient, "stop", "awaitingTrigger") if r.position_id == intent.id],
                   timeout_s=20, what="the entry through after the ban, its stop resting")
        assert not [r for r in by_purpose(rclient, "entry", "rejected") if r.intent_id == intent.id]
        placed = [r for r in by_purpose(rclient, "entry") if r.intent_id == intent.id and r.order_id]
        assert placed and min(r.ts for r in placed) >= banned_until  # nothing went out during the ban
    finally:
        if proc is not None:
            err = stop(proc)
            assert proc.returncode == 0, err
