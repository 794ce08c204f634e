"""What a worker process does for one product's forecast, whichever forecaster.

A job carries the product's zero-filled history, the shop's daily demand over the
same days (the global model's shop-wide features and the weekday profile), and a
reference to the global model: a file the service wrote once per version, which a
worker loads once and keeps, rather than a model pickled into every job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np

from ml_analytics.models.calibration import Calibration, ConditionalCalibration
from ml_analytics.models.forecasters import prophet
from ml_analytics.models.forecasters.base import (
    Forecast,
    ForecastConfig,
    ModelFailure,
    check_history,
)
from ml_analytics.models.forecasters.combination import (
    LOCAL_ONLY,
    Combination,
    forecast_products,
)
from ml_analytics.models.forecasters.global_gbm import GlobalModel
from ml_analytics.models.forecasters.panel import panel_from_series

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
    forecaster: str = "combination"  # or "prophet"
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
    """The product's forecast and the seconds it took (runs in a worker process)."""
    started = time.perf_counter()
    values = np.asarray(job.values, dtype=float)
    if job.forecaster == "prophet":
        forecast = prophet.fit_forecast(values, job.first_day, job.config)
        return forecast, time.perf_counter() - started
    check_history(values, job.first_day, job.config)
    if job.shop is not None and job.shop_start is not None:
        shop_start, shop = job.shop_start, np.asarray(job.shop, dtype=float)
    else:  # no stored data: the product's own days are its calendar
        shop_start, shop = job.first_day, np.zeros(len(values))
    panel = panel_from_series(
        [(job.product_id, job.first_day, values)], shop_start, shop, [job.observed]
    )
    model = load_global_model(job.global_model) if job.global_model is not None else None
    combination = Combination.from_dict(dict(job.combination))
    (forecast,) = forecast_products(
        panel, panel.days, [0], combination, model, job.config, job.calibration, job.holdout
    )
    return forecast, time.perf_counter() - started


def run_forecasts(jobs: list[ForecastJob]) -> list[tuple[Forecast | Exception, float]]:
    """Several products' forecasts in one call (runs in a worker process): each product's
    forecast and its share of the seconds, or the error that stopped it.

    A new global model or the clock makes every product due at once. The combination's
    products that share a calendar, a global model, weights and calibration are
    forecast together, on one panel: the same forecasts as one at a time, about twenty
    times cheaper. Anything else (Prophet, a job without the shop's days) goes one by
    one. A product whose history cannot be fitted gets its error (a ModelFailure), the
    others their forecasts; any other error is a fault and stops the call."""
    outcomes: list[tuple[Forecast | Exception, float] | None] = [None] * len(jobs)
    groups: dict[tuple[object, ...], list[int]] = {}
    for index, job in enumerate(jobs):
        if job.forecaster == "combination" and job.shop is not None and job.shop_start is not None:
            key = (
                job.last_day,
                job.shop_start,
                len(job.shop),
                job.global_model,
                job.combination,
                job.calibration,
                job.config,
                job.holdout,
            )
            groups.setdefault(key, []).append(index)
            continue
        try:
            outcomes[index] = run_forecast(job)
        except ModelFailure as error:
            outcomes[index] = (error, 0.0)
    for indices in groups.values():
        started = time.perf_counter()
        fit: list[int] = []
        for index in indices:
            job = jobs[index]
            try:
                check_history(np.asarray(job.values, dtype=float), job.first_day, job.config)
                fit.append(index)
            except ModelFailure as error:
                outcomes[index] = (error, 0.0)
        if not fit:
            continue
        first = jobs[fit[0]]
        assert first.shop is not None and first.shop_start is not None
        panel = panel_from_series(
            [(jobs[i].product_id, jobs[i].first_day, jobs[i].values) for i in fit],
            first.shop_start,
            np.asarray(first.shop, dtype=float),
            [jobs[i].observed for i in fit],
        )
        forecasts = forecast_products(
            panel,
            panel.days,
            np.arange(len(fit)),
            Combination.from_dict(dict(first.combination)),
            load_global_model(first.global_model) if first.global_model is not None else None,
            first.config,
            first.calibration,
            first.holdout,
        )
        each = (time.perf_counter() - started) / len(fit)
        for index, forecast in zip(fit, forecasts, strict=True):
            outcomes[index] = (forecast, each)
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(jobs)
    return done


def prophet_holdout(job: ForecastJob) -> object:
    """Prophet's holdout fit alone (the HTTP API runs it beside the final fit)."""
    values = np.asarray(job.values, dtype=float)
    seasonality = check_history(values, job.first_day, job.config)
    return prophet.holdout_accuracy(values, job.first_day, job.config, seasonality)


def prophet_final(job: ForecastJob) -> object:
    values = np.asarray(job.values, dtype=float)
    seasonality = check_history(values, job.first_day, job.config)
    return prophet.future_forecast(values, job.first_day, job.config, seasonality)
