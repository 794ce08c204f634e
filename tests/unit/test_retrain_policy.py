"""The retraining policy, in event time."""

from __future__ import annotations

from datetime import date, timedelta

from ml_analytics.models.retrain import DataState, ModelState, RetrainPolicy, retrain_decision

POLICY = RetrainPolicy(
    min_training_days=30, min_new_days=7, min_new_units_ratio=0.25, cooldown_days=1
)
START = date(2026, 1, 1)


def data(days: int, units: float) -> DataState:
    return DataState(START, START + timedelta(days=days - 1), units)


def test_first_model_waits_for_min_training_days() -> None:
    assert not retrain_decision(data(29, 100), None, POLICY).retrain
    assert retrain_decision(data(30, 100), None, POLICY).retrain
    assert not retrain_decision(DataState(None, None, 0), None, POLICY).retrain


def test_retrains_after_enough_new_days() -> None:
    model = ModelState(trained_through=START + timedelta(days=29), units_seen=300)
    assert not retrain_decision(data(36, 360), model, POLICY).retrain  # 6 new days
    assert retrain_decision(data(37, 370), model, POLICY).retrain  # 7 new days


def test_retrains_on_a_surge_of_units_but_not_twice_in_one_event_day() -> None:
    model = ModelState(trained_through=START + timedelta(days=29), units_seen=300)
    surge_same_day = DataState(START, START + timedelta(days=29), 400)  # backfill, no new day
    assert not retrain_decision(surge_same_day, model, POLICY).retrain
    assert retrain_decision(data(31, 380), model, POLICY).retrain  # +80 units, a new day
    assert not retrain_decision(data(31, 360), model, POLICY).retrain  # +60 < 25% of 300


def test_event_time_not_wall_clock() -> None:
    # Two years replayed in a burst: the decision depends only on the days the data spans.
    model = ModelState(trained_through=START + timedelta(days=29), units_seen=300)
    assert retrain_decision(data(730, 7300), model, POLICY).retrain
