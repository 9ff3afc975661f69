"""The simulated market: a realistic lively book, trades, candles, tickers, book deltas, determinism."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from sandbox.engine import BookEvent, CandleEvent, TickerEvent, TradeEvent

from .helpers import ALICE, BOB, T0, Clock, check_invariants, live_exchange, order, quiet_exchange, totals


def run(ex, clock, seconds, step_ms=100, flush=True):
    """Step the exchange; (non-book events, book events in order)."""
    events, books = [], []
    for _ in range(int(seconds * 1000 / step_ms)):
        clock.advance(step_ms)
        ex.step()
        for ev in ex.drain_events():
            (books if isinstance(ev, BookEvent) else events).append(ev)
        if flush:
            books.extend(ex.flush_book_events())
    return events, books


def test_book_is_realistic():
    ex = live_exchange(Clock())
    for market in ex.market_ids:
        book = ex.book(market, {})
        assert len(book["bids"]) >= 20 and len(book["asks"]) >= 20
        spec = ex.mstates[market].spec
        spread_ticks = (D(book["asks"][0][0]) - D(book["bids"][0][0])) / spec.tick
        assert 1 <= spread_ticks <= 10
        prices = [D(p) for p, _ in book["bids"]]
        assert prices == sorted(prices, reverse=True)
        assert len({s for _, s in book["bids"]}) > 5  # sizes vary
    assert len(ex.book("BTC-EUR", {"depth": "3"})["asks"]) == 3


def test_markets_lively_and_moving():
    clock = Clock()
    ex = live_exchange(clock, history_hours=0)
    start = {m: D(ex.ticker_book({"market": m})["bid"]) for m in ex.market_ids}
    events, _ = run(ex, clock, 600, step_ms=250, flush=False)
    trades = [e for e in events if isinstance(e, TradeEvent)]
    for market in ex.market_ids:
        n = sum(1 for t in trades if t.market == market)
        assert n >= 30, (market, n)  # several trades per minute
    moved = [abs(D(ex.ticker_book({"market": m})["bid"]) / start[m] - 1) for m in ex.market_ids]
    assert max(moved) > D("0.0005")
    assert any(isinstance(e, CandleEvent) for e in events)
    tick = [e for e in events if isinstance(e, TickerEvent)][0].to_ws()
    assert tick["event"] == "ticker" and set(tick) - {"event", "market"} <= {
        "bestBid", "bestBidSize", "bestAsk", "bestAskSize", "lastPrice"}
    check_invariants(ex)


def test_history_backfill():
    clock = Clock()
    ex = live_exchange(clock, history_hours=3)
    c = ex.candles("BTC-EUR", {"interval": "1m"})
    assert len(c) > 120 and c[0][0] > c[1][0]
    assert all(len(row) == 6 and isinstance(row[0], int) and row[0] % 60_000 == 0 for row in c)
    assert c[-1][0] >= T0 - 3 * 3_600_000 - 60_000
    h = ex.candles("BTC-EUR", {"interval": "1h", "limit": "2"})
    assert len(h) == 2 and h[0][0] % 3_600_000 == 0
    assert ex.candles("BTC-EUR", {"interval": "1W"})[0][0] % 86_400_000 == 0
    start = T0 - 3_600_000
    ranged = ex.candles("BTC-EUR", {"interval": "1m", "start": str(start), "end": str(start + 600_000)})
    assert ranged and all(start <= r[0] <= start + 600_000 for r in ranged)
    trades = ex.public_trades("BTC-EUR", {"limit": "50"})
    assert len(trades) == 50 and trades[0]["timestamp"] >= trades[-1]["timestamp"]
    assert set(trades[0]) == {"id", "timestamp", "amount", "price", "side"}
    t = ex.ticker_24h({"market": "BTC-EUR"})
    assert set(t) == {"market", "startTimestamp", "timestamp", "open", "openTimestamp", "high", "low", "last",
                      "closeTimestamp", "bid", "bidSize", "ask", "askSize", "volume", "volumeQuote"}
    assert D(t["low"]) <= D(t["last"]) <= D(t["high"]) and D(t["volume"]) > 0
    assert isinstance(ex.ticker_24h({}), list) and isinstance(ex.ticker_price({"market": "BTC-EUR"}), dict)
    assert ex.ticker24h_rows(["BTC-EUR"])[0]["market"] == "BTC-EUR"


def test_public_trade_id_filters(ex, clock):
    order(ex, BOB, "BTC-EUR", "sell", amount="1", price="50000")
    for _ in range(5):
        clock.advance(1000)
        order(ex, ALICE, "BTC-EUR", "buy", "market", amount="0.01")
    ids = [t["id"] for t in ex.public_trades("BTC-EUR", {})]
    assert len(ids) == 5
    sub = ex.public_trades("BTC-EUR", {"tradeIdFrom": ids[3], "tradeIdTo": ids[1]})
    assert [t["id"] for t in sub] == ids[1:4]
    assert len(ex.public_trades("BTC-EUR", {"start": str(T0 + 4000)})) == 2


def test_candles_skip_periods_without_trades(ex, clock):
    order(ex, BOB, "BTC-EUR", "sell", amount="1", price="50000")
    order(ex, ALICE, "BTC-EUR", "buy", "market", amount="0.01")
    clock.advance(3 * 60_000)
    order(ex, ALICE, "BTC-EUR", "buy", "market", amount="0.02")
    rows = ex.candles("BTC-EUR", {"interval": "1m"})
    assert len(rows) == 2 and rows[0][5] == "0.02" and rows[1][5] == "0.01"
    assert ex.candles("BTC-EUR", {"interval": "1d"})[0][5] == "0.03"


@pytest.mark.parametrize("per_change", [True, False], ids=["event-per-change", "batched"])
def test_book_deltas_rebuild_snapshot(per_change: bool):
    clock = Clock()
    ex = live_exchange(clock, book_event_per_change=per_change)
    ex.flush_book_events()
    snap = ex.book("BTC-EUR", {})
    local = {"bids": {p: s for p, s in snap["bids"]}, "asks": {p: s for p, s in snap["asks"]}}
    nonce = snap["nonce"]
    _, books = run(ex, clock, 30)
    for ev in (b for b in books if b.market == "BTC-EUR"):
        ws = ev.to_ws()  # what a subscriber receives
        assert ws["event"] == "book" and ws["timestamp"] % 1_000_000 == 0
        assert ws["nonce"] == nonce + 1
        nonce = ws["nonce"]
        for side in ("bids", "asks"):
            for p, s in ws[side]:
                if s == "0":
                    local[side].pop(p, None)
                else:
                    local[side][p] = s
    final = ex.book("BTC-EUR", {})
    assert final["nonce"] == nonce
    assert sorted(local["bids"].items(), key=lambda x: -D(x[0])) == [tuple(x) for x in final["bids"]]
    assert sorted(local["asks"].items(), key=lambda x: D(x[0])) == [tuple(x) for x in final["asks"]]


def test_skip_book_nonce():
    clock = Clock()
    ex = live_exchange(clock)
    ex.flush_book_events()
    n = ex.book("ETH-EUR", {})["nonce"]
    ex.skip_book_nonce("ETH-EUR")
    nonces = []
    while len(nonces) < 2:
        clock.advance(100)
        ex.step()
        events = ex.drain_events() + ex.flush_book_events()
        nonces += [b.nonce for b in events if isinstance(b, BookEvent) and b.market == "ETH-EUR"]
    assert nonces[:2] == [n + 2, n + 3]


def _fingerprint(seed: int) -> tuple:
    clock = Clock()
    ex = live_exchange(clock, seed=seed, history_hours=0.2)
    run(ex, clock, 20)
    return (tuple((t["id"], t["price"], t["amount"]) for t in ex.public_trades("BTC-EUR", {"limit": "200"})),
            ex.book("BTC-EUR", {"depth": "30"})["bids"])


def test_same_seed_same_market_different_seed_differs():
    assert _fingerprint(7) == _fingerprint(7)
    assert _fingerprint(7) != _fingerprint(8)


def test_conservation_with_users_in_a_live_market():
    clock = Clock()
    ex = live_exchange(clock)
    before = totals(ex)
    mid = D(ex.ticker_book({"market": "BTC-EUR"})["bid"])
    tick = ex.mstates["BTC-EUR"].spec.tick
    order(ex, ALICE, "BTC-EUR", "buy", amount="0.01", price=str((mid * D("0.999") / tick).to_integral_value() * tick))
    order(ex, ALICE, "BTC-EUR", "sell", amount="0.01", price=str((mid * D("1.001") / tick).to_integral_value() * tick))
    order(ex, ALICE, "BTC-EUR", "buy", "market", amountQuote="250")
    order(ex, ALICE, "ETH-EUR", "sell", "stopLoss", amount="0.1", triggerAmount="1", triggerType="price",
          triggerReference="lastTrade")
    run(ex, clock, 120, step_ms=200)
    assert totals(ex) == before
    check_invariants(ex)


def test_book_events_per_change_and_per_request():
    """Per-change mode: each simulated quote/cancel/aggressive order is its own event, and a user's
    request that touches several levels is one event; nonces are consecutive either way."""
    clock = Clock()
    ex = live_exchange(clock, markets=["BTC-EUR"])
    ex.drain_events()
    n0 = ex.book("BTC-EUR", {})["nonce"]
    _, books = run(ex, clock, 5, flush=False)
    assert len(books) > 5 * 10  # several changes a step: several events, not one per step
    assert [b.nonce for b in books] == list(range(n0 + 1, n0 + 1 + len(books)))
    before = ex.book("BTC-EUR", {})["nonce"]
    order(ex, ALICE, "BTC-EUR", "buy", "market", amountQuote="20000")  # sweeps several ask levels
    sweep = [e for e in ex.drain_events() if isinstance(e, BookEvent)]
    assert len(sweep) == 1 and sweep[0].nonce == before + 1 and len(sweep[0].asks) >= 2


def test_all_markets_catalogue():
    from sandbox.engine.markets import build_catalogue

    specs = build_catalogue(["all"])
    assert len(specs) >= 400
    assert all(s.market.endswith("-EUR") for s in specs.values())
    assert specs["BTC-EUR"].tick_str == "1.00" and specs["BTC-EUR"].quantity_decimals == 8


def test_markets_and_assets_shapes():
    ex = quiet_exchange(Clock())
    m = ex.markets({"market": "BTC-EUR"})
    assert m["tickSize"] == "1.00" and m["quantityDecimals"] == 8 and m["pricePrecision"] is None
    assert m["minOrderInQuoteAsset"] == "5.00" and m["maxOpenOrders"] == 100
    assert len(ex.markets({})) == 2
    assert {a["symbol"] for a in ex.assets({})} == {"BTC", "ETH", "EUR"}
    assert ex.time() == {"time": T0, "timeNs": T0 * 1_000_000}
    assert ex.account(ALICE) == {"fees": {"taker": "0.0025", "maker": "0.0015", "volume": "0.00"}}
    assert ex.fees(ALICE, {"market": "BTC-EUR"})["taker"] == "0.0025"
