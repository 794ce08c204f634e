"""Stockout risk from a forecast's predictive sample paths. Pure: arrays and dates in.

Conventions (documented in docs/design.md, "The risk figures"):
- A stock snapshot counts as the stock at the end of its business day D; demand
  runs from day D+1. Demand already observed after D (days before the forecast
  starts) is taken off the stock first.
- `stockout_probability`: the share of sample paths whose cumulative demand over
  the risk window (D+1 .. D+window) exceeds the stock. Sample paths, not summed
  interval bounds: the sum of daily 95% bounds is not a 95% bound of the sum.
  No stock left (zero, or less than the demand seen since D) is a stockout now.
- `predicted_stockout_date`: the day by which a stockout is more likely than not:
  the median over the paths of the first day their cumulative demand since D
  exceeds the stock (the first day a customer cannot be served); None when fewer
  than half run out within the forecast horizon (or the risk window, when that is
  longer: the paths then continue with their last four weeks,
  `distribution.continue_paths`). `days_until_stockout` counts from
  D. The same rule as the probability, so a date inside the risk window means
  `stockout_probability` >= 0.5, and the other way round.
- `confidence`: the share of paths that themselves run out within ±2 days of the
  predicted date; when no stockout is predicted, the share of paths that do not
  run out within the horizon either. Always in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

import numpy as np

from ml_analytics.models.distribution import NotAssessable, paths_from

__all__ = ["NotAssessable", "RiskAssessment", "RiskThresholds", "assess_stockout_risk"]

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


def risk_window_days(lead_time_days: int | None, default_days: int) -> int:
    """The contract's rule: the stock level's lead time, else the default window."""
    return lead_time_days if lead_time_days is not None else default_days


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
    first_day = snapshot_day + timedelta(days=1)
    # Days between the snapshot and the forecast start already happened; their
    # observed demand is taken off the stock by the caller-supplied figure. A snapshot
    # after the forecast's first day (the clock lags) starts the paths later.
    gap_days = max(0, (forecast_start - first_day).days)
    remaining = stock_units - observed_since_snapshot_units
    window_in_forecast = max(0, window_days - gap_days)
    ahead = paths_from(sample_paths, forecast_start, first_day, window_in_forecast)
    cumulative = np.cumsum(ahead, axis=1)  # demand from first_day + gap_days onwards

    if remaining <= 0:
        probability = 1.0  # nothing left on hand: it is out of stock now
    elif window_in_forecast == 0:
        probability = 0.0
    else:
        probability = float(np.mean(cumulative[:, window_in_forecast - 1] > remaining))

    offset = gap_days + 1  # days from the snapshot day to the first column of `ahead`
    # Each path's stockout day: the first day its cumulative demand exceeds the stock
    # (days from the snapshot day; past the horizon when it never does).
    ran_out_by = cumulative > max(remaining, 0)
    ran_out = ran_out_by.any(axis=1)
    never = np.iinfo(np.int64).max
    path_days = np.where(ran_out, ran_out_by.argmax(axis=1) + offset, never)
    if remaining <= 0:
        days_until: int | None = 0
    else:
        # The median stockout day: the first day by which at least half the paths ran out.
        median = int(np.sort(path_days)[(len(path_days) - 1) // 2])
        days_until = None if median == never else median
    if days_until is None:
        confidence = float(np.mean(~ran_out))
    elif days_until == 0:
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
