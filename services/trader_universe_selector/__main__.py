"""`python -m services.trader_universe_selector`: a thin door onto app.service."""

import sys

from services.trader_universe_selector.app.service import main

if __name__ == "__main__":
    sys.exit(main())
