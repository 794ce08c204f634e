"""A replay of the real sample reproduces its published daily demand exactly."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.cli.replay import replay_file
from ml_analytics.services.ledger import LedgerRetention
from ml_analytics.settings import Settings
from tests.helpers import (
    keyed,
    ledger_count,
    publish,
    read_topic,
    running_ingestion,
    running_service,
    scalar,
    transaction,
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


BACKFILL = 1000


async def snapshot(engine: AsyncEngine) -> dict[str, tuple[str, str, date]]:
    """Each product's risk level and model: what a stray event must not change."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT r.product_id, r.risk_level, m.model_name, m.trained_through "
                "FROM product_risk r JOIN product_models m USING (product_id)"
            )
        )
        return {row.product_id: (row.risk_level, row.model_name, row.trained_through)
                for row in rows}  # fmt: skip


async def quiet(engine: AsyncEngine, seconds: float = 8.0, timeout: float = 180.0) -> None:
    """Wait until no model is stored and no risk assessed for `seconds` (the replay's
    last global model refreshes every product once)."""
    query = "SELECT greatest((SELECT max(trained_at) FROM product_models), (SELECT max(assessed_at) FROM product_risk))"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = await scalar(engine, query)
        await asyncio.sleep(seconds)
        if await scalar(engine, query) == last:
            return
    raise AssertionError("the service did not settle")


async def a_stray_event_moves_nothing_and_the_backfill_behind_it_counts(
    settings: Settings, engine: AsyncEngine, published: int
) -> None:
    """One transaction dated now (a till with the wall clock's time beside the replay),
    then a backfill of the sample's last day behind it: the clock stays where the stream
    is, no product is retrained or changes level, the ledger keeps everything, and the
    backfill is counted."""
    await quiet(engine)
    clock = await scalar(engine, "SELECT newest_event_at FROM stream_clock")
    before = await snapshot(engine)
    now = datetime.now(UTC)
    stray = transaction("stray-now", "85123A", now.isoformat(), 1)
    products = sorted(before)
    backfill = [
        transaction(f"backfill-{i}", products[i % len(products)], "2011-12-09T09:00:00Z", 1)
        for i in range(BACKFILL)
    ]
    await publish(settings, settings.transactions_topic, keyed([stray]))
    await publish(settings, settings.transactions_topic, keyed(backfill))
    await wait_until(
        lambda: ledger_count(engine),
        lambda n: n == published + 1 + BACKFILL,
        timeout=60,
        what="the stray event and the backfill counted",
    )
    await asyncio.sleep(5)  # what a moved clock would start: refits, reassessments
    await quiet(engine, seconds=3)
    assert await scalar(engine, "SELECT newest_event_at FROM stream_clock") == clock
    assert await snapshot(engine) == before
    assert (
        await scalar(
            engine,
            "SELECT quantity_units FROM daily_demand WHERE product_id = '85123A' "
            "AND business_day = :d",
            d=now.date(),
        )
        == 1
    )  # counted on its day
    assert await LedgerRetention(engine, settings).run_once() == 0
    assert await ledger_count(engine) == published + 1 + BACKFILL


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
        await a_stray_event_moves_nothing_and_the_backfill_behind_it_counts(
            settings, engine, sent.published
        )
    assert counted._value.get() - counted_before == sent.published + 1 + BACKFILL
    overlap = [(n, f) for n, f in progress if f > 0 and n < sent.published]
    assert overlap, "fits should complete while transactions are still being ingested"
    assert len({json.loads(record.value)["product_id"] for record in events}) == 600
