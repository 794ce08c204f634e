"""How much to order, and by when, from the forecast's predictive distribution. Pure.

A periodic review policy: every `review_days` an order may be placed, and it arrives
`lead_time_days` later. What is ordered now must cover demand until the order after
it arrives: the lead time plus one review period. So:
- `order_up_to_units`: the `service_level` quantile of demand over lead time + review
  period, from the sample paths (not a normal approximation: lumpy demand has a long
  right tail that z·σ·√L misses);
- `reorder_point_units`: the `service_level` quantile of demand over the lead time;
- the stock position: units on hand (less demand seen since the stock was counted)
  plus units on order, as it stands now: on the stock's day, or, when the stock was
  counted before the forecast's first day, on the day before it (the demand of the
  days between has been seen). The quantiles cover demand from then on: an order
  can only be placed now;
- `recommended_order_units`: the order-up-to level less the position, rounded up to
  the order multiple; 0 when the position reaches it;
- `order_by_date`: the last day on which an order placed still arrives before the
  projected stock falls below what the lead time needs: the first day on which the
  position, less the expected demand until then, reaches the reorder point (now
  when it already has; None when not within the forecast). A lead time and review
  period longer than the forecast continue its paths with their last four weeks
  (`distribution.continue_paths`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from ml_analytics.models.distribution import paths_from


def round_up_to_multiple(units: float, multiple: float) -> float:
    """The smallest whole number of `multiple`s that covers `units` (at least one when
    any is needed): a needed order is never rounded away, whatever the multiple's size.
    A relative tolerance keeps 3 x 0.1 from asking for a fourth 0.1."""
    if units <= 0:
        return 0.0
    count = max(1, math.ceil(units / multiple))
    if count > 1 and (count - 1) * multiple >= units * (1 - 1e-9):
        count -= 1
    return count * multiple


@dataclass(frozen=True)
class ReplenishmentPolicy:
    service_level: float = 0.95
    review_days: int = 7


@dataclass(frozen=True)
class Replenishment:
    target_service_level: float
    review_days: int
    lead_time_days: int
    reorder_point_units: float
    order_up_to_units: float
    stock_position_units: float
    recommended_order_units: float
    order_by_date: date | None


def recommend(
    *,
    sample_paths: np.ndarray,
    forecast_start: date,
    snapshot_day: date,
    on_hand_units: float,
    lead_time_days: int,
    policy: ReplenishmentPolicy,
    on_order_units: float = 0.0,
    order_multiple_units: float | None = None,
    observed_since_snapshot_units: float = 0.0,
) -> Replenishment:
    # From the day after the stock's day (days between it and the forecast's first day
    # are observed demand, which the caller takes off the stock); raises NotAssessable
    # when that is too far past the forecast.
    ahead = paths_from(
        sample_paths,
        forecast_start,
        snapshot_day + timedelta(days=1),
        lead_time_days + policy.review_days,
    )
    # Days between the stock's day and the forecast's first day have been seen: the
    # position stands on the last of them, and an order placed then covers the
    # forecast's days from its first.
    gap_days = max(0, (forecast_start - snapshot_day - timedelta(days=1)).days)
    now = snapshot_day + timedelta(days=gap_days)
    cumulative = np.cumsum(ahead, axis=1)
    horizon = cumulative.shape[1]

    def quantile_over(days: int) -> float:
        if days <= 0 or horizon == 0:
            return 0.0
        column = cumulative[:, min(days, horizon) - 1]
        return float(np.quantile(column, policy.service_level, method="higher"))

    reorder_point = quantile_over(lead_time_days)
    order_up_to = quantile_over(lead_time_days + policy.review_days)
    position = on_hand_units - observed_since_snapshot_units + on_order_units
    needed = max(0.0, order_up_to - position)
    if needed > 0 and order_multiple_units:
        needed = round_up_to_multiple(needed, order_multiple_units)
    expected = cumulative.mean(axis=0) if horizon else np.zeros(0)
    if position <= reorder_point:
        order_by: date | None = now
    else:
        reached = np.nonzero(position - expected <= reorder_point)[0]
        order_by = now + timedelta(days=int(reached[0]) + 1) if reached.size else None
    return Replenishment(
        target_service_level=policy.service_level,
        review_days=policy.review_days,
        lead_time_days=lead_time_days,
        reorder_point_units=round(reorder_point, 4),
        order_up_to_units=round(order_up_to, 4),
        stock_position_units=round(position, 4),
        recommended_order_units=round(needed, 4),
        order_by_date=order_by,
    )
