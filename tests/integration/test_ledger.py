"""The ledger of event ids, through the real broker and PostgreSQL: an event counted once
by its event_id whatever day it is published again with, an event_id reused for
another event dead-lettered with the conflict, history of any age counted (a
backfill), and the ledger kept bounded by arrival time."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.services.ledger import LedgerRetention
from ml_analytics.settings import Settings
from tests.helpers import (
    keyed,
    ledger_count,
    publish,
    read_topic,
    running_ingestion,
    scalar,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

LAST = date(2026, 11, 20)


def event(event_id: str, product: str, day: date, units: float = 1) -> dict[str, Any]:
    return {"event_id": event_id, "product_id": product, "occurred_at": day.isoformat(),
            "quantity_units": units}  # fmt: skip


async def counted(engine: AsyncEngine, product: str) -> float:
    return float(
        await scalar(
            engine,
            "SELECT COALESCE(sum(quantity_units), 0) FROM daily_demand WHERE product_id = :p",
            p=product,
        )
    )


async def days_of(engine: AsyncEngine, product: str) -> list[date]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT business_day FROM daily_demand WHERE product_id = :p ORDER BY 1"),
            {"p": product},
        )
        return [row.business_day for row in rows]


async def test_an_event_published_again_with_another_day_is_counted_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("again")
    days = [LAST - timedelta(days=back) for back in range(70)]
    events = [event(f"{product}-{day}", product, day) for day in days]
    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, keyed(events))
        await wait_until(lambda: counted(engine, product), lambda n: n == 70)
        # The same events again, each dated a day, a month and a year earlier: one
        # event_id, one event, whatever day it carries now.
        for shift in (-1, -30, -365):
            moved = [event(e["event_id"], product, date.fromisoformat(e["occurred_at"])
                           + timedelta(days=shift)) for e in events]  # fmt: skip
            await publish(settings, settings.transactions_topic, keyed(moved))
        marker = event(unique("marker"), product, LAST)
        await publish(settings, settings.transactions_topic, keyed([marker]))
        await wait_until(lambda: counted(engine, product), lambda n: n == 71)
    assert await days_of(engine, product) == sorted(days)  # the first copy's days
    assert await read_topic(settings, settings.dead_letter_topic, 1, timeout=3) == []


async def test_an_event_id_reused_for_another_event_is_a_dead_letter_naming_the_conflict(
    settings: Settings, engine: AsyncEngine
) -> None:
    first, second = unique("first"), unique("second")
    shared = unique("shared-id")
    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, keyed([event(shared, first, LAST, 2)]))
        await wait_until(lambda: counted(engine, first), lambda n: n == 2)
        # Another product with that id, in a later batch; and in one batch, the same id
        # for two products and another quantity: the first wins, the others are letters.
        await publish(settings, settings.transactions_topic,
                      keyed([event(shared, second, LAST, 3)]))  # fmt: skip
        both = unique("both")
        # One partition (one key), so they arrive in this order.
        await publish(
            settings,
            settings.transactions_topic,
            [
                (first.encode(), event(both, first, LAST, 1)),
                (first.encode(), event(both, second, LAST, 1)),
                (first.encode(), event(both, first, LAST, 9)),
            ],
        )
        letters = await read_topic(settings, settings.dead_letter_topic, 3, timeout=60)
    assert await counted(engine, first) == 3
    assert await counted(engine, second) == 0
    reasons = sorted(json.loads(record.value)["error"] for record in letters)
    assert len(reasons) == 3
    later = next(r for r in reasons if r.startswith(f"event_id: {shared!r}"))
    assert "was first counted for another event" in later
    assert f"product_id {first!r}, quantity_units 2" in later and f"{second!r}" in later
    in_batch = [r for r in reasons if r.startswith(f"event_id: {both!r}")]
    # In one batch (almost always) or split across two.
    assert len(in_batch) == 2
    assert all("names two events" in r or "was first counted" in r for r in in_batch)
    values = [json.loads(json.loads(record.value)["value"]) for record in letters]
    assert {(v["product_id"], v["quantity_units"]) for v in values} == {
        (second, 3), (second, 1), (first, 9)}  # fmt: skip


async def test_history_of_any_age_is_counted_once_and_the_ledger_forgets_by_arrival(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("backfill")
    # Three years back: older than any window of event time.
    days = [LAST - timedelta(days=back) for back in range(0, 3 * 365, 7)]
    events = [event(f"{product}-{day}", product, day) for day in days]
    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, keyed(events))
        await wait_until(lambda: counted(engine, product), lambda n: n == len(days))
        await publish(settings, settings.transactions_topic, keyed(events))  # a second backfill
        marker = event(unique("marker"), product, LAST)
        await publish(settings, settings.transactions_topic, keyed([marker]))
        await wait_until(lambda: counted(engine, product), lambda n: n == len(days) + 1)
    assert await ledger_count(engine, product) == len(days)

    # The ledger keeps ids by arrival: those that arrived before the window go.
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE transaction_events SET ingested_at = now() - make_interval(days => :d) "
                "WHERE event_id = ANY(CAST(:ids AS text[]))"
            ),
            {"d": settings.dedup_window_days + 1, "ids": [e["event_id"] for e in events[:10]]},
        )
    retention = LedgerRetention(engine, settings)
    assert await retention.run_once() == 10
    assert await retention.run_once() == 0
    assert await ledger_count(engine, product) == len(days) - 10
    assert await counted(engine, product) == len(days) + 1  # the aggregates stay
