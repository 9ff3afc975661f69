"""Notifier (`python -m services.trader_notifier.app`)."""
