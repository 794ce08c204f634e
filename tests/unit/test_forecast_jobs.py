"""Forecasts made many products at a time (what a new global model or a move of the
clock makes due by the thousand) are the ones made one at a time."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from ml_analytics.models.forecasters import combination
from ml_analytics.models.forecasters.base import ForecastConfig, InsufficientData, ModelFailure
from ml_analytics.models.forecasters.combination import DEFAULT
from ml_analytics.models.forecasters.global_gbm import train_global
from ml_analytics.workers.jobs import ForecastJob, GlobalModelRef, run_forecast, run_forecasts
from tests.unit.test_combination import START, synthetic_panel


def jobs_of_panel(model_path: Path | None) -> list[ForecastJob]:
    panel = synthetic_panel(products=12, days=400)
    config = ForecastConfig(min_training_days=30, sample_paths=100)
    jobs = []
    for row, item in enumerate(panel.items):
        first = int(panel.first[row])
        jobs.append(
            ForecastJob(
                product_id=item,
                first_day=START + timedelta(days=first),
                values=np.nan_to_num(panel.Y[row, first:]),
                config=config,
                combination=tuple(DEFAULT.as_dict().items()),
                global_model=None if model_path is None else GlobalModelRef(1, model_path),
                shop_start=START,
                shop=panel.shop,
            )
        )
    return jobs


@pytest.mark.parametrize("with_global_model", [False, True])
def test_a_batch_forecasts_each_product_as_one_at_a_time(
    tmp_path: Path, with_global_model: bool
) -> None:
    path = None
    if with_global_model:
        path = tmp_path / "model.txt"
        path.write_text(train_global(synthetic_panel(products=12, days=400), 400, 50).to_text())
    jobs = jobs_of_panel(path)
    batch = run_forecasts(jobs)
    assert len(batch) == len(jobs)
    for job, (forecast, _) in zip(jobs, batch, strict=True):
        alone, _ = run_forecast(job)
        assert not isinstance(forecast, Exception)
        assert forecast.model_name == alone.model_name
        assert np.allclose(forecast.yhat, alone.yhat)
        assert np.allclose(forecast.sample_paths, alone.sample_paths)
        assert forecast.metrics == alone.metrics


def test_a_product_that_cannot_be_fitted_fails_alone() -> None:
    jobs = jobs_of_panel(None)
    short = replace(jobs[3], first_day=jobs[3].last_day - timedelta(days=9), values=np.ones(10))
    negative = replace(jobs[5], values=-jobs[5].values - 1)
    outcomes = run_forecasts([*jobs[:3], short, jobs[4], negative, *jobs[6:]])
    assert isinstance(outcomes[3][0], InsufficientData)
    assert isinstance(outcomes[5][0], ModelFailure)
    assert str(outcomes[5][0]) == "daily demand must be finite and non-negative"
    others = [outcome for index, (outcome, _) in enumerate(outcomes) if index not in (3, 5)]
    assert all(not isinstance(outcome, Exception) and outcome.yhat.sum() > 0 for outcome in others)


@pytest.mark.parametrize("one_by_one", [True, False], ids=["alone", "on-a-panel"])
def test_a_fault_inside_the_forecasters_is_raised_not_taken_for_a_failed_fit(
    monkeypatch: pytest.MonkeyPatch, one_by_one: bool
) -> None:
    def faulty(*args: object) -> None:
        raise ValueError("a fault of ours")

    monkeypatch.setattr(combination, "forecast_products", faulty)
    job = jobs_of_panel(None)[0]
    if one_by_one:  # without the shop's days a job goes one by one
        job = replace(job, shop=None, shop_start=None)
    with pytest.raises(ValueError, match="a fault of ours"):
        run_forecasts([job])
