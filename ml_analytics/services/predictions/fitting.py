"""A request's forecast: the consumers' stored one when it answers the request, else the
same forecaster fitted on the request's history in a pool of its own.

At most HTTP_MAX_FITS_IN_FLIGHT fits run or wait; past that a request is refused
(Busy, 503 with Retry-After) rather than queued without limit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from concurrent.futures.process import BrokenProcessPool
from datetime import date

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.models.calibration import YEAR_DAYS
from ml_analytics.models.forecasters.base import (
    AccuracyMetrics,
    Forecast,
    ForecastConfig,
    InsufficientData,
    ModelFailure,
    Seasonality,
)
from ml_analytics.models.forecasters.combination import (
    LOCAL_ONLY,
    Combination,
    for_posted_history,
)
from ml_analytics.models.forecasters.registry import Forecaster
from ml_analytics.services.clock import clock_through
from ml_analytics.services.predictions.requests import (
    BadRequest,
    Busy,
    DemandHistory,
    FitTimedOut,
    ModelFailed,
)
from ml_analytics.settings import Settings
from ml_analytics.storage.global_models import shop_demand, shop_window_start
from ml_analytics.storage.models_store import StoredModel, load_model
from ml_analytics.workers.jobs import (
    ForecastJob,
    GlobalModelSource,
    run_forecast,
    split_part,
)
from ml_analytics.workers.pool import FitPool, FitTimeout

VERSION_CHECK_SECONDS = 1.0

logger = logging.getLogger(__name__)


class RequestForecaster:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        global_models: GlobalModelSource,
        pool: FitPool | None = None,
    ):
        self._engine = engine
        self._settings = settings
        self._pool = pool or FitPool(settings.http_fit_workers, settings.worker_max_fits)
        self._global = global_models
        self.fits_in_flight = 0
        self._recent_fit_seconds = 5.0
        self._version_checked = -math.inf  # time.monotonic() of the last look at the store

    def stop(self) -> None:
        self._pool.shutdown()

    async def through(self) -> date | None:
        async with self._engine.connect() as connection:
            return await clock_through(connection, self._settings)

    async def current_version(self) -> int | None:
        """The newest stored global model's version, looked up at most once every
        VERSION_CHECK_SECONDS (a cache hit then costs one query, not two)."""
        now = time.monotonic()
        if now - self._version_checked >= VERSION_CHECK_SECONDS:
            self._version_checked = now
            return (await self._global.refresh()).version
        return self._global.current.version

    async def forecast(
        self,
        product_id: str,
        history: DemandHistory,
        config: ForecastConfig,
        forecaster: Forecaster,
        stored_history: bool,
    ) -> Forecast:
        """The forecast of `history`: for a stored product's own history, its stored
        forecast when that covers the request; else fitted here, in the pool."""
        if stored_history:
            async with self._engine.connect() as connection:
                stored = await load_model(connection, product_id)
            reused = _stored_forecast(stored, history, config, forecaster)
            if reused is not None:
                return reused
        job = ForecastJob(
            product_id=product_id,
            first_day=history.first_day,
            values=history.values,
            observed=history.observed,
            config=config,
            forecaster=forecaster,
        )
        if forecaster.uses_global_model:
            job = await self._with_global_model(job, posted=not stored_history)
        return await self._fit(product_id, job)

    async def _with_global_model(self, job: ForecastJob, posted: bool) -> ForecastJob:
        """The combination with the global model, the shop's demand and the calibration
        when the stored data covers the history's last days (the shop-wide features come
        from it); the local members alone otherwise (a service with no data yet, or a
        history from another period). A `posted` history shorter than a year gets the
        default combination (`for_posted_history`) and the calibration learned from
        backtests of histories cut as short (models/backtest.py), once there is one."""
        current = await self._global.refresh()
        through = await self.through()
        calibration = current.calibration
        if posted and len(job.values) < YEAR_DAYS and current.posted_calibration is not None:
            calibration = current.posted_calibration
        combination = dataclasses.replace(job, calibration=calibration)
        if current.reference is None or through is None or job.last_day > through:
            return dataclasses.replace(combination, combination=tuple(LOCAL_ONLY.as_dict().items()))
        shop_start = shop_window_start(job.first_day, job.last_day, job.config.history_days)
        async with self._engine.connect() as connection:
            shop = await shop_demand(connection, shop_start, job.last_day)
        if not shop[-91:].any():
            return dataclasses.replace(combination, combination=tuple(LOCAL_ONLY.as_dict().items()))
        chosen = Combination.from_dict(current.combination)
        if posted:
            chosen = for_posted_history(chosen, len(job.values))
        return dataclasses.replace(
            combination,
            combination=tuple(chosen.as_dict().items()),
            global_model=current.reference,
            shop_start=shop_start,
            shop=shop,
        )

    async def _fit(self, product_id: str, job: ForecastJob) -> Forecast:
        if self.fits_in_flight >= self._settings.http_max_fits_in_flight:
            retry_after = max(1, math.ceil(self._recent_fit_seconds))
            raise Busy(
                f"{self.fits_in_flight} model fits are already running or waiting; "
                f"try again in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        self.fits_in_flight += 1
        metrics.FITS.labels("started").inc()
        timeout = self._settings.worker_timeout
        started = time.perf_counter()
        try:
            split = job.forecaster.split
            if split is not None:
                # The holdout fit and the final fit side by side: best latency.
                holdout, predicted = await self._pool.run_all(
                    timeout, [(split_part, ("holdout", job)), (split_part, ("final", job))]
                )
                forecast = split.assemble(job, holdout, predicted)
            else:
                forecast, _ = await self._pool.run(timeout, run_forecast, job)
        except InsufficientData as error:
            raise BadRequest(str(error)) from error
        except ModelFailure as error:
            metrics.FITS.labels("failed").inc()
            raise ModelFailed(f"Model training failed: {error}") from error
        except FitTimeout as error:
            metrics.FITS.labels("failed").inc()
            raise FitTimedOut(
                f"Model training timed out: the fit took longer than WORKER_TIMEOUT ({timeout:g} s)"
            ) from error
        except BrokenProcessPool as error:
            metrics.FITS.labels("failed").inc()
            raise Busy(
                "the fit was interrupted (a worker process was replaced); try again",
                headers={"Retry-After": "1"},
            ) from error
        finally:
            self.fits_in_flight -= 1
        seconds = time.perf_counter() - started
        metrics.FITS.labels("succeeded").inc()
        metrics.FIT_SECONDS.observe(seconds)
        self._recent_fit_seconds = 0.8 * self._recent_fit_seconds + 0.2 * seconds
        logger.info(
            "request forecast fitted",
            extra={
                "product_id": product_id,
                "model": forecast.model_name,
                "training_days": len(job.values),
                "horizon_days": job.config.horizon_days,
                "fit_seconds": round(seconds, 3),
            },
        )
        return forecast


def _stored_forecast(
    stored: StoredModel | None,
    history: DemandHistory,
    config: ForecastConfig,
    forecaster: Forecaster,
) -> Forecast | None:
    """The consumers' stored forecast of this history, when it is one: made by the same
    forecaster from the same last day, covering the horizon."""
    if (
        stored is None
        or stored.trained_through != history.last_day
        or len(stored.yhat) < config.horizon_days
        or not forecaster.made(stored.model_name)
    ):
        return None
    h = config.horizon_days
    figures = {k: stored.metrics.get(k) for k in ("rmse", "mae", "wape", "mase", "mape")}
    return Forecast(
        start=stored.forecast_start,
        yhat=np.asarray(stored.yhat[:h]),
        yhat_lower=np.asarray(stored.yhat_lower[:h]),
        yhat_upper=np.asarray(stored.yhat_upper[:h]),
        sample_paths=stored.sample_paths[:, :h],
        metrics=AccuracyMetrics(
            holdout_days=int(stored.metrics.get("holdout_days") or 0),
            skill_vs_moving_average=stored.metrics.get("skill_vs_moving_average"),
            skill_backtests=int(stored.metrics.get("skill_backtests") or 0),
            **figures,
        ),
        seasonality=Seasonality(**stored.seasonality),
        training_days=stored.training_days,
        units_seen=stored.units_seen,
        model_name=stored.model_name,
        weights=stored.weights or {},
    )
