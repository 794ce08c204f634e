"""The stream's event-time clock in PostgreSQL: one row, moved forward only, and only as
far as the stream corroborates.

Each product keeps the newest event time it has shown (`products.event_time_at`,
written with its transactions; storage/ingest_writes.py). The clock may move to the
K-th newest of those over distinct products (K = CLOCK_CORROBORATION_PRODUCTS):
events of fewer than K products, however far ahead, move nothing until others reach
them. A catalogue of K products or fewer needs all but one (a single product moves it
alone), so that one product that stops selling never stops the clock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# The K-th newest product event time; while there are K products or fewer, the
# (N-1)-th of N (the newest of a single product).
_CORROBORATED = """
SELECT event_time_at AS at FROM (
    SELECT event_time_at, row_number() OVER (ORDER BY event_time_at DESC) AS rank,
           count(*) OVER () AS products
    FROM (SELECT event_time_at FROM products WHERE event_time_at IS NOT NULL
          ORDER BY event_time_at DESC LIMIT :products + 1) AS newest
) AS ranked
WHERE rank = LEAST(:products, GREATEST(1, products - 1))
"""


async def advance_clock(
    connection: AsyncConnection, corroborating_products: int
) -> tuple[bool, datetime | None]:
    """Move the clock to the newest event time that `corroborating_products` distinct
    products have reached, if that is newer: (whether it moved, the clock now).

    Replicas ingesting different partitions all move the one clock; it never goes back.
    """
    row = (
        await connection.execute(
            text(
                f"WITH corroborated AS ({_CORROBORATED}), moved AS ("
                "UPDATE stream_clock SET newest_event_at = corroborated.at, updated_at = now() "
                "FROM corroborated "
                "WHERE clock_id = 1 AND corroborated.at IS NOT NULL "
                "AND (newest_event_at IS NULL OR newest_event_at < corroborated.at) "
                "RETURNING newest_event_at) "
                "SELECT (SELECT newest_event_at FROM moved) AS moved, "
                "(SELECT newest_event_at FROM stream_clock WHERE clock_id = 1) AS before"
            ),
            {"products": corroborating_products},
        )
    ).one()
    if row.moved is not None:
        return True, row.moved
    return False, row.before


async def read_clock(connection: AsyncConnection) -> datetime | None:
    """The clock's event time (None before the first transaction)."""
    value: datetime | None = (
        await connection.execute(
            text("SELECT newest_event_at FROM stream_clock WHERE clock_id = 1")
        )
    ).scalar_one_or_none()
    return value


async def held_ahead(connection: AsyncConnection, limit: int = 5) -> tuple[int, list[str]]:
    """Products whose newest event time is more than a day ahead of the clock (held
    until others corroborate it): how many, and the first few ids."""
    rows = (
        await connection.execute(
            text(
                "SELECT product_id, count(*) OVER () AS held FROM products "
                "WHERE event_time_at > (SELECT newest_event_at FROM stream_clock "
                "WHERE clock_id = 1) + interval '1 day' "
                "ORDER BY event_time_at DESC LIMIT :limit"
            ),
            {"limit": limit},
        )
    ).all()
    return (int(rows[0].held) if rows else 0), [row.product_id for row in rows]
