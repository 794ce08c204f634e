"""What a worker process does for one product's forecast, whichever forecaster.

A job carries the product's zero-filled history, the shop's daily demand over the
same days (the global model's shop-wide features and the weekday profile), and a
reference to the global model: a file the service wrote once per version, which a
worker loads once and keeps, rather than a model pickled into every job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np

from ml_analytics.models.calibration import Calibration, ConditionalCalibration
from ml_analytics.models.forecasters import registry
from ml_analytics.models.forecasters.base import Forecast, ForecastConfig
from ml_analytics.models.forecasters.combination import LOCAL_ONLY
from ml_analytics.models.forecasters.global_gbm import GlobalModel
from ml_analytics.models.forecasters.registry import Forecaster

_loaded: dict[Path, GlobalModel] = {}


@dataclass(frozen=True)
class GlobalModelRef:
    version: int
    path: Path  # LightGBM's text form, written by the service


@dataclass(frozen=True)
class CurrentModel:
    """What product forecasts use now: the newest global model (None: local members
    only), the combination and the calibration (and the one for histories posted to
    the API shorter than a year, None until learned)."""

    version: int | None
    trained_through: date | None
    reference: GlobalModelRef | None
    combination: dict[str, float]
    calibration: Calibration | None
    posted_calibration: ConditionalCalibration | None = None


NO_MODEL = CurrentModel(None, None, None, LOCAL_ONLY.as_dict(), None)


class GlobalModelSource(Protocol):
    """Where the trainer and the prediction API get the current global model from
    (services/global_model.py's GlobalModelService, wired in by the runner)."""

    @property
    def current(self) -> CurrentModel: ...

    async def refresh(self) -> CurrentModel: ...

    def on_new_model(self, event: asyncio.Event) -> None: ...

    def clock_moved(self) -> None: ...


@dataclass(frozen=True)
class ForecastJob:
    product_id: str
    first_day: date
    values: np.ndarray  # zero-filled daily demand from first_day
    config: ForecastConfig
    # Days whose demand was observed (False: censored, `values` holds its estimate);
    # None: every day.
    observed: np.ndarray | None = None
    # The registry's entry (models/forecasters/registry.py); it travels to the worker.
    forecaster: Forecaster = field(default_factory=lambda: registry.forecaster(registry.DEFAULT))
    combination: tuple[tuple[str, float], ...] = ()
    global_model: GlobalModelRef | None = None
    calibration: Calibration | None = None
    shop_start: date | None = None  # the shop's days end with the history's
    shop: np.ndarray | None = None
    holdout: bool = True

    @property
    def last_day(self) -> date:
        return self.first_day + timedelta(days=len(self.values) - 1)


def load_global_model(ref: GlobalModelRef) -> GlobalModel:
    model = _loaded.get(ref.path)
    if model is None:
        _loaded.clear()  # one version at a time
        model = _loaded[ref.path] = GlobalModel.from_text(ref.path.read_text())
    return model


def run_forecast(job: ForecastJob) -> tuple[Forecast, float]:
    """The product's forecast and the seconds it took (runs in a worker process);
    raises the ModelFailure that stopped it."""
    (outcome, seconds) = run_forecasts([job])[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome, seconds


def run_forecasts(jobs: list[ForecastJob]) -> list[tuple[Forecast | Exception, float]]:
    """Several products' forecasts in one call (runs in a worker process): each product's
    forecast and its share of the seconds, or the ModelFailure that stopped it.

    A new global model or the clock makes every product due at once. Jobs that share a
    forecaster, a calendar, a global model, weights, calibration and configuration go
    to their forecaster together (the combination forecasts them on one panel: the
    same forecasts as one at a time, about twenty times cheaper). Any error but a
    ModelFailure is a fault and stops the call."""
    outcomes: list[tuple[Forecast | Exception, float] | None] = [None] * len(jobs)
    groups: dict[tuple[object, ...], list[int]] = {}
    for index, job in enumerate(jobs):
        key = (
            job.forecaster,
            job.last_day,
            job.shop_start,
            None if job.shop is None else len(job.shop),
            job.global_model,
            job.combination,
            job.calibration,
            job.config,
            job.holdout,
        )
        groups.setdefault(key, []).append(index)
    for indices in groups.values():
        started = time.perf_counter()
        first = jobs[indices[0]]
        model = (
            load_global_model(first.global_model)
            if first.global_model is not None and first.forecaster.uses_global_model
            else None
        )
        results = first.forecaster.forecast([jobs[i] for i in indices], model)
        each = (time.perf_counter() - started) / len(indices)
        for index, result in zip(indices, results, strict=True):
            outcomes[index] = (result, 0.0 if isinstance(result, Exception) else each)
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(jobs)
    return done


def split_part(part: str, job: ForecastJob) -> object:
    """One of a split fit's parts (`holdout` or `final`: registry.SplitFit), in a worker."""
    split = job.forecaster.split
    assert split is not None
    return split.holdout(job) if part == "holdout" else split.final(job)
