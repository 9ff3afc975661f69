"""`python -m services.trader_signal_engine`: a thin door onto app.service."""

import sys

from services.trader_signal_engine.app.service import main

if __name__ == "__main__":
    sys.exit(main())
