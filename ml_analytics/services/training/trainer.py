"""Refresh product forecasts off the event loop, on the stream's clock.

Ingestion tells the `ModelTrainer` which products got new demand; the clock and a
new global model make others due. The trainer keeps them in a set (a product waiting
for a fit is fitted once, on its newest data: a fast replay coalesces), asks the
retrain policy, and runs at most one fit per product and `WORKER_COUNT` at once in
a process pool. The forecaster is FORECAST_MODEL: the combination (the global model
with local members; cheap per product, since the global model is trained apart) or
Prophet. The consumers keep consuming while models train. A fit that fails or times
out is logged and tried again later, backing off; it never stops the service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from datetime import date

from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.background import BackgroundLoop, cancel_and_wait
from ml_analytics.models.forecasters.base import ModelFailure
from ml_analytics.services.clock import clock_through
from ml_analytics.services.training.refresh import ProductRefresher
from ml_analytics.settings import Settings
from ml_analytics.storage.locks import advisory_lock, advisory_locks, product_lock
from ml_analytics.storage.models_store import (
    StoredModel,
    products_on_older_global_model,
    products_to_consider,
)
from ml_analytics.workers.jobs import (
    CurrentModel,
    GlobalModelSource,
)
from ml_analytics.workers.pool import FitPool, FitTimeout

logger = logging.getLogger(__name__)

ModelListener = Callable[[str], Awaitable[None]]
BUSY_RETRY_SECONDS = 2.0
CLOCK_POLL_SECONDS = 2.0
MAX_FAILURE_BACKOFF_SECONDS = 3600.0


class ProductBusy(RuntimeError):
    """Another replica is training this product now."""


class ModelTrainer:
    """Decides which products to (re)train and trains them in the pool."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        on_model: ModelListener | None = None,
        pool: FitPool | None = None,
        global_models: GlobalModelSource | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._config = settings.forecast_config()
        self._policy = settings.retrain_policy()
        self._on_model = on_model
        self._pool = pool or FitPool(settings.worker_count, settings.worker_max_fits)
        self._global_models = global_models
        self._new_global_model = asyncio.Event()
        if global_models is not None:
            global_models.on_new_model(self._new_global_model)
        self._waiting: dict[str, None] = {}  # insertion-ordered set
        self._in_flight: set[str] = set()
        self._not_before: dict[str, float] = {}  # failed products wait (monotonic time)
        self._failures: dict[str, int] = {}  # failed fits in a row, per product
        # More batches in hand than workers: while one batch's data is read or its
        # models written, the pool already has the next fit queued.
        self._slots = asyncio.Semaphore(settings.worker_count + max(2, settings.worker_count))
        # Hands ready products to fits; woken by new data, a fit's end, a back-off's end.
        self._dispatcher = BackgroundLoop("model-trainer", self._dispatch, None)
        self._fits: set[asyncio.Task[None]] = set()
        self._clock_watch = BackgroundLoop("clock-watch", self._follow_clock, CLOCK_POLL_SECONDS)
        self._through: date | None = None  # the clock's last complete day, as last seen
        self._refresher = ProductRefresher(settings, self._pool, global_models)
        # Prophet fits one product at a time; the combination forecasts many together.
        self._batch_size = settings.forecaster().batch_products

    @property
    def current_global(self) -> CurrentModel:
        return self._refresher.current_global

    def notify(self, product_ids: set[str] | frozenset[str] | list[str]) -> None:
        """These products got new data: consider them for (re)training."""
        for product_id in product_ids:
            self._waiting[product_id] = None
        if product_ids:
            self._dispatcher.wake()

    async def start(self) -> None:
        """Start training; first consider every product that is due on the clock or
        whose data changed after its model (data that arrived while the service was
        down, or a fit a crash cut short)."""
        if not self._dispatcher.running:
            await self._look_at_clock(changed_since_model=True)
            self._dispatcher.start()
            self._dispatcher.wake()
            self._clock_watch.start()

    def clock_moved(self) -> None:
        """This replica's ingestion moved the stream's clock: look at it now."""
        self._clock_watch.wake()

    async def stop(self) -> None:
        await self._clock_watch.stop()
        await self._dispatcher.stop()
        for fit in list(self._fits):
            await cancel_and_wait(fit)
        self._pool.shutdown()

    async def _dispatch(self) -> None:
        while self._next_ready() is not None:
            await self._slots.acquire()
            batch = self._take_ready(self._batch_size)
            if not batch:
                self._slots.release()
                break
            task = asyncio.create_task(self._train(batch), name=f"fit-{batch[0]}")
            self._fits.add(task)
            task.add_done_callback(self._fits.discard)
        # Failed or busy products wait their back-off; look again when the first ends.
        # One still in flight is looked at when its batch ends.
        backoffs = [t for p, t in self._not_before.items() if p not in self._in_flight]
        if backoffs:
            self._dispatcher.wake_in(min(backoffs) - time.monotonic() + 0.01)

    async def _follow_clock(self) -> None:
        """Products come due as the clock moves, whichever replica's events move it, and
        when a new global model arrives: look when told, and every CLOCK_POLL_SECONDS."""
        await self._look_at_clock()
        if self._new_global_model.is_set():
            self._new_global_model.clear()
            try:
                await self._refresh_for_global_model()
            except Exception:
                self._new_global_model.set()  # the next step lists them again
                raise

    async def _refresh_for_global_model(self) -> None:
        version = self.current_global.version
        if version is None:
            return
        async with self._engine.connect() as connection:
            self.notify(await products_on_older_global_model(connection, version))

    async def _look_at_clock(self, *, changed_since_model: bool = False) -> None:
        async with self._engine.connect() as connection:
            through = await clock_through(connection, self._settings)
            if through == self._through and not changed_since_model:
                return
            due = await products_to_consider(
                connection,
                through,
                self._policy.min_training_days,
                self._policy.min_new_days,
                changed_since_model=changed_since_model,
            )
            # Only once listed: after a failed read, the next poll looks at this step again.
            self._through = through
            self.notify(due)
            self.notify(self._refresher.cooled_down(through))
        if self._global_models is not None and self._settings.forecaster().uses_global_model:
            self._global_models.clock_moved()

    def _take_ready(self, most: int) -> list[str]:
        """Up to `most` products ready now, taken out of the waiting set."""
        batch: list[str] = []
        while len(batch) < most and (product_id := self._next_ready()) is not None:
            del self._waiting[product_id]
            self._in_flight.add(product_id)
            batch.append(product_id)
        return batch

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

    async def _train(self, product_ids: list[str]) -> None:
        """Products in one worker job (several when a new global model or a move of the
        clock makes them due by the thousand). Each product is locked, decided, stored
        and logged as `train_now` does; a product another replica holds waits its turn."""
        try:
            keys = {product_lock(product_id): product_id for product_id in product_ids}
            async with advisory_locks(self._engine, list(keys)) as (acquired, held):
                mine = [keys[key] for key in acquired]
                for product_id in set(product_ids) - set(mine):
                    self._busy(product_id)
                locked_at = time.time()
                try:
                    stored, failed = await self._refresher.refresh_many(held, mine)
                finally:
                    unlocked_at = time.time()
        except Exception as error:
            for product_id in product_ids:
                self._failed(product_id, error)
            return
        finally:
            self._done_with(product_ids)
        for product_id, failure in failed:
            self._failed(product_id, failure)
        for model, reason in stored:
            self._failures.pop(model.product_id, None)
            try:
                await self._trained(model, reason, locked_at, unlocked_at)
            except Exception as trouble:
                self._failed(model.product_id, trouble)

    def _busy(self, product_id: str) -> None:
        # Look again shortly: what the other replica stored may already cover this
        # product's newest data, and then there is nothing to do.
        self._not_before[product_id] = time.monotonic() + BUSY_RETRY_SECONDS
        self._waiting[product_id] = None

    def _failed(self, product_id: str, error: Exception) -> None:
        # What a history or the pool may do to a fit; anything else is a fault of
        # ours, logged with its traceback.
        if isinstance(error, ModelFailure | FitTimeout | BrokenProcessPool):
            logger.warning(
                "model fit failed; will try again",
                extra={
                    "product_id": product_id,
                    "error": str(error)[:300],
                    "retry_in_seconds": self._retry_later(product_id),
                },
            )
        else:
            logger.error(
                "training a product failed",
                exc_info=error,
                extra={"product_id": product_id, "retry_in_seconds": self._retry_later(product_id)},
            )

    def _done_with(self, product_ids: list[str]) -> None:
        self._in_flight.difference_update(product_ids)
        self._slots.release()
        self._dispatcher.wake()

    async def _trained(
        self, stored: StoredModel, reason: str, locked_at: float, unlocked_at: float
    ) -> None:
        logger.info(
            "model trained",
            extra={
                "product_id": stored.product_id,
                "reason": reason,
                "model": stored.model_name,
                "training_days": stored.training_days,
                "trained_through": str(stored.trained_through),
                "fit_seconds": round(stored.fit_seconds, 3),
                "skill_vs_moving_average": stored.metrics.get("skill_vs_moving_average"),
                # When this replica held the product (epoch seconds): the scale-out
                # test checks that no two replicas ever overlap.
                "locked_at": round(locked_at, 6),
                "unlocked_at": round(unlocked_at, 6),
            },
        )
        newest = self.current_global.version
        if newest is not None and stored.global_version != newest:
            # A global model arrived during the fit: the product was not on the list
            # of those to refresh with it (its model was not stored yet).
            self.notify([stored.product_id])
        if self._on_model is not None:
            await self._on_model(stored.product_id)

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
        async with advisory_lock(self._engine, product_lock(product_id)) as (acquired, held):
            if not acquired:
                raise ProductBusy(product_id)
            locked_at = time.time()
            try:
                trained = await self._refresher.refresh(held, product_id, force)
            finally:
                unlocked_at = time.time()  # before the unlock: no one else holds it yet
        if trained is None:
            return None
        stored, reason = trained
        await self._trained(stored, reason, locked_at, unlocked_at)
        return stored
