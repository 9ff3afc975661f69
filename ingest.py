"""`python /srv/trading/ingest.py` (the runbook): the ticker ingest, a door onto `python -m ingest.ticker24h`.

A script only: beside it, `import ingest` finds the `ingest/` package (a directory wins over a module)."""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:  # run from anywhere, or by path with -P/-I
    sys.path.insert(0, ROOT)

from ingest.ticker24h import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
