"""`python -m services.trader_notifier.app`: a thin door onto app.service."""

import sys

from services.trader_notifier.app.service import main

if __name__ == "__main__":
    sys.exit(main())
