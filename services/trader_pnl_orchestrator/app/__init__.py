"""PnL orchestrator (`python -m services.trader_pnl_orchestrator.app`)."""
