"""Demand, not sales: which days the shelf was empty, and what demand was on them. Pure.

On a day a product's stock ran out, its sales are a lower bound of its demand: the
customers who came after the last unit were not served. A forecaster that reads those
days as demand learns too little, orders too little, and the next stockout comes
sooner, exactly for the products the service warns about.

**Where the shelf was empty** (`mark_censored`). A stock count is the stock at the end
of its business day. Between two counts the position at the end of each day is the
first count less the sales since; receipts are inferred from the next count (what it
shows beyond the first count less the sales in between) and assumed to arrive, whole,
as late as possible: on the next count's day, or on the first day whose sales exceed
what was left (units had arrived by then). A day is censored when it ended at zero: a
count of 0, or a reconstructed position that reached 0. After the last count, the
position is the count less the sales since, until a sale shows an unknown receipt
(from then on nothing is known). Before the first count nothing is known: days are
taken as observed. `on_order_units` gives no arrival day, so it does not time
receipts. A count that arrives late (out of order) changes the brackets around it:
marks are computed from all counts each time.

**What demand was** (`estimate_demand`). Observed days keep their sales. A censored
day with sales s is a right-censored observation, demand >= s; its estimate is the
expected demand given that it is at least s, under the distribution of the days
around it (a window of +-`window_days`, widened until it holds `min_observed`
observed days): the self-consistent (Kaplan-Meier, redistribute-to-the-right)
estimate, iterated so that censored days inform each other. A day sold out at zero
(empty all day) is thus estimated at the local mean, zeros included: an intermittent
product's empty days are not taken as selling days, and a product's estimate does
not collapse to zero while its shelf stays empty. Never "drop the days and average
the rest": on intermittent items the rest is mostly zeros. A product with too few
observed days in its whole history takes `pooled_level` (the caller's estimate from
other products), blended by how much of its own it has.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

EPSILON_UNITS = 1e-6  # a position at or below this is empty
WINDOW_DAYS = 28
MIN_OBSERVED_DAYS = 14
ITERATIONS = 8


@dataclass(frozen=True, slots=True)
class StockCount:
    """Units on hand at the end of a business day."""

    day: date
    units: float


@dataclass(frozen=True)
class Censoring:
    """Per day from `first_day`: whether demand was censored (the day ended with the
    shelf empty), and the reconstructed end-of-day position (NaN where unknown)."""

    first_day: date
    censored: np.ndarray
    closing_units: np.ndarray


def mark_censored(first_day: date, sales: np.ndarray, counts: Sequence[StockCount]) -> Censoring:
    """Censored days of a daily sales series starting `first_day`, from stock counts.

    Counts outside the series are used for the brackets they close or open; several on
    one day: the last one given counts (the caller orders them by time)."""
    sales = np.asarray(sales, dtype=float)
    days = len(sales)
    censored = np.zeros(days, dtype=bool)
    closing = np.full(days, np.nan)
    by_day: dict[int, float] = {}
    for count in counts:
        by_day[(count.day - first_day).days] = max(0.0, float(count.units))
    known = sorted(by_day.items())
    if not known or days == 0:
        return Censoring(first_day, censored, closing)
    for (start, units), (end, next_units) in itertools.pairwise(known):
        _bracket(sales, censored, closing, start, units, end, next_units)
    last_day, last_units = known[-1]
    _tail(sales, censored, closing, last_day, last_units)
    return Censoring(first_day, censored, closing)


def _set(index: int, days: int) -> bool:
    return 0 <= index < days


def _bracket(
    sales: np.ndarray,
    censored: np.ndarray,
    closing: np.ndarray,
    start: int,
    units: float,
    end: int,
    next_units: float,
) -> None:
    """The days from `start` (a count of `units`) to `end` (the next count)."""
    days = len(sales)
    lo, hi = max(start + 1, 0), min(end, days)  # days strictly between, inside the series
    between = sales[max(start + 1, 0) : max(end, 0)].sum() if end > start + 1 else 0.0
    # Sales on days between start and end outside the series are not known: treat as 0.
    end_sales = sales[end] if _set(end, days) else 0.0
    receipts = max(0.0, next_units - (units - between - end_sales))
    position = units
    if _set(start, days):
        closing[start] = units
        censored[start] |= units <= EPSILON_UNITS  # the bracket before may have marked it
    for day in range(lo, hi):
        position -= sales[day]
        if position < -EPSILON_UNITS:
            # More sold than was left: the delivery had come, this day at the latest,
            # whole (one delivery per count, as late as the sales allow).
            position += receipts
            receipts = 0.0
        position = max(position, 0.0)
        closing[day] = position
        censored[day] = position <= EPSILON_UNITS
    if _set(end, days):
        # The rest arrives on the count's day, at the latest: the shelf was empty that
        # day if the position reached zero with its sales (fewer than were left: more
        # sold than was there shows the delivery had come before they were made).
        before = position - end_sales
        closing[end] = next_units
        censored[end] = next_units <= EPSILON_UNITS or abs(before) <= EPSILON_UNITS


def _tail(
    sales: np.ndarray, censored: np.ndarray, closing: np.ndarray, start: int, units: float
) -> None:
    """After the last count: its units less the sales since, until a sale shows a
    receipt nothing told of."""
    days = len(sales)
    if _set(start, days):
        closing[start] = units
        censored[start] |= units <= EPSILON_UNITS
    position = units
    for day in range(max(start + 1, 0), days):
        position -= sales[day]
        if position < -EPSILON_UNITS:
            return  # units arrived, how many is unknown: the days after are not marked
        position = max(position, 0.0)
        closing[day] = position
        censored[day] = position <= EPSILON_UNITS


def estimate_demand(
    sales: np.ndarray,
    censored: np.ndarray,
    *,
    window_days: int = WINDOW_DAYS,
    min_observed: int = MIN_OBSERVED_DAYS,
    pooled_level: float | None = None,
    iterations: int = ITERATIONS,
) -> np.ndarray:
    """Daily demand: sales where observed; on censored days the expected demand given
    that it was at least that day's sales (see the module's docstring)."""
    sales = np.asarray(sales, dtype=float)
    censored = np.asarray(censored, dtype=bool)
    demand = sales.copy()
    where = np.flatnonzero(censored)
    if where.size == 0:
        return demand
    observed = ~censored
    total_observed = int(observed.sum())
    if total_observed == 0:
        fallback = pooled_level if pooled_level is not None else 0.0
        return np.where(censored, np.maximum(sales, fallback), sales)
    # Each censored day's neighbourhood: widened until it holds enough observed days.
    cumulative = np.concatenate([[0], np.cumsum(observed)])
    spans: list[tuple[int, int]] = []
    for day in where.tolist():
        width = window_days
        while True:
            lo, hi = max(0, day - width), min(len(sales), day + width + 1)
            if cumulative[hi] - cumulative[lo] >= min_observed or (lo == 0 and hi == len(sales)):
                break
            width *= 2
        spans.append((lo, hi))
    # Start from the neighbourhood's observed mean (not the sales: an empty day's 0
    # would otherwise hold itself at 0), then let the censored days inform each other.
    for index, (lo, hi) in zip(where.tolist(), spans, strict=True):
        demand[index] = max(sales[index], float(sales[lo:hi][observed[lo:hi]].mean()))
    for _ in range(iterations):
        previous = demand.copy()
        for index, (lo, hi) in zip(where.tolist(), spans, strict=True):
            demand[index] = _at_least(previous[lo:hi], sales[index])
        if np.allclose(previous, demand, rtol=1e-6, atol=1e-9):
            break
    if pooled_level is not None and total_observed < min_observed:
        # Little of its own: lean on the pool, the more the less it has.
        weight = total_observed / min_observed
        pooled = np.maximum(sales, pooled_level)
        demand[where] = weight * demand[where] + (1 - weight) * pooled[where]
    return demand


def _at_least(values: np.ndarray, floor: float) -> float:
    """E[X | X >= floor] over `values` (the floor itself when none reaches it)."""
    above = values[values >= floor - EPSILON_UNITS]
    return float(above.mean()) if above.size else float(floor)


def lost_units(sales: np.ndarray, demand: np.ndarray) -> float:
    """Estimated unmet demand: demand less sales, over the days given."""
    return float(np.maximum(np.asarray(demand) - np.asarray(sales), 0.0).sum())
