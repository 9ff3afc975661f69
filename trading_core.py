"""`python /srv/trading/trading_core.py [--once]` (the runbook): the trading core, a door onto
`python -m services.trading_core [--once]`."""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:  # run from anywhere, or by path with -P/-I
    sys.path.insert(0, ROOT)

from services.trading_core.trading_core.service import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
