"""Forecasts, retraining and stockout-risk events through the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.settings import Settings
from tests.helpers import (
    keyed,
    ledger_count,
    publish,
    read_topic,
    running_service,
    scalar,
    transaction,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

FIRST_DAY = date(2026, 6, 1)
DAYS = 120
LAST_DAY = FIRST_DAY + timedelta(days=DAYS - 1)


def steady_demand(product_id: str, per_day: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for offset in range(DAYS):
        day = FIRST_DAY + timedelta(days=offset)
        units = max(1, per_day + rng.randint(-3, 3))
        events.append(transaction(f"{product_id}-{offset}", product_id, f"{day}T12:00:00Z", units))
    return events


def stock_level(
    product_id: str, event_id: str, as_of: str, units: float, lead: int | None = None
) -> dict[str, Any]:
    level: dict[str, Any] = {
        "event_id": event_id,
        "product_id": product_id,
        "as_of": as_of,
        "stock_units": units,
    }
    if lead is not None:
        level["lead_time_days"] = lead
    return level


async def models_trained(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "SELECT count(*) FROM product_models"))


async def risk_events(
    settings: Settings, expected: int, timeout: float = 60
) -> list[dict[str, Any]]:
    records = await read_topic(settings, settings.stockout_risk_topic, expected, timeout=timeout)
    return [json.loads(record.value) for record in records]


@asynccontextmanager
async def two_steady_products_trained(
    settings: Settings, engine: AsyncEngine, seed: int
) -> AsyncIterator[tuple[Any, str, str]]:
    """The service running, with two products of ~20 units a day for DAYS days each
    published and both trained; yields the app and the two products' ids."""
    short, plenty = unique("short"), unique("plenty")
    async with running_service(settings, engine) as app:
        await publish(
            settings,
            settings.transactions_topic,
            keyed(steady_demand(short, 20, seed=seed) + steady_demand(plenty, 20, seed=seed + 1)),
        )
        await wait_until(
            lambda: models_trained(engine), lambda n: n == 2, timeout=90, what="two models"
        )
        yield app, short, plenty


async def test_steady_demand_with_little_stock_raises_high_risk_and_a_refill_clears_it(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with two_steady_products_trained(settings, engine, seed=1) as (app, short, plenty):
        as_of = f"{LAST_DAY}T18:00:00Z"
        await publish(
            settings,
            settings.stock_levels_topic,
            keyed(
                [
                    stock_level(short, "s1", as_of, 100, lead=10),
                    stock_level(plenty, "p1", as_of, 1_000_000, lead=10),
                ]
            ),
        )
        first = await risk_events(settings, 2)
        by_product = {event["product_id"]: event for event in first}
        high = by_product[short]
        assert high["risk_level"] == "high"
        assert 3 <= high["days_until_stockout"] <= 8
        assert high["stockout_probability"] >= 0.9
        assert high["risk_window_days"] == 10 and high["current_stock_units"] == 100
        assert high["predicted_stockout_date"] == str(
            LAST_DAY + timedelta(days=high["days_until_stockout"])
        )
        assert 0 <= high["confidence"] <= 1
        # The last day is the clock's own day, still open: the model sees the days before.
        assert high["model"]["training_days"] == DAYS - 1
        assert (
            by_product[plenty]["risk_level"] == "low"
        )  # first assessment: published whatever it is

        # A refill: the level drops back to low and is published, so alerts can close.
        await publish(
            settings,
            settings.stock_levels_topic,
            keyed([stock_level(short, "s2", f"{LAST_DAY}T20:00:00Z", 5_000, lead=10)]),
        )
        after_refill = await risk_events(settings, 3)
        assert after_refill[-1]["product_id"] == short and after_refill[-1]["risk_level"] == "low"

        # Steady: more stock levels at the same level publish nothing new.
        await publish(
            settings,
            settings.stock_levels_topic,
            keyed(
                [
                    stock_level(short, "s3", f"{LAST_DAY}T21:00:00Z", 4_990, lead=10),
                    stock_level(plenty, "p2", f"{LAST_DAY}T21:00:00Z", 999_000, lead=10),
                ]
            ),
        )
        await asyncio.sleep(3)
        assert len(await risk_events(settings, 4, timeout=3)) == 3

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            latest = (await http.get(f"/products/{short}/stockout-risk")).json()
            missing = await http.get("/products/nobody/stockout-risk")
            stored = (await http.get(f"/products/{short}/forecast")).json()
            no_model = await http.get("/products/nobody/forecast")
    assert latest["current_stock_units"] == 4_990 and latest["risk_level"] == "low"
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]
    through = LAST_DAY - timedelta(days=1)  # the clock's last complete day
    assert stored["training_days"] == DAYS - 1 and stored["trained_through"] == str(through)
    assert stored["days"][0]["date"] == str(LAST_DAY)
    assert len(stored["days"]) == settings.forecast_horizon_days
    assert all(0 <= d["yhat_lower"] <= d["yhat"] <= d["yhat_upper"] for d in stored["days"])
    assert 15 <= sum(d["expected"] for d in stored["days"][:7]) / 7 <= 25  # ~20 a day
    assert stored["metrics"]["rmse"] is not None
    assert no_model.status_code == 404


async def test_no_event_without_a_model_and_first_model_publishes_the_level(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("young")
    async with running_service(settings, engine):
        # Stock first, and only 20 days of history: no model, so nothing is published.
        early = steady_demand(product, 10, seed=3)
        await publish(
            settings,
            settings.stock_levels_topic,
            keyed([stock_level(product, "y1", f"{LAST_DAY}T18:00:00Z", 50)]),
        )
        await publish(settings, settings.transactions_topic, keyed(early[:20]))
        await asyncio.sleep(4)
        assert await models_trained(engine) == 0
        assert await risk_events(settings, 1, timeout=2) == []
        # The rest of the history arrives: the first model gets trained and its risk published.
        await publish(settings, settings.transactions_topic, keyed(early[20:]))
        (event,) = await risk_events(settings, 1, timeout=90)
    assert event["product_id"] == product
    assert event["risk_window_days"] == settings.default_risk_window_days  # no lead time given
    assert event["risk_level"] == "high"  # 50 units at ~10 a day over 14 days


async def test_a_product_that_stops_selling_is_retrained_and_reassessed_as_the_clock_moves(
    settings: Settings, engine: AsyncEngine
) -> None:
    seller, stopped = unique("seller"), unique("stopped")
    both = steady_demand(seller, 20, seed=3) + steady_demand(stopped, 20, seed=4)
    first_half = [e for e in both if e["occurred_at"] < f"{FIRST_DAY + timedelta(days=60)}"]
    # Only the seller sells in the second half: the stopped product gets no event at all.
    second_half = [e for e in both if e not in first_half and e["product_id"] == seller]

    async def trained_through(product_id: str) -> str | None:
        value = await scalar(
            engine, "SELECT trained_through FROM product_models WHERE product_id = :p", p=product_id
        )
        return None if value is None else str(value)

    async with running_service(settings, engine):
        await publish(settings, settings.transactions_topic, keyed(first_half))
        day_59 = str(FIRST_DAY + timedelta(days=59))
        await wait_until(lambda: trained_through(stopped), bool, timeout=90, what="a model")
        await publish(
            settings,
            settings.stock_levels_topic,
            keyed([stock_level(stopped, "st-1", f"{day_59}T18:00:00Z", 150, lead=10)]),
        )
        (before,) = await risk_events(settings, 1)
        assert before["risk_level"] == "high"  # ~20 a day for 10 days against 150

        await publish(settings, settings.transactions_topic, keyed(second_half))
        last_complete = str(LAST_DAY - timedelta(days=1))
        await wait_until(
            lambda: trained_through(stopped),
            lambda day: day == last_complete,
            timeout=120,
            what="the stopped product retrained on the clock",
        )
        events = await risk_events(settings, 2, timeout=60)
    after = [e for e in events if e["product_id"] == stopped][-1]
    assert after["risk_level"] == "low" and after["stockout_probability"] < 0.3
    assert after["model"]["training_days"] == DAYS - 1  # zeros to the clock, not its last sale


async def test_late_events_wait_out_the_cooldown_then_refit_as_the_clock_moves(
    settings: Settings, engine: AsyncEngine
) -> None:
    product, driver = unique("late"), unique("clock")
    history = steady_demand(product, 20, seed=5)[:30]  # days 0..29
    late = history.pop(20)  # day 20 comes late

    def day(offset: int) -> str:
        return f"{FIRST_DAY + timedelta(days=offset)}T12:00:00Z"

    async def model() -> tuple[str, float] | None:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT trained_through, units_seen FROM product_models"
                        " WHERE product_id = :p"
                    ),
                    {"p": product},
                )
            ).one_or_none()
        return None if row is None else (str(row.trained_through), float(row.units_seen))

    async with running_service(settings, engine):
        await publish(settings, settings.transactions_topic, keyed(history))
        # Another product's sale on day 30 completes day 29: 30 days, the first model.
        clock = [transaction(f"{driver}-30", driver, day(30), 1)]
        await publish(settings, settings.transactions_topic, keyed(clock))
        seen = sum(float(e["quantity_units"]) for e in history)
        first = await wait_until(model, bool, timeout=90, what="the first model")
        assert first == (str(FIRST_DAY + timedelta(days=29)), seen)
        # The shop's first global version (without a model: too small) refreshes every
        # product once; that refresh must be over before the late sale is sent.
        await wait_until(
            lambda: scalar(
                engine,
                "SELECT count(*) FROM product_models m WHERE product_id = :p AND "
                "global_version = (SELECT max(version) FROM global_models)",
                p=product,
            ),
            lambda count: count == 1,
            timeout=60,
            what="the product refreshed with the first global version",
        )

        # A late sale on a day the model saw, the clock where it was: within the
        # cool-down (RETRAIN_COOLDOWN_DAYS 1), so no refit yet.
        await publish(settings, settings.transactions_topic, keyed([late]))
        await wait_until(
            lambda: ledger_count(engine, late["event_id"]),
            lambda count: count == 1,
            what="the late sale counted",
        )
        await asyncio.sleep(5)
        assert await model() == first

        # The clock moves a day on another product's sale: the product is refitted with
        # the late units, though none of its own events came.
        clock = [transaction(f"{driver}-31", driver, day(31), 1)]
        await publish(settings, settings.transactions_topic, keyed(clock))
        refit = await wait_until(
            model,
            lambda state: state is not None and state[1] > seen,
            timeout=90,
            what="the refit after the cool-down",
        )
    assert refit == (str(FIRST_DAY + timedelta(days=30)), seen + float(late["quantity_units"]))
