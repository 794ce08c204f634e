#!/usr/bin/env python
"""Make stock_levels.csv: one stock snapshot per product at the end of the sample.

The source has no stock levels, so this invents plausible ones, deterministically:
each product's stock is its mean daily demand over the last 28 days times a number
of days of cover drawn from (3, 7, 14, 30, 90) by a hash of its id, with a lead
time of 7, 14 or 21 days. So some products are about to run out and most are not.

    python data/online-retail-ii/make_stock_levels.py
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
AS_OF = "2011-12-09T18:00:00+00:00"
LAST_DAY = "2011-12-09"
COVER_DAYS = (3, 7, 14, 30, 90)
LEAD_TIMES = (7, 14, 21)


def main() -> None:
    recent: dict[str, list[float]] = defaultdict(list)
    with gzip.open(HERE / "daily_demand.csv.gz", "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["date"] > "2011-11-11":  # the last 28 days
                recent[row["item_id"]].append(float(row["quantity"]))
    with (HERE / "stock_levels.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "product_id", "as_of", "stock_units", "lead_time_days"])
        for product_id in sorted(recent):
            mean = sum(recent[product_id]) / 28
            bucket = zlib.crc32(product_id.encode())
            cover = COVER_DAYS[bucket % len(COVER_DAYS)]
            lead = LEAD_TIMES[(bucket // 7) % len(LEAD_TIMES)]
            event_id = f"stock-{product_id}-{LAST_DAY}"
            writer.writerow([event_id, product_id, AS_OF, round(mean * cover), lead])


if __name__ == "__main__":
    main()
