"""`python -m services.trading_core [--once]`."""

import sys

from services.trading_core.trading_core.service import main

if __name__ == "__main__":
    sys.exit(main())
