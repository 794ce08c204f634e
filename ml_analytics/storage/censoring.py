"""Censored days in PostgreSQL: the days a product's shelf was empty at the day's end,
with their sales and estimated demand, as services/demand.py last computed them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class CensoredDay:
    day: date
    sales_units: float
    estimated_demand_units: float
    closing_units: float | None


async def replace_censored_days(
    connection: AsyncConnection,
    product_id: str,
    first_day: date,
    last_day: date,
    days: list[CensoredDay],
) -> None:
    """The product's censored days over [first_day, last_day] are now `days` (in the
    caller's transaction)."""
    await connection.execute(
        text(
            "DELETE FROM censored_days WHERE product_id = :p "
            "AND business_day BETWEEN :first AND :last"
        ),
        {"p": product_id, "first": first_day, "last": last_day},
    )
    if days:
        await connection.execute(
            text(
                "INSERT INTO censored_days (product_id, business_day, sales_units, "
                "estimated_demand_units, closing_units) "
                "SELECT :p, * FROM unnest(CAST(:days AS date[]), CAST(:sales AS float8[]), "
                "CAST(:demand AS float8[]), CAST(:closing AS float8[])) "
                # Another transaction computing the same product (a fit beside an
                # assessment) may have written a day since this one's DELETE began.
                "ON CONFLICT (product_id, business_day) DO UPDATE SET "
                "sales_units = EXCLUDED.sales_units, "
                "estimated_demand_units = EXCLUDED.estimated_demand_units, "
                "closing_units = EXCLUDED.closing_units"
            ),
            {
                "p": product_id,
                "days": [d.day for d in days],
                "sales": [d.sales_units for d in days],
                "demand": [d.estimated_demand_units for d in days],
                "closing": [d.closing_units for d in days],
            },
        )


async def censored_days_between(
    connection: AsyncConnection, product_id: str, first_day: date, last_day: date
) -> dict[date, CensoredDay]:
    rows = await connection.execute(
        text(
            "SELECT business_day, sales_units, estimated_demand_units, closing_units "
            "FROM censored_days WHERE product_id = :p AND business_day BETWEEN :first AND :last"
        ),
        {"p": product_id, "first": first_day, "last": last_day},
    )
    return {
        row.business_day: CensoredDay(
            row.business_day, row.sales_units, row.estimated_demand_units, row.closing_units
        )
        for row in rows
    }


@dataclass(frozen=True)
class CensoredPanel:
    """Per product: the offsets (days from the panel's first day) of its censored days
    and their estimated demand."""

    days: dict[str, np.ndarray]
    demand: dict[str, np.ndarray]


async def censored_panel(
    connection: AsyncConnection, first_day: date, last_day: date
) -> CensoredPanel:
    """Every product's censored days over [first_day, last_day] (for the global model)."""
    rows = await connection.execute(
        text(
            "SELECT product_id, "
            "array_agg(business_day - CAST(:first AS date) ORDER BY business_day) AS days, "
            "array_agg(estimated_demand_units ORDER BY business_day) AS demand "
            "FROM censored_days WHERE business_day BETWEEN :first AND :last "
            "GROUP BY product_id"
        ),
        {"first": first_day, "last": last_day},
    )
    days, demand = {}, {}
    for row in rows:
        days[row.product_id] = np.asarray(row.days, dtype=np.int64)
        demand[row.product_id] = np.asarray(row.demand, dtype=float)
    return CensoredPanel(days, demand)
