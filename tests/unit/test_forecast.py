"""The Prophet forecaster on series with a known shape."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from ml_analytics.models.forecast import (
    ForecastConfig,
    InsufficientData,
    accuracy,
    detect_seasonality,
    fit_forecast,
)

CONFIG = ForecastConfig(horizon_days=30, min_training_days=30, sample_paths=100)
START = date(2025, 1, 6)  # a Monday


def test_steady_demand_is_forecast_near_its_level_and_never_negative() -> None:
    rng = np.random.default_rng(1)
    history = rng.poisson(20, 120).astype(float)
    forecast = fit_forecast(history, START, CONFIG)
    assert forecast.start == START + timedelta(days=120)
    assert forecast.horizon_days == 30
    assert 15 < forecast.yhat.mean() < 25
    assert np.all(forecast.yhat >= 0) and np.all(forecast.yhat_lower >= 0)
    assert np.all(forecast.yhat_lower <= forecast.yhat) and np.all(
        forecast.yhat <= forecast.yhat_upper
    )
    assert forecast.sample_paths.shape == (100, 30)
    assert np.all(forecast.sample_paths >= 0)
    assert forecast.metrics.holdout_days == 28
    assert forecast.metrics.mape is not None and forecast.metrics.mape < 40
    assert forecast.training_days == 120 and forecast.units_seen == history.sum()


def test_intermittent_demand_forecast_is_clipped_at_zero() -> None:
    history = np.zeros(90)
    history[::13] = 40  # a big order every 13 days
    forecast = fit_forecast(history, START, CONFIG)
    assert np.all(forecast.yhat >= 0)
    assert np.all(forecast.sample_paths >= 0)
    assert forecast.metrics.mape is None or forecast.metrics.mape >= 0  # over non-zero days only


def test_all_zero_history_forecasts_zero_without_prophet() -> None:
    forecast = fit_forecast(np.zeros(40), START, CONFIG)
    assert not forecast.yhat.any() and not forecast.sample_paths.any()


def test_too_short_history_says_how_much_is_needed() -> None:
    with pytest.raises(InsufficientData, match="Need at least 30 days, got 15"):
        fit_forecast(np.ones(15), START, CONFIG)


def test_weekly_pattern_is_detected_only_when_present() -> None:
    rng = np.random.default_rng(3)
    weekdays = np.array([30, 30, 30, 30, 30, 0, 5] * 10, dtype=float)  # closed on Saturdays
    flat = rng.poisson(20, 70).astype(float)
    assert detect_seasonality(weekdays, START).weekly
    assert type(detect_seasonality(weekdays, START).weekly) is bool  # stored as JSON
    assert not detect_seasonality(flat, START).weekly
    assert not detect_seasonality(weekdays, START).yearly
    assert detect_seasonality(np.tile(weekdays, 11), START).yearly  # 770 days


def test_accuracy_metrics_on_a_known_case() -> None:
    actual = np.array([0.0, 10, 0, 10])
    predicted = np.array([1.0, 8, 0, 12])
    history = np.array([0.0, 2, 4, 6, 8, 10, 12, 2, 4, 6, 8, 10, 12, 14])
    metrics = accuracy(actual, predicted, history)
    assert metrics.mae == 1.25
    assert metrics.rmse == pytest.approx(np.sqrt((1 + 4 + 0 + 4) / 4), abs=1e-4)
    assert metrics.wape == 0.25  # 5 / 20
    assert metrics.mape == 20.0  # non-zero days only: (2/10 + 2/10) / 2
    assert metrics.mase == pytest.approx(1.25 / 2.0)  # seasonal-naive in-sample error is 2


def test_bootstrap_paths_keep_the_weekday_pattern_and_the_recent_level() -> None:
    from ml_analytics.models.forecast import bootstrap_paths

    closed_on_day_6 = np.array([30, 30, 30, 30, 30, 0, 5] * 20, dtype=float)
    history = closed_on_day_6[:-3]  # ends mid-week: the forecast starts on pattern day 4
    paths = bootstrap_paths(history, horizon=14, paths=50, seed=1)
    assert paths.shape == (50, 14)
    expected_week = np.roll(closed_on_day_6[:7], -4)  # 30, 0, 5, 30, 30, 30, 30
    assert np.all(paths[:, :7] == expected_week)


def test_bootstrap_paths_follow_their_window_not_older_history() -> None:
    from ml_analytics.models.forecast import bootstrap_paths

    history = np.concatenate([np.full(200, 100.0), np.full(91, 2.0)])
    assert np.all(bootstrap_paths(history, 30, 20, seed=0, window=91) == 2.0)


def test_the_service_paths_mix_the_last_28_91_and_365_days_in_equal_shares() -> None:
    from ml_analytics.models.forecast import mixed_bootstrap_paths

    # A year ago demand was 100 a day; for the last 91 days it has been 2.
    history = np.concatenate([np.full(274, 100.0), np.full(91, 2.0)])
    paths = mixed_bootstrap_paths(history, horizon=7, paths=301, seed=3)
    assert paths.shape == (301, 7)
    recent = np.all(paths == 2.0, axis=1)
    # The 28- and 91-day thirds (101 + 100) see only the recent level; the 365-day
    # third draws 13 of its 52 weeks from the recent level, the rest from the old one.
    assert np.all(recent[:201])
    old_weeks = paths[201:].mean(axis=1) == 100.0
    assert 0.6 < old_weeks.mean() < 0.9  # ~39/52 of the weeks
