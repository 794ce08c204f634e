"""Where the shelf was empty, and what demand was then: cases with a known answer."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from ml_analytics.models.censoring import (
    StockCount,
    estimate_demand,
    lost_units,
    mark_censored,
)

D = date(2026, 3, 2)


def count(day: int, units: float) -> StockCount:
    return StockCount(D + timedelta(days=day), units)


def test_a_count_of_zero_and_the_days_it_stays_empty_are_censored() -> None:
    sales = np.array([5, 5, 5, 0, 0, 0, 4, 4], dtype=float)
    # Counted every day: 10, 5, 0, 0, 0, 0, 16 (a delivery of 20 on day 6), 12.
    counts = [count(d, u) for d, u in enumerate([10, 5, 0, 0, 0, 0, 16, 12])]
    marks = mark_censored(D, sales, counts)
    assert marks.censored.tolist() == [False, False, True, True, True, True, False, False]
    assert marks.closing_units.tolist() == [10, 5, 0, 0, 0, 0, 16, 12]


def test_between_weekly_counts_the_delivery_comes_as_late_as_the_sales_allow() -> None:
    # Count 6 on day 0; 3 a day sold on days 1-2, nothing on days 3-6; 20 counted on
    # day 7: the 20 arrived on day 7 at the latest, so days 2-6 ended empty.
    sales = np.array([0, 3, 3, 0, 0, 0, 0, 0], dtype=float)
    marks = mark_censored(D, sales, [count(0, 6), count(7, 20)])
    assert marks.censored.tolist() == [False, False, True, True, True, True, True, True]
    # A sale from an empty shelf means units had come: from day 4 on nothing is empty.
    sales = np.array([0, 3, 3, 0, 5, 2, 1, 0], dtype=float)
    marks = mark_censored(D, sales, [count(0, 6), count(7, 20)])
    assert marks.censored.tolist() == [False, False, True, True, False, False, False, False]
    assert marks.closing_units[4:].tolist() == [23, 21, 20, 20]


def test_after_the_last_count_the_position_runs_down_until_a_sale_shows_a_delivery() -> None:
    sales = np.array([0, 4, 4, 0, 3, 3], dtype=float)
    marks = mark_censored(D, sales, [count(0, 8)])
    # 8, 4, 0, 0 (empty), then a sale from an empty shelf: unknown from there on.
    assert marks.censored.tolist() == [False, False, True, True, False, False]
    assert np.isnan(marks.closing_units[4:]).all()


def test_days_before_the_first_count_are_taken_as_observed() -> None:
    marks = mark_censored(D, np.zeros(5), [count(3, 0)])
    assert marks.censored.tolist() == [False, False, False, True, True]


def test_a_late_count_re_marks_the_days_it_brackets_whatever_the_order() -> None:
    sales = np.array([0, 2, 2, 2, 0, 0, 0, 0, 3, 3], dtype=float)
    weekly = [count(0, 10), count(9, 20)]
    before = mark_censored(D, sales, weekly)
    assert not before.censored.any()  # 10 - 6 = 4 left when the sales stop
    # A count of 0 on day 5 arrives late: the shelf was empty from day 5 until the
    # delivery that day 8's sale shows.
    late = [count(9, 20), count(5, 0), count(0, 10)]
    after = mark_censored(D, sales, late)
    assert after.censored.tolist() == [False] * 5 + [True, True, True, False, False]


def test_an_empty_week_of_a_steady_seller_is_estimated_at_its_level() -> None:
    rng = np.random.default_rng(3)
    demand = rng.poisson(10, 90).astype(float)
    sales = demand.copy()
    censored = np.zeros(90, dtype=bool)
    sales[70:77] = 0  # a week without stock
    sales[69] = 4  # the day it ran out, part of its demand served
    censored[69:77] = True
    estimate = estimate_demand(sales, censored)
    assert estimate[~censored].tolist() == sales[~censored].tolist()  # observed days stay
    assert estimate[censored].mean() == pytest.approx(10, rel=0.1)
    assert estimate[69] >= 4
    assert estimate[-28:].mean() == pytest.approx(demand[-28:].mean(), rel=0.05)
    assert sales[-28:].mean() < 0.8 * demand[-28:].mean()  # what sales alone would say


def test_an_intermittent_product_with_long_empty_spells_does_not_collapse_to_zero() -> None:
    rng = np.random.default_rng(5)
    days = 240
    demand = np.where(rng.random(days) < 0.2, rng.choice([10.0, 20.0, 40.0], days), 0.0)
    censored = np.zeros(days, dtype=bool)
    censored[120:200] = True  # out of stock for 80 days
    censored[215:235] = True  # and again
    sales = np.where(censored, 0.0, demand)
    estimate = estimate_demand(sales, censored)
    level = demand[~censored].mean()
    per_sale = demand[~censored & (demand > 0)].mean()
    # Empty days are estimated at the level of the days around them, zeros included
    # (not at the mean of the sale days, five times more), and never at zero.
    assert estimate[censored].min() > 0
    assert 0.5 * level < estimate[140:200].mean() < 2 * level < per_sale
    assert estimate[-28:].mean() > 0.5 * demand[-28:].mean()
    # "Drop the empty days and average the rest" would say little more than the sales.
    assert sales[-28:].sum() < estimate[-28:].sum()


def test_nothing_censored_changes_nothing() -> None:
    sales = np.array([3.0, 0.0, 5.0, 1.0])
    assert estimate_demand(sales, np.zeros(4, dtype=bool)).tolist() == sales.tolist()


def test_a_product_never_observed_takes_the_pooled_level() -> None:
    sales = np.zeros(10)
    censored = np.ones(10, dtype=bool)
    assert estimate_demand(sales, censored).tolist() == [0.0] * 10
    assert estimate_demand(sales, censored, pooled_level=2.5).tolist() == [2.5] * 10


def test_lost_units_are_demand_less_sales() -> None:
    assert lost_units(np.array([4.0, 0.0, 5.0]), np.array([6.0, 3.0, 5.0])) == 5.0
