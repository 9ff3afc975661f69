"""Signal engine: settings, streams and wiring (DESIGN §1, §4). The logic is in engine.py,
strategies/, indicators.py and gates.py (docs/strategies.md).

Reads closed candles of the universe's markets (``bitvavo:candles:<interval>``) and book tops (the
gates); writes ``SignalEmitted`` to ``SIGNAL_STREAM``. At start the indicators are rebuilt from the
candle streams' history (candle ingest backfills from REST), so the first signal after a restart
does not wait hours; a market that joins the universe warms up from the same history.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from services.trader_signal_engine.app.engine import SignalEngine
from services.trader_signal_engine.app.gates import GateSettings
from services.trader_signal_engine.app.strategies import DEFAULT_STRATEGIES, build_strategies
from tradestack import streams
from tradestack.bus import Delivery
from tradestack.config import CommonSettings, CsvList
from tradestack.effects import Effect
from tradestack.errors import PoisonMessage
from tradestack.logs import get_logger
from tradestack.messages import BookTopUpdated, CandleUpdated, Message
from tradestack.metrics import ServiceMetrics
from tradestack.rebuild import Rebuild, fold_history
from tradestack.service import Service, run_service

log = get_logger(__name__)

NAME = "trader_signal_engine"
METRICS_PREFIX = "trader_signal_engine"
SIGNAL_STREAM = streams.SIGNALS_BASELINE
READS = [streams.BOOK, streams.candles("1m"), streams.candles("5m"), streams.candles("15m"), streams.candles("1h")]
WRITES = [SIGNAL_STREAM]
KEYS = [streams.UNIVERSE]


class Settings(CommonSettings):
    metrics_port: int = Field(9601, ge=0, le=65535)
    # The stream signals go to (DESIGN §1: SIGNAL_STREAM).
    signal_stream: str = streams.SIGNALS_BASELINE
    signal_strategies: str = DEFAULT_STRATEGIES  # JSON list of {"method": name, ...params} (docs/strategies.md)
    signal_intervals: CsvList = Field(default_factory=lambda: ["1m"])
    signal_max_spread_bps: float = Field(25.0, ge=0)  # wider spread: no signal
    signal_min_vol: float = Field(0.003, ge=0)  # hourly ATR/price below this: too quiet to trade
    signal_max_vol: float = Field(0.10, ge=0)  # above this: too wild
    signal_max_book_age_ms: int = Field(60_000, ge=0)  # 0 turns the age check off
    signal_max_candle_age_ms: int = Field(60_000, ge=0)  # older closed candles update indicators only
    signal_universe_poll_s: float = Field(5.0, gt=0)  # how often trading:universe is re-read
    signal_warmup_extra: int = Field(10, ge=0)  # candles of history read beyond the warm-up needed

    @field_validator("signal_intervals")
    @classmethod
    def _intervals(cls, value: list[str]) -> list[str]:
        for interval in value:
            if interval not in ("1m", "5m", "15m", "1h"):
                raise ValueError(f"{interval!r}: the candle ingest follows 1m, 5m, 15m and 1h")
        return value


class Metrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__(METRICS_PREFIX)
        self.signals = self.hot_counter("signals_total", "Signals emitted, by strategy and side", ["strategy", "side"])
        self.suppressed = self.hot_counter("suppressed_total", "Signals a gate suppressed, by reason", ["reason"])
        self.candles = self.hot_counter("candles_total", "Candle messages, by outcome", ["outcome"])
        self.warmup = self.gauge("warmup_ratio", "Warm-up progress per market and interval (1 = ready)",
                                 ["market", "interval"])
        self.universe_size = self.gauge("universe_markets", "Markets of the universe the engine follows", [])


INTERVAL_S = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600}


def setup(service: Service[Settings]) -> None:
    s = service.settings
    gates = GateSettings(max_spread_bps=s.signal_max_spread_bps, min_vol=s.signal_min_vol, max_vol=s.signal_max_vol,
                         max_book_age_ms=s.signal_max_book_age_ms, max_candle_age_ms=s.signal_max_candle_age_ms)
    engine = SignalEngine(build_strategies(s.signal_strategies), gates, s.signal_intervals, service.messages,
                          stream=s.signal_stream, clock=service.clock)
    metrics = service.metrics
    assert isinstance(metrics, Metrics)
    candle_streams = [streams.candles(i) for i in s.signal_intervals]
    history_s = {i: INTERVAL_S[i] * (engine.warmup + s.signal_warmup_extra) for i in s.signal_intervals}

    def handle(msg: Message, delivery: Delivery) -> list[Effect]:
        if isinstance(msg, CandleUpdated):
            return engine.on_candle(msg)
        if isinstance(msg, BookTopUpdated):
            return engine.on_book(msg)
        raise PoisonMessage(f"{msg.TYPE} does not belong on {delivery.stream}")

    def fold(msg: Message, entry_id: str) -> None:
        if isinstance(msg, CandleUpdated):
            engine.warm(msg, handled=True)  # the rebuild stops where the group has read
        elif isinstance(msg, BookTopUpdated):
            engine.on_book(msg)  # the gates' input: the latest top per market

    async def universe_members() -> set[str]:
        return {k.decode() if isinstance(k, bytes) else k for k in await service.redis.hkeys(streams.UNIVERSE)}

    async def load_universe() -> None:
        members = await universe_members()
        engine.set_universe(members)
        log.info("universe_loaded", markets=len(members))

    async def warm_joined(joined: set[str]) -> None:
        """Warm markets that joined from the candle streams' history (the engine keeps the calls of
        candles the loop has not handled yet, and skips what it has seen)."""
        def fold_joined(msg: Message, entry_id: str) -> None:
            if isinstance(msg, CandleUpdated) and msg.market in joined:
                engine.warm(msg)

        now_ms = service.clock.now_ms()
        for interval, stream in zip(s.signal_intervals, candle_streams, strict=True):
            await fold_history(service.redis, Rebuild(stream, fold_joined, since_ms=now_ms - history_s[interval] * 1000))

    async def follow_universe() -> list[Effect]:
        joined = engine.set_universe(await universe_members())
        if joined:
            log.info("markets_joined", markets=sorted(joined))
            await warm_joined(joined)
        return []

    def refresh_metrics() -> list[Effect]:
        for (strategy, side), n in engine.signals.items():
            metrics.signals.values[(strategy, side)] = n
        for reason, n in engine.suppressed.items():
            metrics.suppressed.values[(reason,)] = n
        for outcome, n in engine.candles.items():
            metrics.candles.values[(outcome,)] = n
        metrics.warmup.clear()  # markets that left the universe lose their series
        for (market, interval), ratio in engine.warmup_progress().items():
            metrics.warmup.labels(market=market, interval=interval).set(ratio)
        metrics.universe_size.set(len(engine.universe))
        return []

    service.on_start(load_universe)
    service.consume([streams.BOOK, *candle_streams], handle, stateful=True)
    for interval, stream in zip(s.signal_intervals, candle_streams, strict=True):
        service.rebuild(stream, fold, history_s=history_s[interval])
    # the newest book tops, so the gates can judge the first candles after a restart
    service.rebuild(streams.BOOK, fold, history_s=max(60.0, s.signal_max_book_age_ms / 1000))
    service.every(s.signal_universe_poll_s, follow_universe, name="universe")
    service.every(1.0, refresh_metrics, name="metrics")


def main() -> int:
    return run_service(NAME, Settings, METRICS_PREFIX, setup, metrics=Metrics)
