"""Ingestion through the real broker into the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.devstack import EmbeddedPostgres
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine, migrate
from ml_analytics.storage.demand import daily_demand_series, latest_stock_snapshot
from tests.conftest import make_settings
from tests.helpers import (
    keyed,
    ledger_count,
    publish,
    read_topic,
    running_ingestion,
    transaction,
    unique,
    wait_until,
)
from tests.services import StackServices

pytestmark = pytest.mark.integration


async def _value(counter: object) -> float:
    return float(counter._value.get())  # type: ignore[attr-defined]


async def series(engine: AsyncEngine, product_id: str) -> list[tuple[str, float, int]]:
    async with engine.connect() as connection:
        days = await daily_demand_series(connection, product_id)
    return [(d.day.isoformat(), d.quantity_units, d.transactions) for d in days]


async def test_daily_totals_are_bucketed_in_the_business_time_zone(
    services: StackServices, database_url: str
) -> None:
    settings = make_settings(services, database_url, business_timezone="America/New_York")
    from ml_analytics.consumers.admin import ensure_topics

    await ensure_topics(settings, wait_seconds=20)
    engine = create_engine(settings)
    product = unique("tz")
    events = [
        transaction("e1", product, "2026-11-01T23:30:00-05:00", 2),  # New York, Nov 1
        transaction("e2", product, "2026-11-02T03:00:00Z", 3),  # 22:00 in New York, Nov 1
        transaction("e3", product, "2026-11-02T05:00:00Z", 5),  # 00:00 in New York, Nov 2
        transaction("e4", product, "2026-11-04", 1.5),  # a plain date is that business day
    ]
    try:
        async with running_ingestion(settings, engine):
            await publish(settings, settings.transactions_topic, keyed(events))
            await wait_until(lambda: ledger_count(engine), lambda n: n == 4, what="4 events")
        assert await series(engine, product) == [
            ("2026-11-01", 5.0, 2),
            ("2026-11-02", 5.0, 1),
            ("2026-11-03", 0.0, 0),
            ("2026-11-04", 1.5, 1),
        ]
    finally:
        await engine.dispose()


async def test_redelivered_and_republished_events_are_counted_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("redeliver")
    events = [
        transaction(f"r{i}", product, f"2026-11-{1 + i % 3:02d}T10:00:00Z", 1 + i)
        for i in range(30)
    ]
    expected = Counter[str]()
    for event in events:
        expected[event["occurred_at"][:10]] += event["quantity_units"]

    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, keyed(events))
        await wait_until(lambda: ledger_count(engine), lambda n: n == 30, what="30 events")
        # Upstream publishes the same events again: same event_ids.
        await publish(settings, settings.transactions_topic, keyed(events[:10]))
        marker = transaction("marker", product, "2026-11-01T10:00:00Z", 100)
        await publish(settings, settings.transactions_topic, keyed([marker]))
        await wait_until(lambda: ledger_count(engine), lambda n: n == 31, what="the marker")
        lags = [
            sample.value
            for metric in metrics.CONSUMER_LAG.collect()
            for sample in metric.samples
            if sample.labels["topic"] == settings.transactions_topic
        ]
        assert lags and all(lag >= 0 for lag in lags)  # reported per owned partition
    # A new consumer group reads the whole topic again from the start: a full redelivery.
    regrouped = Settings(
        _env_file=None, **{**settings.model_dump(), "kafka_group_id": unique("regroup")}
    )
    assert regrouped.group_id != settings.group_id
    seen_before = metrics.EVENTS_INGESTED.labels(settings.transactions_topic, "seen_before")
    seen_before_at_start = seen_before._value.get()
    async with running_ingestion(regrouped, engine):
        await wait_until(
            lambda: _value(seen_before),
            # every unique event again (30 + the marker); republished copies may be in-batch repeats
            lambda n: n - seen_before_at_start >= 31,
            what="the whole topic read again",
        )
    expected["2026-11-01"] += 100
    assert await ledger_count(engine) == 31
    assert {day: units for day, units, _ in await series(engine, product)} == {
        day: float(units) for day, units in expected.items()
    }


async def test_duplicates_within_one_batch_count_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("dup")
    event = transaction("only-once", product, "2026-11-01T10:00:00Z", 7)
    await publish(settings, settings.transactions_topic, keyed([event] * 25))
    async with running_ingestion(settings, engine):
        await wait_until(lambda: ledger_count(engine), lambda n: n == 1, what="one event")
        await asyncio.sleep(1)
    assert await series(engine, product) == [("2026-11-01", 7.0, 1)]


BAD_TRANSACTIONS: list[tuple[bytes | None, str]] = [
    (b"this is not json", "value is not valid JSON"),
    (b"\xff\xfe\xfd", "value is not valid UTF-8"),
    (b"", "value is empty"),
    (b'["a", "list"]', "value must be a JSON object"),
    (
        b'{"product_id": "P", "occurred_at": "2026-11-01", "quantity_units": 1}',
        "event_id: required",
    ),
    (
        b'{"event_id": "x1", "occurred_at": "2026-11-01", "quantity_units": 1}',
        "product_id: required",
    ),
    (b'{"event_id": "x2", "product_id": "P", "quantity_units": 1}', "occurred_at: required"),
    (
        b'{"event_id": "x3", "product_id": "P", "occurred_at": "2026-11-01"}',
        "quantity_units: required",
    ),
    (
        b'{"event_id": "x4", "product_id": "P", "occurred_at": "2026-11-01", "quantity_units": "3"}',
        "quantity_units: Input should be a valid number",
    ),
    (
        b'{"event_id": "x5", "product_id": "P", "occurred_at": "2026-11-01", "quantity_units": NaN}',
        "quantity_units: must be a finite number",
    ),
    (
        b'{"event_id": "x6", "product_id": "P", "occurred_at": "2026-11-01", "quantity_units": Infinity}',
        "quantity_units: must be a finite number",
    ),
    (
        b'{"event_id": "x7", "product_id": "P", "occurred_at": "2026-11-01", "quantity_units": -4}',
        "quantity_units: Input should be greater than 0",
    ),
    (
        b'{"event_id": "x8", "product_id": "P", "occurred_at": "2026-11-01", "quantity_units": 0}',
        "quantity_units: Input should be greater than 0",
    ),
    (
        b'{"event_id": "x9", "product_id": "P", "occurred_at": "last tuesday", "quantity_units": 1}',
        "occurred_at: is not an ISO-8601 datetime",
    ),
    (
        b'{"event_id": "x10", "product_id": "P", "occurred_at": "2026-11-01T10:00:00", "quantity_units": 1}',
        "occurred_at: has no UTC offset",
    ),
    (
        json.dumps(
            {
                "event_id": "x11",
                "product_id": "P" * 129,
                "occurred_at": "2026-11-01",
                "quantity_units": 1,
            }
        ).encode(),
        "product_id: String should have at most 128",
    ),
    (
        json.dumps(
            {
                "event_id": "e" * 200,
                "product_id": "P",
                "occurred_at": "2026-11-01",
                "quantity_units": 1,
            }
        ).encode(),
        "event_id: String should have at most 128",
    ),
    (
        b'{"event_id": "x12", "product_id": "P\\u0000", "occurred_at": "2026-11-01", "quantity_units": 1}',
        "product_id: must not contain the NUL character",
    ),
]


async def test_every_kind_of_bad_input_lands_in_dead_letters_with_its_reason(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("mixed")
    good = [transaction(f"g{i}", product, "2026-11-01T10:00:00Z", 1) for i in range(5)]
    stream: list[tuple[bytes | None, dict[str, Any] | bytes]] = []
    for index, (value, _) in enumerate(BAD_TRANSACTIONS):
        stream.append((b"bad-key-%d" % index, value))
        if index < len(good):
            stream.extend(keyed([good[index]]))
    bad_stock_level = (
        b'{"event_id": "s1", "product_id": "P", "as_of": "2026-11-01", "stock_units": -1}'
    )
    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, stream)
        await publish(settings, settings.stock_levels_topic, [(b"P", bad_stock_level)])
        letters = await read_topic(settings, settings.dead_letter_topic, len(BAD_TRANSACTIONS) + 1)
        await wait_until(lambda: ledger_count(engine), lambda n: n == 5, what="the good events")

    assert len(letters) == len(BAD_TRANSACTIONS) + 1
    by_key = {record.key: json.loads(record.value) for record in letters}
    for index, (value, reason) in enumerate(BAD_TRANSACTIONS):
        letter = by_key[b"bad-key-%d" % index]
        assert reason in letter["error"], (reason, letter["error"])
        assert letter["source_topic"] == settings.transactions_topic
        assert isinstance(letter["partition"], int) and isinstance(letter["offset"], int)
        assert letter["key"] == f"bad-key-{index}"
        assert letter["failed_at"]
        if letter["value_encoding"] == "base64":
            import base64

            assert base64.b64decode(letter["value"]) == value
        else:
            assert letter["value"] == value.decode()
    stock_letter = by_key[b"P"]
    assert stock_letter["source_topic"] == settings.stock_levels_topic
    assert "stock_units: Input should be greater than or equal to 0" in stock_letter["error"]
    assert await series(engine, product) == [("2026-11-01", 5.0, 5)]


async def test_out_of_order_stock_levels_keep_the_newest_as_current(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("stock")
    levels = [
        {
            "event_id": "s-new",
            "product_id": product,
            "as_of": "2026-11-02T18:00:00Z",
            "stock_units": 480,
            "lead_time_days": 10,
        },
        {
            "event_id": "s-old",
            "product_id": product,
            "as_of": "2026-11-01T18:00:00Z",
            "stock_units": 500,
        },
    ]
    async with running_ingestion(settings, engine):
        await publish(settings, settings.stock_levels_topic, keyed(levels))

        async def current() -> Any:
            async with engine.connect() as connection:
                count = (
                    await connection.execute(
                        text("SELECT count(*) FROM stock_snapshots WHERE product_id = :p"),
                        {"p": product},
                    )
                ).scalar_one()
                return count, await latest_stock_snapshot(connection, product)

        _, snapshot = await wait_until(current, lambda v: v[0] == 2, what="both snapshots")
    assert snapshot is not None
    assert (snapshot.event_id, snapshot.stock_units, snapshot.lead_time_days) == ("s-new", 480, 10)


async def test_database_outage_pauses_ingestion_and_loses_nothing(
    services: StackServices, tmp_path: Path
) -> None:
    # A PostgreSQL of this test's own, so it can be stopped and started again.
    postgres = EmbeddedPostgres(tmp_path / "pg").start()
    url = postgres.database_url("outage")
    await migrate(url)
    settings = make_settings(services, url, ingest_retry_max_seconds=1.0)
    from ml_analytics.consumers.admin import ensure_topics

    await ensure_topics(settings, wait_seconds=20)
    engine = create_engine(settings)
    retried_before = metrics.BATCHES.labels("retried")._value.get()
    product = unique("outage")
    first = [transaction(f"o{i}", product, "2026-11-01T10:00:00Z", 1) for i in range(100)]
    during = [transaction(f"o{i}", product, "2026-11-02T10:00:00Z", 2) for i in range(100, 300)]
    try:
        async with running_ingestion(settings, engine):
            await publish(settings, settings.transactions_topic, keyed(first))
            await wait_until(lambda: ledger_count(engine), lambda n: n == 100, what="first 100")
            postgres.stop()
            await publish(settings, settings.transactions_topic, keyed(during))
            await asyncio.sleep(3)  # the consumer meets the outage and keeps retrying
            postgres.start()
            restarted = time.monotonic()
            await wait_until(
                lambda: ledger_count(engine),
                lambda n: n == 300,
                timeout=60,
                what="all 300 after the restart",
            )
            recovered_seconds = time.monotonic() - restarted
            letters = await read_topic(settings, settings.dead_letter_topic, 1, timeout=2)
        assert letters == []
        assert metrics.BATCHES.labels("retried")._value.get() > retried_before
        assert await series(engine, product) == [
            ("2026-11-01", 100.0, 100),
            ("2026-11-02", 400.0, 200),
        ]
        print(
            "\nFAULT PostgreSQL outage: events_sent=300, events_counted=300, dead_letters=0, "
            f"outage_seconds=3, seconds_to_count_all_after_restart={recovered_seconds:.1f}"
        )
    finally:
        await engine.dispose()
        postgres.stop()
