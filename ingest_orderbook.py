"""`python /srv/trading/ingest_orderbook.py` (the runbook): the order-book ingest, a door onto
`python -m ingest.orderbook`."""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:  # run from anywhere, or by path with -P/-I
    sys.path.insert(0, ROOT)

from ingest.orderbook import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
