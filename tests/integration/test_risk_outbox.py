"""Risk assessments and the outbox against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.consumers.broker import build_broker, declare_publishers
from ml_analytics.services.ingestion.sort import SortedBatch
from ml_analytics.services.risk import RiskService, assess_product
from ml_analytics.settings import Settings
from ml_analytics.storage.demand import StockSnapshot
from ml_analytics.storage.models_store import StoredModel, save_model
from tests.helpers import unique, write_batch

pytestmark = pytest.mark.integration


async def store_model_and_stock(
    engine: AsyncEngine, product: str, stock: float, lead_time_days: int = 10
) -> None:
    model = StoredModel(
        product_id=product,
        model_name="prophet",
        trained_at=datetime.now(UTC),
        trained_through=date(2026, 9, 28),
        training_days=120,
        units_seen=2400.0,
        forecast_start=date(2026, 9, 29),
        yhat=[20.0] * 30,
        yhat_lower=[10.0] * 30,
        yhat_upper=[30.0] * 30,
        sample_paths=np.full((50, 30), 20.0),
        metrics={"mape": 10.0, "rmse": 3.0},
        seasonality={"weekly": False},
        fit_seconds=0.1,
    )
    async with engine.begin() as connection:
        await save_model(connection, model)
    as_of = datetime(2026, 9, 28, 18, tzinfo=UTC)
    await record_stock(engine, product, "s", as_of, stock, lead_time_days)


async def record_stock(
    engine: AsyncEngine,
    product: str,
    tag: str,
    as_of: datetime,
    units: float,
    lead_time_days: int = 10,
) -> None:
    snapshot = StockSnapshot(f"{product}-{tag}", product, as_of, units, lead_time_days)
    await write_batch(engine, SortedBatch.of(stock_levels=[snapshot]))


async def outbox_levels(engine: AsyncEngine, product: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT payload->>'risk_level' FROM risk_outbox WHERE product_id = :p ORDER BY created_at"
            ),
            {"p": product},
        )
        return [row[0] for row in rows]


@pytest.fixture
def risk(settings: Settings, engine: AsyncEngine) -> RiskService:
    """The risk service, publishing to the test's stockout-risk topic."""
    publisher = declare_publishers(build_broker(settings), settings)["stockout_risk"]
    return RiskService(engine, publisher, settings)


async def test_concurrent_assessments_of_one_product_queue_its_first_event_once(
    engine: AsyncEngine, risk: RiskService
) -> None:
    product = unique("race")
    await store_model_and_stock(engine, product, stock=100)
    queued = await asyncio.gather(*(risk.reassess([product]) for _ in range(5)))
    assert sum(queued) == 1
    assert await outbox_levels(engine, product) == ["high"]  # 20 a day against 100 over 10 days


async def test_a_lead_time_past_the_stored_forecast_is_assessed_over_all_of_it(
    engine: AsyncEngine, settings: Settings
) -> None:
    # The stored forecast covers 30 days at 20 a day; the lead time is 60 days.
    product = unique("long-lead")
    await store_model_and_stock(engine, product, stock=1_000, lead_time_days=60)
    async with engine.connect() as connection:
        risk = await assess_product(connection, product, settings)
    assert risk is not None and risk.risk_window_days == 60
    assert risk.stockout_probability == 1.0 and risk.risk_level == "high"
    assert risk.days_until_stockout == 51  # 1,000 units last 50 days
    assert (risk.reorder_point_units, risk.order_up_to_units) == (
        60 * 20,
        (60 + settings.review_period_days) * 20,
    )


async def test_same_level_again_queues_nothing_and_a_change_queues_one(
    engine: AsyncEngine, risk: RiskService
) -> None:
    product = unique("steady")
    await store_model_and_stock(engine, product, stock=100)
    assert await risk.reassess([product]) == 1
    assert await risk.reassess([product]) == 0
    await record_stock(engine, product, "refill", datetime(2026, 9, 28, 20, tzinfo=UTC), 10_000)
    assert await risk.reassess([product]) == 1
    assert await outbox_levels(engine, product) == ["high", "low"]


async def test_published_events_are_pruned_after_the_retention_and_queued_ones_never(
    engine: AsyncEngine, risk: RiskService
) -> None:
    old, fresh, queued = unique("old"), unique("fresh"), unique("queued")
    for product in (old, fresh, queued):
        await store_model_and_stock(engine, product, stock=100)
        assert await risk.reassess([product]) == 1
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE risk_outbox SET published_at = now() - "
                "CASE product_id WHEN :old THEN interval '8 days' ELSE interval '1 day' END "
                "WHERE product_id IN (:old, :fresh)"
            ),
            {"old": old, "fresh": fresh},
        )
    assert await risk.prune_outbox() == 1  # RISK_OUTBOX_RETENTION_DAYS defaults to 7
    assert await outbox_levels(engine, old) == []
    assert await outbox_levels(engine, fresh) == ["high"]
    assert await outbox_levels(engine, queued) == ["high"]  # not published yet: kept
