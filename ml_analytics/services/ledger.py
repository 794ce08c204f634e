"""Keep the ledger of event ids bounded: forget ids that arrived before the dedup window.

The ledger exists for one purpose: to recognise an event delivered again (a crash
before its batch was committed, a rebalance, a producer that publishes twice, a
backfill published twice) and count it once, whatever day it carries. Kafka keeps a
topic's records 7 days by default, so redeliveries come within days of the first
copy; DEDUP_WINDOW_DAYS (35) of arrival time keeps far more than that. The window
runs on the wall clock, not on the stream's clock: a backfill of years-old history is
counted like live events, and no event time, however wrong, can empty the ledger.

Every LEDGER_RETENTION_INTERVAL_SECONDS one replica (advisory lock) deletes the rows
that arrived before the window, in batches of RETENTION_BATCH_ROWS, each its own
short transaction, so ingestion never waits long behind it.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.background import BackgroundLoop
from ml_analytics.settings import Settings
from ml_analytics.storage.locks import LEDGER_RETENTION_LOCK, advisory_lock

logger = logging.getLogger(__name__)

RETENTION_BATCH_ROWS = 20_000

_DELETE_BATCH = """
DELETE FROM transaction_events WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM transaction_events
    WHERE ingested_at < now() - make_interval(days => :days)
    LIMIT :rows
))
"""


class LedgerRetention:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._loop = BackgroundLoop(
            "ledger-retention", self.run_once, settings.ledger_retention_interval_seconds
        )

    def start(self) -> None:
        self._loop.start()
        self._loop.wake()  # a pass at start, then every interval

    async def stop(self) -> None:
        await self._loop.stop()

    async def run_once(self) -> int | None:
        """One pass: the ledger rows deleted (None: another replica holds the pass)."""
        deleted = 0
        async with advisory_lock(self._engine, LEDGER_RETENTION_LOCK) as (acquired, connection):
            if not acquired:
                return None
            while True:
                removed = (
                    await connection.execute(
                        text(_DELETE_BATCH),
                        {"days": self._settings.dedup_window_days, "rows": RETENTION_BATCH_ROWS},
                    )
                ).rowcount
                await connection.commit()
                deleted += removed
                if removed < RETENTION_BATCH_ROWS:
                    break
                await asyncio.sleep(0)
        if deleted:
            logger.info(
                "ledger rows older than the dedup window deleted",
                extra={"deleted": deleted, "dedup_window_days": self._settings.dedup_window_days},
            )
        return deleted
