"""The retraining policy, on the stream's event-time clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from ml_analytics.models.clock import complete_through
from ml_analytics.models.retrain import DataState, ModelState, RetrainPolicy, retrain_decision

POLICY = RetrainPolicy(
    min_training_days=30, min_new_days=7, min_new_units_ratio=0.25, cooldown_days=1
)
START = date(2026, 1, 1)


def day(n: int) -> date:
    return START + timedelta(days=n)


def test_first_model_waits_for_min_training_days_of_clock() -> None:
    assert not retrain_decision(DataState(START, day(28)), None, POLICY).retrain
    assert retrain_decision(DataState(START, day(29)), None, POLICY).retrain
    assert not retrain_decision(DataState(None, None), None, POLICY).retrain
    # Sales today only: no complete day yet.
    assert not retrain_decision(DataState(day(5), day(4)), None, POLICY).retrain


def test_a_product_that_stopped_selling_is_retrained_as_the_clock_moves() -> None:
    model = ModelState(trained_through=day(29), units_seen=300)
    quiet = DataState(START, day(35), units_after_model=0, units_in_model_window=300)
    assert not retrain_decision(quiet, model, POLICY).retrain  # 6 days on the clock
    decision = retrain_decision(DataState(START, day(36), 0, 300), model, POLICY)
    assert decision.retrain and decision.reason == "7 new days on the clock"


def test_retrains_on_a_surge_of_units_but_not_within_the_cooldown() -> None:
    model = ModelState(trained_through=day(29), units_seen=300)
    same_day = DataState(START, day(29), units_after_model=0, units_in_model_window=300)
    assert not retrain_decision(same_day, model, POLICY).retrain
    assert retrain_decision(DataState(START, day(30), 80, 300), model, POLICY).retrain
    assert not retrain_decision(DataState(START, day(30), 60, 300), model, POLICY).retrain


def test_late_events_on_days_the_model_saw_mark_it_for_a_refit_after_the_cooldown() -> None:
    model = ModelState(trained_through=day(29), units_seen=300)
    waiting = retrain_decision(DataState(START, day(29), 0, 312), model, POLICY)
    assert not waiting.retrain and "cool-down" in waiting.reason
    assert waiting.after_cooldown == day(30)
    decision = retrain_decision(DataState(START, day(30), 0, 312), model, POLICY)
    assert decision.retrain and "12 units arrived late" in decision.reason
    at_once = RetrainPolicy(cooldown_days=0)
    assert retrain_decision(DataState(START, day(29), 0, 312), model, at_once).retrain


def test_no_rule_retrains_within_the_cooldown() -> None:
    slow = RetrainPolicy(min_new_days=7, min_new_units_ratio=0.25, cooldown_days=10)
    model = ModelState(trained_through=day(29), units_seen=300)
    for clock in (day(36), day(38)):  # 7 and 9 new days, a surge, late units
        waiting = retrain_decision(DataState(START, clock, 500, 350), model, slow)
        assert not waiting.retrain and waiting.after_cooldown == day(39)
    quiet = retrain_decision(DataState(START, day(31), 0, 300), model, slow)
    assert not quiet.retrain and quiet.after_cooldown is None  # nothing to wait for
    decision = retrain_decision(DataState(START, day(39), 0, 300), model, slow)
    assert decision.retrain and decision.reason == "10 new days on the clock"


def test_first_demand_after_an_all_zero_history() -> None:
    model = ModelState(trained_through=day(29), units_seen=0)
    assert retrain_decision(DataState(START, day(30), 1, 0), model, POLICY).retrain


def test_the_clock_is_the_newest_event_less_lateness_and_never_past_the_wall_clock() -> None:
    zone = ZoneInfo("Europe/London")
    newest = datetime(2011, 12, 9, 18, 30, tzinfo=UTC)
    wall = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert complete_through(newest, wall, timedelta(0), zone) == date(2011, 12, 8)
    assert complete_through(newest, wall, timedelta(hours=19), zone) == date(2011, 12, 7)
    assert complete_through(None, wall, timedelta(0), zone) is None
    # An event dated ahead of the wall clock does not complete the days up to it.
    ahead = datetime(2026, 11, 30, tzinfo=UTC)
    assert complete_through(ahead, wall, timedelta(0), zone) == date(2026, 11, 27)
