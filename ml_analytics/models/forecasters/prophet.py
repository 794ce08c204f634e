"""Prophet, kept as a forecaster of its own: selectable by setting (FORECAST_MODEL=prophet)
and per request ("model": "prophet"). One model per product, fitted on its zero-filled
daily series; accuracy from a holdout of the history's last 28 days, then refitted on
all of it. Forecast values are clipped at zero.

Its sample paths (what stockout risk is computed from) are sale-day paths around
Prophet's own daily forecast (models/distribution.py), so the probability and the
date come from the same forecast as `yhat`. On the sample Prophet is not better than
a 28-day moving average (docs/evaluation.md); the default forecaster is the combination.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np

from ml_analytics.models.distribution import sample_paths
from ml_analytics.models.forecasters.base import (
    SEASON_PERIOD_DAYS,
    AccuracyMetrics,
    Forecast,
    ForecastConfig,
    ModelFailure,
    Seasonality,
    accuracy,
    check_history,
)

# cmdstanpy and prophet narrate every fit at INFO; prophet.plot warns about plotly.
# cmdstanpy installs its own DEBUG handler on a logger that has none (as in a fresh
# worker process), so give each a NullHandler and keep their chatter to themselves.
for _noisy in ("cmdstanpy", "prophet", "prophet.plot"):
    _logger = logging.getLogger(_noisy)
    _logger.addHandler(logging.NullHandler())
    _logger.setLevel(logging.ERROR)
    _logger.propagate = False

NAME = "prophet"


def holdout_accuracy(
    values: np.ndarray, first_day: date, config: ForecastConfig, seasonality: Seasonality
) -> AccuracyMetrics | None:
    """Fit without the last `holdout_days` and score the forecast of them; None when
    the history is too short to spare a week."""
    holdout = min(config.holdout_days, len(values) // 4)
    if holdout < SEASON_PERIOD_DAYS:
        return None
    train, test = values[:-holdout], values[-holdout:]
    expected, *_ = _fit_predict(train, first_day, holdout, seasonality, config)
    return accuracy(test, expected, train, moving_average=float(train[-28:].mean()))


def future_forecast(
    values: np.ndarray, first_day: date, config: ForecastConfig, seasonality: Seasonality
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit on all of the history; `horizon_days` of yhat, yhat_lower, yhat_upper."""
    return _fit_predict(values, first_day, config.horizon_days, seasonality, config)


def assemble_forecast(
    values: np.ndarray,
    first_day: date,
    config: ForecastConfig,
    seasonality: Seasonality,
    metrics: AccuracyMetrics | None,
    predicted: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Forecast:
    """The Forecast from its two fits (which may have run in different processes)."""
    notes: list[str] = []
    if metrics is None:
        metrics = AccuracyMetrics(0, None, None, None, None, None)
        notes.append("history too short for a holdout; no accuracy figures")
    yhat, lower, upper = predicted
    return Forecast(
        start=first_day + timedelta(days=len(values)),
        yhat=yhat,
        yhat_lower=lower,
        yhat_upper=upper,
        sample_paths=sample_paths(yhat, values, None, config.sample_paths, config.random_seed),
        metrics=metrics,
        seasonality=seasonality,
        training_days=len(values),
        units_seen=float(values.sum()),
        notes=notes,
    )


def fit_forecast(values: np.ndarray, first_day: date, config: ForecastConfig) -> Forecast:
    """Fit on a zero-filled daily series starting at `first_day`; forecast `horizon_days`.

    Raises InsufficientData below `min_training_days`, ModelFailure when Prophet fails.
    """
    values = np.asarray(values, dtype=float)
    seasonality = check_history(values, first_day, config)
    return assemble_forecast(
        values,
        first_day,
        config,
        seasonality,
        holdout_accuracy(values, first_day, config, seasonality),
        future_forecast(values, first_day, config, seasonality),
    )


def _fit_predict(
    values: np.ndarray,
    first_day: date,
    horizon: int,
    seasonality: Seasonality,
    config: ForecastConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not values.any():
        # Nothing was ever sold: Prophet cannot scale an all-zero series, and the
        # honest forecast is zero with no spread.
        zeros = np.zeros(horizon)
        return zeros, zeros, zeros
    import pandas as pd
    from prophet import Prophet

    history = pd.DataFrame(
        {"ds": pd.date_range(first_day, periods=len(values), freq="D"), "y": values}
    )
    model = Prophet(
        growth="linear",
        seasonality_mode=config.seasonality_mode,
        interval_width=config.interval_width,
        weekly_seasonality=seasonality.weekly,
        yearly_seasonality=seasonality.yearly,
        daily_seasonality=False,
        uncertainty_samples=200,
    )
    np.random.seed(config.random_seed)  # Prophet samples intervals with numpy's global generator
    try:
        model.fit(history)
        future = model.make_future_dataframe(periods=horizon, freq="D", include_history=False)
        predicted = model.predict(future)
    except Exception as error:  # Stan and Prophet raise many kinds
        raise ModelFailure(f"{type(error).__name__}: {error}") from error
    finally:
        remove_fit_files(model)
    yhat = np.clip(predicted["yhat"].to_numpy(), 0, None)
    lower = np.clip(predicted["yhat_lower"].to_numpy(), 0, None)
    upper = np.clip(predicted["yhat_upper"].to_numpy(), 0, None)
    return yhat, lower, upper


def remove_fit_files(model: Any) -> None:
    """Remove the files cmdstanpy wrote for this fit (its estimate as CSV, Stan's
    console output, in a directory of their own): it removes them only when the
    process exits through `atexit`, which a worker process never does, so a worker
    that fits thousands of products would fill its temporary directory."""
    backend = getattr(model, "stan_backend", None)
    fit = getattr(backend, "stan_fit", None)
    if backend is None or fit is None:
        return
    files = [Path(f) for f in fit.runset.csv_files + fit.runset.stdout_files]
    backend.cleanup()
    for directory in {f.parent for f in files}:
        with contextlib.suppress(OSError):  # not empty: something else is in it
            directory.rmdir()


# -- as the registry runs it (models/forecasters/registry.py) ---------------------------


def forecast_jobs(
    jobs: Sequence[Any], global_model: object = None
) -> list[Forecast | ModelFailure]:
    """Each job's forecast, one product at a time (Prophet has no panel)."""
    outcomes: list[Forecast | ModelFailure] = []
    for job in jobs:
        try:
            outcomes.append(
                fit_forecast(np.asarray(job.values, dtype=float), job.first_day, job.config)
            )
        except ModelFailure as failure:
            outcomes.append(failure)
    return outcomes


def holdout_job(job: Any) -> AccuracyMetrics | None:
    """The holdout fit alone (the HTTP API runs it beside the final fit)."""
    values = np.asarray(job.values, dtype=float)
    seasonality = check_history(values, job.first_day, job.config)
    return holdout_accuracy(values, job.first_day, job.config, seasonality)


def final_job(job: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.asarray(job.values, dtype=float)
    seasonality = check_history(values, job.first_day, job.config)
    return future_forecast(values, job.first_day, job.config, seasonality)


def assemble_job(job: Any, holdout: object, final: object) -> Forecast:
    values = np.asarray(job.values, dtype=float)
    seasonality = check_history(values, job.first_day, job.config)
    metrics = holdout if isinstance(holdout, AccuracyMetrics) else None
    predicted = cast(tuple[np.ndarray, np.ndarray, np.ndarray], final)
    return assemble_forecast(values, job.first_day, job.config, seasonality, metrics, predicted)
