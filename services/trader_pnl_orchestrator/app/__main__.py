"""`python -m services.trader_pnl_orchestrator.app`: a thin door onto app.service."""

import sys

from services.trader_pnl_orchestrator.app.service import main

if __name__ == "__main__":
    sys.exit(main())
