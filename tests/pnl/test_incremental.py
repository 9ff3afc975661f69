"""PnlBook's incremental path (running sums, cached texts, the snapshot built without validating
its figures) against the plain one: every total summed afresh over the ledger, each position's
JSON from ``json.dumps(PositionView.to_json())``, the snapshot a fully validated message. The
hashes and snapshots written after any sequence of inputs must be the same text and bytes.

``plain_*`` below is the straightforward computation (what accounting.py did before the sums were
kept incrementally); the Hypothesis state machine in test_accounting.py checks it after every step
too (``matches_the_plain_path``)."""

from __future__ import annotations

import decimal
import json
import random
from decimal import Decimal
from typing import Any

from services.trader_pnl_orchestrator.app.accounting import PnlBook, PnlTotals, PositionView, utc_day
from tests.core import T0, report
from tradestack.clock import FakeClock
from tradestack.markets import base_quote
from tradestack.messages import Message, MessageFactory, OrderExecuted, PnlSnapshotTaken, encode

D = Decimal
CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
PCT = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)
FACTORY = MessageFactory("trader_pnl_orchestrator", FakeClock(T0))


def _sum(values: Any) -> Decimal:
    total = D(0)
    for value in values:
        total = CTX.add(total, value)
    return total


def _s(value: Decimal) -> str:
    return format(value.normalize(CTX), "f")


def plain_totals(book: PnlBook) -> PnlTotals:
    positions, marks = book.ledger.positions, book.marks
    with decimal.localcontext(CTX):
        values = {m: p.size * marks[m] if m in marks else p.cost for m, p in positions.items()}
        unrealized = [p.unrealized(marks[m]) for m, p in positions.items() if m in marks]
        realized, fees = book.ledger.realized, book.ledger.fees
    exposure = _sum(values.values())
    cash = book.cash
    equity = CTX.add(cash, exposure)
    peak = book.peak_equity
    drawdown = D(0) if equity >= peak else PCT.divide(CTX.multiply(CTX.subtract(peak, equity), D(100)), peak)
    return PnlTotals(equity=equity, cash=cash, realized=realized, unrealized=_sum(unrealized), fees=fees,
                     exposure=exposure, daily_pnl=CTX.subtract(equity, book.day_start_equity), day=book.day,
                     day_start_equity=book.day_start_equity, peak_equity=peak, drawdown_pct=drawdown,
                     starting_equity=book.starting_equity, open_positions=len(values),
                     reports_booked=book.reports_booked, updated_ts=book.updated_ts)


def plain_totals_json(book: PnlBook) -> dict[str, str]:
    t = plain_totals(book)
    return {name: _s(value) if isinstance(value, Decimal) else str(value)
            for name, value in ((n, getattr(t, n)) for n in PnlTotals.__dataclass_fields__)}


def plain_positions_json(book: PnlBook) -> dict[str, str]:
    out = {}
    for market, pos in sorted(book.ledger.positions.items()):
        mark, mark_ts = book.mark(market), book.mark_ts(market)
        with decimal.localcontext(CTX):
            assert pos.avg_cost is not None and pos.avg_price is not None
            view = PositionView(market=market, asset=base_quote(market)[0], size=pos.size, avg_cost=pos.avg_cost,
                                avg_price=pos.avg_price, cost=pos.cost, open_fees=pos.open_fees, realized=pos.realized,
                                fees=pos.fees, mark=mark, mark_ts=mark_ts,
                                value=pos.size * mark if mark is not None else pos.cost,
                                unrealized=pos.unrealized(mark) if mark is not None else None,
                                opened_ts=pos.opened_ts, updated_ts=pos.updated_ts)
        out[market] = json.dumps(view.to_json(), separators=(",", ":"))
    return out


def plain_snapshot(book: PnlBook, parent: Message | None, key: str = "s") -> PnlSnapshotTaken:
    t = plain_totals(book)
    n = lambda v: v.normalize(CTX)  # noqa: E731
    positions, values = book.ledger.positions, {m: v for m, v in sorted(book.exposure_by_asset().items())}
    data: dict[str, Any] = dict(
        equity=n(t.equity), realized=n(t.realized), unrealized=n(t.unrealized), fees=n(t.fees),
        exposure=n(t.exposure), positions={m: n(p.size) for m, p in sorted(positions.items())},
        cash=n(t.cash), starting_equity=n(t.starting_equity), day=t.day, day_start_equity=n(t.day_start_equity),
        daily_pnl=n(t.daily_pnl), peak_equity=n(t.peak_equity), drawdown_pct=n(t.drawdown_pct),
        exposure_by_asset={a: n(plain_value(book, m)) for m in sorted(positions) for a in [base_quote(m)[0]]},
        reports_booked=t.reports_booked, mode="paper")
    assert set(data["exposure_by_asset"]) == set(values)
    if parent is not None:
        return FACTORY.child(parent, PnlSnapshotTaken, **data)
    return FACTORY.root(PnlSnapshotTaken, key, **data)


def plain_value(book: PnlBook, market: str) -> Decimal:
    pos, mark = book.ledger.positions[market], book.mark(market)
    with decimal.localcontext(CTX):
        return pos.size * mark if mark is not None else pos.cost


def assert_plain(book: PnlBook, parent: Message | None = None) -> None:
    """Every output of ``book`` is what the plain computation makes, to the byte."""
    assert book.totals() == plain_totals(book)
    assert book.totals_json() == plain_totals_json(book)
    assert list(book.totals_json()) == list(plain_totals_json(book))  # field order too
    positions = plain_positions_json(book)
    assert book.positions_json() == positions and list(book.positions_json()) == list(positions)
    for market in {*positions, *book.marks}:
        assert book.position_json(market) == positions.get(market)
    assert book.exposure == sum(book.exposure_by_asset().values(), D(0))
    for snap_parent in ([parent] if parent is not None else []) + [None]:
        fast, plain = book.snapshot(FACTORY, snap_parent, "paper", key="s"), plain_snapshot(book, snap_parent)
        assert fast == plain and fast.model_fields_set == plain.model_fields_set
        assert encode(fast) == encode(plain)


def test_the_bench_sequence_matches_the_plain_path() -> None:
    """bench.pnl's shape: 50 markets with partial buys, marks between them, then sells and fee
    settlements closing some, over a UTC midnight; checked after every input."""
    rng = random.Random(13)
    markets = [f"M{i:03d}-EUR" for i in range(50)]
    book = PnlBook(D("1000000000"))
    filled: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
    ts = T0
    last: OrderExecuted | None = None
    for step in range(1500):
        ts += rng.randint(1, 20_000)
        market = rng.choice(markets)
        kind = rng.random()
        if kind < 0.5 or market not in filled:
            amount, quote, fee = filled.get(market, (D(0), D(0), D(0)))
            more = D(rng.randint(1, 10_000)) / 10_000
            price = D(rng.randint(9_000, 11_000)) / 100
            amount, quote = amount + more, quote + more * price
            fee = (quote * D("0.0025")).quantize(D("0.00000001"))
            filled[market] = (amount, quote, fee)
            last = report(f"buy-{market}", market, "buy", "partiallyFilled", str(amount), str(quote), fee=str(fee),
                          ts=ts, client_order_id=f"buy-{market}-{step // 400}", msg_id=f"r{step}")
            if step // 400 != (step - 1) // 400:  # a new order per market every 400 steps
                filled.pop(market)
                continue
            assert book.on_report(last) is not None
        elif kind < 0.8:
            assert book.on_mark(market, D(rng.randint(9_000, 11_000)) / 100 + D(step % 7) / 10**8, ts)
        else:
            size = book.ledger.size(market)
            if size <= 0:
                continue
            part = size if rng.random() < 0.3 else (size / 3).quantize(D("0.00000001"), rounding=decimal.ROUND_DOWN)
            last = report(f"sell-{market}-{step}", market, "sell", "filled", str(part), str(part * 101), fee="0.05",
                          ts=ts, msg_id=f"r{step}")
            assert book.on_report(last) is not None
        assert_plain(book, last)
    assert book.day != utc_day(T0)  # crossed a midnight


def test_a_sum_that_would_round_is_summed_afresh() -> None:
    """A value of 1e20 beside one of 1e-40 needs 61 digits: the running sum would round, so the
    book sums afresh, giving exactly the plain sum (rounded the same way)."""
    book = PnlBook(D("1000"))
    book.on_report(report("a", "BTC-EUR", "buy", "filled", "100000000000", "1", ts=T0))
    book.on_report(report("b", "ETH-EUR", "buy", "filled", "0.00000001", "1", ts=T0 + 1))
    book.on_mark("BTC-EUR", D("1000000000"), T0 + 2)  # 1e11 × 1e9 = 1e20
    book.on_mark("ETH-EUR", D("1E-32"), T0 + 3)  # 1e-8 × 1e-32 = 1e-40
    exact = decimal.Context(prec=100).add(D("1E20"), D("1E-40"))
    assert book.exposure == _sum([D("1E20"), D("1E-40")]) != exact
    assert_plain(book)
    book.on_mark("ETH-EUR", D("2E-32"), T0 + 4)
    assert_plain(book)
    book.on_report(report("c", "ETH-EUR", "sell", "filled", "0.00000001", "1", ts=T0 + 5))  # closed
    assert book.exposure == D("1E20")
    assert_plain(book)


def test_texts_follow_bookings_marks_and_closes() -> None:
    """The cached parts of a position's JSON are made again when its market is booked, marked,
    closed and opened again; another market's stay as they were."""
    book = PnlBook(D("1000"))
    book.on_report(report("a", "BTC-EUR", "buy", "partiallyFilled", "0.001", "60", fee="0.15", ts=T0))
    book.on_report(report("e", "ETH-EUR", "buy", "filled", "0.1", "200", fee="0.5", ts=T0 + 1))
    assert_plain(book)
    eth = book.position_json("ETH-EUR")
    book.on_mark("BTC-EUR", D("61000"), T0 + 2)
    assert_plain(book)
    book.on_report(report("a", "BTC-EUR", "buy", "filled", "0.002", "121", fee="0.3", ts=T0 + 3, seq=1))
    assert_plain(book)
    assert book.position_json("ETH-EUR") == eth
    book.on_report(report("s", "BTC-EUR", "sell", "filled", "0.002", "124", fee="0.31", ts=T0 + 4))
    assert book.position_json("BTC-EUR") is None and "BTC-EUR" not in book.positions_json()
    assert_plain(book)
    book.on_report(report("a2", "BTC-EUR", "buy", "filled", "0.003", "180", fee="0.45", ts=T0 + 5))
    assert_plain(book)
    book.on_mark("BTC-EUR", D("59000"), T0 + 6)
    assert_plain(book)
