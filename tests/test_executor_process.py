"""The executor as a process on a real Redis (issue 12): paper fills against the book from the
stream, a resting stop placed at once after the entry, the stop triggered by the book, reports the
core books, and a restart that neither loses nor repeats an order."""

from __future__ import annotations

import signal
import subprocess
from decimal import Decimal

import orjson
import redis

from tests.conftest import spawn, wait_until
from tests.test_trading_core_process import DEAD_EXCHANGE, core_env, messages, seed_rules, stop
from tradestack import streams
from tradestack.embedded_redis import free_port
from tradestack.messages import BookTopUpdated, OrderExecuted, SignalEmitted, Trace, encode, new_id

CORE = ["-m", "services.trading_core"]
EXECUTOR = ["-m", "services.trader_executor"]


def executor_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "BITVAVO_REST_URL": DEAD_EXCHANGE,
            "LEASE_TTL_MS": "1000", **extra}


def now_ms(client: redis.Redis) -> int:
    secs, micros = client.time()
    return int(secs) * 1000 + int(micros) // 1000


def top(client: redis.Redis, market: str, bid: str, ask: str, size: str = "1") -> BookTopUpdated:
    ts = now_ms(client)
    b, a = Decimal(bid), Decimal(ask)
    return BookTopUpdated(id=new_id(), ts=ts, src="test", trace=Trace(id=new_id(), ts=ts), market=market, bid=b,
                          bid_size=Decimal(size), ask=a, ask_size=Decimal(size), mid=(a + b) / 2,
                          spread_bps=Decimal(1), nonce=1, exchange_ts=ts)


def buy_signal(client: redis.Redis, market: str, price: str) -> SignalEmitted:
    ts = now_ms(client)
    msg_id = new_id()
    return SignalEmitted(id=msg_id, ts=ts, src="test", trace=Trace(id=msg_id, ts=ts), market=market,
                         strategy="momentum", side="buy", strength=0.8, ref_price=Decimal(price),
                         atr=Decimal("100"), interval="1m", candle_open_ts=ts - 60_000, features={},
                         params={"fast": "5"})


def reports(client: redis.Redis) -> list[OrderExecuted]:
    return [m for m in messages(client, streams.ORDERS_EXECUTED) if isinstance(m, OrderExecuted)]


def by_purpose(client: redis.Redis, purpose: str, status: str | None = None) -> list[OrderExecuted]:
    return [r for r in reports(client) if r.purpose == purpose and (status is None or r.status == status)]


def test_paper_entry_gets_a_resting_stop_the_book_triggers_it_and_a_restart_repeats_nothing(
        redis_url: str, rclient: redis.Redis) -> None:
    seed_rules(rclient)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["core"] = spawn(CORE, core_env(redis_url))
        procs["executor"] = spawn(EXECUTOR, executor_env(redis_url))
        wait_until(lambda: all(rclient.get(streams.heartbeat(n)) for n in ("trading_core", "trader_executor")),
                   what="both running")
        wait_until(lambda: b"running" in (rclient.get(streams.heartbeat("trader_executor")) or b""),
                   what="the executor running")
        rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", "59990", "60000")))
        rclient.xadd(streams.SIGNALS_BASELINE, encode(buy_signal(rclient, "BTC-EUR", "60000")))
        wait_until(lambda: by_purpose(rclient, "entry", "filled"), what="the paper entry filled")
        wait_until(lambda: by_purpose(rclient, "stop", "awaitingTrigger"), what="the resting stop")
        entry, = by_purpose(rclient, "entry", "filled")
        stop_rep = by_purpose(rclient, "stop", "awaitingTrigger")[0]
        intent = next(m for m in messages(rclient, streams.ORDERS_SHADOW) if m.id == entry.intent_id)
        assert entry.mode == "paper" and entry.avg_price == Decimal("60000") and entry.fee > 0
        assert entry.filled_amount == intent.amount and entry.fills and entry.fills[0].taker
        assert stop_rep.amount == entry.filled_amount and stop_rep.trigger_price == intent.stop_price
        assert stop_rep.position_id == entry.intent_id == stop_rep.intent_id

        # the book falls through the stop: the paper exchange triggers it, a stop-loss sell fills
        rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", str(intent.stop_price - 100),
                                              str(intent.stop_price - 90))))
        wait_until(lambda: by_purpose(rclient, "stop", "filled"), what="the stop filled")
        sold, = by_purpose(rclient, "stop", "filled")
        assert sold.reason == "stop_loss" and sold.filled_amount == entry.filled_amount
        assert sold.avg_price is not None and sold.avg_price < intent.stop_price
        count = len(reports(rclient))
        paper = {k: orjson.loads(v) for k, v in rclient.hgetall("executor:paper").items() if k.startswith(b"b:")}

        # a SIGKILL and a restart: rebuilt and reconciled, no order repeated, no report lost
        procs["executor"].kill()
        procs["executor"].wait(10)
        procs["executor"] = spawn(EXECUTOR, executor_env(redis_url))
        wait_until(lambda: b'"running"' in (rclient.get(streams.heartbeat("trader_executor")) or b"")
                   and b'"active"' in (rclient.get(streams.heartbeat("trader_executor")) or b""),
                   timeout_s=20, what="the executor back")
        rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", "61000", "61010")))
        wait_until(lambda: rclient.xinfo_groups(streams.BOOK) and all(
            int(g["pending"]) == 0 for g in rclient.xinfo_groups(streams.BOOK)), what="the book read")
        assert len(reports(rclient)) == count
        assert {k: orjson.loads(v) for k, v in rclient.hgetall("executor:paper").items() if k.startswith(b"b:")} == paper
    finally:
        errs = {name: stop(p) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode in (0, -signal.SIGKILL), errs[name]


