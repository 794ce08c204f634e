"""The Prophet forecaster on series with a known shape, and the accuracy figures."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from ml_analytics.models.forecasters.base import (
    ForecastConfig,
    InsufficientData,
    accuracy,
    detect_seasonality,
)
from ml_analytics.models.forecasters.prophet import fit_forecast

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


def test_a_prophet_fit_leaves_no_files_in_the_temporary_directory() -> None:
    """cmdstanpy writes each fit's estimate and console output to a directory of its
    own, removed otherwise only when the process exits through atexit (a fitting
    worker never does): the forecaster removes them after each fit."""
    import cmdstanpy

    before = set(Path(cmdstanpy._TMPDIR).iterdir())
    fit_forecast(np.random.default_rng(2).poisson(5, 90).astype(float), START, CONFIG)
    assert set(Path(cmdstanpy._TMPDIR).iterdir()) == before


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


def test_skill_against_the_moving_average() -> None:
    actual = np.full(28, 10.0)
    metrics = accuracy(actual, np.full(28, 9.0), np.full(60, 10.0), moving_average=5.0)
    # totals: forecast 252, moving average 140, actual 280: errors 28 and 140
    assert metrics.skill_vs_moving_average == pytest.approx(0.8)
    assert metrics.skill_backtests == 1
