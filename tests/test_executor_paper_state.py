"""The paper account in Redis (``executor:paper``): a hash written in the same commit as the reports
its changes made, one field per order, so a commit writes only what changed; a whole-JSON string
left by an older executor is read at start and rewritten as a hash at the first change."""

from __future__ import annotations

from decimal import Decimal

import orjson
import redis

from services.trader_executor.app.paper import PaperBroker
from tests.conftest import spawn, wait_until
from tests.executor.test_manager import entry
from tests.test_executor_process import EXECUTOR, by_purpose, executor_env, now_ms, top
from tests.test_trading_core_process import seed_rules, stop
from tradestack import streams
from tradestack.markets import MarketCatalog
from tradestack.messages import encode


def test_an_old_whole_json_paper_account_is_restored_and_rewritten_as_a_hash(rclient: redis.Redis,
                                                                              redis_url: str) -> None:
    seed_rules(rclient)
    old = PaperBroker(MarketCatalog({}), balances={"EUR": Decimal("777")})
    rclient.set("executor:paper", orjson.dumps(old.snapshot(books=False)))
    proc = spawn(EXECUTOR, executor_env(redis_url))
    try:
        wait_until(lambda: any(g["name"] == b"trader_executor" for g in rclient.xinfo_groups(streams.BOOK))
                   if rclient.exists(streams.BOOK) else False, timeout_s=20, what="the executor reading the book")
        rclient.xadd(streams.BOOK, encode(top(rclient, "BTC-EUR", "60000", "60010", size="5")))
        intent = entry(0, amount="0.001", stop="58000", order_type="limit", price="60010")
        intent = intent.model_copy(update={"ts": now_ms(rclient)})
        rclient.xadd(streams.ORDERS_SHADOW, encode(intent))
        wait_until(lambda: by_purpose(rclient, "stop", "awaitingTrigger"), timeout_s=20, what="the stop resting")
        assert rclient.type("executor:paper") == b"hash"
        fields = rclient.hgetall("executor:paper")
        eur_available, eur_held = (Decimal(x) for x in orjson.loads(fields[b"b:EUR"]))
        assert eur_available + eur_held < Decimal("777")  # the old account's EUR, spent on the entry
        assert b"b:BTC" in fields and b"balances" not in orjson.loads(fields[b"meta"])
        orders = [orjson.loads(v) for k, v in fields.items() if k.startswith(b"o:")]
        assert sorted(o["order_type"] for o in orders) == ["limit", "stopLoss"]
    finally:
        stop(proc)
