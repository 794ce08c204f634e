"""The storage queries against a real PostgreSQL: idempotent writes and history reads."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.services.ingestion.sort import SortedBatch
from ml_analytics.storage.demand import (
    StockSnapshot,
    daily_demand_series,
    latest_stock_snapshot,
    product_summary,
    products_with_new_data,
    stock_history,
)
from ml_analytics.storage.ingest_writes import TransactionRow
from tests.helpers import write_batch

pytestmark = pytest.mark.integration


def tx(event_id: str, product: str, day: date, units: float) -> TransactionRow:
    return TransactionRow(event_id, product, day, units)


def snap(event_id: str, product: str, as_of: datetime, units: float, lead: int | None = None):  # type: ignore[no-untyped-def]
    return StockSnapshot(event_id, product, as_of, units, lead)


async def test_redelivered_transactions_are_counted_once(engine: AsyncEngine) -> None:
    day = date(2026, 11, 1)
    first = await write_batch(
        engine, SortedBatch.of(transactions=[tx("a", "P", day, 2), tx("b", "P", day, 3)])
    )
    again = await write_batch(
        engine, SortedBatch.of(transactions=[tx("b", "P", day, 3), tx("c", "P", day, 0.5)])
    )
    assert (first.transactions_counted, first.transactions_seen_before) == (2, 0)
    assert first.products_with_new_demand == {"P"}
    assert (again.transactions_counted, again.transactions_seen_before) == (1, 1)
    async with engine.connect() as connection:
        (only_day,) = await daily_demand_series(connection, "P")
        summary = await product_summary(connection, "P")
    assert (only_day.quantity_units, only_day.transactions) == (5.5, 3)
    assert summary is not None
    assert (summary.total_units, summary.transaction_count) == (5.5, 3)


async def test_fractional_units_sum_exactly(engine: AsyncEngine) -> None:
    day = date(2026, 11, 1)
    rows = [tx(f"f{i}", "F", day, 0.1) for i in range(10)]
    for row in rows:
        await write_batch(engine, SortedBatch.of(transactions=[row]))
    async with engine.connect() as connection:
        (only_day,) = await daily_demand_series(connection, "F")
    assert only_day.quantity_units == 1.0  # 0.1 added ten times in floating point is not 1.0


async def test_daily_series_is_zero_filled_and_narrowed_by_range(engine: AsyncEngine) -> None:
    start = date(2026, 1, 30)
    await write_batch(
        engine,
        SortedBatch.of(
            transactions=[
                tx("1", "Z", start, 4),
                tx("2", "Z", start + timedelta(days=3), 1),
                tx("3", "Z", start + timedelta(days=3), 2),
                tx("4", "other", start + timedelta(days=1), 9),
            ]
        ),
    )
    async with engine.connect() as connection:
        series = await daily_demand_series(connection, "Z")
        narrowed = await daily_demand_series(
            connection, "Z", start + timedelta(days=1), start + timedelta(days=30)
        )
        unknown = await daily_demand_series(connection, "nobody")
    assert [(d.day.isoformat(), d.quantity_units, d.transactions) for d in series] == [
        ("2026-01-30", 4.0, 1),
        ("2026-01-31", 0.0, 0),
        ("2026-02-01", 0.0, 0),
        ("2026-02-02", 3.0, 2),
    ]
    assert [d.day for d in narrowed] == [date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 2)]
    assert unknown == []


async def test_late_older_stock_snapshot_is_history_not_current(engine: AsyncEngine) -> None:
    t0 = datetime(2026, 11, 1, 18, tzinfo=UTC)
    newer = await write_batch(engine, SortedBatch.of(stock_levels=[snap("s2", "S", t0, 480, 10)]))
    late = await write_batch(
        engine, SortedBatch.of(stock_levels=[snap("s1", "S", t0 - timedelta(days=1), 500, 7)])
    )
    repeat = await write_batch(engine, SortedBatch.of(stock_levels=[snap("s2", "S", t0, 480, 10)]))
    assert newer.products_with_new_stock == {"S"}
    assert late.products_with_new_stock == set() and late.stock_snapshots_recorded == 1
    assert repeat.seen_before["stock_levels"] == 1
    async with engine.connect() as connection:
        current = await latest_stock_snapshot(connection, "S")
        history = await stock_history(connection, "S")
    assert current is not None
    assert (current.event_id, current.stock_units, current.lead_time_days) == ("s2", 480, 10)
    assert [s.event_id for s in history] == ["s1", "s2"]


async def test_newest_snapshot_within_one_batch_wins(engine: AsyncEngine) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    await write_batch(
        engine,
        SortedBatch.of(
            stock_levels=[
                snap("b", "M", t0 + timedelta(hours=2), 7),
                snap("a", "M", t0 + timedelta(hours=5), 3),
                snap("c", "M", t0, 9),
            ]
        ),
    )
    async with engine.connect() as connection:
        current = await latest_stock_snapshot(connection, "M")
    assert current is not None and current.event_id == "a" and current.stock_units == 3


async def test_products_with_new_data_since_a_time(engine: AsyncEngine) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    await write_batch(engine, SortedBatch.of(transactions=[tx("n1", "N", date(2026, 1, 1), 1)]))
    async with engine.connect() as connection:
        changed = await products_with_new_data(connection, before)
        later = await products_with_new_data(connection, datetime.now(UTC) + timedelta(seconds=5))
    assert [p.product_id for p in changed] == ["N"]
    assert later == []


async def test_migrations_and_table_definitions_agree(engine: AsyncEngine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from ml_analytics.storage.tables import metadata

    def ours(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
        # The ledger's weekly partitions are created at run time, not declared.
        return not (type_ == "table" and name and name.startswith("transaction_events_"))

    def differences(connection):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(connection, opts={"include_object": ours})
        return compare_metadata(context, metadata)

    async with engine.connect() as connection:
        found = await connection.run_sync(differences)
    assert [d for d in found if "alembic_version" not in str(d)] == []
