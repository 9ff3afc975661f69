"""Acceptance: the executor's safety claims (DESIGN §3, §5; docs/executor.md), proven against the sandbox
exchange with its fault injection and the real executor process in sandbox mode.

How each proof is made deterministic (never a race on timing; every wait is a bounded poll):
- the exchange is the sandbox in a thread of this process (tests/executor_sandbox_helpers.py): a calm,
  deep market, and a "whale" account whose market sells move the book exactly when a test says, so a
  stop triggers, or a resting limit entry fills, in one engine call;
- a stop placement is held back by ``reject_orders`` (order_type stopLoss, errorCode 107: "overloaded,
  nothing happened, try again"): the executor keeps retrying and the window between the entry's fill
  and its stop stays open for as long as the fault does;
- the account socket is dropped by the sandbox (``ws_drop``) and kept down by a gate in front of the
  sandbox's WS port (a TCP relay in this process) that refuses the reconnects until the test reopens it;
- the stack run's account is read through the sandbox's own introspection (GET /admin/orders: one
  consistent snapshot per sample).

A market entry whose handler is SIGKILLed before its commit is protected at once after the restart: the
start-up rebuild folds the intents still pending too (``Rebuild(include_pending=True)``), so the entry is
known and reconciled before the loop reads; without that it waited for CLAIM_IDLE_MS (measured 30.2 s).
"""

from __future__ import annotations

import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import redis

from services.trader_executor.app.manager import entry_client_id, stop_client_id
from tests.conftest import wait_until
from tests.executor_sandbox_helpers import (
    MUTATING,
    START_EUR,
    Bench,
    Proc,
    WsGate,
    below,
    entry,
    events,
    executor_env,
    exit_intent_for,
    fills_of,
    heartbeat,
    latest,
    push,
    reports,
    start_executor,
    wait_ready,
)
from tests.stack_helpers import run_stack
from tradestack import streams
from tradestack.markets import MarketRules
from tradestack.messages import EntryIntent, OrderExecuted

STOP_WITHIN_S = 5.0  # the bound accepted: a position's stop rests within 5 s of the executor being ready


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts; stopped (SIGTERM, then SIGKILL) whatever happens."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def run(procs: list[Proc], tmp_path: Path, env: dict[str, str], client: redis.Redis) -> tuple[Proc, float]:
    """Start an executor and wait until it is ready: (the process, the monotonic time it was seen ready)."""
    p = start_executor(tmp_path, env)
    procs.append(p)
    return p, wait_ready(client, p)


def stop_rests_within(bench: Bench, client_order_id: str, ready: float) -> float:
    """Seconds from ``ready`` until the stop rests on the exchange (bounded by STOP_WITHIN_S)."""
    wait_until(lambda: any(o["status"] == "awaitingTrigger" for o in bench.order(client_order_id)),
               timeout_s=STOP_WITHIN_S, what=f"the stop {client_order_id} resting within {STOP_WITHIN_S} s of ready")
    return time.monotonic() - ready


def assert_report_matches_exchange(report: OrderExecuted, bench: Bench) -> None:
    """The report's fills are the exchange's own trades of that order: amount, price, fee, one by one."""
    assert report.order_id is not None
    trades = fills_of(bench, report.market, report.order_id)
    assert trades, f"no trade of {report.order_id} on the exchange"
    assert sorted((f.fill_id, f.amount, f.price, f.fee) for f in report.fills) == sorted(
        (t["id"], Decimal(t["amount"]), Decimal(t["price"]), Decimal(t["fee"])) for t in trades)
    assert report.filled_amount == sum(Decimal(t["amount"]) for t in trades)
    assert report.filled_quote == sum(Decimal(t["amount"]) * Decimal(t["price"]) for t in trades)
    assert report.fee == sum(Decimal(t["fee"]) for t in trades) and report.fee_currency == "EUR"


def refuse_stops(bench: Bench) -> None:
    bench.faults({"reject_orders": {"n": 1000, "error_code": 107, "order_type": "stopLoss"}})


def accept_stops(bench: Bench) -> None:
    bench.call(lambda: bench.exchange.set_reject_next_orders(0))


# -- 1. SIGKILL between the entry and its stop --------------------------------------------------------


def test_sigkill_after_a_resting_entry_filled_and_before_its_stop_the_restart_rests_exactly_one_stop(
        redis_url: str, rclient: redis.Redis, bench: Bench, procs: list[Proc], tmp_path: Path) -> None:
    """A limit entry rests (its report committed); the market fills it while every stop placement is
    refused (107); SIGKILL after two refusals, the entry filled on the exchange and no stop there. The
    restarted executor finds the fill and rests its stop within 5 s of being ready, exactly once."""
    first, _ = run(procs, tmp_path, executor_env(redis_url, bench), rclient)
    tick = bench.tick("BTC-EUR")
    bid = bench.best_bid("BTC-EUR")
    intent = entry(rclient, "BTC-EUR", "0.002", below(bid, 100, tick), order_type="limit", price=below(bid, 10, tick))
    push(rclient, intent)
    entry_coid = entry_client_id(intent.id)
    wait_until(lambda: latest(rclient, entry_coid) is not None, timeout_s=15, what="the entry resting, reported")
    assert latest(rclient, entry_coid).status == "new"  # type: ignore[union-attr]

    refuse_stops(bench)
    bench.whale_sell_through("BTC-EUR", intent.price - tick)  # type: ignore[operator]  # the market fills it
    (placed,) = bench.order(entry_coid)
    assert placed["status"] == "filled" and Decimal(placed["filledAmount"]) == intent.amount
    wait_until(lambda: bench.placements("stopLoss", "error_107") >= 2, timeout_s=15, what="two stops refused")
    assert not bench.stops()
    first.kill()
    accept_stops(bench)

    _, ready = run(procs, tmp_path, executor_env(redis_url, bench), rclient)
    took = stop_rests_within(bench, stop_client_id(intent.id, 1), ready)
    wait_until(lambda: reports(rclient, intent.id, "stop", "awaitingTrigger"), what="the stop reported")
    (stop,) = bench.stops()  # exactly one stop, ever
    assert stop["status"] == "awaitingTrigger" and Decimal(stop["amount"]) == intent.amount
    assert Decimal(stop["triggerAmount"]) == intent.stop_price
    assert len(bench.order(entry_coid)) == 1  # the entry was not sent again
    assert latest(rclient, entry_coid).status == "filled"  # type: ignore[union-attr]
    print(f"stop rested {took:.3f} s after the restarted executor was ready")


def test_sigkill_while_a_market_entry_is_being_protected_the_restart_rests_its_stop_within_5_s(
        redis_url: str, rclient: redis.Redis, bench: Bench, procs: list[Proc], tmp_path: Path) -> None:
    """A market entry fills at once; its stop is refused (107) while the intent's handler is still
    running, so neither its report nor its ack is committed; SIGKILL. The restarted executor must
    protect the coins within 5 s of being ready, with one stop and no second entry."""
    first, _ = run(procs, tmp_path, executor_env(redis_url, bench), rclient)
    refuse_stops(bench)
    tick = bench.tick("BTC-EUR")
    intent = entry(rclient, "BTC-EUR", "0.002", below(bench.best_bid("BTC-EUR"), 100, tick))
    push(rclient, intent)
    entry_coid = entry_client_id(intent.id)
    wait_until(lambda: any(o["status"] == "filled" for o in bench.order(entry_coid)), timeout_s=15,
               what="the entry filled on the exchange")
    wait_until(lambda: bench.placements("stopLoss", "error_107") >= 2, timeout_s=15, what="two stops refused")
    assert not bench.stops() and not reports(rclient)  # nothing committed yet: the handler is still running
    first.kill()
    accept_stops(bench)

    _, ready = run(procs, tmp_path, executor_env(redis_url, bench), rclient)
    stop_rests_within(bench, stop_client_id(intent.id, 1), ready)
    (stop,) = bench.stops()
    assert Decimal(stop["amount"]) == intent.amount and len(bench.order(entry_coid)) == 1


# -- 2. the four reconciliation cases on start ---------------------------------------------------------


def test_start_reconciles_resumed_orphan_closed_while_down_and_clean_and_protects_a_bare_position(
        redis_url: str, rclient: redis.Redis, bench: Bench, procs: list[Proc], tmp_path: Path) -> None:
    """(d) neither state nor exchange know an order of ours: nothing is sent. (b) an order on the account
    that is not ours: a critical ``orphan_order`` event, the order untouched, the kill switch NOT set.
    (a) state and exchange know the order: resumed, nothing sent again, the report stream unchanged.
    (c) a stop that triggered while the executor was down: its real fills reported. Then a stop canceled
    while down (a position found without a stop): a new one rests within 5 s of ready."""
    btc_tick, eth_tick = bench.tick("BTC-EUR"), bench.tick("ETH-EUR")
    orphan = bench.place_as_executor({"market": "BTC-EUR", "side": "buy", "orderType": "limit", "amount": "0.001",
                                      "price": str(below(bench.best_bid("BTC-EUR"), 500, btc_tick))})

    first, _ = run(procs, tmp_path, executor_env(redis_url, bench), rclient)
    # (b) alerted, (d) nothing sent: the start made no order, no cancel, no amend
    wait_until(lambda: events(rclient, "orphan_order"), what="the orphan alerted")
    (alert,) = events(rclient, "orphan_order")
    assert alert.severity == "critical" and alert.details["order_id"] == orphan["orderId"]
    assert bench.requests(*MUTATING) == 0 and not reports(rclient)
    assert rclient.get(streams.KILL) is None

    kept = entry(rclient, "BTC-EUR", "0.002", below(bench.best_bid("BTC-EUR"), 100, btc_tick))
    stopped = entry(rclient, "ETH-EUR", "0.05", below(bench.best_bid("ETH-EUR"), 20, eth_tick))
    push(rclient, kept, stopped)
    for position in (kept, stopped):
        wait_until(lambda p=position: reports(rclient, p.id, "stop", "awaitingTrigger"), timeout_s=15,
                   what=f"the stop of {position.market} resting")
    first.kill()

    # while the executor is down, the market falls through the ETH stop: it triggers and fills
    bench.whale_sell_through("ETH-EUR", stopped.stop_price)
    (eth_stop,) = bench.stops("ETH-EUR")
    assert eth_stop["status"] == "filled"
    before = reports(rclient)
    mutating = bench.requests(*MUTATING)

    second, _ = run(procs, tmp_path, executor_env(redis_url, bench), rclient)
    # (c) closed while down: the real fills, fees and prices reported
    wait_until(lambda: reports(rclient, stopped.id, "stop", "filled"), timeout_s=10, what="the ETH stop's fills")
    (filled,) = reports(rclient, stopped.id, "stop", "filled")
    assert filled.client_order_id == eth_stop["clientOrderId"] and filled.reason == "stop_loss"
    assert filled.filled_amount == stopped.amount
    assert_report_matches_exchange(filled, bench)
    wait_until(lambda: second.metric("trader_executor_positions") == 1.0, what="one position left")
    # (a) resumed: nothing sent for either position, nothing reported twice
    assert bench.requests(*MUTATING) == mutating
    assert second.metric("trader_executor_unprotected_positions") == 0.0
    after = reports(rclient)
    assert after[:len(before)] == before and [r.client_order_id for r in after[len(before):]] == [filled.client_order_id]
    assert len({r.id for r in after}) == len(after)
    assert [o["clientOrderId"] for o in bench.stops("BTC-EUR")] == [stop_client_id(kept.id, 1)]
    assert len(bench.stops("ETH-EUR")) == 1  # the closed position got no new stop
    # (b) still untouched, still no kill switch
    (still,) = [o for o in bench.open_orders() if o["orderId"] == orphan["orderId"]]
    assert still["amount"] == orphan["amount"] and still["updated"] == orphan["updated"]
    assert rclient.get(streams.KILL) is None
    second.kill()

    # someone cancels the BTC stop while the executor is down: the restart finds coins without a stop
    bench.cancel_as_executor("BTC-EUR", stop_client_id(kept.id, 1))
    _, ready = run(procs, tmp_path, executor_env(redis_url, bench), rclient)
    took = stop_rests_within(bench, stop_client_id(kept.id, 2), ready)
    assert [o["status"] for o in bench.stops("BTC-EUR")] == ["canceled", "awaitingTrigger"]
    assert rclient.get(streams.KILL) is None
    print(f"replacement stop rested {took:.3f} s after ready")


# -- 3. a 105 ban ---------------------------------------------------------------------------------------


def test_a_105_ban_delays_an_entry_until_it_expires_nothing_lost_nothing_doubled(
        redis_url: str, rclient: redis.Redis, bench: Bench, procs: list[Proc], tmp_path: Path) -> None:
    """The executor's key is banned for 3 s (fault ``ban``), then an intent comes: its lookup and order
    wait out the ban (the 105 answer says when it ends) and go through once, after it; the ban is
    logged (``rest_rate_limited``) and counted (``trader_executor_ratelimit_bans_total``)."""
    executor, _ = run(procs, tmp_path, executor_env(redis_url, bench), rclient)
    assert bench.requests(*MUTATING) == 0 and not reports(rclient)  # (d) a clean start sends nothing
    tick = bench.tick("BTC-EUR")
    intent = entry(rclient, "BTC-EUR", "0.002", below(bench.best_bid("BTC-EUR"), 100, tick))
    applied = bench.faults({"ban": [{"api_key": bench.sb.api_key, "secs": 3}]})
    (until,) = applied["applied"]["ban"]
    started = time.monotonic()
    push(rclient, intent)
    wait_until(lambda: reports(rclient, intent.id, "stop", "awaitingTrigger"), timeout_s=15,
               what="the entry through and its stop resting after the ban")
    took = time.monotonic() - started
    (placed,) = bench.order(entry_client_id(intent.id))  # sent once
    assert placed["status"] == "filled" and placed["created"] >= until
    assert len(bench.stops()) == 1
    assert [r.status for r in reports(rclient, intent.id, "entry")] == ["filled"]
    bans = executor.logs("rest_rate_limited")  # logged with the ban's end, as the 105 answer gave it
    assert bans and all(b["banned_until"] == until for b in bans), bans
    wait_until(lambda: executor.metric_total("trader_executor_ratelimit_bans_total") >= 1, what="the ban counted")
    assert took < 20
    print(f"ban 3 s: entry filled and stop resting {took:.3f} s after the intent; {len(bans)} ban log lines")


# -- 4. the account socket down -------------------------------------------------------------------------


def test_with_the_account_socket_down_fills_are_found_by_rest_polling_and_the_executor_says_degraded(
        redis_url: str, rclient: redis.Redis, bench: Bench, procs: list[Proc], tmp_path: Path) -> None:
    """The account socket goes down and stays down (account_ws_up 0, heartbeat ``degraded``) while a
    resting limit entry fills and then its stop triggers: both fills are found by REST polling
    (EXECUTOR_POLL_SECS 0.2), reported with the exchange's own trades, the stop placed in between; the
    socket comes back (account_ws_up 1, ``running``)."""
    host, port = bench.sb.host, bench.sb.port
    with WsGate(host, port) as gate:
        env = executor_env(redis_url, bench, BITVAVO_WS_URL=gate.url(), EXECUTOR_POLL_SECS="0.2")
        executor, _ = run(procs, tmp_path, env, rclient)
        wait_until(lambda: executor.metric("trader_executor_account_ws_up") == 1.0, what="the account socket up")
        tick = bench.tick("BTC-EUR")
        bid = bench.best_bid("BTC-EUR")
        intent = entry(rclient, "BTC-EUR", "0.002", below(bid, 25, tick), order_type="limit", price=below(bid, 10, tick))
        push(rclient, intent)
        wait_until(lambda: reports(rclient, intent.id, "entry", "new"), timeout_s=15, what="the entry resting")

        gate.close(cut=False)  # reconnects are refused from now on
        assert bench.faults({"ws_drop": "all"})["applied"]["ws_drop"] == 1  # the sandbox drops the socket
        wait_until(lambda: executor.metric("trader_executor_account_ws_up") == 0.0, what="account_ws_up 0")
        wait_until(lambda: heartbeat(rclient).get("state") == "degraded", what="the executor degraded")
        accepted = gate.accepted

        bench.whale_sell_through("BTC-EUR", intent.price - tick)  # type: ignore[operator]  # the entry fills
        wait_until(lambda: reports(rclient, intent.id, "stop", "awaitingTrigger"), timeout_s=10,
                   what="the fill found by polling and the stop placed")
        bench.whale_sell_through("BTC-EUR", intent.stop_price)  # the stop triggers
        wait_until(lambda: reports(rclient, intent.id, "stop", "filled"), timeout_s=10,
                   what="the stop's fill found by polling")
        # all of it while the socket was down: no account event could have told the executor
        assert executor.metric("trader_executor_account_ws_up") == 0.0 and gate.accepted == accepted
        assert heartbeat(rclient).get("state") == "degraded"
        assert_report_matches_exchange(reports(rclient, intent.id, "entry", "filled")[-1], bench)
        assert_report_matches_exchange(reports(rclient, intent.id, "stop", "filled")[-1], bench)

        gate.reopen()
        wait_until(lambda: executor.metric("trader_executor_account_ws_up") == 1.0, timeout_s=20,
                   what="account_ws_up back to 1")
        wait_until(lambda: heartbeat(rclient).get("state") == "running", what="the executor running again")


# -- 5. paper and sandbox give the same positions --------------------------------------------------------

# Both runs fill against the same book: the sandbox executor on the sandbox itself, the paper executor
# against the sandbox's public depth (PaperBrokerAdapter fetches 50 levels right before each market
# order and walks them as the engine does; tests/executor/test_paper.py cross-checks the two engines).
# Both executors get each intent within a millisecond and both charge Bitvavo's 0.25 % taker fee, so the
# amounts are equal and a price can differ only by (1) the market moving between the two depth reads
# (volatility 0.1: about 0.1 bp a second) and (2) whichever order comes second seeing the book after the
# sandbox order took its levels (0.01 BTC is ~600 EUR; a quote level is ~400 EUR * (1 + 0.15 * depth), so
# at most 2-3 levels of 0.5 bp). That is 2 bp; the tolerance is 10 bp, five times it, for a loaded
# machine where the two processes may act a second or two apart.
PRICE_TOLERANCE = Decimal("0.0010")
TAKER_FEE = Decimal("0.0025")


def test_paper_and_sandbox_make_the_same_positions_from_the_same_intents(
        redis_url: str, rclient: redis.Redis, bench: Bench, procs: list[Proc], tmp_path: Path) -> None:
    paper_url = redis_url.rsplit("/", 1)[0] + "/1"  # the paper executor on its own database
    pclient = redis.Redis.from_url(paper_url)
    try:
        sandbox_exec = start_executor(tmp_path, executor_env(redis_url, bench), "sandbox")
        paper_exec = start_executor(tmp_path, executor_env(paper_url, bench, mode="paper"), "paper")
        procs += [sandbox_exec, paper_exec]
        wait_ready(rclient, sandbox_exec)
        wait_ready(pclient, paper_exec)
        tick = bench.tick("BTC-EUR")
        stop_price = below(bench.best_bid("BTC-EUR"), 300, tick)  # far: no stop triggers in either run
        real = entry(rclient, "BTC-EUR", "0.01", stop_price)
        paper = real.model_copy(update={"mode": "paper"})
        push(rclient, real)
        push(pclient, paper)
        for client, position in ((rclient, real), (pclient, paper)):
            wait_until(lambda c=client, p=position: reports(c, p.id, "stop", "awaitingTrigger"), timeout_s=15,
                       what=f"the {position.mode} entry filled and its stop resting")
        out_real = exit_intent_for(rclient, real)
        out_paper = out_real.model_copy(update={"mode": "paper"})
        push(rclient, out_real)
        push(pclient, out_paper)
        for client, position in ((rclient, real), (pclient, paper)):
            wait_until(lambda c=client, p=position: reports(c, p.id, "exit", "filled") and reports(
                c, p.id, "stop", "canceled"), timeout_s=15, what=f"the {position.mode} exit sold, its stop canceled")

        def legs(client: redis.Redis, position: EntryIntent) -> tuple[OrderExecuted, OrderExecuted, OrderExecuted]:
            (bought,) = reports(client, position.id, "entry", "filled")
            (stop,) = reports(client, position.id, "stop", "awaitingTrigger")
            (sold,) = reports(client, position.id, "exit", "filled")
            return bought, stop, sold

        (rb, rs, rx), (pb, ps, px) = legs(rclient, real), legs(pclient, paper)
        # the positions: the same amounts bought, protected and sold (nothing left in either)
        assert rb.filled_amount == pb.filled_amount == real.amount
        assert rs.amount == ps.amount == real.amount and rs.trigger_price == ps.trigger_price == stop_price
        assert rx.filled_amount == px.filled_amount == real.amount
        assert bench.balance("BTC") == 0
        # prices within the tolerance above; fees the same rate of the notional (rounded to the cent)
        for r, p in ((rb, pb), (rx, px)):
            assert r.avg_price is not None and p.avg_price is not None
            assert abs(r.avg_price - p.avg_price) <= PRICE_TOLERANCE * r.avg_price, (r.avg_price, p.avg_price)
            for leg in (r, p):
                assert abs(leg.fee - leg.filled_quote * TAKER_FEE) <= Decimal("0.005"), leg
        pnl_real = rx.filled_quote - rb.filled_quote - rb.fee - rx.fee
        pnl_paper = px.filled_quote - pb.filled_quote - pb.fee - px.fee
        bound = real.amount * PRICE_TOLERANCE * (rb.avg_price + rx.avg_price) * (1 + TAKER_FEE) + Decimal("0.02")  # type: ignore[operator]
        assert abs(pnl_real - pnl_paper) <= bound, (pnl_real, pnl_paper, bound)
        # and the sandbox's account agrees with its own reports to the cent
        assert bench.balance("EUR") == START_EUR + pnl_real
        print(f"entry {rb.avg_price} vs {pb.avg_price}, exit {rx.avg_price} vs {px.avg_price}, "
              f"pnl {pnl_real} vs {pnl_paper}")
    finally:
        pclient.close()


# -- 6. the coverage invariant during `tradestack up --mode sandbox` ------------------------------------

RUN_S = 30.0  # the sampled part of the run (the whole test, start and stop included, stays under ~60 s)
GRACE_MS = 5_000  # after a fill (or a stop canceled for an exit: cancel, then sell) a market may be uncovered


def coverage_violations(orders: list[dict[str, Any]], rules: dict[str, MarketRules], sampled_ms: int,
                        ) -> tuple[list[str], int]:
    """Each coin held above the market minimum is covered by resting stops (their amount left ≥ held −
    one quantity step), unless that market had a fill or an exit's stop cancel within GRACE_MS before
    ``sampled_ms`` (a lower bound of the snapshot's time). The account starts with EUR only and only the
    stack's executor trades on it, so what is held is bought minus sold. (violations, markets checked)."""
    held: dict[str, Decimal] = {}
    covered: dict[str, Decimal] = {}
    last_change: dict[str, int] = {}
    last_price: dict[str, Decimal] = {}
    for o in orders:
        m = o["market"]
        filled = Decimal(o["filledAmount"])
        held[m] = held.get(m, Decimal(0)) + (filled if o["side"] == "buy" else -filled)
        for f in o["fills"]:
            last_change[m] = max(last_change.get(m, 0), int(f["timestamp"]))
            last_price[m] = Decimal(f["price"])
        if o["orderType"] == "stopLoss" and o["side"] == "sell":
            if o["status"] in ("awaitingTrigger", "new", "partiallyFilled"):
                covered[m] = covered.get(m, Decimal(0)) + Decimal(o["amountRemaining"])
            elif o["status"] == "canceled":
                last_change[m] = max(last_change.get(m, 0), int(o["updated"]))
    bad: list[str] = []
    checked = 0
    for m, amount in held.items():
        r = rules[m]
        if amount < r.min_base or amount * last_price.get(m, Decimal(0)) < r.min_quote:
            continue  # nothing or dust: no order could be placed for it
        if sampled_ms - last_change.get(m, 0) <= GRACE_MS:
            continue
        checked += 1
        if covered.get(m, Decimal(0)) < amount - r.amount_step:
            bad.append(f"{m}: held {amount}, stops cover {covered.get(m, Decimal(0))}, last change "
                       f"{sampled_ms - last_change.get(m, 0)} ms before")
    return bad, checked


def test_the_coverage_check_sees_an_uncovered_coin_and_forgives_a_fresh_fill() -> None:
    """The check of test 6 is not vacuous: coins held with no stop are a violation 5 s after the fill."""
    rules = {"BTC-EUR": MarketRules.from_json({"market": "BTC-EUR", "tickSize": "1", "quantityDecimals": 8,
                                               "minOrderInBaseAsset": "0.0001", "minOrderInQuoteAsset": "5"})}
    fill = {"timestamp": 1_000_000, "price": "60000"}
    bought = {"market": "BTC-EUR", "side": "buy", "orderType": "market", "status": "filled",
              "filledAmount": "0.002", "fills": [fill], "updated": 1_000_000}
    stop = {"market": "BTC-EUR", "side": "sell", "orderType": "stopLoss", "status": "awaitingTrigger",
            "filledAmount": "0", "amountRemaining": "0.002", "fills": [], "updated": 1_000_001}
    assert coverage_violations([bought], rules, 1_004_000) == ([], 0)  # within 5 s of the fill
    bad, checked = coverage_violations([bought], rules, 1_006_000)
    assert checked == 1 and bad and bad[0].startswith("BTC-EUR: held 0.002")
    assert coverage_violations([bought, stop], rules, 1_006_000) == ([], 1)
    assert coverage_violations([bought, {**stop, "status": "canceled", "updated": 1_005_500}], rules,
                               1_006_000) == ([], 0)  # an exit's cancel-then-sell: forgiven for 5 s
    assert coverage_violations([{**bought, "filledAmount": "0.00005"}], rules, 1_006_000) == ([], 0)  # dust


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return orjson.loads(resp.read())


def test_every_coin_held_is_covered_by_a_resting_stop_during_a_sandbox_stack_run(tmp_path: Path) -> None:
    """`tradestack up --mode sandbox` (every process, its own sandbox, every metrics port free): the
    stack trades (our intents on orders:shadow, plus whatever its core decides); the sandbox account is
    sampled through the sandbox's own introspection (GET /admin/orders: one consistent snapshot of every
    order, fills included) every ~100 ms for RUN_S seconds, and checked at every sample."""
    with run_stack(tmp_path, "--mode", "sandbox", env={"METRICS_PORT": "0"}) as stack:
        client = stack.client
        wait_until(lambda: heartbeat(client).get("state") == "running" and heartbeat(client).get("role") == "active",
                   timeout_s=60, what="the stack's executor running")
        base = stack.sandbox_base
        rules = {m["market"]: MarketRules.from_json(m) for m in get_json(f"{base}/v2/markets")}

        def bid(market: str) -> Decimal:
            return Decimal(get_json(f"{base}/v2/{market}/book?depth=1")["bids"][0][0])

        def intent(market: str, amount: str, stop_bp: int) -> EntryIntent:
            return entry(client, market, amount, below(bid(market), stop_bp, rules[market].tick_size))

        plan = [  # (seconds into the run, what to push)
            (0.0, lambda: [intent("BTC-EUR", "0.002", 150), intent("ETH-EUR", "0.05", 15),
                           intent("SOL-EUR", "1", 150)]),
            (8.0, lambda: [exit_intent_for(client, opened["BTC-EUR"])]),
            (12.0, lambda: [intent("BTC-EUR", "0.003", 150)]),
            (20.0, lambda: [exit_intent_for(client, opened["SOL-EUR"])]),
        ]
        opened: dict[str, EntryIntent] = {}
        samples = checked = 0
        violations: list[str] = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < RUN_S:
            while plan and plan[0][0] <= elapsed:
                for i in plan.pop(0)[1]():
                    if isinstance(i, EntryIntent):
                        opened[i.market] = i
                    push(client, i)
            sampled_ms = int(time.time() * 1000)  # the sandbox runs on this machine's clock
            bad, n = coverage_violations(get_json(f"{base}/admin/orders"), rules, sampled_ms)
            samples += 1
            checked += n
            violations += [f"t={elapsed:.2f}s {v}" for v in bad]
            wait_until(lambda: time.monotonic() - started >= elapsed + 0.1, timeout_s=1, what="the next sample")
        done = reports(client)
        kill = client.get(streams.KILL)
    assert not violations, violations[:10]
    assert samples >= 100 and checked >= 50, (samples, checked)  # the invariant was tested, many times over
    assert {r.market for r in done if r.purpose == "entry" and r.status == "filled"} >= {"BTC-EUR", "ETH-EUR", "SOL-EUR"}
    assert {r.market for r in done if r.purpose == "exit" and r.status == "filled"} >= {"BTC-EUR", "SOL-EUR"}
    assert kill is None
    print(f"{samples} samples, {checked} market checks, {len(done)} reports")
