"""Signal engine (`python -m services.trader_signal_engine.app`)."""
