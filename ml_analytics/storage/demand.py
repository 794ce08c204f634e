"""Reads of stored demand and stock: summaries, zero-filled daily series, snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.models.censoring import StockCount
from ml_analytics.storage.rows import all_of, from_fields, one_or_none


@dataclass(frozen=True, slots=True)
class DemandDay:
    day: date
    quantity_units: float
    transactions: int


@dataclass(frozen=True, slots=True)
class ProductSummary:
    product_id: str
    first_day: date | None
    last_day: date | None
    total_units: float
    transaction_count: int
    data_updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class StockSnapshot:
    event_id: str
    product_id: str
    as_of: datetime
    stock_units: float
    lead_time_days: int | None
    on_order_units: float = 0.0
    order_multiple_units: float | None = None
    target_service_level: float | None = None


# The stock level's fields, as stored with each snapshot and with the current one.
STOCK_COLUMNS = (
    "stock_units, lead_time_days, on_order_units, order_multiple_units, target_service_level"
)
_SUMMARY_COLUMNS = (
    "product_id, first_day, last_day, total_units, transaction_count, data_updated_at"
)


def _summary(row: Any) -> ProductSummary:
    return from_fields(ProductSummary, row, numeric=["total_units"])


def _snapshot(row: Any) -> StockSnapshot:
    return from_fields(StockSnapshot, row, numeric=["stock_units", "on_order_units"])


async def product_summary(connection: AsyncConnection, product_id: str) -> ProductSummary | None:
    return await one_or_none(
        connection,
        f"SELECT {_SUMMARY_COLUMNS} FROM products WHERE product_id = :product_id",
        {"product_id": product_id},
        _summary,
    )


# No series read is longer than this, whatever the bounds say (a century of days).
MAX_SERIES_DAYS = 36_600


async def daily_demand_series(
    connection: AsyncConnection,
    product_id: str,
    first_day: date | None = None,
    last_day: date | None = None,
    max_days: int = MAX_SERIES_DAYS,
    through: date | None = None,
) -> list[DemandDay]:
    """A product's daily demand, days without transactions as zero, in day order.

    The series runs from the first to the last day with data, narrowed to
    [first_day, last_day] when given, and to its latest `max_days` days. With
    `through` (the clock's last complete day) it runs to that day instead of the
    last day with data: zeros after a product's last sale are demand too, and data
    after it is not complete yet. Empty for a product without transactions.
    """
    result = await connection.execute(
        text(
            """
WITH span AS (
    SELECT GREATEST(first_day, COALESCE(CAST(:first_day AS date), first_day)) AS lo,
           COALESCE(CAST(:through AS date),
                    LEAST(last_day, COALESCE(CAST(:last_day AS date), last_day))) AS hi
    FROM products WHERE product_id = :product_id AND first_day IS NOT NULL
),
bounds AS (SELECT GREATEST(lo, hi - CAST(:max_days AS integer) + 1) AS lo, hi FROM span)
SELECT CAST(day AS date) AS day,
       COALESCE(d.quantity_units, 0) AS quantity_units,
       COALESCE(d.transaction_count, 0) AS transactions
FROM bounds, generate_series(bounds.lo, bounds.hi, interval '1 day') AS day
LEFT JOIN daily_demand AS d
       ON d.product_id = :product_id AND d.business_day = CAST(day AS date)
ORDER BY day
"""
        ),
        {
            "product_id": product_id,
            "first_day": first_day,
            "last_day": last_day,
            "through": through,
            "max_days": min(max_days, MAX_SERIES_DAYS),
        },
    )
    return [
        DemandDay(
            day=row.day, quantity_units=float(row.quantity_units), transactions=row.transactions
        )
        for row in result
    ]


async def units_between(
    connection: AsyncConnection, product_id: str, first_day: date, last_day: date
) -> float:
    """The product's units on the days from `first_day` to `last_day`, inclusive."""
    value = (
        await connection.execute(
            text(
                "SELECT COALESCE(sum(quantity_units), 0) FROM daily_demand "
                "WHERE product_id = :p AND business_day BETWEEN :first AND :last"
            ),
            {"p": product_id, "first": first_day, "last": last_day},
        )
    ).scalar_one()
    return float(value)


async def latest_stock_snapshot(
    connection: AsyncConnection, product_id: str
) -> StockSnapshot | None:
    """The product's current stock: the snapshot with the newest as_of."""
    return await one_or_none(
        connection,
        "SELECT stock_event_id AS event_id, product_id, stock_as_of AS as_of, "
        f"{STOCK_COLUMNS} "
        "FROM products WHERE product_id = :product_id AND stock_as_of IS NOT NULL",
        {"product_id": product_id},
        _snapshot,
    )


async def stock_history(connection: AsyncConnection, product_id: str) -> list[StockSnapshot]:
    """Every snapshot received for the product, oldest as_of first."""
    return await all_of(
        connection,
        f"SELECT event_id, product_id, as_of, {STOCK_COLUMNS} FROM stock_snapshots "
        "WHERE product_id = :product_id ORDER BY as_of, event_id",
        {"product_id": product_id},
        _snapshot,
    )


async def products_with_new_data(
    connection: AsyncConnection, since: datetime, limit: int = 1000
) -> list[ProductSummary]:
    """Products whose demand changed after `since` (wall-clock), oldest change first."""
    return await all_of(
        connection,
        f"SELECT {_SUMMARY_COLUMNS} FROM products WHERE data_updated_at > :since "
        "ORDER BY data_updated_at, product_id LIMIT :limit",
        {"since": since, "limit": limit},
        _summary,
    )


async def stock_counts(
    connection: AsyncConnection, product_id: str, first_day: date, last_day: date, zone: tzinfo
) -> list[StockCount]:
    """The product's stock levels as the closing units of their business days in `zone`,
    oldest first: the last one before `first_day` (it opens the first bracket) and every
    one up to `last_day` (several on one day: the newest as_of, then event_id, last)."""
    start = datetime.combine(first_day, time.min, tzinfo=zone)
    end = datetime.combine(last_day + timedelta(days=1), time.min, tzinfo=zone)
    rows = await connection.execute(
        text(
            "(SELECT as_of, stock_units, event_id FROM stock_snapshots "
            " WHERE product_id = :p AND as_of < :start ORDER BY as_of DESC, event_id DESC LIMIT 1) "
            "UNION ALL "
            "(SELECT as_of, stock_units, event_id FROM stock_snapshots "
            " WHERE product_id = :p AND as_of >= :start AND as_of < :end) "
            "ORDER BY as_of, event_id"
        ),
        {"p": product_id, "start": start, "end": end},
    )
    return [StockCount(row.as_of.astimezone(zone).date(), float(row.stock_units)) for row in rows]
