"""A replay of the real sample reproduces its published daily demand exactly."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.replay import replay_file
from ml_analytics.settings import Settings
from tests.helpers import running_ingestion, wait_until

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data" / "online-retail-ii"


def published_daily_demand() -> dict[tuple[str, str], float]:
    with gzip.open(DATA / "daily_demand.csv.gz", "rt", encoding="utf-8", newline="") as handle:
        return {
            (row["item_id"], row["date"]): float(row["quantity"])
            for row in csv.DictReader(handle)
            if float(row["quantity"]) != 0
        }


async def test_replay_of_the_sample_reproduces_its_daily_demand(
    settings: Settings, engine: AsyncEngine
) -> None:
    london = Settings(
        _env_file=None, **{**settings.model_dump(), "business_timezone": "Europe/London"}
    )
    async with running_ingestion(london, engine):
        result = await replay_file(DATA / "transactions.csv.gz", london, progress=False)

        async def counted() -> int:
            async with engine.connect() as connection:
                return int(
                    (
                        await connection.execute(text("SELECT count(*) FROM transaction_events"))
                    ).scalar_one()
                )

        await wait_until(
            counted, lambda n: n == result.published, timeout=120, what="the whole sample"
        )
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT product_id, business_day, quantity_units FROM daily_demand")
        )
        stored = {
            (row.product_id, row.business_day.isoformat()): float(row.quantity_units)
            for row in rows
        }
    assert result.published == 206_254
    expected = published_daily_demand()
    assert len(stored) == len(expected)
    assert stored == expected
