"""A product's demand history: its sales, the days its shelf was empty, and the demand
estimated on them (models/censoring.py), computed from stored sales and stock levels
and kept in `censored_days` for the API, the dashboard and the global model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.models.censoring import estimate_demand, lost_units, mark_censored
from ml_analytics.settings import Settings
from ml_analytics.storage.censoring import CensoredDay, replace_censored_days
from ml_analytics.storage.demand import daily_demand_series, stock_counts

LOST_SALES_DAYS = 28


@dataclass(frozen=True)
class DemandHistory:
    """Daily from `first_day`: sales, whether demand was censored, estimated demand (the
    sales where observed) and the reconstructed closing stock (NaN where unknown)."""

    first_day: date
    sales: np.ndarray
    censored: np.ndarray
    demand: np.ndarray
    closing_units: np.ndarray

    @property
    def last_day(self) -> date:
        return self.first_day + timedelta(days=len(self.sales) - 1)

    @property
    def observed(self) -> np.ndarray:
        return ~self.censored

    def lost_sales(self, days: int = LOST_SALES_DAYS) -> float:
        """Estimated unmet demand over the last `days` days."""
        return round(lost_units(self.sales[-days:], self.demand[-days:]), 4)

    def censored_days(self) -> list[CensoredDay]:
        return [
            CensoredDay(
                self.first_day + timedelta(days=int(index)),
                float(self.sales[index]),
                float(self.demand[index]),
                None if np.isnan(self.closing_units[index]) else float(self.closing_units[index]),
            )
            for index in np.flatnonzero(self.censored)
        ]


async def demand_history(
    connection: AsyncConnection,
    product_id: str,
    settings: Settings,
    *,
    through: date | None,
    max_days: int,
    store: bool = True,
) -> DemandHistory | None:
    """The product's latest `max_days` days to `through` (the clock's last complete
    day), zero-filled, with censoring from its stock levels (DEMAND_CENSORING); its
    censored days over those days are stored unless `store` is false. None without
    sales."""
    series = await daily_demand_series(connection, product_id, max_days=max_days, through=through)
    if not series:
        return None
    first_day = series[0].day
    sales = np.array([day.quantity_units for day in series], dtype=float)
    if settings.demand_censoring:
        counts = await stock_counts(
            connection, product_id, first_day, series[-1].day, settings.timezone
        )
        marks = mark_censored(first_day, sales, counts)
        censored, closing = marks.censored, marks.closing_units
        demand = estimate_demand(sales, censored)
    else:
        censored = np.zeros(len(sales), dtype=bool)
        closing = np.full(len(sales), np.nan)
        demand = sales.copy()
    history = DemandHistory(first_day, sales, censored, demand, closing)
    if store:
        await replace_censored_days(
            connection, product_id, first_day, history.last_day, history.censored_days()
        )
    return history
