"""Universe selector: settings, streams and wiring (DESIGN §1, §4). The logic is in filters.py and
selector.py (docs/universe.md).

Reads ``bitvavo:ticker24h`` and ``bitvavo:book`` (the latest per market, folded from the last few
minutes of history at start); every ``UNIVERSE_REFRESH_SECS`` runs the filter chain and replaces
``trading:universe`` in one atomic commit, with a ``universe.changed`` event to ``trading:events``
when membership changes. Stale inputs keep the last universe (a warning event, a metric).
"""

from __future__ import annotations

from pydantic import Field

from services.trader_universe_selector.app.filters import DEFAULT_FILTERS, build_chain
from services.trader_universe_selector.app.selector import UniverseSelector
from tradestack import streams
from tradestack.bus import Delivery
from tradestack.config import CommonSettings
from tradestack.effects import Effect
from tradestack.errors import PoisonMessage
from tradestack.messages import BookTopUpdated, Message, Ticker24hUpdated
from tradestack.metrics import ServiceMetrics
from tradestack.service import Service, run_service

NAME = "trader_universe_selector"
METRICS_PREFIX = "trader_universe"
READS = [streams.TICKER24H, streams.BOOK]
WRITES = [streams.TRADING_EVENTS]
KEYS = [streams.UNIVERSE]


class Settings(CommonSettings):
    metrics_port: int = Field(9605, ge=0, le=65535)
    universe_filters: str = DEFAULT_FILTERS  # JSON list of {"method": Name, ...params} (docs/universe.md)
    universe_refresh_secs: float = Field(10.0, gt=0)
    universe_stale_after_ms: int = Field(30_000, gt=0)  # no ticker for this long: keep the last universe
    universe_market_expiry_ms: int = Field(900_000, gt=0)  # a market without a ticker this long is forgotten
    universe_history_s: float = Field(300.0, ge=0)  # inputs folded from history at start


class Metrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__(METRICS_PREFIX)
        self.size = self.gauge("size", "Markets in trading:universe", [])
        self.changes = self.hot_counter("changes_total", "Membership changes announced", [])
        self.rejects = self.hot_counter("rejects_total", "Markets rejected, by filter", ["filter"])
        self.input_age = self.gauge("input_age_seconds", "Age of the newest input, by kind (-1: none yet)", ["input"])
        self.stale = self.gauge("stale", "1 while inputs are stale and the last universe is kept", [])


def setup(service: Service[Settings]) -> None:
    s = service.settings
    chain = build_chain(s.universe_filters)  # a bad chain fails here, with one line
    metrics = service.metrics
    assert isinstance(metrics, Metrics)
    holder: dict[str, UniverseSelector] = {}

    async def load_current() -> None:
        current = await service.redis.hkeys(streams.UNIVERSE)
        holder["sel"] = UniverseSelector(chain, service.messages, service.clock, s.universe_stale_after_ms,
                                         current=current, market_expiry_ms=s.universe_market_expiry_ms)

    def handle(msg: Message, delivery: Delivery) -> list[Effect]:
        if isinstance(msg, Ticker24hUpdated):
            return holder["sel"].on_ticker(msg)
        if isinstance(msg, BookTopUpdated):
            return holder["sel"].on_book(msg)
        raise PoisonMessage(f"{msg.TYPE} does not belong on {delivery.stream}")

    def fold(msg: Message, entry_id: str) -> None:
        received_ms = int(entry_id.split("-", 1)[0])
        if isinstance(msg, Ticker24hUpdated):
            holder["sel"].on_ticker(msg, received_ms)
        elif isinstance(msg, BookTopUpdated):
            holder["sel"].on_book(msg, received_ms)

    def refresh() -> list[Effect]:
        sel = holder["sel"]
        effects = sel.refresh()
        metrics.size.set(sel.size)
        metrics.changes.values[()] = sel.changes
        for name, count in sel.rejects_total.items():
            metrics.rejects.values[(name,)] = count
        for kind, age in sel.input_age_ms().items():
            metrics.input_age.labels(input=kind).set(-1 if age is None else age / 1000)
        metrics.stale.set(1 if sel.stale else 0)
        return effects

    service.on_start(load_current)
    service.consume(READS, handle, stateful=True)
    for stream in READS:
        service.rebuild(stream, fold, history_s=s.universe_history_s)
    service.every(s.universe_refresh_secs, refresh, name="refresh")


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup, metrics=Metrics)
