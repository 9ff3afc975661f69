"""The trading core as a process on a real Redis (issue 11): signals in, decisions and intents out,
fills folded, exits from the book, the kill switch read again inside the commit, and state that
survives a restart. The pure decisions are tested in tests/core."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from tests.conftest import spawn, wait_until
from tests.core import MARKETS_JSON, book, catalog, report
from tests.core import signal as make_signal
from tradestack import streams
from tradestack.bus import ConsumerLoop, Delivery, LoopConfig
from tradestack.clock import FakeClock
from tradestack.embedded_redis import free_port
from tradestack.messages import (
    DecisionMade,
    EntryIntent,
    ExitIntent,
    Message,
    MessageFactory,
    TradingEvent,
    decode,
    encode,
)
from tradestack.metrics import ServiceMetrics

CORE = ["-m", "services.trading_core"]
DEAD_EXCHANGE = "http://127.0.0.1:1/v2"  # connection refused at once: the core starts from its cached rules


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    return err.decode()


def messages(client: redis.Redis, stream: str) -> list[Any]:
    return [decode(fields) for _, fields in client.xrange(stream)]


def seed_rules(client: redis.Redis) -> None:
    client.set(streams.MARKETS, orjson.dumps({"fetched_ms": 1, "markets": MARKETS_JSON}))


def core_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port()), "BITVAVO_REST_URL": DEAD_EXCHANGE,
            "LEASE_TTL_MS": "1000", **extra}


def run_once(redis_url: str, **env: str) -> tuple[int, dict[str, Any], str]:
    """Exit code, the printed summary (the one stdout line that is not a log line), stderr."""
    proc = spawn([*CORE, "--once"], core_env(redis_url, **env))
    out, err = proc.communicate(timeout=60)
    lines = [orjson.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    summaries = [line for line in lines if "decisions" in line and "event" not in line]
    assert len(summaries) == 1, out.decode()
    return proc.returncode, summaries[0], err.decode()


def test_once_decides_a_storm_once_and_a_restart_decides_nothing_again(redis_url: str, rclient: redis.Redis,
                                                                      tmp_path: Path) -> None:
    seed_rules(rclient)
    storm = make_signal(1, "BTC-EUR", "60000")
    for _ in range(100):
        rclient.xadd(streams.SIGNALS_BASELINE, encode(storm))
    rclient.xadd(streams.SIGNALS_BASELINE, encode(make_signal(2, "ETH-EUR", "3000")))
    rclient.xadd(streams.SIGNALS_BASELINE, encode(make_signal(3, "SOL-EUR", "150", side="sell")))
    rclient.xadd(streams.SIGNALS_BASELINE, {"type": "signal.emitted", "data": b"{not json"})

    code, summary, err = run_once(redis_url, PARQUET_DIR=str(tmp_path))
    assert code == 0, err
    decisions = messages(rclient, streams.ORDERS_SIGNALS)
    assert sorted((d.market, d.accepted) for d in decisions) == [("BTC-EUR", True), ("ETH-EUR", True),
                                                                 ("SOL-EUR", False)]
    intents = messages(rclient, streams.ORDERS_SHADOW)
    assert [type(i) for i in intents] == [EntryIntent, EntryIntent]
    btc = next(i for i in intents if i.market == "BTC-EUR")
    # the intent answers "why does this order exist?" on its own
    assert btc.strategy == "momentum" and btc.strategy_params == {"fast": "12", "slow": "26"}
    assert btc.sizing is not None and btc.sizing.rounded_size == btc.amount and btc.mode == "paper"
    assert {c.name for c in btc.checks} >= {"kill_switch", "exchange_rules", "max_order_notional"}
    assert btc.trace == storm.trace
    assert rclient.xlen(streams.dlq(streams.SIGNALS_BASELINE)) == 1
    assert summary["decisions"] == {"accepted": 2, "blocked": 1}
    assert summary["open_positions"] == 2 and len(summary["in_flight"]) == 2
    # decisions and intents are archived as published (Parquet after the hour; JSONL until then)
    rows = [orjson.loads(line) for path in tmp_path.glob("*/trading/*/*.jsonl") for line in path.read_bytes().splitlines()]
    assert sorted(r["msg"]["id"] for r in rows) == sorted(m.id for m in decisions + intents)

    # a restart, and the storm again: the in-flight intents are rebuilt, nothing is decided twice
    for _ in range(100):
        rclient.xadd(streams.SIGNALS_BASELINE, encode(storm))
    code, again, err = run_once(redis_url)
    assert code == 0, err
    assert rclient.xlen(streams.ORDERS_SIGNALS) == 3 and rclient.xlen(streams.ORDERS_SHADOW) == 2
    assert again["in_flight"] == summary["in_flight"] and again["global_exposure_eur"] == summary["global_exposure_eur"]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_core_follows_fills_and_the_book_and_blocks_entries_under_the_kill_switch(
        redis_url: str, rclient: redis.Redis, sandbox_env: dict[str, str]) -> None:
    env = core_env(redis_url, **sandbox_env, EXIT_TAKE_PROFIT_PCT="4", CORE_GUARDS=orjson.dumps([
        {"method": "KillSwitch"}, {"method": "OnePositionPerMarket"}, {"method": "MaxOrderNotional",
                                                                       "max_notional_eur": "100"},
        {"method": "ExchangeRules"}]).decode())
    proc = spawn(CORE, env)
    try:
        # the rules come from the sandbox's /markets, and are cached for a start without it
        wait_until(lambda: rclient.exists(streams.MARKETS), what="trading:markets cached")
        first = make_signal(1, "BTC-EUR", "60000")
        rclient.xadd(streams.SIGNALS_BASELINE, encode(first))
        wait_until(lambda: rclient.xlen(streams.ORDERS_SHADOW) == 1, what="the entry intent")
        entry, = messages(rclient, streams.ORDERS_SHADOW)
        assert isinstance(entry, EntryIntent) and entry.take_profit_price is not None

        # the executor's fill: the core now holds a position and watches the book for the take profit
        quote = str(entry.amount * 60000)
        rclient.xadd(streams.ORDERS_EXECUTED, encode(report(entry.id, "BTC-EUR", "buy", "filled", str(entry.amount),
                                                            quote, fee="0.25")))
        rclient.xadd(streams.BOOK, encode(book("BTC-EUR", str(entry.take_profit_price + 10), i=5)))
        wait_until(lambda: rclient.xlen(streams.ORDERS_SHADOW) == 2, what="the take-profit exit intent")
        exit_intent = messages(rclient, streams.ORDERS_SHADOW)[1]
        assert isinstance(exit_intent, ExitIntent) and exit_intent.reason == "take_profit"
        assert exit_intent.amount == entry.amount and exit_intent.position_id == entry.id

        # a report that can never be booked (sells more than held) is dead-lettered, nothing else moves
        rclient.xadd(streams.ORDERS_EXECUTED, encode(report("other", "ETH-EUR", "sell", "filled", "1", "3000")))
        wait_until(lambda: rclient.xlen(streams.dlq(streams.ORDERS_EXECUTED)) == 1, what="the bad report dead-lettered")

        # kill switch: the next entry is blocked, with an event; the process keeps running
        rclient.set(streams.KILL, "1")
        port = int(env["METRICS_PORT"])
        wait_until(lambda: "trader_trading_core_kill_switch 1.0" in scrape(port), what="the switch seen")
        rclient.xadd(streams.SIGNALS_BASELINE, encode(make_signal(2, "ETH-EUR", "3000")))
        wait_until(lambda: rclient.xlen(streams.ORDERS_SIGNALS) == 2, what="the second decision")
        blocked = messages(rclient, streams.ORDERS_SIGNALS)[1]
        assert isinstance(blocked, DecisionMade) and not blocked.accepted and blocked.reasons == ["kill_switch"]
        assert rclient.xlen(streams.ORDERS_SHADOW) == 2
        events = [m for m in messages(rclient, streams.TRADING_EVENTS) if isinstance(m, TradingEvent)]
        assert [e.kind for e in events] == ["kill_switch"]
        wait_until(lambda: 'trader_trading_core_decisions_total{outcome="blocked",reason="kill_switch"} 1.0'
                   in scrape(port), what="the blocked decision counted")
        text = scrape(port)
        assert 'trader_trading_core_decisions_total{outcome="accepted",reason=""} 1.0' in text
        assert "trader_trading_core_lease_held 1.0" in text
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err


def test_the_kill_switch_set_during_the_decision_is_read_again_in_the_commit(
        redis_url: str, rclient: redis.Redis) -> None:
    """The watcher saw the switch off, the core accepted, then the switch was set before the commit:
    the commit writes the blocked decision, no intent, and the core forgets the intent it counted."""
    from services.trading_core.trading_core.core import CoreConfig, TradingCore

    clock = FakeClock(1_700_000_000_000)
    core = TradingCore(CoreConfig(), catalog(), MessageFactory("trading_core", clock), clock)
    first = make_signal(1, "BTC-EUR", "60000")
    rclient.xadd(streams.SIGNALS_BASELINE, encode(first))

    def handle(msg: Message, delivery: Delivery) -> Any:
        effects = core.on_signal_gated(msg, kill_switch=False)  # type: ignore[arg-type]
        rclient.set(streams.KILL, "1")  # between the decision and its commit
        return effects

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        loop = ConsumerLoop(client, group="trading_core", streams_in=[streams.SIGNALS_BASELINE], handler=handle,
                            metrics=ServiceMetrics("t_core_gate"), config=LoopConfig(block_ms=20), consumer="c:1",
                            stateful=True)
        await loop.run_until_idle(asyncio.Event(), redis_wait_s=0)
        await client.aclose()

    asyncio.run(scenario())
    decision, = messages(rclient, streams.ORDERS_SIGNALS)
    assert not decision.accepted and decision.reasons == ["kill_switch"] and decision.intent_id is None
    assert next(c for c in decision.checks if c.name == "kill_switch").passed is False
    assert rclient.xlen(streams.ORDERS_SHADOW) == 0
    summary = core.summary()
    assert summary["in_flight"] == [] and summary["open_positions"] == 0
    assert summary["decisions"] == {"blocked": 1} and summary["intents"] == {}
    # a copy of the signal gets the same (blocked) answer
    again = core.on_signal_gated(first, kill_switch=False)
    assert [type(e.msg) for e in again] == [DecisionMade, TradingEvent]  # type: ignore[union-attr]


OPEN_CHAIN = orjson.dumps([{"method": "KillSwitch"}, {"method": "MaxOrderNotional", "max_notional_eur": "100"},
                           {"method": "ExchangeRules"}]).decode()


def group_done(client: redis.Redis, stream: str, group: str = "trading_core") -> bool:
    last = client.xrevrange(stream, count=1)
    for g in client.xinfo_groups(stream):
        if g["name"] == group.encode():
            return bool(last) and g["last-delivered-id"] == last[0][0] and int(g["pending"]) == 0
    return False


def test_no_entry_intent_after_the_kill_switch_in_a_storm_and_exits_still_flow(
        redis_url: str, rclient: redis.Redis) -> None:
    seed_rules(rclient)
    proc = spawn(CORE, core_env(redis_url, CORE_GUARDS=OPEN_CHAIN, READ_COUNT="16"))
    try:
        # a position in BTC-EUR first (its entry and fill), so there is something to exit
        first = make_signal(0, "BTC-EUR", "60000")
        rclient.xadd(streams.SIGNALS_BASELINE, encode(first))
        wait_until(lambda: rclient.xlen(streams.ORDERS_SHADOW) == 1, what="the first entry")
        entry, = messages(rclient, streams.ORDERS_SHADOW)
        rclient.xadd(streams.ORDERS_EXECUTED, encode(report(entry.id, "BTC-EUR", "buy", "filled", str(entry.amount),
                                                            str(entry.amount * 60000))))
        wait_until(lambda: group_done(rclient, streams.ORDERS_EXECUTED), what="the fill folded")
        # a storm over three markets, the switch set in the middle of it (small batches: many commits)
        storm = [make_signal(i, m, p) for i in range(1, 201) for m, p in (("ETH-EUR", "3000"), ("SOL-EUR", "150"))]
        pipe = rclient.pipeline(transaction=False)
        for msg in storm[:200]:
            pipe.xadd(streams.SIGNALS_BASELINE, encode(msg))
        pipe.execute()
        pipe = rclient.pipeline(transaction=True)
        pipe.set(streams.KILL, "1")
        pipe.time()
        _, (secs, micros) = pipe.execute()
        kill_ms = secs * 1000 + micros // 1000
        pipe = rclient.pipeline(transaction=False)
        for msg in storm[200:]:
            pipe.xadd(streams.SIGNALS_BASELINE, encode(msg))
        pipe.execute()
        # the take profit is hit after the switch: the exit still goes out
        rclient.xadd(streams.BOOK, encode(book("BTC-EUR", str(entry.take_profit_price + 10), i=7)))
        wait_until(lambda: group_done(rclient, streams.SIGNALS_BASELINE), what="the storm decided")
        wait_until(lambda: any(isinstance(m, ExitIntent) for m in messages(rclient, streams.ORDERS_SHADOW)),
                   what="the take-profit exit after the switch")
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    entries = [(int(eid.split(b"-")[0]), decode(f)) for eid, f in rclient.xrange(streams.ORDERS_SHADOW)]
    entry_times = [ms for ms, msg in entries if isinstance(msg, EntryIntent)]
    assert max(entry_times) <= kill_ms, "an entry intent was committed after the kill switch was set"
    decisions = messages(rclient, streams.ORDERS_SIGNALS)
    assert len(decisions) == 401
    blocked = [d for d in decisions if not d.accepted]
    assert all(d.reasons == ["kill_switch"] for d in blocked)
    assert len(blocked) >= 200  # every signal after the switch, and those in flight when it flipped
    assert len(entry_times) == 401 - len(blocked)
    exit_ms = [ms for ms, msg in entries if isinstance(msg, ExitIntent)]
    assert exit_ms and min(exit_ms) > kill_ms


def test_a_second_core_waits_and_takes_over_when_the_first_dies(redis_url: str, rclient: redis.Redis) -> None:
    seed_rules(rclient)
    first = spawn(CORE, core_env(redis_url))
    second = None
    try:
        wait_until(lambda: rclient.get("lease:trading_core") is not None, what="the first core's lease")
        holder = rclient.get("lease:trading_core")
        second = spawn(CORE, core_env(redis_url))
        wait_until(lambda: rclient.get(streams.heartbeat("trading_core")) is not None, what="a heartbeat")
        rclient.xadd(streams.SIGNALS_BASELINE, encode(make_signal(1, "BTC-EUR", "60000")))
        wait_until(lambda: rclient.xlen(streams.ORDERS_SIGNALS) == 1, what="the first decision")
        assert rclient.get("lease:trading_core") == holder  # the second one only waits
        first.kill()  # SIGKILL: no goodbye, the lease expires (LEASE_TTL_MS=1000)
        first.wait(10)
        wait_until(lambda: rclient.get("lease:trading_core") not in (None, holder), timeout_s=15,
                   what="the standby taking the lease")
        rclient.xadd(streams.SIGNALS_BASELINE, encode(make_signal(2, "ETH-EUR", "3000")))
        wait_until(lambda: rclient.xlen(streams.ORDERS_SIGNALS) == 2, what="a decision by the new holder")
        # it rebuilt the in-flight BTC-EUR entry: a copy of that signal is not decided again
        rclient.xadd(streams.SIGNALS_BASELINE, encode(make_signal(1, "BTC-EUR", "60000")))
        rclient.xadd(streams.SIGNALS_BASELINE, encode(make_signal(3, "BTC-EUR", "60000")))
        wait_until(lambda: rclient.xlen(streams.ORDERS_SIGNALS) == 3, what="the third decision")
        third = messages(rclient, streams.ORDERS_SIGNALS)[2]
        assert not third.accepted and "position_open" in third.reasons
    finally:
        if second is not None:
            err = stop(second)
            assert second.returncode == 0, err
        if first.poll() is None:
            stop(first)
