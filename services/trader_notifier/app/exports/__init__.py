"""The door other code and the runbook use: ``main`` and the names of the streams."""

from services.trader_notifier.app.service import KEYS, NAME, READS, WRITES, main

__all__ = ["main", "NAME", "READS", "WRITES", "KEYS"]
