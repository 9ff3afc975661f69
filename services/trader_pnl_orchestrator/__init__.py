"""PnL orchestrator process (DESIGN §1)."""
