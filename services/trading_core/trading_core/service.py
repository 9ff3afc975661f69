"""Trading core: settings, streams and wiring (DESIGN §1, §4). The logic is in core.py, guards.py,
sizing.py and exits.py (docs/trading-core.md).

Reads signals (``SIGNAL_STREAMS``), ``bitvavo:book`` (marks, exits) and ``orders:executed`` (fills,
through the shared ``PositionLedger``); writes every decision to ``orders:signals``, entry, exit and
stop-amend intents to ``orders:shadow``, and blocked-entry events to ``trading:events``.

At start (holding the ``lease:trading_core`` lease, so one core decides): market rules from
``/markets`` (cached in ``trading:markets`` for a start while the exchange is unreachable), then
state rebuilt from history: its own intents (``orders:shadow``), the fills its group has read
(``orders:executed``) and the latest book tops. The kill switch is read by the watcher every 50 ms
and again inside each commit (``IfKey``): no entry intent is committed while it is on.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Literal, Sequence, cast

from pydantic import Field, field_validator

from services.trading_core.trading_core.core import CoreConfig, TradingCore
from tradestack import streams
from tradestack.bus import Delivery
from tradestack.catalog import load_catalog
from tradestack.config import CommonSettings, CsvList
from tradestack.effects import Effect
from tradestack.errors import ConfigError, PoisonMessage
from tradestack.logs import get_logger
from tradestack.messages import BookTopUpdated, Message, Mode, OrderExecuted, SignalEmitted
from tradestack.metrics import ServiceMetrics
from tradestack.service import Service, run_service

log = get_logger(__name__)

NAME = "trading_core"
METRICS_PREFIX = "trader_trading_core"
READS = [streams.SIGNALS_BASELINE, streams.BOOK, streams.ORDERS_EXECUTED]
WRITES = [streams.ORDERS_SIGNALS, streams.ORDERS_SHADOW, streams.TRADING_EVENTS]
KEYS = [streams.KILL, streams.MARKETS]
DECISION_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class Settings(CommonSettings):
    metrics_port: int = Field(9602, ge=0, le=65535)
    signal_streams: CsvList = Field(default_factory=lambda: [streams.SIGNALS_BASELINE])
    # Sizing (docs/trading-core.md): risk per trade from the stop distance.
    core_equity_eur: str = "1000"  # paper equity; realized PnL is added to it
    risk_mode: Literal["percent", "fixed"] = "percent"
    risk_value: str = "1"  # percent of equity, or EUR
    core_taker_fee_rate: str = "0.0025"
    core_entry_order_type: Literal["market", "limit"] = "market"
    core_guards: str = ""  # JSON list of {"method": Name, ...params}; empty = the default chain
    core_event_interval_secs: int = Field(60, ge=0)  # at most one blocked-entry event per reason per interval
    core_markets_refresh_secs: float = Field(3600.0, gt=0)  # /markets re-read (tick sizes, minimums, status)
    core_timer_secs: float = Field(5.0, gt=0)  # time stops of quiet markets
    core_book_history_s: float = Field(120.0, ge=0)  # book tops folded at start (marks for exposure)
    # Exits
    exit_mode: Literal["fixed", "atr"] = "fixed"
    exit_stop_loss_pct: str = "2"
    exit_take_profit_pct: str = "4"  # empty: no take profit
    exit_stop_atr_mult: str = "2"
    exit_take_profit_atr_mult: str = "3"
    exit_trailing: Literal["off", "pct", "atr"] = "off"
    exit_trailing_pct: str = "1.5"
    exit_trailing_atr_mult: str = "2"
    exit_trailing_min_interval_secs: int = Field(30, ge=0)
    exit_time_stop_secs: int | None = Field(None, ge=1)
    exit_retry_secs: int = Field(10, ge=1)

    @field_validator("exit_time_stop_secs", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class Metrics(ServiceMetrics):
    """The core's metrics: the standard set plus decisions, intents, exposure and equity."""

    def __init__(self) -> None:
        super().__init__(METRICS_PREFIX)
        self.decisions = self.hot_counter("decisions_total", "Decisions made, by outcome and first reason",
                                          ["outcome", "reason"])
        self.blocked = self.hot_counter("blocked_reasons_total", "Every reason of every blocked decision",
                                        ["reason"])
        self.intents = self.hot_counter("intents_total", "Intents made, by kind (entry, exit, amend_stop)", ["kind"])
        # Observed once per signal: a HotHistogram (no lock), scraped as the Histogram it replaced.
        self.decision_lag = self.hot_histogram("decision_lag_seconds", "Market event (trace ts) to decision",
                                               buckets=DECISION_LAG_BUCKETS)
        self.open_positions = self.gauge("open_positions", "Markets with a position or an in-flight entry", [])
        self.in_flight = self.gauge("in_flight", "Intents sent and not final yet, by kind", ["kind"])
        self.exposure = self.gauge("exposure_eur", "EUR held and in flight per asset (marks: best bid)", ["asset"])
        self.global_exposure = self.gauge("global_exposure_eur", "EUR held and in flight, all assets", [])
        self.equity = self.gauge("equity_eur", "Equity the sizing uses (config + realized)", [])
        self.daily_loss = self.gauge("daily_loss_eur", "Realized loss of the current UTC day (positive = lost)", [])
        self.markets = self.gauge("markets", "Markets with rules from /markets", [])
        self.markets_age = self.gauge("markets_age_seconds", "Age of the market rules in use", [])


def build_config(settings: Settings) -> CoreConfig:
    mode = settings.mode
    if mode not in ("paper", "sandbox", "live"):
        raise ConfigError(f"unknown mode {mode!r}")
    return CoreConfig.from_settings(settings, cast(Mode, mode))


def setup(service: Service[Settings]) -> None:
    s = service.settings
    config = build_config(s)  # a bad setting stops the start here, with one line
    metrics = service.metrics
    assert isinstance(metrics, Metrics)
    holder: dict[str, Any] = {"fetched_ms": 0}
    signal_streams = list(dict.fromkeys(s.signal_streams))
    signal_set = frozenset(signal_streams)  # looked up once per message

    def core() -> TradingCore:
        return cast(TradingCore, holder["core"])

    async def start() -> None:
        catalog, fetched = await load_catalog(service.redis, s.bitvavo_rest_url, service.clock)
        holder["core"] = TradingCore(config, catalog, service.messages, service.clock)
        holder["fetched_ms"] = fetched
        log.info("core_ready", mode=config.mode, markets=len(catalog), guards=config.guards.describe())

    def handle(msg: Message, delivery: Delivery) -> list[Effect]:
        c = core()
        if isinstance(msg, SignalEmitted) and delivery.stream in signal_set:
            effects = c.on_signal_gated(msg, service.kill_switch)
            metrics.decision_lag.observe(max(0.0, (service.clock.now_ms() - msg.trace.ts) / 1000))
            return effects
        if isinstance(msg, BookTopUpdated) and delivery.stream == streams.BOOK:
            return c.on_book(msg)
        if isinstance(msg, OrderExecuted) and delivery.stream == streams.ORDERS_EXECUTED:
            return c.on_executed(msg)  # PoisonMessage: dead-lettered, nothing booked
        raise PoisonMessage(f"{msg.TYPE} does not belong on {delivery.stream}")

    def fold_intent(msg: Message, entry_id: str) -> None:
        core().on_intent(msg)

    def fold_executed(msg: Message, entry_id: str) -> None:
        if isinstance(msg, OrderExecuted):
            try:
                core().on_executed(msg)
            except PoisonMessage:
                pass  # dead-lettered when it was live; skipped the same way now

    def fold_book(msg: Message, entry_id: str) -> None:
        if isinstance(msg, BookTopUpdated):
            core().prime_book(msg)

    def on_timer() -> list[Effect]:
        return core().on_timer()

    async def refresh_markets() -> list[Effect]:
        catalog, fetched = await load_catalog(service.redis, s.bitvavo_rest_url, service.clock)
        core().set_catalog(catalog)
        holder["fetched_ms"] = fetched
        return []

    def refresh_metrics() -> list[Effect]:
        c = core()
        for (outcome, reason), n in c.decisions.items():
            metrics.decisions.values[(outcome, reason)] = n
        for reason, n in c.blocked_reasons.items():
            metrics.blocked.values[(reason,)] = n
        for kind, n in c.intents.items():
            metrics.intents.values[(kind,)] = n
        per_asset = c.exposure()
        total = sum(per_asset.values())
        metrics.exposure.clear()
        for asset, value in per_asset.items():
            metrics.exposure.labels(asset=asset).set(float(value))
        metrics.global_exposure.set(float(total))
        metrics.open_positions.set(c.open_positions())
        counts = c.in_flight_counts()
        for kind in ("entry", "exit"):
            metrics.in_flight.labels(kind=kind).set(counts.get(kind, 0))
        metrics.equity.set(float(c.equity))
        metrics.daily_loss.set(float(c.daily_loss()))
        metrics.markets.set(len(c.catalog))
        metrics.markets_age.set(max(0.0, (service.clock.now_ms() - holder["fetched_ms"]) / 1000))
        return []

    service.use_lease()
    service.on_start(start)
    service.consume([*signal_streams, streams.BOOK, streams.ORDERS_EXECUTED], handle, stateful=True)
    service.archive([streams.ORDERS_SIGNALS, streams.ORDERS_SHADOW])  # ${PARQUET_DIR}/<day>/trading/
    # Decisions older than STREAM_MAX_AGE_DAYS, once every group has read them (their history is in
    # Parquet). Not orders:shadow: the core and the executor rebuild open positions from all of it.
    service.trim_by_age([streams.ORDERS_SIGNALS])
    service.rebuild(streams.ORDERS_SHADOW, fold_intent, bound_to_group=False)
    service.rebuild(streams.ORDERS_EXECUTED, fold_executed)
    service.rebuild(streams.BOOK, fold_book, bound_to_group=False, history_s=s.core_book_history_s)
    service.every(s.core_timer_secs, on_timer, name="time_stops")
    service.every(s.core_markets_refresh_secs, refresh_markets, name="markets")
    service.every(1.0, refresh_metrics, name="metrics")
    service.summary = lambda: core().summary_json() if "core" in holder else "{}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trading_core", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="process what is pending, print what was decided, exit")
    args = parser.parse_args(argv)
    return run_service(NAME, Settings, METRICS_PREFIX, setup, once=args.once, metrics=Metrics)


if __name__ == "__main__":
    sys.exit(main())
