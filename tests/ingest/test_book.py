"""The local order book and the resync recipe, against a naive dict model (hypothesis)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tradestack.bitvavo.book import BookSync, OrderBook, Status, mid_and_spread_bps

PRICES = st.integers(1, 60).map(lambda i: f"{i}.{'0' * (i % 3)}" if i % 3 else str(i))
SIZES = st.sampled_from(["0", "0", "0.5", "1", "2.50", "0.00000001", "3"])
LEVELS = st.lists(st.tuples(PRICES, SIZES).map(list), max_size=6)


def naive_apply(model: dict[Decimal, Decimal], levels: list[list[str]]) -> None:
    for p, s in levels:
        if Decimal(s) == 0:
            model.pop(Decimal(p), None)
        else:
            model[Decimal(p)] = Decimal(s)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(LEVELS, LEVELS), max_size=40))
def test_book_matches_naive_model(events: list[tuple[list[list[str]], list[list[str]]]]) -> None:
    book = OrderBook("BTC-EUR")
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    for nonce, (b, a) in enumerate(events, 1):
        book.apply(nonce, b, a)
        naive_apply(bids, b)
        naive_apply(asks, a)
        assert dict(book.bids) == bids and dict(book.asks) == asks
        got_bids, got_asks = book.depth()
        assert got_bids == sorted(bids.items(), reverse=True)
        assert got_asks == sorted(asks.items())
        best_bid = max(bids.items()) if bids else None
        best_ask = min(asks.items()) if asks else None
        assert book.best_bid() == best_bid and book.best_ask() == best_ask
        assert book.top() == ((*best_bid, *best_ask) if best_bid and best_ask else None)
    assert book.depth(2) == (sorted(bids.items(), reverse=True)[:2], sorted(asks.items())[:2])


def test_padded_and_unpadded_prices_are_the_same_level() -> None:
    book = OrderBook("BTC-EUR")
    book.load(5, [["75516", "1"]], [])
    book.apply(6, [["75516.00", "0"]], [])
    assert not book.bids


def test_mid_and_spread() -> None:
    mid, bps = mid_and_spread_bps(Decimal("99"), Decimal("101"))
    assert mid == Decimal("100") and bps == Decimal("200.0000")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(LEVELS, LEVELS), min_size=1, max_size=30), st.data())
def test_resync_recipe_reaches_the_exchange_book(events, data) -> None:
    """Exchange-side truth vs our sync fed with: events before the snapshot, the snapshot taken at
    an arbitrary point, events after it (some older than it, arriving late), and one gap."""
    truth = OrderBook("X")
    history = []
    for nonce, (b, a) in enumerate(events, 1):
        truth.apply(nonce, b, a)
        history.append((nonce, b, a, truth.depth()))
    sync = BookSync("X")
    snap_at = data.draw(st.integers(0, len(history)))
    subscribed_at = data.draw(st.integers(0, snap_at))  # we subscribed before the snapshot
    for nonce, b, a, _ in history[subscribed_at:]:
        assert sync.on_event(nonce, b, a) == Status.BUFFERED
    if snap_at == 0:
        snap_bids, snap_asks, snap_nonce = [], [], 0
    else:
        depth = history[snap_at - 1][3]
        snap_bids = [[str(p), str(s)] for p, s in depth[0]]
        snap_asks = [[str(p), str(s)] for p, s in depth[1]]
        snap_nonce = snap_at
    assert sync.on_snapshot(snap_nonce, snap_bids, snap_asks) == Status.SYNCED
    assert sync.synced
    assert (dict(sync.book.bids), dict(sync.book.asks)) == (dict(truth.bids), dict(truth.asks))
    assert sync.book.nonce == len(history)


def test_snapshot_drops_older_events_and_late_stale_events() -> None:
    sync = BookSync("X")
    sync.on_event(10, [["1", "1"]], [])
    sync.on_event(11, [["2", "1"]], [])
    assert sync.on_snapshot(11, [["1", "1"], ["2", "1"]], [["5", "1"]]) == Status.SYNCED
    # An event the snapshot already holds arrives after it: stale, dropped.
    assert sync.on_event(11, [["2", "1"]], []) == Status.STALE
    assert sync.on_event(12, [["3", "1"]], []) == Status.APPLIED
    assert sync.book.nonce == 12


def test_snapshot_newer_than_all_buffered() -> None:
    sync = BookSync("X")
    sync.on_event(3, [["1", "1"]], [])
    assert sync.on_snapshot(9, [["7", "1"]], []) == Status.SYNCED
    assert dict(sync.book.bids) == {Decimal(7): Decimal(1)}
    assert sync.on_event(10, [], [["8", "1"]]) == Status.APPLIED


def test_snapshot_older_than_buffer_needs_another() -> None:
    sync = BookSync("X")
    sync.on_event(20, [["1", "1"]], [])
    assert sync.on_snapshot(15, [], []) == Status.GAP
    assert not sync.synced and sync.buffered == 1
    assert sync.on_snapshot(20, [["1", "1"]], []) == Status.SYNCED


def test_gap_and_reset_trigger_resync() -> None:
    sync = BookSync("X")
    sync.on_snapshot(5, [["1", "1"]], [])
    assert sync.on_event(6, [], []) == Status.APPLIED
    assert sync.on_event(8, [["2", "1"]], []) == Status.GAP  # 7 is missing
    assert not sync.synced
    assert sync.on_snapshot(8, [["1", "1"], ["2", "1"]], []) == Status.SYNCED
    assert sync.on_event(9, [], []) == Status.APPLIED
    assert sync.on_event(1, [], []) == Status.GAP  # the nonce fell: engine restart


def test_reset_while_buffering_keeps_only_the_new_sequence() -> None:
    sync = BookSync("X")
    sync.on_event(100, [["9", "1"]], [])
    sync.on_event(101, [["9", "2"]], [])
    sync.on_event(1, [["1", "1"]], [])  # reset
    sync.on_event(2, [["2", "1"]], [])
    assert sync.on_snapshot(1, [["1", "1"]], []) == Status.SYNCED
    assert dict(sync.book.bids) == {Decimal(1): Decimal(1), Decimal(2): Decimal(1)}
