"""State survives a restart; replay drives prices from recorded Parquet."""

from __future__ import annotations

import json
import os
from decimal import Decimal as D

import pyarrow as pa
import pyarrow.parquet as pq

from sandbox.engine import AccountSpec, Exchange, SandboxConfig

from .helpers import ALICE, BOB, T0, Clock, check_invariants, order, quiet_exchange, totals


def test_persistence_round_trip(tmp_path, clock):
    path = str(tmp_path / "state" / "sandbox.json")
    ex = quiet_exchange(clock, state_path=path)
    order(ex, BOB, "BTC-EUR", "sell", amount="0.5", price="50000")
    filled = order(ex, ALICE, "BTC-EUR", "buy", amount="0.2", price="50000")
    resting = order(ex, ALICE, "BTC-EUR", "buy", amount="0.1", price="40000",
                    clientOrderId="2be7d0df-d8dc-7b93-a550-8876f3b393e9")
    trig = order(ex, ALICE, "BTC-EUR", "sell", "stopLoss", amount="0.1", triggerAmount="30000",
                 triggerType="price", triggerReference="lastTrade")
    ex.save_state()
    assert os.path.exists(path) and not [f for f in os.listdir(tmp_path / "state") if f.startswith(".state-")]
    json.loads(open(path).read())

    clock.advance(60_000)
    again = quiet_exchange(clock, state_path=path)
    assert again.balance(ALICE, {}) == ex.balance(ALICE, {})
    assert again.get_order(ALICE, {"market": "BTC-EUR", "orderId": filled["orderId"]}) == \
        ex.get_order(ALICE, {"market": "BTC-EUR", "orderId": filled["orderId"]})
    assert again.get_order(ALICE, {"market": "BTC-EUR", "orderId": trig["orderId"]})["status"] == "awaitingTrigger"
    assert again.book("BTC-EUR", {})["bids"] == [["40000", "0.1"]]
    assert again.trades(ALICE, {"market": "BTC-EUR"}) == ex.trades(ALICE, {"market": "BTC-EUR"})
    assert totals(again) == totals(ex)
    # The restored order still works and new ids don't collide.
    c = again.cancel_order(ALICE, {"market": "BTC-EUR", "clientOrderId": resting["clientOrderId"], "operatorId": 1})
    assert c["orderId"] == resting["orderId"]
    new = order(again, ALICE, "BTC-EUR", "buy", amount="0.1", price="40000")
    assert new["orderId"] not in {o["orderId"] for o in ex.admin_orders()}
    check_invariants(again)


def _write(path, rows: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(rows), path)


def test_replay_drives_mid_from_top_of_book(tmp_path):
    day = tmp_path / "2026-01-02"
    t0 = 1_767_312_000_000
    ts = [t0 + i * 60_000 for i in range(11)]
    bids = [50000 + 100 * i for i in range(11)]
    _write(str(day / "orderbook" / "top" / "part-0.parquet"), {
        "market": ["BTC-EUR"] * 11, "ts": ts,
        "bid": [str(b) for b in bids], "ask": [str(b + 2) for b in bids],
        "bid_size": ["0.5"] * 11, "ask_size": ["0.4"] * 11,
    })
    # A market only recorded as candles.
    _write(str(day / "candles" / "1m" / "part-0.parquet"), {
        "market": ["ETH-EUR"] * 3, "open_ts": ts[:3], "open": ["3000"] * 3, "high": ["3010"] * 3,
        "low": ["2990"] * 3, "close": ["3000", "3100", "3200"], "volume": ["1"] * 3,
    })
    clock = Clock(T0)
    ex = Exchange(SandboxConfig(replay_dir=str(tmp_path), history_hours=0.1,
                                accounts={ALICE: AccountSpec("s", {"EUR": D("10000")})}), clock)
    assert sorted(ex.market_ids) == ["BTC-EUR", "ETH-EUR"]
    first = D(ex.ticker_book({"market": "BTC-EUR"})["bid"])
    assert abs(first - 50001) < 20
    for _ in range(600):  # ten recorded minutes
        clock.advance(1000)
        ex.step()
    bid = D(ex.ticker_book({"market": "BTC-EUR"})["bid"])
    assert abs(bid - 51001) < 20, bid
    eth = D(ex.ticker_book({"market": "ETH-EUR"})["bid"])
    assert abs(eth - 3200) < 5, eth
    check_invariants(ex)
