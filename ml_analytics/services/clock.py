"""The stream clock's last complete day, as the settings define the clock (its allowed
lateness, the business time zone, never past the wall clock)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.models.clock import complete_through
from ml_analytics.settings import Settings
from ml_analytics.storage.clock import read_clock


async def clock_through(connection: AsyncConnection, settings: Settings) -> date | None:
    """The stream clock's last complete day (None before the first transaction)."""
    return complete_through(
        await read_clock(connection),
        datetime.now(UTC),
        timedelta(seconds=settings.clock_allowed_lateness_seconds),
        settings.timezone,
    )
