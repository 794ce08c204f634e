"""Decisions that survive failures, through the real broker and PostgreSQL: an
assessment that fails is tried again until its event is out; a write that fails while
the database answers is loud at once and then stalls only its partition, on the one
record that cannot be written, until an operator skips it; a stock level past the
forecast's reach is assessed, never answered with an order of 0 by accident; and the
stream's clock moves only where other products corroborate it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.services import risk as risk_module
from ml_analytics.settings import Settings
from ml_analytics.storage.models_store import StoredModel, save_model
from tests.helpers import (
    committed_offset,
    encode,
    keyed,
    ledger_count,
    publish,
    publish_to_partition,
    read_topic,
    running_ingestion,
    running_service,
    scalar,
    transaction,
    unique,
    wait_until,
)
from tests.integration.test_stalled_partition import skip

pytestmark = pytest.mark.integration

FORECAST_START = date(2025, 6, 1)  # days past it stay before the wall clock


async def store_model(engine: AsyncEngine, product: str, per_day: float = 20.0) -> None:
    """A model whose 30-day forecast is `per_day` units every day from FORECAST_START."""
    model = StoredModel(
        product_id=product,
        model_name="prophet",
        trained_at=datetime.now(UTC),
        trained_through=FORECAST_START - timedelta(days=1),
        training_days=120,
        units_seen=2400.0,
        forecast_start=FORECAST_START,
        yhat=[per_day] * 30,
        yhat_lower=[per_day / 2] * 30,
        yhat_upper=[per_day * 1.5] * 30,
        sample_paths=np.full((50, 30), per_day),
        metrics={"mape": 10.0, "rmse": 3.0},
        seasonality={"weekly": False},
        fit_seconds=0.1,
    )
    async with engine.begin() as connection:
        await save_model(connection, model)


def stock_level(
    event_id: str, product: str, as_of: date, units: float, **extra: Any
) -> dict[str, Any]:
    return {"event_id": event_id, "product_id": product, "as_of": f"{as_of}T18:00:00Z",
            "stock_units": units, "lead_time_days": 10, **extra}  # fmt: skip


async def risk_events(settings: Settings, product: str, expected: int) -> list[dict[str, Any]]:
    records = await read_topic(
        settings,
        settings.stockout_risk_topic,
        expected,
        timeout=60,
        enough=lambda found: (
            sum(json.loads(r.value)["product_id"] == product for r in found) >= expected
        ),
    )
    return [json.loads(r.value) for r in records if json.loads(r.value)["product_id"] == product]


async def test_an_assessment_that_fails_is_tried_again_until_its_event_is_out(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = unique("flaky")
    await store_model(engine, product)
    real = risk_module.assess_product
    failures: list[str] = []

    async def failing_twice(connection: Any, product_id: str, settings: Settings) -> Any:
        if product_id == product and len(failures) < 2:
            failures.append(product_id)
            raise RuntimeError("injected: the assessment fails")
        return await real(connection, product_id, settings)

    monkeypatch.setattr(risk_module, "assess_product", failing_twice)
    async with running_service(settings, engine):
        level = stock_level(unique("sl"), product, FORECAST_START - timedelta(days=1), 100)
        await publish(settings, settings.stock_levels_topic, keyed([level]))
        (event,) = await risk_events(settings, product, 1)
    assert len(failures) == 2  # failed twice, then assessed: the mark outlived both
    assert event["risk_level"] == "high" and event["current_stock_units"] == 100
    assert await scalar(engine, "SELECT count(*) FROM pending_assessments") == 0


async def test_a_stock_level_past_the_forecast_is_assessed_and_ordered_for(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("ahead")
    await store_model(engine, product, per_day=5.0)
    # Counted 100 days after the 30-day forecast began (the clock lagged): 70 days past
    # its last day.
    counted_on = FORECAST_START + timedelta(days=100)
    async with running_service(settings, engine) as app:
        level = stock_level(unique("sl"), product, counted_on, 20, order_multiple_units=1e12)
        await publish(settings, settings.stock_levels_topic, keyed([level]))
        (event,) = await risk_events(settings, product, 1)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            answer = (await api.get(f"/products/{product}/replenishment")).json()
    # 5 a day: 20 units last 4 days of the 10-day lead time.
    assert event["stockout_probability"] == 1.0 and event["days_until_stockout"] == 5
    assert event["as_of"].startswith(counted_on.isoformat())
    assert answer["order_up_to_units"] == pytest.approx(5 * 17)  # lead time + review, 5 a day
    assert answer["recommended_order_units"] == 1e12  # one multiple, never rounded to 0
    assert event["recommended_order_units"] == 1e12


async def test_a_stock_level_far_past_the_forecast_is_answered_with_why(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("far")
    await store_model(engine, product)
    async with running_service(settings, engine) as app:
        level = stock_level(unique("sl"), product, FORECAST_START + timedelta(days=30 + 400), 20)
        await publish(settings, settings.stock_levels_topic, keyed([level]))
        await wait_until(
            lambda: scalar(
                engine,
                "SELECT count(*) FROM products p WHERE stock_event_id = :e AND NOT EXISTS "
                "(SELECT 1 FROM pending_assessments a WHERE a.product_id = p.product_id)",
                e=level["event_id"],
            ),
            lambda n: n == 1,
            what="the stock level stored and looked at",
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            answer = await api.get(f"/products/{product}/replenishment")
    assert answer.status_code == 409
    assert "past the forecast's last day" in answer.json()["detail"]
    assert await scalar(engine, "SELECT count(*) FROM product_risk") == 0  # no made-up figure


POISON = "poison-row"


def consumer_errors(topic: str, partition: int) -> float:
    """ml_analytics_consumer_errors of one partition, whatever the error's class."""
    return sum(
        sample.value
        for family in metrics.CONSUMER_ERRORS.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
        and sample.labels["topic"] == topic
        and sample.labels["partition"] == str(partition)
    )


async def refuse_product(engine: AsyncEngine, product: str) -> None:
    """A trigger that makes every write of `product`'s demand fail, as a constraint or an
    SQL bug would, with the database up."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.product_id = '{product}' THEN "
                "RAISE EXCEPTION 'this row is refused (a test trigger)'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        await connection.execute(
            text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON daily_demand "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        )


async def test_a_write_that_fails_with_the_database_up_is_loud_then_stalls_its_partition(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = unique("poison")
    topic = settings.transactions_topic
    stuck = 1
    poison_product = f"{tag}-{POISON}"
    await refuse_product(engine, poison_product)
    day = "2026-11-02"
    before = [(b"A", encode(transaction(f"{tag}-before-{i}", f"{tag}-A", day))) for i in range(5)]
    bad = [(b"A", encode(transaction(f"{tag}-bad", poison_product, day, 7)))]
    after = [(b"A", encode(transaction(f"{tag}-after-{i}", f"{tag}-A", day))) for i in range(5)]
    elsewhere = [(b"B", encode(transaction(f"{tag}-else-{i}", f"{tag}-B", day))) for i in range(5)]
    await publish_to_partition(settings, topic, stuck, before + bad + after)
    await publish_to_partition(settings, topic, 3, elsewhere)
    errors_at_start = consumer_errors(topic, stuck)
    tuned = Settings(_env_file=None, **{**settings.model_dump(), "ingest_max_write_attempts": 3})
    async with running_service(tuned, engine) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:

            async def readiness() -> httpx.Response:
                return await api.get("/ready")

            # Loud at once: the first failed try names the partition and its offsets.
            first = await wait_until(
                readiness, lambda r: r.status_code == 503, timeout=20, what="/ready 503"
            )
            assert f"{topic}[{stuck}] offsets" in first.json()["detail"]
            assert "this row is refused" in first.json()["detail"]
            # Then stalled on the one record: the others of its partition before it, and
            # the other partitions, are counted.
            stalled = await wait_until(
                readiness,
                lambda r: "stuck at offset 5" in r.json().get("detail", ""),
                timeout=60,
                what="the partition stalled on its record",
            )
            assert "a record that cannot be written" in stalled.json()["detail"]
            assert "ml-analytics skip" in stalled.json()["detail"]
            await wait_until(lambda: ledger_count(engine, f"{tag}-else"), lambda n: n == 5)
            await wait_until(lambda: ledger_count(engine, f"{tag}-before"), lambda n: n == 5)
            await asyncio.sleep(1)
            assert await ledger_count(engine, f"{tag}-after") == 0  # held, not dropped
            assert await committed_offset(tuned, stuck) == 5
            assert consumer_errors(topic, stuck) >= errors_at_start + 3

            code, output = await skip(tuned, 5)
            assert code == 0, output
            await wait_until(lambda: ledger_count(engine, f"{tag}-after"), lambda n: n == 5)
            await wait_until(readiness, lambda r: r.status_code == 200, timeout=20)
    (letter,) = [
        json.loads(r.value) for r in await read_topic(settings, settings.dead_letter_topic, 1)
    ]
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == (topic, stuck, 5)
    assert "could not be written" in letter["error"] and "this row is refused" in letter["error"]
    assert json.loads(letter["value"])["product_id"] == poison_product  # the record itself
    assert await committed_offset(tuned, stuck) == 11


async def clock(engine: AsyncEngine) -> datetime | None:
    value: datetime | None = await scalar(
        engine, "SELECT newest_event_at FROM stream_clock WHERE clock_id = 1"
    )
    return value


async def test_the_clock_moves_only_where_other_products_corroborate_it(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = unique("clock")
    history = [
        transaction(f"{tag}-{p}-{d}", f"{tag}-P{p}", f"2011-12-{d:02d}T1{p}:00:00Z")
        for p in range(5)
        for d in range(1, 10)
    ]
    now = datetime.now(UTC).replace(microsecond=0)
    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, keyed(history))
        await wait_until(lambda: ledger_count(engine, tag), lambda n: n == len(history))
        # The third newest product's newest event: P2's sale on the 9th at 12:00.
        assert await clock(engine) == datetime(2011, 12, 9, 12, tzinfo=UTC)

        # One device with the wall clock's time, then a backfill behind it.
        stray = transaction(f"{tag}-stray", f"{tag}-P0", now.isoformat())
        backfill = [transaction(f"{tag}-late-{p}", f"{tag}-P{p}", "2011-12-09T20:00:00Z", 2)
                    for p in range(5)]  # fmt: skip
        await publish(settings, settings.transactions_topic, keyed([stray]))
        await publish(settings, settings.transactions_topic, keyed(backfill))
        await wait_until(lambda: ledger_count(engine, tag), lambda n: n == len(history) + 6)
        late = datetime(2011, 12, 9, 20, tzinfo=UTC)  # the backfill's, not the stray's
        await wait_until(
            lambda: clock(engine), lambda at: at == late, what="the clock at the backfill"
        )
        await asyncio.sleep(1)
        assert await clock(engine) == late
        stray_day = await scalar(
            engine,
            "SELECT quantity_units FROM daily_demand WHERE product_id = :p AND business_day = :d",
            p=f"{tag}-P0",
            d=now.date(),
        )
        assert float(stray_day) == 1  # counted on its day, moving nothing

        # Two more products at that time: three corroborate it, and the clock follows.
        confirming = [transaction(f"{tag}-live-{p}", f"{tag}-P{p}", now.isoformat())
                      for p in (1, 2)]  # fmt: skip
        await publish(settings, settings.transactions_topic, keyed(confirming))
        await wait_until(lambda: clock(engine), lambda at: at == now, what="the corroborated clock")


async def test_an_outlier_is_forgotten_once_its_product_sells_again(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = unique("forget")
    quick = Settings(_env_file=None, **{**settings.model_dump(), "clock_evidence_seconds": 1})
    now = datetime.now(UTC).replace(microsecond=0)

    def sale(name: str, product: int, at: str) -> dict[str, Any]:
        return transaction(f"{tag}-{name}", f"{tag}-P{product}", at)

    async with running_ingestion(quick, engine):
        # P0's outlier, then nothing from P0 for longer than its evidence lasts.
        await publish(quick, quick.transactions_topic, keyed([sale("stray", 0, now.isoformat())]))
        first = [sale(f"{p}-1", p, "2011-12-01T12:00:00Z") for p in (1, 2, 3)]
        await publish(quick, quick.transactions_topic, keyed(first))
        await wait_until(lambda: ledger_count(engine, tag), lambda n: n == 4)
        await wait_until(
            lambda: clock(engine), lambda at: at == datetime(2011, 12, 1, 12, tzinfo=UTC)
        )
        await asyncio.sleep(1.5)
        # P0 sells again in the stream's time: its outlier gives way, so two more
        # products far ahead later do not make three with it.
        await publish(quick, quick.transactions_topic,
                      keyed([sale("0-2", 0, "2011-12-02T12:00:00Z")]))  # fmt: skip
        await wait_until(lambda: ledger_count(engine, tag), lambda n: n == 5)
        ahead = [sale(f"ahead-{p}", p, now.isoformat()) for p in (1, 2)]
        await publish(quick, quick.transactions_topic, keyed(ahead))
        await wait_until(lambda: ledger_count(engine, tag), lambda n: n == 7)
        await wait_until(
            lambda: clock(engine), lambda at: at == datetime(2011, 12, 2, 12, tzinfo=UTC)
        )
        await asyncio.sleep(1)
    assert await clock(engine) == datetime(2011, 12, 2, 12, tzinfo=UTC)
