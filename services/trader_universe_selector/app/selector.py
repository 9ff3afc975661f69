"""The universe selector's pure part: the latest inputs per market, the filter chain, the universe.

The service feeds every ``bitvavo:ticker24h`` and ``bitvavo:book`` message to ``on_ticker`` /
``on_book`` (they only remember the latest per market, with the time received) and calls
``refresh()`` every ``UNIVERSE_REFRESH_SECS``. A refresh on fresh inputs runs the chain and returns
the effects that replace ``trading:universe`` in one atomic commit: ``DelKey`` then one ``HashSet``
(market → JSON), plus a ``UniverseChanged`` on ``trading:events`` only when membership changed.

Never an empty universe for want of data: when the ticker input is stale (nothing received for
``stale_after_ms``), or the chain comes out empty while some market was dropped for *missing* data
(no quote at all, a listed market never seen), the refresh writes nothing, keeps the last universe,
raises ``stale`` and emits one ``universe_stale`` warning per stale episode. An empty result from
fresh, complete data (every market failed a threshold: the market dried up) does empty the universe.
See docs/universe.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

import orjson

from services.trader_universe_selector.app.filters import (
    RATIO_QUANT,
    ChainResult,
    FilterChain,
    MarketView,
    Rejection,
    plain,
    spread_bps,
)
from tradestack import streams
from tradestack.clock import Clock
from tradestack.effects import DelKey, Effect, HashSet, Output
from tradestack.errors import ConfigError, PoisonMessage
from tradestack.messages import (
    BookTopUpdated,
    MessageFactory,
    Ticker24hUpdated,
    TradingEvent,
    UniverseChanged,
)

InputKind = Literal["ticker", "book"]
StaleReason = Literal["no_ticker", "ticker_stale", "missing_data"]

DEFAULT_MARKET_EXPIRY_MS = 15 * 60_000
SCORE_QUANT = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class _Seen:
    """The latest message of one kind for one market and when it arrived (our clock)."""

    msg: Ticker24hUpdated | BookTopUpdated
    received_ms: int


@dataclass(frozen=True, slots=True)
class Member:
    """One market of the universe as written to ``trading:universe``."""

    market: str
    rank: int
    score: Decimal
    view: MarketView
    reasons: tuple[str, ...]

    def to_json(self, updated_ms: int) -> str:
        v = self.view
        return orjson.dumps({
            "rank": self.rank,
            "score": plain(self.score),
            "volume_quote": plain(v.volume_quote),
            "spread_bps": plain(v.spread_bps),
            "spread_source": v.spread_source,
            "volatility": plain(v.volatility),
            "last": plain(v.last),
            "reasons": list(self.reasons),
            "updated_ms": updated_ms,
        }).decode()


class UniverseSelector:
    """Keeps the latest ticker and book top per market; ``refresh`` turns them into the universe.

    ``stale_after_ms``: the ticker input counts as stale when no ticker arrived for this long (and
    right after start, once this long has passed without any). ``market_expiry_ms``: a market whose
    own last ticker is older than this is forgotten (delisted, halted, no longer ingested).
    ``current``: the members of ``trading:universe`` as loaded at start (names, bytes or str; a
    ``HGETALL`` mapping works), so a restart does not announce a change that did not happen."""

    def __init__(
        self,
        chain: FilterChain,
        factory: MessageFactory,
        clock: Clock,
        stale_after_ms: int,
        current: Iterable[str | bytes] | None = None,
        market_expiry_ms: int = DEFAULT_MARKET_EXPIRY_MS,
    ) -> None:
        if stale_after_ms <= 0:
            raise ConfigError(f"universe stale_after_ms must be > 0 (got {stale_after_ms})")
        if market_expiry_ms < stale_after_ms:
            raise ConfigError(f"universe market_expiry_ms ({market_expiry_ms}) must be >= stale_after_ms "
                              f"({stale_after_ms})")
        self.chain = chain
        self.factory = factory
        self.clock = clock
        self.stale_after_ms = stale_after_ms
        self.market_expiry_ms = market_expiry_ms
        self._started_ms = clock.now_ms()
        self._tickers: dict[str, _Seen] = {}
        self._books: dict[str, _Seen] = {}
        self._last_received: dict[InputKind, int | None] = {"ticker": None, "book": None}
        names = [m.decode() if isinstance(m, bytes) else m for m in (current or ())]
        self._members: tuple[str, ...] = tuple(dict.fromkeys(names))
        self.universe: tuple[Member, ...] = ()  # the last universe this selector wrote (ranked)
        # Metrics.
        self.changes = 0  # UniverseChanged messages emitted
        self.refreshes = 0
        self.writes = 0  # refreshes that rewrote trading:universe
        self.stale = False
        self.stale_reason: StaleReason | None = None
        self.stale_episodes = 0  # universe_stale warnings emitted
        self.rejects_last: dict[str, int] = {name: 0 for name in chain.names}
        self.rejects_total: dict[str, int] = {name: 0 for name in chain.names}
        self.last_rejections: tuple[Rejection, ...] = ()
        self.last_refresh_ms: int | None = None
        self.last_write_ms: int | None = None

    # -- inputs ---------------------------------------------------------------------------------

    def on_ticker(self, msg: Ticker24hUpdated, received_ms: int | None = None) -> list[Effect]:
        """``received_ms``: when it reached Redis, for a message folded from history at start
        (default: now), so an old ticker never looks fresh."""
        _check_ticker(msg)
        self._remember(self._tickers, "ticker", msg, received_ms)
        return []

    def on_book(self, msg: BookTopUpdated, received_ms: int | None = None) -> list[Effect]:
        _check_book(msg)
        self._remember(self._books, "book", msg, received_ms)
        return []

    def _remember(self, store: dict[str, _Seen], kind: InputKind, msg: Ticker24hUpdated | BookTopUpdated,
                  received_ms: int | None = None) -> None:
        seen = store.get(msg.market)
        if seen is not None and msg.exchange_ts < seen.msg.exchange_ts:
            return  # an older update handled late (a retried entry): the newer one stands
        now = self.clock.now_ms() if received_ms is None else received_ms
        store[msg.market] = _Seen(msg, now)
        self._last_received[kind] = now

    # -- metrics --------------------------------------------------------------------------------

    @property
    def members(self) -> tuple[str, ...]:
        """The current members, rank order (as loaded at start until the first write)."""
        return self._members

    @property
    def size(self) -> int:
        return len(self._members)

    def input_age_ms(self) -> dict[InputKind, int | None]:
        """Milliseconds since the newest ticker / book top arrived; None if none has yet."""
        now = self.clock.now_ms()
        return {kind: (None if at is None else now - at) for kind, at in self._last_received.items()}

    # -- refresh --------------------------------------------------------------------------------

    def views(self) -> list[MarketView]:
        """Every market with a ticker younger than ``market_expiry_ms``, as the filters see it."""
        now = self.clock.now_ms()
        out = []
        for market, seen in self._tickers.items():
            if now - seen.received_ms > self.market_expiry_ms:
                continue
            book = self._books.get(market)
            if book is not None and now - book.received_ms > self.market_expiry_ms:
                book = None
            out.append(_view(seen, book, now))
        out.sort(key=lambda v: v.market)
        return out

    def refresh(self) -> list[Effect]:
        now = self.clock.now_ms()
        self.refreshes += 1
        self.last_refresh_ms = now
        stale = self._ticker_staleness(now)
        if stale is not None:
            return self._stale(stale, now, None)
        result = self.chain.run(self.views())
        self._count(result)
        if not result.members and result.missing_data:
            return self._stale("warming_up" if self._warming_up(now) else "missing_data", now, result)
        return self._write(result, now)

    def _warming_up(self, now: int) -> bool:
        # Right after start the streams may not have been read yet: missing inputs are not
        # staleness until a whole stale_after_ms has gone by (the last universe stays meanwhile).
        return now - self._started_ms < self.stale_after_ms

    def _ticker_staleness(self, now: int) -> StaleReason | Literal["warming_up"] | None:
        last = self._last_received["ticker"]
        if last is None:
            return "warming_up" if self._warming_up(now) else "no_ticker"
        return "ticker_stale" if now - last > self.stale_after_ms else None

    def _count(self, result: ChainResult) -> None:
        counts = result.rejects_by_filter()
        self.rejects_last = {name: counts.get(name, 0) for name in self.rejects_total}
        for name, n in counts.items():
            self.rejects_total[name] = self.rejects_total.get(name, 0) + n
        self.last_rejections = result.rejections

    def _stale(self, reason: StaleReason | Literal["warming_up"], now: int, result: ChainResult | None) -> list[Effect]:
        """Keep the last universe. One warning when an episode starts; nothing while it lasts."""
        if reason == "warming_up":
            return []
        if self.stale:
            return []
        self.stale = True
        self.stale_reason = reason
        self.stale_episodes += 1
        ages = self.input_age_ms()
        details = {
            "reason": reason,
            "stale_after_ms": str(self.stale_after_ms),
            "ticker_age_ms": _age(ages["ticker"]),
            "book_age_ms": _age(ages["book"]),
            "kept_members": ",".join(self._members),
        }
        if result is not None:
            missing = [r for r in result.rejections if r.missing_data]
            details["missing_data_markets"] = ",".join(sorted({r.market for r in missing}))
            details["missing_data"] = "; ".join(f"{r.market} {r.describe()}" for r in missing[:10])
        what = {
            "no_ticker": f"no ticker received in {self.stale_after_ms} ms since start",
            "ticker_stale": f"no ticker received for {ages['ticker']} ms (stale after {self.stale_after_ms} ms)",
            "missing_data": "every candidate lacks data (no quote from book or ticker)",
        }[reason]
        event = self.factory.root(
            TradingEvent, key=f"universe_stale/{now}", kind="universe_stale", severity="warning",
            message=f"universe inputs stale: {what}; keeping the last universe ({len(self._members)} markets)",
            details=details,
        )
        return [Output(streams.TRADING_EVENTS, event)]

    def _write(self, result: ChainResult, now: int) -> list[Effect]:
        self.stale = False
        self.stale_reason = None
        members = _rank(result)
        names = tuple(m.market for m in members)
        effects: list[Effect] = [DelKey(streams.UNIVERSE)]
        if members:
            effects.append(HashSet(streams.UNIVERSE, {m.market: m.to_json(now) for m in members}))
        previous = set(self._members)
        added = [n for n in names if n not in previous]
        removed = sorted(previous.difference(names))
        if added or removed:
            self.changes += 1
            effects.append(Output(streams.TRADING_EVENTS, self.factory.root(
                UniverseChanged, key=f"universe/{now}", members=list(names), added=added, removed=removed)))
        self._members = names
        self.universe = members
        self.writes += 1
        self.last_write_ms = now
        return effects


# ---------------------------------------------------------------------------------------------


def _age(age: int | None) -> str:
    return "never" if age is None else str(age)


def _rank(result: ChainResult) -> tuple[Member, ...]:
    """Rank = the chain's order. Score = quote volume relative to the top member's (1 = most liquid)."""
    volumes = [c.view.volume_quote or Decimal(0) for c in result.members]
    top = max(volumes, default=Decimal(0))
    out = []
    for rank, (cand, vol) in enumerate(zip(result.members, volumes, strict=True), start=1):
        score = (vol / top).quantize(SCORE_QUANT) if top > 0 else Decimal(0)
        out.append(Member(cand.market, rank, score, cand.view, tuple(cand.reasons)))
    return tuple(out)


def _view(ticker: _Seen, book: _Seen | None, now: int) -> MarketView:
    t = ticker.msg
    assert isinstance(t, Ticker24hUpdated)
    base, quote = t.market.split("-", 1)
    bid = ask = spread = None
    source = None
    # The newer quote wins: the book top when the book ingest follows the market, the ticker's
    # bid/ask otherwise (e.g. the book ingest follows only the universe: a candidate outside it has
    # no book, and must still be able to join).
    if book is not None and (t.bid is None or t.ask is None or book.received_ms >= ticker.received_ms):
        b = book.msg
        assert isinstance(b, BookTopUpdated)
        bid, ask, source = b.bid, b.ask, "book"
    elif t.bid is not None and t.ask is not None:
        bid, ask, source = t.bid, t.ask, "ticker"
    if bid is not None and ask is not None:
        spread = spread_bps(bid, ask)
    volatility = None
    if t.high is not None and t.low is not None and t.last is not None and t.last > 0:
        volatility = ((t.high - t.low) / t.last).quantize(RATIO_QUANT)
    return MarketView(
        market=t.market, base=base, quote=quote, last=t.last, high=t.high, low=t.low, volume=t.volume,
        volume_quote=t.volume_quote, bid=bid, ask=ask, spread_bps=spread, spread_source=source,
        volatility=volatility, ticker_age_ms=now - ticker.received_ms,
        book_age_ms=None if book is None else now - book.received_ms,
    )


def _check_market(market: str, what: str) -> None:
    base, sep, quote = market.partition("-")
    if not sep or not base or not quote or "-" in quote:
        raise PoisonMessage(f"{what}: market {market!r} is not BASE-QUOTE")


def _check_ticker(msg: Ticker24hUpdated) -> None:
    where = f"market.ticker24h {msg.market}"
    _check_market(msg.market, where)
    for name in ("volume", "volume_quote", "bid_size", "ask_size"):
        value = getattr(msg, name)
        if value is not None and value < 0:
            raise PoisonMessage(f"{where}: negative {name} {plain(value)}")
    for name in ("open", "high", "low", "last", "bid", "ask"):
        value = getattr(msg, name)
        if value is not None and value <= 0:
            raise PoisonMessage(f"{where}: {name} {plain(value)} is not a positive price")
    if msg.high is not None and msg.low is not None and msg.high < msg.low:
        raise PoisonMessage(f"{where}: high {plain(msg.high)} below low {plain(msg.low)}")
    if msg.bid is not None and msg.ask is not None and msg.bid > msg.ask:
        raise PoisonMessage(f"{where}: crossed quote, bid {plain(msg.bid)} > ask {plain(msg.ask)}")


def _check_book(msg: BookTopUpdated) -> None:
    where = f"market.book_top {msg.market}"
    _check_market(msg.market, where)
    if msg.bid <= 0 or msg.ask <= 0:
        raise PoisonMessage(f"{where}: bid {plain(msg.bid)} / ask {plain(msg.ask)} must be positive prices")
    if msg.bid_size < 0 or msg.ask_size < 0:
        raise PoisonMessage(f"{where}: negative size (bid_size {plain(msg.bid_size)}, ask_size {plain(msg.ask_size)})")
    if msg.bid > msg.ask:
        raise PoisonMessage(f"{where}: crossed book, bid {plain(msg.bid)} > ask {plain(msg.ask)}")


__all__ = ["DEFAULT_MARKET_EXPIRY_MS", "Member", "UniverseSelector"]
