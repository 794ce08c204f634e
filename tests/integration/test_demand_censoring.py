"""Demand, not sales, through the real broker and PostgreSQL: the days a shelf was empty
are found from the stock levels, learned as demand by the forecasts, shown by the API
and counted as lost sales."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.settings import Settings
from tests.helpers import (
    keyed,
    publish,
    read_topic,
    running_service,
    scalar,
    transaction,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

FIRST_DAY = date(2026, 5, 1)
DAYS = 90  # days 0..89 complete; sales on day 90 move the clock past them
LEVEL = 10.0


def day(offset: int) -> date:
    return FIRST_DAY + timedelta(days=offset)


def sales_events(product: str, units: np.ndarray) -> list[dict[str, Any]]:
    return [
        transaction(f"{product}-{offset}", product, f"{day(offset)}T12:00:00Z", float(sold))
        for offset, sold in enumerate(units)
        if sold > 0
    ]


def stock_events(product: str, closing: dict[int, float]) -> list[dict[str, Any]]:
    return [
        {"event_id": f"{product}-stock-{offset}", "product_id": product,
         "as_of": f"{day(offset)}T20:00:00Z", "stock_units": units, "lead_time_days": 7}
        for offset, units in closing.items()
    ]  # fmt: skip


def run_out(demand: np.ndarray, empty: range, start_units: float) -> tuple[np.ndarray, dict]:
    """Sales and daily closing stock when the shelf runs empty over `empty` (the day
    before it sells what is left) and is refilled after it, plenty otherwise."""
    sales, closing = demand.astype(float).copy(), {}
    stock = start_units
    for offset in range(len(demand)):
        if offset == empty.stop:
            stock += 10 * LEVEL * 30  # the delivery
        if offset == empty.start - 1:
            stock = min(stock, demand[offset] * 0.4)  # what is left that day
        if offset in empty:
            stock = 0.0
        sold = min(stock, demand[offset])
        sales[offset] = sold
        stock -= sold
        closing[offset] = stock
    return sales, closing


async def fillers(settings: Settings, tag: str) -> None:
    """Three steady products through day DAYS, so the clock (three products
    corroborate it) reaches day DAYS."""
    units = np.full(DAYS + 1, 5.0)
    events = [e for i in range(3) for e in sales_events(f"{tag}-filler-{i}", units)]
    await publish(settings, settings.transactions_topic, keyed(events))


async def forecast_28(engine: AsyncEngine, product: str) -> float | None:
    row = await scalar(
        engine,
        "SELECT yhat FROM product_models WHERE product_id = :p AND trained_through = :d",
        p=product,
        d=day(DAYS - 1),
    )
    return None if row is None else float(sum(row[:28]))


async def test_a_week_without_stock_is_learned_as_demand_not_as_no_sales(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = unique("empty-week")
    product = f"{tag}-P"
    rng = np.random.default_rng(11)
    demand = rng.integers(8, 13, DAYS + 1).astype(float)  # 10 a day, give or take 2
    sales, closing = run_out(demand, range(70, 77), start_units=2000)
    async with running_service(settings, engine) as app:
        # The stock levels first: the first fit already knows the empty week.
        await publish(settings, settings.stock_levels_topic, keyed(stock_events(product, closing)))
        await publish(settings, settings.transactions_topic, keyed(sales_events(product, sales)))
        await fillers(settings, tag)
        total = await wait_until(
            lambda: forecast_28(engine, product), bool, timeout=120, what="a model"
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            answer = (
                await api.get(f"/products/{product}/demand?from={day(60)}&to={day(89)}")
            ).json()
            risk = (await api.get(f"/products/{product}/stockout-risk")).json()
            listing = (await api.get(f"/products?search={product}")).json()
    assert total is not None
    assert total / 28 == pytest.approx(demand[DAYS - 28 : DAYS].mean(), rel=0.05)
    assert sales[DAYS - 28 : DAYS].mean() < 0.8 * LEVEL  # not the sales' level
    marked = [d["date"] for d in answer["days"] if d["censored"]]
    assert marked == [str(day(offset)) for offset in range(69, 77)]  # sold out on day 69
    for entry in answer["days"]:
        if entry["censored"]:
            assert entry["estimated_demand_units"] > LEVEL * 0.5
            assert entry["estimated_demand_units"] >= entry["quantity_units"]
        else:
            assert entry["estimated_demand_units"] == entry["quantity_units"]
    lost = sum(d["estimated_demand_units"] - d["quantity_units"] for d in answer["days"][-28:])
    assert lost == pytest.approx(demand[69:77].sum() - sales[69:77].sum(), rel=0.25)
    assert risk["lost_sales_units_28d"] == pytest.approx(lost, rel=1e-6)
    (item,) = listing["items"]
    assert item["lost_sales_units_28d"] == pytest.approx(lost, rel=1e-6)


async def test_a_late_stock_level_re_marks_the_days_it_covers(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = unique("late")
    product = f"{tag}-P"
    units = np.full(DAYS + 1, LEVEL)
    units[40:46] = 0.0  # no sales for six days: empty shelf, or nobody came?
    # Counted weekly to day 28, then on day 60 (after a delivery): nothing says the
    # shelf was ever empty.
    weekly = {offset: 2000.0 - units[: offset + 1].sum() for offset in range(0, 35, 7)}
    weekly[60] = 1500.0
    async with running_service(settings, engine) as app:
        await publish(settings, settings.stock_levels_topic, keyed(stock_events(product, weekly)))
        await publish(settings, settings.transactions_topic, keyed(sales_events(product, units)))
        await fillers(settings, tag)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:

            async def censored_days() -> list[str]:
                answer = (await api.get(f"/products/{product}/demand")).json()
                return [d["date"] for d in answer["days"] if d["censored"]]

            await wait_until(
                lambda: scalar(engine, "SELECT count(*) FROM product_models WHERE product_id = :p",
                               p=product), bool, timeout=120, what="a model",
            )  # fmt: skip
            assert await censored_days() == []  # the counts so far say nothing of it
            # A count taken on day 40 arrives late: nothing was left then, and a
            # delivery came (day 46's sale shows it).
            late = stock_events(product, {40: 0.0})
            late[0]["event_id"] = f"{product}-late"
            await publish(settings, settings.stock_levels_topic, keyed(late))
            marked = await wait_until(censored_days, bool, timeout=30, what="re-marked days")
    assert marked == [str(day(offset)) for offset in range(40, 46)]


async def test_an_intermittent_product_with_long_empty_spells_keeps_its_level(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = unique("lumpy")
    product = f"{tag}-P"
    rng = np.random.default_rng(4)
    demand = np.where(rng.random(DAYS + 1) < 0.25, rng.choice([8.0, 16.0, 30.0], DAYS + 1), 0.0)
    level = demand[: DAYS - 60].mean()
    # Empty from day 30 to day 84 but for a fortnight's restock in the middle.
    closing: dict[int, float] = {}
    sales = demand.copy()
    for offset in range(DAYS + 1):
        empty = 30 <= offset < 84 and not 55 <= offset < 69
        if empty:
            sales[offset] = 0.0
        closing[offset] = 0.0 if empty else 200.0
    async with running_service(settings, engine):
        await publish(settings, settings.stock_levels_topic, keyed(stock_events(product, closing)))
        await publish(settings, settings.transactions_topic, keyed(sales_events(product, sales)))
        await fillers(settings, tag)
        total = await wait_until(
            lambda: forecast_28(engine, product), bool, timeout=120, what="a model"
        )
    assert total is not None
    assert sales[DAYS - 28 : DAYS].mean() < 0.6 * level  # what sales alone would teach
    assert total / 28 > 0.6 * level  # not collapsed to the empty days' zeros
    events = [
        json.loads(r.value)
        for r in await read_topic(settings, settings.dead_letter_topic, 1, timeout=2)
    ]
    assert events == []
