"""What the stack is made of, for the operator's tools: every process of DESIGN §1 in start order
(producers first), its settings class, its systemd unit, and the streams the tools look at."""

from __future__ import annotations

import importlib
from typing import Any

from tradestack import streams

# name (the heartbeat's and the consumer group's) → the arguments after `python`
PROCESSES: list[tuple[str, list[str]]] = [
    ("ingest_ticker24h", ["-m", "ingest.ticker24h"]),
    ("ingest_orderbook", ["-m", "ingest.orderbook"]),
    ("ingest_candles", ["-m", "ingest.candles"]),
    ("trader_universe_selector", ["-m", "services.trader_universe_selector"]),
    ("trader_signal_engine", ["-m", "services.trader_signal_engine"]),
    ("trading_core", ["-m", "services.trading_core"]),
    ("trader_executor", ["-m", "services.trader_executor"]),
    ("trader_pnl_orchestrator", ["-m", "services.trader_pnl_orchestrator"]),
    ("trader_notifier", ["-m", "services.trader_notifier"]),  # idles unless a Telegram bot is configured
]
NAMES = [name for name, _ in PROCESSES]

# The settings class each process builds (module:class).
SETTINGS = {
    "ingest_ticker24h": "ingest.ticker24h:Settings",
    "ingest_orderbook": "ingest.orderbook:Settings",
    "ingest_candles": "ingest.candles:Settings",
    "trader_universe_selector": "services.trader_universe_selector.app.service:Settings",
    "trader_signal_engine": "services.trader_signal_engine.app.service:Settings",
    "trading_core": "services.trading_core.trading_core.service:Settings",
    "trader_executor": "services.trader_executor.app.service:Settings",
    "trader_pnl_orchestrator": "services.trader_pnl_orchestrator.app.service:Settings",
    "trader_notifier": "services.trader_notifier.app.service:Settings",
}

# systemd/ units, for the fixes preflight suggests.
UNITS = {
    "ingest_ticker24h": "tradestack-ingest@ticker24h",
    "ingest_orderbook": "tradestack-ingest@orderbook",
    "ingest_candles": "tradestack-ingest@candles",
    "trader_universe_selector": "tradestack-universe-selector",
    "trader_signal_engine": "tradestack-signal-engine",
    "trading_core": "tradestack-trading-core",
    "trader_executor": "tradestack-executor",
    "trader_pnl_orchestrator": "tradestack-pnl-orchestrator",
    "trader_notifier": "tradestack-notifier",
}

# Processes holding a lease (one active instance): `lease:<name>` = `<token>:<host:pid>`.
LEASED = ["trading_core", "trader_executor", "trader_pnl_orchestrator", "trader_notifier"]

STREAMS_SHOWN = [streams.TICKER24H, streams.BOOK, streams.ORDERBOOK_UPDATE, streams.candles("1m"),
                 streams.SIGNALS_BASELINE, streams.ORDERS_SIGNALS, streams.ORDERS_SHADOW, streams.ORDERS_EXECUTED,
                 streams.TRADING_EVENTS, streams.PNL_SNAPSHOTS]
CANDLE_STREAMS = [streams.candles(i) for i in streams.CANDLE_INTERVALS]
# Every stream a consumer group reads or an operator counts: what a DLQ can belong to.
KNOWN_STREAMS = [streams.TICKER24H, streams.BOOK, streams.ORDERBOOK_UPDATE, *CANDLE_STREAMS,
                 streams.SIGNALS_BASELINE, streams.ORDERS_SIGNALS, streams.ORDERS_SHADOW, streams.ORDERS_EXECUTED,
                 streams.TRADING_EVENTS, streams.PNL_SNAPSHOTS]


def command(name: str) -> str:
    """How to run one process in a terminal, e.g. ``python -m services.trader_executor``."""
    return "python " + " ".join(dict(PROCESSES)[name])


def settings_class(name: str) -> type[Any]:
    """The settings class of a process (imported on demand: it pulls in the whole service)."""
    module, cls = SETTINGS[name].split(":")
    settings: type[Any] = getattr(importlib.import_module(module), cls)
    return settings
