"""A replay of the real sample reproduces its published daily demand exactly."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.replay import replay_file
from ml_analytics.settings import Settings
from tests.helpers import (
    ledger_count,
    read_topic,
    running_ingestion,
    running_service,
    scalar,
    wait_until,
)

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data" / "online-retail-ii"


def published_daily_demand() -> dict[tuple[str, str], float]:
    with gzip.open(DATA / "daily_demand.csv.gz", "rt", encoding="utf-8", newline="") as handle:
        return {
            (row["item_id"], row["date"]): float(row["quantity"])
            for row in csv.DictReader(handle)
            if float(row["quantity"]) != 0
        }


async def stored_daily_demand(engine: AsyncEngine) -> dict[tuple[str, str], float]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT product_id, business_day, quantity_units FROM daily_demand")
        )
        return {
            (row.product_id, row.business_day.isoformat()): float(row.quantity_units)
            for row in rows
        }


async def test_replay_of_the_sample_reproduces_its_daily_demand(
    settings: Settings, engine: AsyncEngine
) -> None:
    london = Settings(
        _env_file=None, **{**settings.model_dump(), "business_timezone": "Europe/London"}
    )
    async with running_ingestion(london, engine):
        result = await replay_file(DATA / "transactions.csv.gz", london, progress=False)

        await wait_until(
            lambda: ledger_count(engine),
            lambda n: n == result.published,
            timeout=120,
            what="the whole sample",
        )
    stored = await stored_daily_demand(engine)
    assert result.published == 206_254
    expected = published_daily_demand()
    assert len(stored) == len(expected)
    assert stored == expected


async def test_replay_of_the_sample_trains_models_while_ingestion_continues(
    settings: Settings, engine: AsyncEngine
) -> None:
    from ml_analytics import metrics

    counted = metrics.EVENTS_INGESTED.labels(settings.transactions_topic, "counted")
    fitted = metrics.FITS.labels("succeeded")
    counted_before, fitted_before = counted._value.get(), fitted._value.get()
    progress: list[tuple[float, float]] = []  # (events counted, fits done) over time

    async def sample_progress() -> None:
        while True:
            progress.append(
                (counted._value.get() - counted_before, fitted._value.get() - fitted_before)
            )
            await asyncio.sleep(0.1)

    async with running_service(settings, engine):
        sampler = asyncio.create_task(sample_progress())
        # Paced (about 52 s), so that ingestion lasts well past the first fits: the
        # first batch of products waits for the workers to start and load (at 8,000/s,
        # 26 s, a slow CI run once saw no fit finish before the last transaction).
        sent = await replay_file(DATA / "transactions.csv.gz", settings, rate=4_000, progress=False)
        await replay_file(DATA / "stock_levels.csv", settings, progress=False)

        await wait_until(
            lambda: scalar(engine, "SELECT count(*) FROM product_models"),
            lambda n: n == 600,
            timeout=300,
            interval=1,
            what="a model per product",
        )
        # A product whose level changes publishes again: read until every product is seen.
        events = await read_topic(
            settings,
            settings.stockout_risk_topic,
            600,
            timeout=90,
            enough=lambda found: len({json.loads(r.value)["product_id"] for r in found}) >= 600,
        )
        sampler.cancel()

        # Risk events may be out for every product while the last transactions are
        # still being counted (a slow machine's consumer lags the paced replay).
        async def counted_so_far() -> float:
            return float(counted._value.get() - counted_before)

        await wait_until(
            counted_so_far,
            lambda n: n >= sent.published,
            timeout=120,
            what="every transaction counted",
        )
    assert counted._value.get() - counted_before == sent.published
    overlap = [(n, f) for n, f in progress if f > 0 and n < sent.published]
    assert overlap, "fits should complete while transactions are still being ingested"
    assert len({json.loads(record.value)["product_id"] for record in events}) == 600
