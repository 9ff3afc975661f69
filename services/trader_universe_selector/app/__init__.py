"""Universe selector (`python -m services.trader_universe_selector.app`)."""
