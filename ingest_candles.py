"""`python /srv/trading/ingest_candles.py` (the runbook): the candle ingest, a door onto
`python -m ingest.candles`."""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:  # run from anywhere, or by path with -P/-I
    sys.path.insert(0, ROOT)

from ingest.candles import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
