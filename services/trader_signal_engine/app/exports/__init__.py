"""The door other code and the runbook use: ``main`` and the names of the streams."""

from services.trader_signal_engine.app.service import KEYS, NAME, READS, SIGNAL_STREAM, WRITES, main

__all__ = ["main", "NAME", "READS", "WRITES", "KEYS", "SIGNAL_STREAM"]
