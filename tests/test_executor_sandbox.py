"""The real order path against the sandbox exchange (issue 12, sandbox mode): the core decides, the
executor places a market buy through Bitvavo's signed REST, rests a stopLoss on the exchange at once,
and on a take profit cancels the stop and sells; a lost response on the entry is looked up, never
sent twice. Faults are injected into the sandbox itself (sandbox/server/faults.py)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from decimal import Decimal
from typing import Any, Iterator

import pytest
import redis

from sandbox.server.runner import Sandbox, SandboxThread
from sandbox.server.settings import SandboxSettings
from tests.conftest import spawn, wait_until
from tests.test_executor_process import CORE, EXECUTOR, buy_signal, by_purpose, reports, top
from tests.test_pnl_process import PNL
from tests.test_trading_core_process import messages, stop
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import EntryIntent, ExitIntent, encode


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[SandboxThread, Sandbox]]:
    settings = SandboxSettings(markets="BTC-EUR,ETH-EUR", history_hours=0.05, eur=Decimal("10000"))
    thread = SandboxThread(None, settings)
    sb = thread.start()
    try:
        yield thread, sb
    finally:
        thread.stop()


def env(redis_url: str, sb: Sandbox) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "DRY_RUN": "false",
            "BITVAVO_REST_URL": sb.rest_url, "BITVAVO_WS_URL": sb.ws_url, "BITVAVO_API_KEY": sb.api_key,
            "BITVAVO_API_SECRET": sb.api_secret, "BITVAVO_OPERATOR_ID": "7", "LEASE_TTL_MS": "1000",
            "EXECUTOR_POLL_SECS": "0.5", "EXIT_TAKE_PROFIT_PCT": "1"}


def best_ask(sb: Sandbox, market: str) -> Decimal:
    with urllib.request.urlopen(f"{sb.rest_url}/{market}/book?depth=1", timeout=5) as resp:
        book = json.loads(resp.read())
    return Decimal(book["asks"][0][0])


def eur_balance(thread: SandboxThread) -> Decimal:
    sb = thread.sb
    assert sb is not None
    rows = thread.call(lambda: sb.exchange.balance(sb.api_key, {"symbol": "EUR"}))
    return sum((Decimal(r["available"]) + Decimal(r["inOrder"]) for r in rows), Decimal(0))


def exchange_orders(thread: SandboxThread, client_order_id: str) -> list[dict[str, Any]]:
    sb = thread.sb
    assert sb is not None
    return thread.call(lambda: sb.exchange.admin_orders(client_order_id=client_order_id))


def test_sandbox_entry_rests_a_stop_on_the_exchange_and_a_take_profit_cancels_it_then_sells(
        redis_url: str, rclient: redis.Redis, sandbox: tuple[SandboxThread, Sandbox]) -> None:
    thread, sb = sandbox
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["core"] = spawn(CORE, env(redis_url, sb))
        procs["executor"] = spawn(EXECUTOR, env(redis_url, sb))
        procs["pnl"] = spawn(PNL, env(redis_url, sb))
        starting = eur_balance(thread)
        wait_until(lambda: b'"running"' in (rclient.get(streams.heartbeat("trader_pnl_orchestrator")) or b""),
                   timeout_s=20, what="the PnL running")
        wait_until(lambda: b'"running"' in (rclient.get(streams.heartbeat("trader_executor")) or b""),
                   timeout_s=20, what="the executor running")
        wait_until(lambda: rclient.xinfo_groups(streams.SIGNALS_BASELINE) if rclient.exists(
            streams.SIGNALS_BASELINE) else False, what="the core reading signals")
        # the entry's POST /order reaches the exchange but its answer is lost
        thread.call(lambda: sb.faults.apply({"lost_responses": [{"path": "^/v2/order$", "method": "POST",
                                                                   "next": 1, "mode": "drop"}]}))
        price = best_ask(sb, "BTC-EUR")
        rclient.xadd(streams.SIGNALS_BASELINE, encode(buy_signal(rclient, "BTC-EUR", str(price))))
        wait_until(lambda: by_purpose(rclient, "stop", "awaitingTrigger"), timeout_s=20, what="the resting stop")
        entry = by_purpose(rclient, "entry", "filled")[-1]
        assert entry.mode == "sandbox" and entry.order_id is not None and entry.fills
        assert thread.call(lambda: sb.faults.injected["lost_response_drop"]) == 1
        assert len(exchange_orders(thread, entry.client_order_id)) == 1  # looked up, not sent twice
        stop_rep = by_purpose(rclient, "stop", "awaitingTrigger")[0]
        on_exchange, = exchange_orders(thread, stop_rep.client_order_id)
        assert on_exchange["orderType"] == "stopLoss" and on_exchange["status"] == "awaitingTrigger"
        assert Decimal(on_exchange["amount"]) == entry.filled_amount
        intent = next(m for m in messages(rclient, streams.ORDERS_SHADOW) if isinstance(m, EntryIntent))
        assert Decimal(on_exchange["triggerAmount"]) == intent.stop_price

        # the take profit: the core sees the book above it; the executor cancels the stop, then sells
        assert intent.take_profit_price is not None
        tp = intent.take_profit_price
        # the core may not have folded the fill yet when a top arrives: the book keeps ticking, as it would
        def tick_until_sold() -> bool:
            if by_purpose(rclient, "exit", "filled"):
                return True
            rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", str(tp + 1), str(tp + 2))))
            return False

        wait_until(tick_until_sold, timeout_s=20, what="the exit sold")
        sold = by_purpose(rclient, "exit", "filled")[-1]
        assert sold.filled_amount == entry.filled_amount and sold.reason == "take_profit"
        assert any(isinstance(m, ExitIntent) for m in messages(rclient, streams.ORDERS_SHADOW))
        wait_until(lambda: exchange_orders(thread, stop_rep.client_order_id)[0]["status"] == "canceled",
                   what="the stop canceled on the exchange")
        assert not any(r.status == "filled" for r in reports(rclient) if r.purpose == "stop")
        # the PnL books the round trip: its cash is the exchange's EUR to the cent, nothing held
        wait_until(lambda: Decimal((rclient.hget(streams.PNL, "cash") or b"0").decode()) == eur_balance(thread)
                   and rclient.hlen(streams.POSITIONS) == 0, what="the booked cash equal to the exchange's")
        pnl = {k.decode(): v.decode() for k, v in rclient.hgetall(streams.PNL).items()}
        assert Decimal(pnl["starting_equity"]) == starting
        assert Decimal(pnl["equity"]) == eur_balance(thread) and Decimal(pnl["realized"]) == eur_balance(thread) - starting
    finally:
        thread.call(lambda: sb.faults.apply({"clear": True}))
        errs = {name: stop(p) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, errs[name]


def test_sandbox_refusing_every_stop_closes_the_position_at_market_with_a_critical_event(
        redis_url: str, rclient: redis.Redis, sandbox: tuple[SandboxThread, Sandbox]) -> None:
    """The exchange refuses stop orders (fault: the next 3 stopLoss orders rejected): the stop is tried
    three times (EXECUTOR_STOP_RETRIES=2), then the coins are sold at market and a critical event
    says so: never a position without a stop."""
    thread, sb = sandbox
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["core"] = spawn(CORE, env(redis_url, sb))
        procs["executor"] = spawn(EXECUTOR, env(redis_url, sb))
        wait_until(lambda: b'"running"' in (rclient.get(streams.heartbeat("trader_executor")) or b""),
                   timeout_s=20, what="the executor running")
        wait_until(lambda: rclient.xinfo_groups(streams.SIGNALS_BASELINE) if rclient.exists(
            streams.SIGNALS_BASELINE) else False, what="the core reading signals")
        thread.call(lambda: sb.faults.apply({"reject_orders": {"n": 3, "error_code": 230, "order_type": "stopLoss"}}))
        rclient.xadd(streams.SIGNALS_BASELINE, encode(buy_signal(rclient, "ETH-EUR", str(best_ask(sb, "ETH-EUR")))))
        wait_until(lambda: by_purpose(rclient, "emergency", "filled"), timeout_s=20, what="the emergency sale")
        entry = by_purpose(rclient, "entry", "filled")[-1]
        sold = by_purpose(rclient, "emergency", "filled")[-1]
        assert sold.filled_amount == entry.filled_amount and sold.reason == "emergency"
        stops = [r for r in reports(rclient) if r.purpose == "stop"]
        assert len({r.client_order_id for r in stops}) == 3 and all(r.status == "rejected" for r in stops)
        events = [m for m in messages(rclient, streams.TRADING_EVENTS) if getattr(m, "kind", "") == "stop_failed"]
        assert events and events[0].severity == "critical"
        # and it stops new risk: the kill switch is set with the reason, until a person clears it
        assert rclient.get(streams.KILL) == b"1"
        assert b"stop_failed" in rclient.get(streams.KILL_REASON)
    finally:
        rclient.delete(streams.KILL, streams.KILL_REASON)
        thread.call(lambda: sb.faults.apply({"clear": True}))
        thread.call(lambda: sb.exchange.set_reject_next_orders(0))
        errs = {name: stop(p) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, errs[name]
