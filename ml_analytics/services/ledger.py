"""Keep the ledger of event ids bounded: drop its weeks older than the dedup window.

The ledger exists for one purpose: to recognise an event delivered again (a crash
before its batch was committed, a rebalance, a producer that publishes twice) and
count it once. Kafka keeps a topic's records 7 days by default, so redeliveries come
from within days; DEDUP_WINDOW_DAYS (35) keeps far more than that. Every
LEDGER_RETENTION_INTERVAL_SECONDS one replica (advisory lock) moves the ledger's floor
to the Monday before the clock's last complete day less the window, as the clock
stood at its previous run (so a fast replay, whose partitions run days apart in event
time, is not cut under its own feet), drops the weeks below it whole (no row-by-row
DELETE), and creates the partitions of the coming weeks ahead of the events. An event
older than the floor is a dead letter: it can no longer be counted exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.configs import clock_through
from ml_analytics.lifecycle import cancel_and_wait
from ml_analytics.settings import Settings
from ml_analytics.storage.ingest_writes import week_start
from ml_analytics.storage.locks import LEDGER_RETENTION_LOCK, advisory_lock

logger = logging.getLogger(__name__)

WEEKS_AHEAD = 2


class LedgerRetention:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._previous_through: date | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name="ledger-retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as error:
                logger.warning("ledger retention failed", extra={"error": repr(error)[:300]})
            await asyncio.sleep(self._settings.ledger_retention_interval_seconds)

    async def run_once(self) -> tuple[date | None, int, int]:
        """One pass: (the floor, partitions dropped, partitions created ahead)."""
        async with advisory_lock(self._engine, LEDGER_RETENTION_LOCK) as (acquired, connection):
            if not acquired:
                return None, 0, 0
            through = await clock_through(connection, self._settings)
            if through is None:
                await connection.commit()
                return None, 0, 0
            ahead = [week_start(through) + timedelta(weeks=k) for k in range(WEEKS_AHEAD + 1)]
            created = int(
                (
                    await connection.execute(
                        text("SELECT ensure_ledger_partitions(CAST(:weeks AS date[]))"),
                        {"weeks": ahead},
                    )
                ).scalar_one()
            )
            floor, dropped = None, 0
            if self._previous_through is not None:
                floor = week_start(
                    self._previous_through - timedelta(days=self._settings.dedup_window_days)
                )
                floor = (
                    await connection.execute(
                        text(
                            "UPDATE ledger_retention SET updated_at = now(), "
                            "floor = GREATEST(COALESCE(floor, :f), :f) "
                            "WHERE retention_id = 1 RETURNING floor"
                        ),
                        {"f": floor},
                    )
                ).scalar_one()
                dropped = int(
                    (
                        await connection.execute(
                            text("SELECT drop_ledger_partitions(:f)"), {"f": floor}
                        )
                    ).scalar_one()
                )
            await connection.commit()
            self._previous_through = through
        if dropped or created:
            logger.info(
                "ledger partitions maintained",
                extra={"floor": str(floor), "dropped": dropped, "created_ahead": created},
            )
        return floor, dropped, created
