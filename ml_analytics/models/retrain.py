"""When to (re)train a product's model. Pure, and on the stream's event-time clock:
the days the clock has completed, not the wall clock, so a fast replay of history
retrains as living through it would (coalesced: a product waiting for a fit is
fitted once, on its newest data), and a product whose sales stop is retrained too.

Rules, with `through` the clock's last complete day:
- no model yet: train once the history (first sale .. `through`) spans
  `min_training_days`;
- then never within `cooldown_days` clock days of the model's last day (the
  contract's cool-down: however the data moves, a product is not refitted more
  often), and after it:
- retrain when the clock is `min_new_days` days past what the model saw;
- or when the units on the days since reach `min_new_units_ratio` of the units it
  saw (a sudden surge);
- or when late events changed days the model saw (they count exactly once, and
  the model should see them): the units on its window now differ from its own.
  A product due within the cool-down waits: the decision says from which clock day
  (`after_cooldown`), and the trainer looks at it again then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class RetrainPolicy:
    min_training_days: int = 30
    min_new_days: int = 7
    min_new_units_ratio: float = 0.25
    cooldown_days: int = 1


@dataclass(frozen=True)
class DataState:
    """A product's data as the clock stands.

    `units_after_model`: units on the complete days after the model's last day;
    `units_in_model_window`: units now stored on the days the model was fitted on
    (both None without a model).
    """

    first_day: date | None
    through: date | None  # the clock's last complete day
    units_after_model: float | None = None
    units_in_model_window: float | None = None


@dataclass(frozen=True)
class ModelState:
    trained_through: date  # the last history day the model saw
    units_seen: float  # the units on the days it was fitted on


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    on_the_clock: bool = False  # due only because the clock moved (no new data needed)
    # Due but within the cool-down: the clock's last complete day from which it may be
    # retrained (the trainer looks at it again then; no event of its own need come).
    after_cooldown: date | None = None


def retrain_decision(
    data: DataState, model: ModelState | None, policy: RetrainPolicy
) -> RetrainDecision:
    if data.first_day is None or data.through is None or data.first_day > data.through:
        return RetrainDecision(False, "no complete day of demand yet")
    span = (data.through - data.first_day).days + 1
    if model is None:
        if span >= policy.min_training_days:
            return RetrainDecision(True, f"first model: history spans {span} days")
        return RetrainDecision(
            False, f"history spans {span} days, fewer than {policy.min_training_days}"
        )
    new_days = (data.through - model.trained_through).days
    due = _due(data, model, policy, new_days)
    if due.retrain and new_days < policy.cooldown_days:
        return RetrainDecision(
            False,
            f"{due.reason}: waits out the cool-down ({new_days} of {policy.cooldown_days} days)",
            after_cooldown=model.trained_through + timedelta(days=policy.cooldown_days),
        )
    return due


def _due(
    data: DataState, model: ModelState, policy: RetrainPolicy, new_days: int
) -> RetrainDecision:
    """The rules for a product with a model, the cool-down aside."""
    if new_days >= policy.min_new_days:
        return RetrainDecision(True, f"{new_days} new days on the clock", on_the_clock=True)
    late = (data.units_in_model_window or 0.0) - model.units_seen
    if abs(late) > 1e-9 * max(1.0, model.units_seen):
        return RetrainDecision(True, f"{late:g} units arrived late, on days the model saw")
    new_units = data.units_after_model or 0.0
    if new_units > 0:
        if model.units_seen == 0:
            return RetrainDecision(True, "first demand after an all-zero history")
        if new_units >= policy.min_new_units_ratio * model.units_seen:
            return RetrainDecision(True, f"{new_units:g} new units on {model.units_seen:g} seen")
    return RetrainDecision(False, f"{new_days} new days, {new_units:g} new units: not enough")
