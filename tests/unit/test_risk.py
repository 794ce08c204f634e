"""Stockout risk on cases with a known answer."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from ml_analytics.models.distribution import continue_paths
from ml_analytics.models.risk import NotAssessable, RiskThresholds, assess_stockout_risk

D = date(2026, 11, 1)
THRESHOLDS = RiskThresholds(high=0.6, medium=0.3)


def assess(paths: np.ndarray, stock: float, window: int = 10, **kwargs: object):  # type: ignore[no-untyped-def]
    return assess_stockout_risk(
        forecast_start=kwargs.pop("forecast_start", D + timedelta(days=1)),  # type: ignore[arg-type]
        sample_paths=paths,
        stock_units=stock,
        snapshot_day=D,
        window_days=window,
        thresholds=THRESHOLDS,
        **kwargs,  # type: ignore[arg-type]
    )


def constant(per_day: float, paths: int = 200, horizon: int = 90) -> np.ndarray:
    return np.full((paths, horizon), per_day)


def test_constant_demand_runs_out_on_the_first_day_demand_exceeds_the_stock() -> None:
    risk = assess(constant(20), stock=100, window=10)
    assert risk.days_until_stockout == 6  # days 1-5 use the 100 up; day 6 goes unserved
    assert risk.predicted_stockout_date == date(2026, 11, 7)
    assert risk.stockout_probability == 1.0
    assert risk.risk_level == "high"
    assert risk.confidence == 1.0


def test_stock_that_outlasts_the_window_is_low_risk_but_still_dated() -> None:
    risk = assess(constant(20), stock=500, window=10)
    assert risk.stockout_probability == 0.0
    assert risk.risk_level == "low"
    assert risk.days_until_stockout == 26


def test_zero_demand_never_runs_out() -> None:
    risk = assess(constant(0), stock=10)
    assert (risk.stockout_probability, risk.predicted_stockout_date, risk.days_until_stockout) == (
        0.0,
        None,
        None,
    )
    assert risk.confidence == 1.0  # every path agrees: no stockout within the horizon


def test_zero_stock_with_demand_is_out_now() -> None:
    risk = assess(constant(3), stock=0)
    assert risk.stockout_probability == 1.0
    assert risk.days_until_stockout == 0
    assert risk.predicted_stockout_date == D


def test_huge_stock_gives_no_date_within_the_horizon() -> None:
    risk = assess(constant(20), stock=1e9, window=14)
    assert risk.predicted_stockout_date is None
    assert risk.stockout_probability == 0.0
    assert risk.risk_level == "low"


def test_rising_trend_runs_out_sooner_than_the_current_rate_says() -> None:
    trend = np.tile(np.arange(1, 91, dtype=float) * 2, (100, 1))  # 2, 4, 6, ... units a day
    risk = assess(trend, stock=110, window=30)
    # 2+4+...+2k > 110  =>  k(k+1) > 110  =>  k = 11
    assert risk.days_until_stockout == 11
    assert risk.stockout_probability == 1.0


def test_probability_is_the_share_of_paths_exceeding_the_stock_over_the_window() -> None:
    paths = np.vstack([constant(5, paths=70), constant(15, paths=30)])  # 70% slow, 30% fast
    risk = assess(paths, stock=100, window=10)  # slow: 50 over 10 days; fast: 150
    assert risk.stockout_probability == 0.3
    assert risk.risk_level == "medium"


def test_observed_demand_since_a_stale_snapshot_comes_off_the_stock() -> None:
    # The forecast starts 3 days after the snapshot day; 45 units sold in between.
    risk = assess(
        constant(10),
        stock=100,
        window=10,
        forecast_start=D + timedelta(days=4),
        observed_since_snapshot_units=45,
    )
    # 55 left on day 3; 10 a day from day 4: exceeded on day 3 + 6 = 9
    assert risk.days_until_stockout == 9
    assert risk.stockout_probability == 1.0  # by day 10 demand is 45 + 70 > 100


def test_a_stock_level_past_the_forecast_is_assessed_on_the_paths_continued_to_it() -> None:
    # The forecast started 40 days before the stock's day and covers 30: the stock is
    # counted 10 days past its end (the clock lagged). 1 a day: 5 units last 5 days.
    risk = assess(constant(1, horizon=30), stock=5, forecast_start=D - timedelta(days=40))
    assert risk.stockout_probability == 1.0  # 10 days of window, 10 units > 5
    assert risk.days_until_stockout == 6 and risk.predicted_stockout_date == D + timedelta(days=6)
    stocked = assess(constant(1, horizon=30), stock=50, forecast_start=D - timedelta(days=40))
    # No date: the paths past the forecast reach only as far as the window.
    assert stocked.stockout_probability == 0.0 and stocked.days_until_stockout is None


def test_a_stock_level_far_past_the_forecast_is_not_assessed_with_its_reason() -> None:
    with pytest.raises(NotAssessable, match="past the forecast's last day"):
        assess(constant(1, horizon=30), stock=5, forecast_start=D - timedelta(days=30 + 366))


@pytest.mark.parametrize("stock", [0.0, 1.0, 37.5, 300.0])
def test_probability_and_confidence_stay_within_zero_and_one(stock: float) -> None:
    rng = np.random.default_rng(7)
    risk = assess(rng.gamma(2.0, 3.0, size=(200, 90)), stock=stock, window=14)
    assert 0 <= risk.stockout_probability <= 1
    assert 0 <= risk.confidence <= 1


def test_the_date_is_the_median_stockout_day_over_the_paths() -> None:
    # 60% of paths run out on day 3, 40% never: more likely than not by day 3.
    paths = np.vstack([constant(50, paths=120), constant(0, paths=80)])
    risk = assess(paths, stock=100, window=10)
    assert risk.days_until_stockout == 3 and risk.stockout_probability == 0.6
    # 40% on day 3, 60% never: a stockout is not more likely than not: no date.
    paths = np.vstack([constant(50, paths=80), constant(0, paths=120)])
    risk = assess(paths, stock=100, window=10)
    assert risk.predicted_stockout_date is None and risk.stockout_probability == 0.4


@pytest.mark.parametrize("seed", range(30))
def test_a_date_inside_the_window_means_probability_at_least_one_half(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lumpy = rng.poisson(0.3, size=(200, 90)) * rng.choice([1, 5, 20], size=(200, 90))
    stock, window = float(rng.integers(0, 60)), int(rng.integers(1, 30))
    risk = assess(lumpy.astype(float), stock=stock, window=window)
    inside = risk.days_until_stockout is not None and risk.days_until_stockout <= window
    assert inside == (risk.stockout_probability >= 0.5)


def test_a_risk_window_longer_than_the_forecast_continues_its_paths() -> None:
    # A stored forecast covers 90 days; a lead time of 120 days is the risk window.
    risk = assess(constant(1), stock=100, window=120)
    assert risk.stockout_probability == 1.0 and risk.risk_level == "high"
    assert risk.days_until_stockout == 101  # 100 on hand: day 101 goes unserved
    # Half the paths sell 1 a day, half nothing: continued, not cut at day 90.
    paths = np.vstack([constant(1, paths=100), constant(0, paths=100)])
    assert assess(paths, stock=95, window=120).stockout_probability == 0.5
    assert assess(paths, stock=95, window=90).stockout_probability == 0.0


@pytest.mark.parametrize("seed", range(10))
def test_a_date_inside_a_window_past_the_horizon_means_probability_at_least_one_half(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    paths = rng.poisson(0.5, size=(200, 90)) * rng.choice([1, 5], size=(200, 90))
    stock, window = float(rng.integers(40, 120)), int(rng.integers(91, 366))
    risk = assess(paths.astype(float), stock=stock, window=window)
    inside = risk.days_until_stockout is not None and risk.days_until_stockout <= window
    assert inside == (risk.stockout_probability >= 0.5)


def test_continued_paths_repeat_their_own_last_four_weeks() -> None:
    rng = np.random.default_rng(3)
    paths = rng.gamma(1.0, 2.0, size=(5, 90))
    longer = continue_paths(paths, 150)
    assert longer.shape == (5, 150)
    assert np.array_equal(longer[:, :90], paths)
    # Day 90 + j is day 62 + j % 28: the same weekday, the path's own level.
    for j in (0, 27, 28, 59):
        assert np.array_equal(longer[:, 90 + j], paths[:, 62 + j % 28])
    assert continue_paths(paths, 60).shape == (5, 90)  # long enough: unchanged
    short = rng.gamma(1.0, 2.0, size=(3, 10))  # one whole week and three days
    assert np.array_equal(continue_paths(short, 17)[:, 10:], short[:, 3:10])
