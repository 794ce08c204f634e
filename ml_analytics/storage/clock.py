"""The stream's event-time clock in PostgreSQL: one row, moved forward only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def advance_clock(connection: AsyncConnection, newest_event_at: datetime) -> bool:
    """Move the clock to `newest_event_at` if that is newer; True when it moved.

    Replicas ingesting different partitions all move the one clock; it never goes back.
    """
    result = await connection.execute(
        text(
            "UPDATE stream_clock SET newest_event_at = :newest, updated_at = now() "
            "WHERE clock_id = 1 AND (newest_event_at IS NULL OR newest_event_at < :newest)"
        ),
        {"newest": newest_event_at},
    )
    return result.rowcount == 1


async def read_clock(connection: AsyncConnection) -> datetime | None:
    """The newest occurred_at seen (None before the first transaction)."""
    value: datetime | None = (
        await connection.execute(
            text("SELECT newest_event_at FROM stream_clock WHERE clock_id = 1")
        )
    ).scalar_one_or_none()
    return value
