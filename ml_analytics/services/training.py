"""Retrain product models off the event loop.

Ingestion tells the `ModelTrainer` which products got new demand. The trainer
keeps them in a set (a product waiting for a fit is fitted once, on its newest
data: a fast replay coalesces), asks the retrain policy, and runs at most one fit
per product and `WORKER_COUNT` fits at once in a process pool. The consumers keep
consuming while models train. A fit that fails or times out is logged and tried
again later; it never stops the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ml_analytics import metrics
from ml_analytics.lifecycle import cancel_and_wait, die_with_parent
from ml_analytics.models.clock import complete_through
from ml_analytics.models.forecast import (
    Forecast,
    ForecastConfig,
    ModelFailure,
    assemble_forecast,
    check_history,
    fit_forecast,
    future_forecast,
    holdout_accuracy,
)
from ml_analytics.models.retrain import DataState, ModelState, RetrainPolicy, retrain_decision
from ml_analytics.settings import Settings
from ml_analytics.storage.clock import read_clock
from ml_analytics.storage.models_queries import (
    StoredModel,
    model_state,
    products_to_consider,
    save_model,
)
from ml_analytics.storage.queries import daily_demand_series, product_summary, units_between

logger = logging.getLogger(__name__)

ModelListener = Callable[[str], Awaitable[None]]
BUSY_RETRY_SECONDS = 2.0
CLOCK_POLL_SECONDS = 2.0
MAX_FAILURE_BACKOFF_SECONDS = 3600.0


def forecast_config(settings: Settings) -> ForecastConfig:
    return ForecastConfig(
        horizon_days=settings.forecast_horizon_days,
        seasonality_mode=settings.prophet_seasonality_mode,
        interval_width=settings.prophet_interval_width,
        min_training_days=settings.min_training_days,
        sample_paths=settings.forecast_sample_paths,
    )


def retrain_policy(settings: Settings) -> RetrainPolicy:
    return RetrainPolicy(
        min_training_days=settings.min_training_days,
        min_new_days=settings.retrain_min_new_days,
        min_new_units_ratio=settings.retrain_min_new_units_ratio,
        cooldown_days=settings.retrain_cooldown_days,
    )


def _fit_in_worker(
    values: np.ndarray, first_day: Any, config: ForecastConfig
) -> tuple[Forecast, float]:
    """Runs in a worker process."""
    started = time.perf_counter()
    forecast = fit_forecast(values, first_day, config)
    return forecast, time.perf_counter() - started


class FitTimeout(TimeoutError):
    pass


class ProductBusy(RuntimeError):
    """Another replica is training this product now."""


class FitPool:
    """A process pool for model fits with a per-fit timeout and recycled workers.

    A fit past its timeout cannot be cancelled inside a worker, so the pool's
    processes are killed and a fresh pool started; fits that were running
    alongside fail with BrokenProcessPool and are tried again later.
    """

    def __init__(self, workers: int, max_fits_per_worker: int) -> None:
        self._workers = workers
        self._max_fits = max_fits_per_worker
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            max_tasks_per_child=self._max_fits,
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )

    async def fit(
        self, values: np.ndarray, first_day: Any, config: ForecastConfig, timeout_seconds: float
    ) -> tuple[Forecast, float]:
        """One fit in one worker: the holdout fit, then the final fit (best throughput)."""
        loop = asyncio.get_running_loop()
        executor = self._executor
        future = loop.run_in_executor(executor, _fit_in_worker, values, first_day, config)
        return await self._within(executor, future, timeout_seconds)

    async def fit_parallel(
        self, values: np.ndarray, first_day: Any, config: ForecastConfig, timeout_seconds: float
    ) -> tuple[Forecast, float]:
        """The holdout fit and the final fit in two workers at once (best latency, for a
        caller who waits). Raises InsufficientData before using the pool."""
        values = np.asarray(values, dtype=float)
        seasonality = check_history(values, first_day, config)
        loop = asyncio.get_running_loop()
        executor = self._executor
        started = time.perf_counter()
        both = asyncio.gather(
            loop.run_in_executor(
                executor, holdout_accuracy, values, first_day, config, seasonality
            ),
            loop.run_in_executor(executor, future_forecast, values, first_day, config, seasonality),
        )
        metrics, predicted = await self._within(executor, both, timeout_seconds)
        forecast = assemble_forecast(values, first_day, config, seasonality, metrics, predicted)
        return forecast, time.perf_counter() - started

    async def _within(
        self, executor: ProcessPoolExecutor, work: Awaitable[Any], timeout_seconds: float
    ) -> Any:
        try:
            return await asyncio.wait_for(work, timeout_seconds)
        except TimeoutError:
            self._replace(executor)
            raise FitTimeout(f"the fit took longer than {timeout_seconds:g} s") from None
        except BrokenProcessPool:
            self._replace(executor)
            raise

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if broken is not self._executor:
            return  # already replaced by another fit's failure
        _kill(broken)
        self._executor = self._new_executor()

    def shutdown(self) -> None:
        _kill(self._executor)


def _kill(executor: ProcessPoolExecutor) -> None:
    """Stop a pool now, fits in progress included. Python 3.11 has no public way
    to stop a busy worker, hence the private `_processes`."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.kill()
    executor.shutdown(wait=False, cancel_futures=True)


class ModelTrainer:
    """Decides which products to (re)train and trains them in the pool."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        on_model: ModelListener | None = None,
        pool: FitPool | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._config = forecast_config(settings)
        self._policy = retrain_policy(settings)
        self._on_model = on_model
        self._pool = pool or FitPool(settings.worker_count, settings.worker_max_fits)
        self._waiting: dict[str, None] = {}  # insertion-ordered set
        self._in_flight: set[str] = set()
        self._not_before: dict[str, float] = {}  # failed products wait (monotonic time)
        self._failures: dict[str, int] = {}  # failed fits in a row, per product
        # More products in hand than workers: while one product's data is read or
        # its model written, the pool already has the next fit queued.
        self._slots = asyncio.Semaphore(settings.worker_count + max(2, settings.worker_count))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fits: set[asyncio.Task[None]] = set()
        self._clock_task: asyncio.Task[None] | None = None
        self._clock_wake = asyncio.Event()
        self._through: date | None = None  # the clock's last complete day, as last seen

    def notify(self, product_ids: set[str] | frozenset[str] | list[str]) -> None:
        """These products got new data: consider them for (re)training."""
        for product_id in product_ids:
            self._waiting[product_id] = None
        if product_ids:
            self._wake.set()

    async def start(self) -> None:
        """Start training; first consider every product that is due on the clock or
        whose data changed after its model (data that arrived while the service was
        down, or a fit a crash cut short)."""
        if self._task is None:
            await self._look_at_clock(changed_since_model=True)
            self._task = asyncio.create_task(self._run(), name="model-trainer")
            self._clock_task = asyncio.create_task(self._follow_clock(), name="clock-watch")

    def clock_moved(self) -> None:
        """This replica's ingestion moved the stream's clock: look at it now."""
        self._clock_wake.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._clock_task)
        self._clock_task = None
        await cancel_and_wait(self._task)
        self._task = None
        for fit in list(self._fits):
            await cancel_and_wait(fit)
        self._pool.shutdown()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (product_id := self._next_ready()) is not None:
                await self._slots.acquire()
                del self._waiting[product_id]
                self._in_flight.add(product_id)
                task = asyncio.create_task(self._train(product_id), name=f"fit-{product_id}")
                self._fits.add(task)
                task.add_done_callback(self._fits.discard)
            if self._not_before and not self._wake.is_set():
                # Failed products wait their back-off; look again when it ends.
                delay = max(0.0, min(self._not_before.values()) - time.monotonic())
                loop = asyncio.get_running_loop()
                loop.call_later(delay + 0.01, self._wake.set)

    async def _follow_clock(self) -> None:
        """Products come due as the clock moves, whichever replica's events move it:
        look when told, and every CLOCK_POLL_SECONDS."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._clock_wake.wait(), CLOCK_POLL_SECONDS)
            self._clock_wake.clear()
            try:
                await self._look_at_clock()
            except Exception as error:
                logger.warning("reading the stream clock failed", extra={"error": repr(error)})

    async def _look_at_clock(self, *, changed_since_model: bool = False) -> None:
        async with self._engine.connect() as connection:
            through = await self._complete_through(connection)
            if through == self._through and not changed_since_model:
                return
            self._through = through
            self.notify(
                await products_to_consider(
                    connection,
                    through,
                    self._policy.min_training_days,
                    self._policy.min_new_days,
                    changed_since_model=changed_since_model,
                )
            )

    async def _complete_through(self, connection: AsyncConnection) -> date | None:
        return complete_through(
            await read_clock(connection),
            datetime.now(UTC),
            timedelta(seconds=self._settings.clock_allowed_lateness_seconds),
            self._settings.timezone,
        )

    def _next_ready(self) -> str | None:
        now = time.monotonic()
        for product_id in self._waiting:
            if product_id in self._in_flight:
                continue
            if self._not_before.get(product_id, 0.0) > now:
                continue
            self._not_before.pop(product_id, None)
            return product_id
        return None

    async def _train(self, product_id: str) -> None:
        try:
            await self.train_now(product_id)
            self._failures.pop(product_id, None)
        except ProductBusy:
            # Look again shortly: what the other replica stored may already cover
            # this product's newest data, and then there is nothing to do.
            self._not_before[product_id] = time.monotonic() + BUSY_RETRY_SECONDS
            self._waiting[product_id] = None
        except (ModelFailure, FitTimeout, BrokenProcessPool) as error:
            logger.warning(
                "model fit failed; will try again",
                extra={
                    "product_id": product_id,
                    "error": str(error)[:300],
                    "retry_in_seconds": self._retry_later(product_id),
                },
            )
        except Exception:
            logger.exception(
                "training a product failed",
                extra={"product_id": product_id, "retry_in_seconds": self._retry_later(product_id)},
            )
        finally:
            self._in_flight.discard(product_id)
            self._slots.release()
            self._wake.set()

    def _retry_later(self, product_id: str) -> float:
        """Try a failed product again later, waiting twice as long after each failure
        in a row (up to an hour): a product whose fit always fails does not take a
        worker every minute."""
        metrics.FITS.labels("failed").inc()
        failures = self._failures[product_id] = self._failures.get(product_id, 0) + 1
        backoff = min(
            self._settings.retrain_failure_backoff_seconds * 2 ** (failures - 1),
            max(MAX_FAILURE_BACKOFF_SECONDS, self._settings.retrain_failure_backoff_seconds),
        )
        self._not_before[product_id] = time.monotonic() + backoff
        self._waiting[product_id] = None
        return backoff

    async def train_now(self, product_id: str, *, force: bool = False) -> StoredModel | None:
        """Fit the product if the policy (or `force`) says so; returns the stored model.

        One replica trains a product at a time (a rebalance can briefly give two
        replicas the same product): a session advisory lock is held from the decision
        to the saved model, so a replica that comes second decides on what the first
        stored, and an older fit never overwrites a newer model. Raises ProductBusy
        while another replica holds the product.
        """
        key = zlib.crc32(product_id.encode()) - 2**31
        async with self._engine.connect() as lock_connection:
            acquired = (
                await lock_connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
            ).scalar_one()
            if not acquired:
                raise ProductBusy(product_id)
            locked_at = time.time()
            try:
                trained = await self._train_locked(product_id, force)
            finally:
                unlocked_at = time.time()  # before the unlock: no one else holds it yet
                await lock_connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        if trained is None:
            return None
        stored, reason = trained
        logger.info(
            "model trained",
            extra={
                "product_id": product_id,
                "reason": reason,
                "training_days": stored.training_days,
                "trained_through": str(stored.trained_through),
                "fit_seconds": round(stored.fit_seconds, 3),
                "mape": stored.metrics.get("mape"),
                # When this replica held the product (epoch seconds): the scale-out
                # test checks that no two replicas ever overlap.
                "locked_at": round(locked_at, 6),
                "unlocked_at": round(unlocked_at, 6),
            },
        )
        if self._on_model is not None:
            await self._on_model(product_id)
        return stored

    async def _train_locked(self, product_id: str, force: bool) -> tuple[StoredModel, str] | None:
        async with self._engine.connect() as connection:
            through = await self._complete_through(connection)
            summary = await product_summary(connection, product_id)
            if summary is None or through is None:
                return None
            seen = await model_state(connection, product_id)
            current, data = None, DataState(summary.first_day, through)
            if seen is not None:
                trained_through, units_seen, training_days = seen
                current = ModelState(trained_through, units_seen)
                data = DataState(
                    summary.first_day,
                    through,
                    units_after_model=await units_between(
                        connection, product_id, trained_through + timedelta(days=1), through
                    ),
                    units_in_model_window=await units_between(
                        connection,
                        product_id,
                        trained_through - timedelta(days=training_days - 1),
                        trained_through,
                    ),
                )
            decision = retrain_decision(data, current, self._policy)
            if not (decision.retrain or force):
                return None
            series = await daily_demand_series(
                connection,
                product_id,
                max_days=self._settings.training_max_history_days,
                through=through,
            )
        if not series:
            return None
        values = np.array([day.quantity_units for day in series], dtype=float)
        metrics.FITS.labels("started").inc()
        forecast, seconds = await self._pool.fit(
            values, series[0].day, self._config, self._settings.worker_timeout
        )
        metrics.FITS.labels("succeeded").inc()
        metrics.FIT_SECONDS.observe(seconds)
        stored = StoredModel(
            product_id=product_id,
            model_name=forecast.model_name,
            trained_at=datetime.now(UTC),
            trained_through=series[-1].day,
            training_days=forecast.training_days,
            units_seen=forecast.units_seen,
            forecast_start=forecast.start,
            yhat=forecast.yhat.tolist(),
            yhat_lower=forecast.yhat_lower.tolist(),
            yhat_upper=forecast.yhat_upper.tolist(),
            sample_paths=forecast.sample_paths,
            metrics=forecast.metrics_dict(),
            seasonality=asdict(forecast.seasonality),
            fit_seconds=seconds,
        )
        async with self._engine.begin() as connection:
            await save_model(connection, stored)
        return stored, "forced" if force else decision.reason
