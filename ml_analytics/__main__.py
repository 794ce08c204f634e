"""`python -m ml_analytics`: the command line (ml_analytics/cli)."""

from __future__ import annotations

import sys

from ml_analytics.cli import main

if __name__ == "__main__":
    sys.exit(main())
