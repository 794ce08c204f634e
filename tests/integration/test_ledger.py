"""The ledger of event ids stays bounded: weekly partitions created ahead and dropped
behind the dedup window, dedup within the window holding across a restart, and an
event older than the window dead-lettered rather than counted twice."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.services.ledger import LedgerRetention
from ml_analytics.settings import Settings
from tests.helpers import keyed, publish, read_topic, running_ingestion, unique, wait_until

pytestmark = pytest.mark.integration

LAST = date(2026, 11, 20)  # a Friday


def event(event_id: str, product: str, day: date) -> dict[str, Any]:
    return {"event_id": event_id, "product_id": product, "occurred_at": day.isoformat(),
            "quantity_units": 1}  # fmt: skip


async def partitions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'transaction_events' "
                "ORDER BY c.relname"
            )
        )
        return [row.relname for row in rows]


async def counted(engine: AsyncEngine, product: str) -> float:
    async with engine.connect() as connection:
        return float(
            (
                await connection.execute(
                    text(
                        "SELECT COALESCE(sum(quantity_units), 0) FROM daily_demand WHERE product_id = :p"
                    ),
                    {"p": product},
                )
            ).scalar_one()
        )


async def test_ledger_weeks_are_created_ahead_dropped_behind_and_dedup_holds(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("ledger")
    days = [LAST - timedelta(days=back) for back in range(70)]
    events = [event(f"{product}-{day}", product, day) for day in days]
    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, keyed(events))
        await wait_until(lambda: counted(engine, product), lambda n: n == 70)
    weeks = await partitions(engine)
    assert len(weeks) == 11  # the 70 days touch 11 weeks, Monday to Sunday
    assert weeks[0] == "transaction_events_20260907" and weeks[-1] == "transaction_events_20261116"

    retention = LedgerRetention(engine, settings)
    first = await retention.run_once()  # notes where the clock is; drops nothing yet
    assert first[0] is None and first[1] == 0 and first[2] == 2  # two weeks ahead created
    floor, dropped, _ = await retention.run_once()
    # The clock's last complete day is Thursday 19 November; 35 days before it is
    # 15 October, whose week starts on Monday 12 October.
    assert floor == date(2026, 10, 12)
    assert dropped == 5
    left = await partitions(engine)
    assert left[0] == "transaction_events_20261012" and left[-1] == "transaction_events_20261130"

    # A restart (new ingestion, same group), then the whole history published again:
    # what the ledger still holds is recognised; what it no longer holds is refused.
    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, keyed(events))
        older = [e for e in events if date.fromisoformat(e["occurred_at"]) < floor]
        letters = await read_topic(settings, settings.dead_letter_topic, len(older), timeout=60)
    assert await counted(engine, product) == 70  # nothing counted twice
    reasons = {json.loads(r.value)["error"] for r in letters}
    assert len(letters) == len(older) == 30  # 12 September to 11 October
    assert all("is older than the dedup window" in reason for reason in reasons)
    assert all("keeps days from 2026-10-12 on (DEDUP_WINDOW_DAYS)" in r for r in reasons)
    # The dropped weeks are not created again for the late copies.
    assert (await partitions(engine))[0] == "transaction_events_20261012"
