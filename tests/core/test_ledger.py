"""PositionLedger: cumulative order states → positions, PnL and fees; idempotent; one accounting."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core import report
from tradestack.errors import PoisonMessage
from tradestack.ledger import PositionLedger
from tradestack.messages import OrderExecuted

D = Decimal


def test_buy_then_sell_books_cost_realized_and_fees() -> None:
    led = PositionLedger()
    b = led.apply(report("e1", "BTC-EUR", "buy", "filled", "0.01", "600", fee="1.5"))
    assert b is not None and b.opened and b.became_final and b.fee_quote == D("1.5")
    pos = led.positions["BTC-EUR"]
    assert pos.size == D("0.01") and pos.cost == D("601.5") and pos.avg_cost == D("60150")
    assert pos.avg_price == D("60000") and pos.open_fees == D("1.5")
    assert led.exposure({"BTC-EUR": D("61000")}) == {"BTC-EUR": D("610.00")}
    assert led.exposure({}) == {"BTC-EUR": D("601.5")}  # cost without a mark
    s = led.apply(report("x1", "BTC-EUR", "sell", "filled", "0.01", "620", fee="1.55"))
    assert s is not None and s.closed
    # realized net of both fees: 620 - 1.55 - 601.5
    assert led.realized == D("16.95") and led.fees == D("3.05") and led.positions == {}
    gross = led.realized + led.fees - led.position("BTC-EUR").open_fees  # type: ignore[union-attr]
    assert gross == D(20)


def test_partial_fills_book_only_deltas_and_fee_settlement() -> None:
    led = PositionLedger()
    led.apply(report("e1", "ETH-EUR", "buy", "new", "0", "0", seq=0))
    assert "ETH-EUR" not in led.positions
    led.apply(report("e1", "ETH-EUR", "buy", "partiallyFilled", "0.5", "1250", fee="0", seq=1))
    led.apply(report("e1", "ETH-EUR", "buy", "partiallyFilled", "0.5", "1250", fee="3.12", seq=2))  # fee settles
    b = led.apply(report("e1", "ETH-EUR", "buy", "filled", "1", "2510", fee="6.26", seq=3))
    assert b is not None and b.delta_amount == D("0.5") and b.delta_quote == D(1260) and b.fee_quote == D("3.14")
    pos = led.positions["ETH-EUR"]
    assert pos.size == 1 and pos.cost == D("2516.26") and pos.fees == D("6.26")


def test_duplicates_and_stale_states_book_nothing() -> None:
    led = PositionLedger()
    newer = report("e1", "SOL-EUR", "buy", "filled", "2", "280", fee="0.7", seq=5)
    older = report("e1", "SOL-EUR", "buy", "partiallyFilled", "1", "140", fee="0.35", seq=1)
    assert led.apply(newer) is not None
    assert led.apply(newer) is None and led.duplicates == 1
    assert led.apply(older) is None and led.stale == 1
    # an unsettled older state with the same amount and an earlier ts does not undo the fee
    unsettled = report("e1", "SOL-EUR", "buy", "partiallyFilled", "2", "280", fee="0", seq=4)
    assert led.apply(unsettled) is None
    assert led.positions["SOL-EUR"].size == 2 and led.positions["SOL-EUR"].cost == D("280.7")


def test_a_final_state_with_nothing_more_filled_still_reports_final() -> None:
    led = PositionLedger()
    led.apply(report("e1", "BTC-EUR", "buy", "partiallyFilled", "0.001", "60", seq=1))
    b = led.apply(report("e1", "BTC-EUR", "buy", "canceled", "0.001", "60", seq=2))
    assert b is not None and b.became_final and b.delta_amount == 0
    rejected = led.apply(report("e2", "ETH-EUR", "buy", "rejected", "0", "0", seq=3))
    assert rejected is not None and rejected.became_final and led.size("ETH-EUR") == 0


def test_fee_in_base_currency_is_converted_and_reduces_coins() -> None:
    led = PositionLedger()
    led.apply(report("e1", "BTC-EUR", "buy", "filled", "0.01", "600", fee="0.00001", fee_currency="BTC"))
    pos = led.positions["BTC-EUR"]
    assert pos.size == D("0.00999") and pos.fees == D("0.6") and pos.cost == D("600.6")
    led.apply(report("x1", "BTC-EUR", "sell", "filled", "0.00999", "610", fee="0.00001", fee_currency="BTC"))
    fee_q = D("0.00001") * (D(610) / D("0.00999"))
    assert led.realized == D(610) - fee_q - D("600.6")


@pytest.mark.parametrize("bad,match", [
    (dict(fee="1", fee_currency="BNB"), "fee in 'BNB'"),
    (dict(fee="0", fee_currency="XYZ"), "unknown fee currency"),
    (dict(amount="-1", quote="10"), "negative"),
    (dict(amount="0", quote="10"), "filled for no amount"),
])
def test_bad_reports_are_poison_and_change_nothing(bad: dict[str, str], match: str) -> None:
    led = PositionLedger()
    led.apply(report("e0", "BTC-EUR", "buy", "filled", "0.01", "600"))
    before = json.dumps(led.snapshot())
    kwargs = dict(amount="0.01", quote="600") | bad
    with pytest.raises(PoisonMessage, match=match):
        led.apply(report("e1", "BTC-EUR", "buy", "filled", **kwargs))  # type: ignore[arg-type]
    assert json.dumps(led.snapshot()) == before


def test_sell_beyond_the_position_is_poison_never_clamped() -> None:
    led = PositionLedger()
    led.apply(report("e1", "BTC-EUR", "buy", "filled", "0.01", "600"))
    before = led.snapshot()
    with pytest.raises(PoisonMessage, match="exceeds the position"):
        led.apply(report("x1", "BTC-EUR", "sell", "filled", "0.02", "1200"))
    with pytest.raises(PoisonMessage, match="exceeds the position"):
        led.apply(report("x2", "ETH-EUR", "sell", "filled", "1", "2500"))
    assert led.snapshot() == before


def test_contradicting_states_are_poison() -> None:
    led = PositionLedger()
    led.apply(report("e1", "BTC-EUR", "buy", "partiallyFilled", "0.01", "600", seq=1))
    with pytest.raises(PoisonMessage, match="contradicts"):
        led.apply(report("e1", "BTC-EUR", "buy", "partiallyFilled", "0.01", "601", seq=2))
    with pytest.raises(PoisonMessage, match="was buy BTC-EUR"):
        led.apply(report("e1", "BTC-EUR", "sell", "filled", "0.01", "600", seq=3))
    with pytest.raises(PoisonMessage, match="more BTC filled for"):
        led.apply(report("e1", "BTC-EUR", "buy", "filled", "0.02", "600", seq=4))


def test_snapshot_restore_round_trip_through_json() -> None:
    led = PositionLedger()
    first = report("e1", "BTC-EUR", "buy", "filled", "0.01", "600", fee="1.5")
    led.apply(first)
    led.apply(report("x1", "BTC-EUR", "sell", "partiallyFilled", "0.004", "250", fee="0.6"))
    back = PositionLedger.restore(json.loads(json.dumps(led.snapshot())))
    assert back.snapshot() == led.snapshot()
    assert back.apply(first) is None  # still knows the report


# -- properties ---------------------------------------------------------------------------


def assert_same_books(a: PositionLedger, b: PositionLedger) -> None:
    """Sizes and fees exactly; one sell booked in one step or in partial steps takes its cost out
    pro rata to 1e-18 EUR, so cost and realized may differ by such quanta, never realized − cost."""
    ma, mb = money(a), money(b)
    assert ma.keys() == mb.keys()
    for m in ma:
        size_a, cost_a, of_a, real_a, fees_a = ma[m]
        size_b, cost_b, of_b, real_b, fees_b = mb[m]
        assert (size_a, fees_a, real_a - cost_a) == (size_b, fees_b, real_b - cost_b)  # = sells − buys, net
        assert abs(cost_a - cost_b) < D("1e-15") and abs(of_a - of_b) < D("1e-15")


def money(led: PositionLedger) -> dict[str, tuple[Decimal, ...]]:
    return {m: tuple(D(p[k]) for k in ("size", "cost", "open_fees", "realized", "fees"))
            for m, p in led.snapshot()["positions"].items()}

amounts = st.decimals(min_value=D("0.00000001"), max_value=D(5), places=8)
prices = st.decimals(min_value=D(1), max_value=D(100000), places=2)


@st.composite
def histories(draw: st.DrawFn) -> list[OrderExecuted]:
    """Random orders (buys and sells never beyond the position), each as cumulative partial states."""
    markets = ["BTC-EUR", "ETH-EUR"]
    held = {m: D(0) for m in markets}
    out: list[OrderExecuted] = []
    for n in range(draw(st.integers(1, 8))):
        market = draw(st.sampled_from(markets))
        side = "buy" if held[market] == 0 or draw(st.booleans()) else "sell"
        total = draw(amounts) if side == "buy" else min(held[market], draw(amounts))
        if total <= 0:
            continue
        held[market] += total if side == "buy" else -total
        parts = draw(st.integers(1, 3))
        cum_a, cum_q, cum_f = D(0), D(0), D(0)
        for k in range(parts):
            last = k == parts - 1
            step = total - cum_a if last else (total / parts).quantize(D("0.00000001"))
            if step <= 0:
                continue
            price = draw(prices)
            cum_a += step
            cum_q += (step * price).quantize(D("0.00000001"))
            if cum_q == 0:
                cum_q = D("0.00000001")
            cum_f += (step * price * D("0.0025")).quantize(D("0.01"))
            out.append(report(f"i{n}", market, side, "filled" if last else "partiallyFilled",
                              str(cum_a), str(cum_q), fee=str(cum_f), seq=len(out)))
    return out


@settings(max_examples=150, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_net_position_is_the_signed_sum_of_fills_and_duplicates_do_not_matter(
        history: list[OrderExecuted], rnd: random.Random) -> None:
    led = PositionLedger()
    for r in history:
        led.apply(r)
    expected: dict[str, Decimal] = {}
    finals: dict[str, OrderExecuted] = {}
    for r in history:
        finals[r.client_order_id] = r  # the last state of each order is its largest
    for r in finals.values():
        expected[r.market] = expected.get(r.market, D(0)) + (r.filled_amount if r.side == "buy" else -r.filled_amount)
    for market, size in expected.items():
        assert led.size(market) == size
    total_fees = sum((r.fee for r in finals.values()), D(0))
    assert led.fees == total_fees

    # Deliver every report 1-3 times, duplicates anywhere after the first copy: same books.
    again = PositionLedger()
    stream: list[OrderExecuted] = []
    for r in history:
        stream.append(r)
        for _ in range(rnd.randint(0, 2)):
            stream.insert(rnd.randint(len(stream) - 1, len(stream)), r)
    extra = [rnd.choice(history) for _ in range(rnd.randint(0, 5))]
    for r in stream + extra:
        again.apply(r)
    assert money(again) == money(led)

    # Restore mid-way and continue: same result as straight through.
    half = len(history) // 2
    first = PositionLedger()
    for r in history[:half]:
        first.apply(r)
    resumed = PositionLedger.restore(json.loads(json.dumps(first.snapshot())))
    for r in history:  # replays the first half too: all duplicates
        resumed.apply(r)
    assert money(resumed) == money(led)


@settings(max_examples=100, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_older_states_delivered_late_book_nothing(history: list[OrderExecuted], rnd: random.Random) -> None:
    """Each order's states shuffled among themselves (a retry handled after newer entries): the
    positions equal the in-order ones as long as an order's largest state is not preceded by a
    sell of the coins it bought (orders stay in sequence with each other)."""
    led = PositionLedger()
    for r in history:
        led.apply(r)
    by_order: dict[str, list[OrderExecuted]] = {}
    for r in history:
        by_order.setdefault(r.client_order_id, []).append(r)
    shuffled = PositionLedger()
    for states in by_order.values():
        states = list(states)
        rnd.shuffle(states)
        for r in states:
            shuffled.apply(r)
    assert_same_books(shuffled, led)
