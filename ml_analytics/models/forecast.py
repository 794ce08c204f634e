"""Fit Prophet on a product's daily demand and forecast it, with honest accuracy figures.

The history is a zero-filled daily series (days without transactions are zero
demand). Accuracy comes from a holdout at the end of the history; the model is
then refitted on all of it. Forecast values are clipped at zero: demand is never
negative, whatever the model's Gaussian noise says.

The predictive distribution that stockout risk is computed from (`sample_paths`)
is not Prophet's: its samples are Gaussian around the trend, and on lumpy demand
clipping them at zero inflates every sum (measured on the real sample: predicted
0.98, observed 0.58; Brier 0.36). The paths are a weekday-aligned 7-day block
bootstrap of the product's own history instead: a third each from its last 28, 91
and 365 days, so that both a recent change and a longer rhythm are in the
distribution (Brier 0.215 against 0.232 for the last 91 days alone, and the mean
of the paths errs 0.491 on 28-day totals against 0.526). See `bench/evaluate` and
the README.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

import numpy as np

# cmdstanpy and prophet narrate every fit at INFO; prophet.plot warns about plotly.
# cmdstanpy installs its own DEBUG handler on a logger that has none (as in a fresh
# worker process), so give each a NullHandler and keep their chatter to themselves.
for _noisy in ("cmdstanpy", "prophet", "prophet.plot"):
    _logger = logging.getLogger(_noisy)
    _logger.addHandler(logging.NullHandler())
    _logger.setLevel(logging.ERROR)
    _logger.propagate = False

# Changes whenever the forecaster's output for the same input changes (cached
# predictions made by another revision are not served).
MODEL_REVISION = "prophet-bootstrap-2"
SEASON_PERIOD_DAYS = 7
BOOTSTRAP_WINDOW_DAYS = 91
BOOTSTRAP_WINDOWS_DAYS = (28, 91, 365)  # the mixture the service's sample paths come from
BOOTSTRAP_BLOCK_DAYS = 7


class InsufficientData(ValueError):
    """Too little history to fit; the message says how much there is and how much is needed."""


class ModelFailure(RuntimeError):
    """The model could not be fitted on this history."""


@dataclass(frozen=True)
class ForecastConfig:
    horizon_days: int = 90
    seasonality_mode: Literal["additive", "multiplicative"] = "additive"
    interval_width: float = 0.95
    min_training_days: int = 30
    sample_paths: int = 200
    holdout_days: int = 28
    random_seed: int = 20261127


@dataclass(frozen=True)
class Seasonality:
    """Which seasonal components the model uses, and the evidence for weekly."""

    weekly: bool
    yearly: bool
    weekly_strength: float  # share of variance explained by the day of the week (0..1)


@dataclass(frozen=True)
class AccuracyMetrics:
    """Errors on the holdout (the last `holdout_days` of the history).

    MAPE is over days with non-zero demand only: it is undefined on zero days,
    which are common in real demand. MASE divides by the in-sample error of a
    seasonal-naive forecast (same weekday last week). None where undefined.
    """

    holdout_days: int
    rmse: float | None
    mae: float | None
    wape: float | None
    mase: float | None
    mape: float | None


@dataclass
class Forecast:
    """A fitted product forecast: daily expectation, interval, and sample paths."""

    start: date  # first forecast day (the day after the history's last day)
    yhat: np.ndarray
    yhat_lower: np.ndarray
    yhat_upper: np.ndarray
    sample_paths: np.ndarray  # shape (paths, horizon_days), non-negative
    metrics: AccuracyMetrics
    seasonality: Seasonality
    training_days: int
    units_seen: float
    model_name: str = "prophet"
    notes: list[str] = field(default_factory=list)

    @property
    def horizon_days(self) -> int:
        return len(self.yhat)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.horizon_days)]

    def metrics_dict(self) -> dict[str, Any]:
        return asdict(self.metrics)


def weekly_strength(values: np.ndarray, first_day: date) -> float:
    """How much of the variance the day of the week explains, corrected for chance.

    Epsilon squared of a one-way ANOVA on weekday: (SS_between - 6 MS_within) /
    SS_total. Plain eta squared would credit pure noise with ~6/(n-1); this is ~0
    for noise and near 1 for a shop closed on one weekday.
    """
    n = len(values)
    if n < 2 * SEASON_PERIOD_DAYS:
        return 0.0
    weekdays = (np.arange(n) + first_day.weekday()) % SEASON_PERIOD_DAYS
    grand = values.mean()
    ss_total = float(((values - grand) ** 2).sum())
    if ss_total == 0:
        return 0.0
    ss_between = sum(
        int((weekdays == d).sum()) * (float(values[weekdays == d].mean()) - grand) ** 2
        for d in range(SEASON_PERIOD_DAYS)
    )
    ms_within = (ss_total - ss_between) / (n - SEASON_PERIOD_DAYS)
    return max(0.0, (ss_between - (SEASON_PERIOD_DAYS - 1) * ms_within) / ss_total)


def detect_seasonality(values: np.ndarray, first_day: date) -> Seasonality:
    """Weekly when four weeks show a weekday pattern; yearly from two full years on."""
    strength = float(weekly_strength(values, first_day))
    return Seasonality(
        weekly=bool(len(values) >= 4 * SEASON_PERIOD_DAYS and strength >= 0.1),
        yearly=bool(len(values) >= 730),
        weekly_strength=round(strength, 4),
    )


def accuracy(actual: np.ndarray, predicted: np.ndarray, history: np.ndarray) -> AccuracyMetrics:
    """Holdout errors of `predicted` against `actual`; `history` scales MASE."""
    errors = actual - predicted
    total = float(np.abs(actual).sum())
    naive_scale = (
        float(np.mean(np.abs(history[SEASON_PERIOD_DAYS:] - history[:-SEASON_PERIOD_DAYS])))
        if len(history) > SEASON_PERIOD_DAYS
        else 0.0
    )
    nonzero = actual != 0
    return AccuracyMetrics(
        holdout_days=len(actual),
        rmse=_finite(math.sqrt(float(np.mean(errors**2)))),
        mae=_finite(float(np.mean(np.abs(errors)))),
        wape=_finite(float(np.abs(errors).sum()) / total) if total > 0 else None,
        mase=_finite(float(np.mean(np.abs(errors))) / naive_scale) if naive_scale > 0 else None,
        mape=_finite(float(np.mean(np.abs(errors[nonzero] / actual[nonzero]))) * 100)
        if nonzero.any()
        else None,
    )


def _finite(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


def ensure_enough_history(days: int, config: ForecastConfig) -> None:
    """Raises InsufficientData when `days` is below `min_training_days`."""
    if days < config.min_training_days:
        raise InsufficientData(
            f"Insufficient transaction data. Need at least {config.min_training_days} days, "
            f"got {days}"
        )


def check_history(values: np.ndarray, first_day: date, config: ForecastConfig) -> Seasonality:
    """Validate a zero-filled daily series and detect its seasonality.

    Raises InsufficientData below `min_training_days`, ValueError on negative or
    non-finite values.
    """
    ensure_enough_history(len(values), config)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("daily demand must be finite and non-negative")
    return detect_seasonality(values, first_day)


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
    return accuracy(test, expected, train)


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
        sample_paths=mixed_bootstrap_paths(
            values, config.horizon_days, config.sample_paths, config.random_seed
        ),
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


def bootstrap_paths(
    values: np.ndarray,
    horizon: int,
    paths: int,
    seed: int,
    window: int = BOOTSTRAP_WINDOW_DAYS,
    block: int = BOOTSTRAP_BLOCK_DAYS,
) -> np.ndarray:
    """Sample paths of future daily demand: blocks of `block` consecutive days drawn
    from the last `window` days of history, each starting on the weekday of the
    forecast day it fills (so a shop's closed days stay closed)."""
    if paths == 0:
        return np.zeros((0, horizon))
    history = np.asarray(values, dtype=float)[-window:]
    block = min(block, len(history))
    rng = np.random.default_rng(seed)
    blocks_needed = -(-horizon // block)
    if block == SEASON_PERIOD_DAYS:
        # Offsets whose weekday is the first forecast day's: history[i] is that
        # weekday when i = len(history) (mod 7), so each block's days line up with
        # the forecast days they stand for.
        starts = np.arange(len(history) % block, len(history) - block + 1, block)
    else:  # a history shorter than a week
        starts = np.arange(0, len(history) - block + 1)
    chosen = rng.choice(starts, size=(paths, blocks_needed))
    windows = history[chosen[..., None] + np.arange(block)]  # (paths, blocks, block)
    return windows.reshape(paths, -1)[:, :horizon]


def mixed_bootstrap_paths(
    values: np.ndarray,
    horizon: int,
    paths: int,
    seed: int,
    windows: tuple[int, ...] = BOOTSTRAP_WINDOWS_DAYS,
) -> np.ndarray:
    """`paths` sample paths, an equal share bootstrapped from each of the last
    `windows` days of history (the first windows take the remainder)."""
    shares = [paths // len(windows) + (i < paths % len(windows)) for i in range(len(windows))]
    return np.vstack(
        [
            bootstrap_paths(values, horizon, share, seed + i, window=window)
            for i, (share, window) in enumerate(zip(shares, windows, strict=True))
        ]
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
    yhat = np.clip(predicted["yhat"].to_numpy(), 0, None)
    lower = np.clip(predicted["yhat_lower"].to_numpy(), 0, None)
    upper = np.clip(predicted["yhat_upper"].to_numpy(), 0, None)
    return yhat, lower, upper
