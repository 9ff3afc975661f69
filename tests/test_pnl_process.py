"""The PnL orchestrator as a process on a real Redis (issue 13): reports booked once into
trading:positions and trading:pnl (atomically with the ack), marks from the book, snapshots, the
loss breaker setting the kill switch within one message, bad input dead-lettered, and a restart
that continues exactly where it was."""

from __future__ import annotations

from decimal import Decimal

import orjson
import redis

from tests.conftest import spawn, wait_until
from tests.core import report
from tests.test_executor_process import top
from tests.test_trading_core_process import DEAD_EXCHANGE, messages, seed_rules, stop
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import PnlSnapshotTaken, TradingEvent, encode

PNL = ["-m", "services.trader_pnl_orchestrator"]


def pnl_env(redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "BITVAVO_REST_URL": DEAD_EXCHANGE,
            "LEASE_TTL_MS": "1000", "PAPER_EUR": "1000", "MAX_DAILY_LOSS_PCT": "5", "MAX_DRAWDOWN_PCT": "50",
            "PNL_WRITE_SECS": "0.1"}


def totals(client: redis.Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(streams.PNL).items()}


def group_idle(client: redis.Redis, stream: str, group: str = "trader_pnl_orchestrator") -> bool:
    last = client.xrevrange(stream, count=1)
    return bool(last) and any(g["name"] == group.encode() and g["last-delivered-id"] == last[0][0]
                              and int(g["pending"]) == 0 for g in client.xinfo_groups(stream))


def test_pnl_books_once_marks_trips_the_breaker_and_restarts_exactly(redis_url: str, rclient: redis.Redis) -> None:
    seed_rules(rclient)
    now = int(rclient.time()[0]) * 1000
    buy = report("pos-1", "BTC-EUR", "buy", "filled", "0.001", "60", fee="0.15", ts=now)
    rclient.xadd(streams.ORDERS_EXECUTED, encode(buy))
    proc = spawn(PNL, pnl_env(redis_url))
    try:
        wait_until(lambda: rclient.hexists(streams.POSITIONS, "BTC-EUR"), what="the position booked")
        position = orjson.loads(rclient.hget(streams.POSITIONS, "BTC-EUR"))
        assert Decimal(position["size"]) == Decimal("0.001") and Decimal(position["cost"]) == Decimal("60.15")
        assert Decimal(totals(rclient)["cash"]) == Decimal("939.85")
        # the same report again (a replay): booked once
        rclient.xadd(streams.ORDERS_EXECUTED, encode(buy))
        wait_until(lambda: group_idle(rclient, streams.ORDERS_EXECUTED), what="the copy read")
        assert totals(rclient)["reports_booked"] == "1"
        # a mark: unrealized at the best bid
        rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", "61000", "61010")))
        wait_until(lambda: Decimal(totals(rclient)["unrealized"]) == Decimal("0.85"), what="the mark")
        assert Decimal(totals(rclient)["equity"]) == Decimal("1000.85")
        # bad input: an unknown market and a negative fill are dead-lettered, nothing is booked
        rclient.xadd(streams.ORDERS_EXECUTED, encode(report("x", "XYZ-EUR", "buy", "filled", "1", "10", ts=now)))
        rclient.xadd(streams.ORDERS_EXECUTED, encode(report("y", "ETH-EUR", "buy", "filled", "-1", "10", ts=now)))
        wait_until(lambda: rclient.xlen(streams.dlq(streams.ORDERS_EXECUTED)) == 2, what="two dead letters")
        reasons = [orjson.loads(f[b"error"]) if f[b"error"].startswith(b"{") else f[b"error"].decode()
                   for _, f in rclient.xrange(streams.dlq(streams.ORDERS_EXECUTED))]
        assert "XYZ-EUR" in str(reasons[0]) and "negative" in str(reasons[1])
        assert totals(rclient)["reports_booked"] == "1"
        before = totals(rclient)
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err

    # a restart folds the history and continues exactly
    proc = spawn(PNL, pnl_env(redis_url))
    try:
        wait_until(lambda: b'"running"' in (rclient.get(streams.heartbeat("trader_pnl_orchestrator")) or b""),
                   what="the PnL back")
        rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", "61000", "61010")))
        wait_until(lambda: int(totals(rclient)["updated_ts"]) >= int(before["updated_ts"]), what="rewritten")
        after = totals(rclient)
        assert {k: v for k, v in after.items() if k != "updated_ts"} == \
            {k: v for k, v in before.items() if k != "updated_ts"}
        # a loss past the daily limit (5% of 1000): the kill switch within this one message
        sell = report("pos-1", "BTC-EUR", "sell", "filled", "0.001", "5", fee="0.01", ts=now + 1,
                      client_order_id="stop-1", reason="stop_loss")
        rclient.xadd(streams.ORDERS_EXECUTED, encode(sell))
        wait_until(lambda: rclient.get(streams.KILL) == b"1", what="the kill switch set by the breaker")
        why = orjson.loads(rclient.get(streams.KILL_REASON))
        assert why["by"] == "trader_pnl_orchestrator" and "daily loss" in why["reason"]
        events = [m for m in messages(rclient, streams.TRADING_EVENTS) if isinstance(m, TradingEvent)]
        assert [(e.kind, e.severity) for e in events] == [("loss_breaker", "critical")]
        assert not rclient.hexists(streams.POSITIONS, "BTC-EUR")
        snaps = [m for m in messages(rclient, streams.PNL_SNAPSHOTS) if isinstance(m, PnlSnapshotTaken)]
        assert snaps[-1].realized == Decimal("-55.16") and snaps[-1].positions == {}
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
