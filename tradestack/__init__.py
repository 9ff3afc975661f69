"""tradestack: the shared kernel every process uses (config, streams, messages, bus, metrics, logs)."""

__version__ = "0.1.0"
