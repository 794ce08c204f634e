"""When to (re)train a product's model. Pure, and in event time: the days the data
covers, not the wall clock, so a fast replay of history retrains as living through
it would (coalesced: a product waiting for a fit is fitted once, on its newest data).

Rules:
- no model yet: train once the history spans `min_training_days`;
- then retrain when the data reaches `min_new_days` days past what the model saw,
  or when the units added since reach `min_new_units_ratio` of the units it saw
  (late data, a sudden surge) and at least `cooldown_days` new days have passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class RetrainPolicy:
    min_training_days: int = 30
    min_new_days: int = 7
    min_new_units_ratio: float = 0.25
    cooldown_days: int = 1


@dataclass(frozen=True)
class DataState:
    first_day: date | None
    last_day: date | None
    total_units: float


@dataclass(frozen=True)
class ModelState:
    trained_through: date  # the last history day the model saw
    units_seen: float


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str


def retrain_decision(
    data: DataState, model: ModelState | None, policy: RetrainPolicy
) -> RetrainDecision:
    if data.first_day is None or data.last_day is None:
        return RetrainDecision(False, "no demand yet")
    span = (data.last_day - data.first_day).days + 1
    if model is None:
        if span >= policy.min_training_days:
            return RetrainDecision(True, f"first model: history spans {span} days")
        return RetrainDecision(
            False, f"history spans {span} days, fewer than {policy.min_training_days}"
        )
    new_days = (data.last_day - model.trained_through).days
    if new_days >= policy.min_new_days:
        return RetrainDecision(True, f"{new_days} new days")
    new_units = data.total_units - model.units_seen
    if (
        new_days >= policy.cooldown_days
        and model.units_seen > 0
        and new_units >= policy.min_new_units_ratio * model.units_seen
    ):
        return RetrainDecision(True, f"{new_units:g} new units on {model.units_seen:g} seen")
    if model.units_seen == 0 and new_units > 0 and new_days >= policy.cooldown_days:
        return RetrainDecision(True, "first demand after an all-zero history")
    return RetrainDecision(False, f"{new_days} new days, {new_units:g} new units: not enough")
