"""What every forecaster shares: the configuration, the forecast it returns, its
accuracy figures, seasonality detection and the checks on a history. Pure."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

import numpy as np

# Changes whenever a forecaster's output for the same input changes (cached
# predictions made by another revision are not served).
MODEL_REVISION = "combination-1"
SEASON_PERIOD_DAYS = 7


class ModelFailure(RuntimeError):
    """The model could not be fitted on this history: an expected outcome for some
    histories, not a fault of ours (which surfaces as any other exception)."""


class InsufficientData(ModelFailure):
    """Too little history to fit; the message says how much there is and how much is needed."""


@dataclass(frozen=True)
class ForecastConfig:
    horizon_days: int = 90
    seasonality_mode: Literal["additive", "multiplicative"] = "additive"
    interval_width: float = 0.95
    min_training_days: int = 30
    sample_paths: int = 200
    holdout_days: int = 28
    random_seed: int = 20261127
    history_days: int = 1096  # the latest days of a history a forecast is made from


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
    # 1 - (error of the forecast's total) / (error of a 28-day moving average's total),
    # pooled over `skill_backtests` backtests: 0.18 is "18% better than the 28-day
    # average". None until there is a backtest whose outcome is known.
    skill_vs_moving_average: float | None = None
    skill_backtests: int = 0


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
    weights: dict[str, float] = field(default_factory=dict)  # a combination's members

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


def accuracy(
    actual: np.ndarray,
    predicted: np.ndarray,
    history: np.ndarray,
    moving_average: float | None = None,
) -> AccuracyMetrics:
    """Holdout errors of `predicted` against `actual`; `history` scales MASE. With the
    28-day moving average's daily level at the holdout's start, its skill against it."""
    errors = actual - predicted
    total = float(np.abs(actual).sum())
    naive_scale = (
        float(np.mean(np.abs(history[SEASON_PERIOD_DAYS:] - history[:-SEASON_PERIOD_DAYS])))
        if len(history) > SEASON_PERIOD_DAYS
        else 0.0
    )
    nonzero = actual != 0
    skill = None
    if moving_average is not None:
        skill = skill_against(
            [float(predicted.sum())], [moving_average * len(actual)], [float(actual.sum())]
        )
    return AccuracyMetrics(
        holdout_days=len(actual),
        rmse=_finite(math.sqrt(float(np.mean(errors**2)))),
        mae=_finite(float(np.mean(np.abs(errors)))),
        wape=_finite(float(np.abs(errors).sum()) / total) if total > 0 else None,
        mase=_finite(float(np.mean(np.abs(errors))) / naive_scale) if naive_scale > 0 else None,
        mape=_finite(float(np.mean(np.abs(errors[nonzero] / actual[nonzero]))) * 100)
        if nonzero.any()
        else None,
        skill_vs_moving_average=skill,
        skill_backtests=int(skill is not None),
    )


def skill_against(
    forecast_totals: list[float], baseline_totals: list[float], actual_totals: list[float]
) -> float | None:
    """1 - (sum of |forecast - actual|) / (sum of |baseline - actual|): the share by which
    the forecast's totals err less than the baseline's. None when the baseline was exact."""
    forecast_error = sum(abs(f - a) for f, a in zip(forecast_totals, actual_totals, strict=True))
    baseline_error = sum(abs(b - a) for b, a in zip(baseline_totals, actual_totals, strict=True))
    if baseline_error <= 0:
        return None
    return _finite(1 - forecast_error / baseline_error)


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

    Raises InsufficientData below `min_training_days`, ModelFailure on negative or
    non-finite values.
    """
    ensure_enough_history(len(values), config)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ModelFailure("daily demand must be finite and non-negative")
    return detect_seasonality(values, first_day)
