"""The replenishment policy on products with a known answer."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest
from scipy import stats

from ml_analytics.models.distribution import NotAssessable
from ml_analytics.models.replenishment import (
    ReplenishmentPolicy,
    recommend,
    round_up_to_multiple,
)

DAY = date(2026, 11, 2)
POLICY = ReplenishmentPolicy(service_level=0.95, review_days=7)


def poisson_paths(rate: float, paths: int = 20_000, days: int = 60) -> np.ndarray:
    return np.random.default_rng(1).poisson(rate, size=(paths, days)).astype(float)


def advise(paths: np.ndarray, on_hand: float, lead: int = 14, **kwargs: object):  # type: ignore[no-untyped-def]
    return recommend(
        sample_paths=paths,
        forecast_start=kwargs.pop("forecast_start", DAY + timedelta(days=1)),  # type: ignore[arg-type]
        snapshot_day=DAY,
        on_hand_units=on_hand,
        lead_time_days=lead,
        policy=kwargs.pop("policy", POLICY),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_poisson_product_orders_up_to_the_poisson_quantile() -> None:
    advice = advise(poisson_paths(3.0), on_hand=20)
    # Demand over 14 + 7 days ~ Poisson(63); over 14 days ~ Poisson(42).
    assert advice.order_up_to_units == pytest.approx(stats.poisson.ppf(0.95, 63), abs=1)
    assert advice.reorder_point_units == pytest.approx(stats.poisson.ppf(0.95, 42), abs=1)
    assert advice.recommended_order_units == advice.order_up_to_units - 20
    assert advice.order_by_date == DAY  # 20 on hand is below the reorder point: order now


def test_a_lumpy_product_protects_against_its_big_orders() -> None:
    rng = np.random.default_rng(2)
    # One order of 100 units on 5% of days: mean 5 a day, like the Poisson's 3 + 2.
    lumpy = np.where(rng.random((20_000, 60)) < 0.05, 100.0, 0.0)
    advice = advise(lumpy, on_hand=0, lead=14)
    # Over 21 days the 95% quantile is 3 orders (300); the normal formula's
    # 21 x 5 + 1.645 σ√21 stops short of it, between two and three orders.
    assert advice.order_up_to_units == 300
    normal = 21 * 5 + 1.645 * lumpy.std() * np.sqrt(21)
    assert 200 < normal < 300


def test_units_on_order_count_towards_the_position() -> None:
    paths = poisson_paths(3.0)
    without = advise(paths, on_hand=20)
    with_order = advise(paths, on_hand=20, on_order_units=30)
    assert with_order.stock_position_units == 50
    assert with_order.recommended_order_units == without.recommended_order_units - 30
    covered = advise(paths, on_hand=20, on_order_units=500)
    assert covered.recommended_order_units == 0


def test_orders_come_in_multiples() -> None:
    advice = advise(poisson_paths(3.0), on_hand=20, order_multiple_units=24)
    assert advice.recommended_order_units % 24 == 0
    assert advice.order_up_to_units - 20 <= advice.recommended_order_units
    assert advice.recommended_order_units < advice.order_up_to_units - 20 + 24


def test_order_by_date_is_when_the_position_meets_the_reorder_point() -> None:
    constant = np.full((100, 60), 10.0)  # exactly 10 a day
    advice = advise(constant, on_hand=300, lead=7)  # reorder point 70
    # 300 - 10 t <= 70  =>  t = 23
    assert advice.reorder_point_units == 70
    assert advice.order_by_date == DAY + timedelta(days=23)
    plenty = advise(constant, on_hand=10_000, lead=7)
    assert plenty.order_by_date is None and plenty.recommended_order_units == 0


def test_a_higher_service_level_keeps_more() -> None:
    paths = poisson_paths(3.0)
    low = advise(paths, on_hand=0, policy=ReplenishmentPolicy(0.9, 7))
    high = advise(paths, on_hand=0, policy=ReplenishmentPolicy(0.98, 7))
    assert low.order_up_to_units < high.order_up_to_units


def test_a_lead_time_longer_than_the_forecast_covers_all_of_it() -> None:
    # 60 days of paths, 3 a day in half of them and 1 in the other half; a lead time
    # of 120 days and a week's review: the paths continue past their 60 days.
    paths = np.vstack([np.full((50, 60), 3.0), np.full((50, 60), 1.0)])
    advice = advise(paths, on_hand=0, lead=120)
    assert (advice.reorder_point_units, advice.order_up_to_units) == (360, 381)
    assert advice.recommended_order_units == 381


def test_a_stock_counted_before_the_forecast_orders_for_the_days_from_now() -> None:
    # Counted on DAY; the forecast starts 4 days later, 12 units were sold in between.
    stale = advise(
        poisson_paths(3.0),
        on_hand=40,
        forecast_start=DAY + timedelta(days=4),
        observed_since_snapshot_units=12,
    )
    # An order placed now (DAY + 3) arrives 14 days later: it covers 14 + 7 days of
    # the forecast, not 3 days fewer.
    assert stale.reorder_point_units == pytest.approx(stats.poisson.ppf(0.95, 42), abs=1)
    assert stale.order_up_to_units == pytest.approx(stats.poisson.ppf(0.95, 63), abs=1)
    assert stale.stock_position_units == 28
    assert stale.order_by_date == DAY + timedelta(days=3)  # now, not the count's day
    constant = np.full((100, 60), 10.0)
    later = advise(
        constant,
        on_hand=330,
        lead=7,
        forecast_start=DAY + timedelta(days=4),
        observed_since_snapshot_units=30,
    )
    # 300 now (DAY + 3); 300 - 10 t <= 70  =>  t = 23 days after now.
    assert later.order_by_date == DAY + timedelta(days=3 + 23)


@pytest.mark.parametrize("multiple", [1e12, 1e6, 250.0])
def test_a_needed_order_is_at_least_one_multiple_whatever_its_size(multiple: float) -> None:
    advice = advise(poisson_paths(3.0), on_hand=20, order_multiple_units=multiple)
    assert advice.recommended_order_units == multiple  # not rounded away to 0


def test_an_order_of_exact_multiples_is_not_rounded_up_a_multiple_more() -> None:
    assert round_up_to_multiple(0.30000000000000004, 0.1) == pytest.approx(0.3)
    assert round_up_to_multiple(7.0, 3.5) == 7.0
    assert round_up_to_multiple(7.01, 3.5) == 10.5
    assert round_up_to_multiple(0.0, 5.0) == 0.0


def test_a_stock_counted_past_the_forecast_orders_for_the_days_after_it() -> None:
    # The forecast's 60 days ended 10 days before the stock's day: its paths continue
    # (their last four weeks repeated), not an order of 0 for want of days.
    paths = poisson_paths(3.0)
    late = advise(paths, on_hand=20, forecast_start=DAY - timedelta(days=70))
    assert late.order_up_to_units == pytest.approx(stats.poisson.ppf(0.95, 63), abs=2)
    assert late.recommended_order_units > 0


def test_a_stock_far_past_the_forecast_gets_no_figure() -> None:
    with pytest.raises(NotAssessable):
        advise(poisson_paths(3.0, paths=100), on_hand=20, forecast_start=DAY - timedelta(days=500))
