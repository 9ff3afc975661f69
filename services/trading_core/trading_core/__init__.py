"""The trading core's implementation: guards, sizing, exits (filled in by the trading-core issue)."""
