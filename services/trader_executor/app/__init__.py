"""Executor (`python -m services.trader_executor.app`)."""
