"""Property tests: random order flows never break the exchange's invariants."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.engine import ExchangeError

from .helpers import ALICE, BOB, Clock, accounts, check_invariants, live_exchange, quiet_exchange, totals

CAROL = "carol-key"
KEYS = [ALICE, BOB, CAROL]
TERMINAL_PREFIXES = ("canceled", "filled")

op = st.one_of(
    st.tuples(st.just("limit"), st.sampled_from(KEYS), st.sampled_from(["buy", "sell"]),
              st.integers(-5, 5), st.integers(1, 40), st.sampled_from(["GTC", "GTC", "IOC", "FOK"]),
              st.booleans(), st.sampled_from(["decrementAndCancel", "cancelOldest", "cancelNewest", "cancelBoth"])),
    st.tuples(st.just("market"), st.sampled_from(KEYS), st.sampled_from(["buy", "sell"]), st.integers(1, 40),
              st.booleans()),
    st.tuples(st.just("stop"), st.sampled_from(KEYS), st.sampled_from(["buy", "sell"]), st.integers(-5, 5),
              st.sampled_from(["stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"]),
              st.sampled_from(["lastTrade", "bestBid", "bestAsk", "midPrice"])),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),
    st.tuples(st.just("update"), st.integers(0, 1000), st.integers(-5, 5), st.integers(1, 40)),
    st.tuples(st.just("step"), st.integers(1, 3000)),
)


def apply(ex, clock, action) -> None:
    kind = action[0]
    body = {"market": "BTC-EUR", "operatorId": 1}
    try:
        if kind == "limit":
            _, key, side, dp, amt, tif, post, stp = action
            body.update(side=side, orderType="limit", amount=str(D(amt) / 1000), price=str(50000 + dp),
                        timeInForce=tif, selfTradePrevention=stp)
            if post:
                body["postOnly"] = True
            ex.create_order(key, body)
        elif kind == "market":
            _, key, side, amt, by_quote = action
            body.update(side=side, orderType="market")
            if by_quote:
                body["amountQuote"] = str(amt * 10)
            else:
                body["amount"] = str(D(amt) / 1000)
            ex.create_order(key, body)
        elif kind == "stop":
            _, key, side, dp, order_type, ref = action
            body.update(side=side, orderType=order_type, amount="0.01", triggerAmount=str(50000 + dp),
                        triggerType="price", triggerReference=ref)
            if order_type.endswith("Limit"):
                body["price"] = str(50000 + dp)
            ex.create_order(key, body)
        elif kind in ("cancel", "update"):
            opened = [o for o in ex.order_index.values() if o.is_open]
            if not opened:
                return
            o = opened[action[1] % len(opened)]
            if kind == "cancel":
                ex.cancel_order(o.api_key, {"market": o.market, "orderId": o.order_id, "operatorId": 1})
            else:
                upd = {"market": o.market, "orderId": o.order_id, "operatorId": 1, "amount": str(D(action[3]) / 1000)}
                if o.price is not None:
                    upd["price"] = str(50000 + action[2])
                ex.update_order(o.api_key, upd)
        else:
            clock.advance(action[1])
            ex.step()
    except ExchangeError as e:
        # Business rejections are fine; anything else is a bug.
        assert e.error_code in (203, 205, 212, 216, 217, 220, 230, 232, 233, 235, 240), (e.error_code, e.error)


def run_sequence(ex, clock, actions) -> None:
    before = totals(ex)
    seen: dict[str, str] = {}
    for action in actions:
        apply(ex, clock, action)
        ex.drain_events()
        ex.flush_book_events()
        check_invariants(ex)
        for o in ex.order_index.values():
            prev = seen.get(o.order_id)
            if prev is not None and prev.startswith(TERMINAL_PREFIXES):
                assert o.status == prev, (o.order_id, prev, o.status)
            seen[o.order_id] = o.status
        assert totals(ex) == before


POOR = {"EUR": "3000", "BTC": "0.08"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=40))
def test_quiet_book_invariants(actions):
    clock = Clock()
    ex = quiet_exchange(clock, accounts=accounts(**{ALICE: POOR, BOB: POOR, CAROL: POOR}))
    run_sequence(ex, clock, actions)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=25), st.integers(1, 5))
def test_live_market_invariants(actions, seed):
    clock = Clock()
    ex = live_exchange(clock, markets=["BTC-EUR"], history_hours=0, seed=seed,
                       accounts=accounts(**{ALICE: POOR, BOB: POOR, CAROL: POOR}))
    # Centre test prices on this market's current mid so orders interact with the liquidity.
    mid = int(D(ex.ticker_book({"market": "BTC-EUR"})["bid"]))
    shifted = []
    for a in actions:
        if a[0] in ("limit", "stop"):
            a = (a[0], a[1], a[2], a[3] + mid - 50000, *a[4:])
        shifted.append(a)
    run_sequence(ex, clock, shifted)
