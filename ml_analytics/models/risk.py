"""Stockout risk from a forecast's predictive sample paths. Pure: arrays and dates in.

Conventions (documented in the README):
- A stock snapshot counts as the stock at the end of its business day D; demand
  runs from day D+1. Demand already observed after D (days before the forecast
  starts) is taken off the stock first.
- `stockout_probability`: the share of sample paths whose cumulative demand over
  the risk window (D+1 .. D+window) exceeds the stock. Sample paths, not summed
  interval bounds: the sum of daily 95% bounds is not a 95% bound of the sum.
- `predicted_stockout_date`: the first day on which the expected (mean over the
  paths) cumulative demand since D reaches the stock; None when that does not
  happen within the forecast horizon. `days_until_stockout` counts from D.
- `confidence`: the share of paths that themselves run out within ±2 days of the
  predicted date; when no stockout is predicted, the share of paths that do not
  run out within the horizon either. Always in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

import numpy as np

RiskLevel = Literal["high", "medium", "low"]
CONFIDENCE_TOLERANCE_DAYS = 2


@dataclass(frozen=True)
class RiskThresholds:
    high: float = 0.6  # stockout_probability at or above: "high"
    medium: float = 0.3  # at or above (and below high): "medium"

    def level(self, probability: float) -> RiskLevel:
        if probability >= self.high:
            return "high"
        if probability >= self.medium:
            return "medium"
        return "low"


@dataclass(frozen=True)
class RiskAssessment:
    stockout_probability: float
    predicted_stockout_date: date | None
    days_until_stockout: int | None
    confidence: float
    risk_level: RiskLevel
    risk_window_days: int


class NotAssessable(ValueError):
    """The forecast does not cover the days after the snapshot."""


def assess_stockout_risk(
    *,
    forecast_start: date,
    sample_paths: np.ndarray,
    stock_units: float,
    snapshot_day: date,
    window_days: int,
    thresholds: RiskThresholds,
    observed_since_snapshot_units: float = 0.0,
) -> RiskAssessment:
    """Risk that demand over `window_days` after `snapshot_day` exceeds `stock_units`."""
    paths = np.asarray(sample_paths, dtype=float)
    if paths.ndim != 2 or paths.shape[0] == 0:
        raise NotAssessable("the forecast has no sample paths")
    horizon = paths.shape[1]
    first_day = snapshot_day + timedelta(days=1)
    skip = (first_day - forecast_start).days  # forecast days before the window starts
    if skip >= horizon:
        raise NotAssessable(
            f"snapshot day {snapshot_day} is past the forecast horizon ending "
            f"{forecast_start + timedelta(days=horizon - 1)}"
        )
    # Days between the snapshot and the forecast start already happened; their
    # observed demand is taken off the stock by the caller-supplied figure.
    gap_days = max(0, -skip)
    remaining = stock_units - observed_since_snapshot_units
    ahead = paths[:, max(0, skip) :]
    cumulative = np.cumsum(ahead, axis=1)  # demand from first_day + gap_days onwards

    window_in_forecast = max(0, window_days - gap_days)
    if remaining < 0:
        probability = 1.0  # more demand since the snapshot than stock: it has run out
    elif window_in_forecast == 0:
        probability = 0.0
    else:
        index = min(window_in_forecast, cumulative.shape[1]) - 1
        probability = float(np.mean(cumulative[:, index] > remaining))

    offset = gap_days + 1  # days from the snapshot day to the first column of `ahead`
    if remaining <= 0:
        days_until: int | None = 0
    else:
        expected = cumulative.mean(axis=0)
        reached = np.nonzero(expected >= remaining)[0]
        days_until = int(reached[0]) + offset if reached.size else None

    per_path_hit = cumulative >= max(remaining, 0)
    ran_out = per_path_hit.any(axis=1)
    path_days = np.where(ran_out, per_path_hit.argmax(axis=1) + offset, -(10**6))
    if days_until is None:
        confidence = float(np.mean(~ran_out))
    elif remaining <= 0:
        confidence = 1.0
    else:
        confidence = float(
            np.mean(ran_out & (np.abs(path_days - days_until) <= CONFIDENCE_TOLERANCE_DAYS))
        )
    probability = round(min(max(probability, 0.0), 1.0), 4)
    return RiskAssessment(
        stockout_probability=probability,
        predicted_stockout_date=(
            snapshot_day + timedelta(days=days_until) if days_until is not None else None
        ),
        days_until_stockout=days_until,
        confidence=round(min(max(confidence, 0.0), 1.0), 4),
        risk_level=thresholds.level(probability),
        risk_window_days=window_days,
    )
