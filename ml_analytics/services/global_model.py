"""Train the global model as the clock moves, one replica at a time, and hand it out.

Whenever the clock's last complete day is GLOBAL_MODEL_RETRAIN_DAYS past the newest
global model's (or there is none), one replica, the one that takes a PostgreSQL
advisory lock, reads every product's stored demand, and in a worker process runs a
backtest four weeks back and trains the model on everything (models/backtest.py).
It stores the backtest rows, chooses the combination over the latest backtests,
learns the calibration of the sample paths from their PITs, and stores the model as
a new version. Every replica loads the newest version (`current`) and refreshes its
products' forecasts with it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import weakref
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.background import BackgroundLoop, RetryPolicy
from ml_analytics.models.backtest import (
    BacktestCase,
    GlobalTraining,
    drawn_as_now,
    member_totals_table,
    summary,
    train_with_backtest,
)
from ml_analytics.models.calibration import (
    ConditionalCalibration,
    calibration_from_stored,
    fit_calibration,
    has_current_features,
    posted_calibration_from_stored,
)
from ml_analytics.models.distribution import pit_density
from ml_analytics.models.forecasters.combination import (
    DEFAULT,
    LOCAL_ONLY,
    Combination,
    choose_combination,
)
from ml_analytics.scratch import make_directory
from ml_analytics.services.clock import clock_through
from ml_analytics.settings import Settings
from ml_analytics.storage.global_models import (
    PanelData,
    StoredGlobalModel,
    backtest_origins,
    latest_global_model,
    panel_data,
    prune_backtests,
    recent_backtests,
    record_backtests,
    save_global_model,
)
from ml_analytics.storage.locks import GLOBAL_MODEL_LOCK, advisory_lock
from ml_analytics.workers.jobs import NO_MODEL, CurrentModel, GlobalModelRef
from ml_analytics.workers.pool import FitPool

logger = logging.getLogger(__name__)

SELECTION_ORIGINS = 8  # backtest origins (weeks) the combination is chosen over
MIN_SELECTION_ORIGINS = 6  # one origin decides nothing
SELECTION_MARGIN = 0.05  # a candidate must beat the default by this much
MIN_CALIBRATION_ORIGINS = 4
MIN_CALIBRATION_CASES = 200
KEEP_BACKTEST_ORIGINS = 12
POLL_SECONDS = 5.0
# A training that failed is tried again after 10 s, 20 s, ... at most this long: one
# that always fails (its worker killed for memory, past its timeout) does not keep a
# core busy retraining on the same clock.
MAX_TRAINING_BACKOFF_SECONDS = 1800.0
KEEP_MODEL_FILES = 3  # loaded versions whose files stay (jobs in hand may read them)


def _training_pauses() -> Iterator[float]:
    # No jitter: one replica trains at a time (an advisory lock), none in lockstep.
    return RetryPolicy(
        first_delay_seconds=2 * POLL_SECONDS,
        max_delay_seconds=MAX_TRAINING_BACKOFF_SECONDS,
        jitter=0.0,
    ).delays()


def _train(data: PanelData, threads: int) -> GlobalTraining:
    """Runs in a worker process."""
    panel = data.panel()
    return train_with_backtest(panel, panel.days, threads)


def described_cases(cases: list[BacktestCase], posted: bool = False) -> list[BacktestCase]:
    """The backtest cases the conditional calibration learns from: those with a PIT and
    the product's features, when there are MIN_CALIBRATION_CASES of them at
    MIN_CALIBRATION_ORIGINS origins or more (none otherwise). Backtests stored before
    features were kept carry none, and those stored by a version with other features
    carry another number of them: after an upgrade, one new origin of a large
    catalogue would be enough cases but one week's luck. `posted`: the cases of the
    products' cut histories (their posted PIT and features) instead."""
    described = [
        c
        for c in cases
        if c.calibration_case(posted)[0] is not None
        and has_current_features(c.calibration_case(posted)[1], posted)
    ]
    origins = {c.origin for c in described}
    if len(described) < MIN_CALIBRATION_CASES or len(origins) < MIN_CALIBRATION_ORIGINS:
        return []
    return described


def _chosen_combination(
    cases: list[BacktestCase], origins: int, default: Combination
) -> tuple[Combination, dict[str, Any]]:
    """The combination the latest backtests choose, and why; `default` until there are
    MIN_SELECTION_ORIGINS origins of them."""
    if origins >= MIN_SELECTION_ORIGINS:
        totals, actual = member_totals_table(cases)
        combination, selection = choose_combination(
            totals, actual, default, margin=SELECTION_MARGIN
        )
    else:
        combination = default
        selection = {
            "chosen": default.name,
            "why": f"{origins} backtest origins, fewer than {MIN_SELECTION_ORIGINS}",
        }
    selection["origins"] = origins
    return combination, selection


def _log_trained(version: int, stored: StoredGlobalModel) -> None:
    logger.info(
        "global model trained",
        extra={
            "version": version,
            "trained_through": str(stored.trained_through),
            "products": stored.products,
            "combination": stored.combination,
            "calibrated": stored.calibration is not None,
            "seconds": stored.seconds,
            "note": stored.note,
        },
    )


class GlobalModelService:
    def __init__(self, engine: AsyncEngine, settings: Settings, *, train: bool = True) -> None:
        self._engine = engine
        self._settings = settings
        self._train_here = train
        self._pool = FitPool(1, 1)  # a fresh process per training: its memory goes with it
        # The loaded model's text, for the forecasting workers to read, in a directory
        # made when the first model is loaded. Removed at stop(), or when the service
        # is dropped without one (an app built for a request or a test).
        self._directory: Path | None = None
        self._remove_files: weakref.finalize | None = None
        self.current = NO_MODEL
        self._follower = BackgroundLoop("global-model", self._follow_step, POLL_SECONDS)
        self._listeners: list[asyncio.Event] = []
        self._training_pauses = _training_pauses()
        self._train_not_before = 0.0  # monotonic time: a failed training's back-off
        self._files: list[Path] = []  # the loaded versions' files, oldest first

    def on_new_model(self, event: asyncio.Event) -> None:
        """`event` is set whenever a newer global model is loaded."""
        self._listeners.append(event)

    async def start(self) -> None:
        await self.refresh()
        self._follower.start()

    def clock_moved(self) -> None:
        self._follower.wake()

    async def stop(self) -> None:
        await self._follower.stop()
        self._pool.shutdown()
        if self._remove_files is not None:
            self._remove_files()

    def _model_file(self, version: int) -> Path:
        if self._directory is None:
            self._directory = make_directory("models")
            self._remove_files = weakref.finalize(
                self, shutil.rmtree, self._directory, ignore_errors=True
            )
        return self._directory / f"global-{version}.txt"

    def _keep_few_files(self, newest: Path) -> None:
        """Keep the files of the last KEEP_MODEL_FILES versions loaded: a replay moves
        the clock a week every few seconds, and each version is a few MB."""
        self._files.append(newest)
        while len(self._files) > KEEP_MODEL_FILES:
            self._files.pop(0).unlink(missing_ok=True)

    async def _follow_step(self) -> None:
        if self._train_here and time.monotonic() >= self._train_not_before:
            try:
                await self.train_if_due()
                self._training_pauses = _training_pauses()  # a success starts them over
            except Exception:
                pause = next(self._training_pauses)
                self._train_not_before = time.monotonic() + pause
                logger.exception(
                    "global model: training failed; trying again later",
                    extra={"retry_in_seconds": pause},
                )
        await self.refresh()  # a failure: the loop tries again after a pause

    async def refresh(self) -> CurrentModel:
        """Load the newest stored global model if it is newer than the one in hand."""
        async with self._engine.connect() as connection:
            meta = await latest_global_model(connection, with_model=False)
            if meta is None or meta.version == self.current.version:
                return self.current
            stored = await latest_global_model(connection)
        assert stored is not None
        reference = None
        if stored.model_text is not None:
            path = self._model_file(stored.version)
            path.write_text(stored.model_text)
            reference = GlobalModelRef(stored.version, path)
            self._keep_few_files(path)
        self.current = CurrentModel(
            version=stored.version,
            trained_through=stored.trained_through,
            reference=reference,
            combination=stored.combination,
            calibration=calibration_from_stored(stored.calibration),
            posted_calibration=posted_calibration_from_stored(stored.calibration),
        )
        logger.info(
            "global model loaded",
            extra={
                "version": stored.version,
                "trained_through": str(stored.trained_through),
                "combination": stored.combination,
            },
        )
        for event in self._listeners:
            event.set()
        return self.current

    async def through(self) -> date | None:
        async with self._engine.connect() as connection:
            return await clock_through(connection, self._settings)

    async def train_if_due(self, *, force: bool = False) -> StoredGlobalModel | None:
        """Train a new version if the clock moved far enough since the newest (or `force`);
        None when not due, or when another replica is training."""
        through = await self.through()
        if through is None:
            return None
        async with self._engine.connect() as connection:
            newest = await latest_global_model(connection, with_model=False)
        if (
            not force
            and newest is not None
            and ((through - newest.trained_through).days < self._settings.global_model_retrain_days)
        ):
            return None
        async with advisory_lock(self._engine, GLOBAL_MODEL_LOCK) as (acquired, _):
            if not acquired:
                return None
            async with self._engine.connect() as connection:  # decided again under the lock
                newest = await latest_global_model(connection, with_model=False)
            if (
                not force
                and newest is not None
                and (
                    (through - newest.trained_through).days
                    < self._settings.global_model_retrain_days
                )
            ):
                return None
            return await self._train(through)

    async def _calibration(self, cases: list[BacktestCase]) -> list[float] | dict[str, Any] | None:
        """How the sample paths are recalibrated, learned from the backtests' PITs: the
        conditional model (models/calibration.py, fitted in a worker process) when
        enough backtests carry the products' features, else one pooled density; None
        with too few backtests. Only backtests whose paths were drawn as they are now
        count (after a change to the paths, the earlier ones teach nothing)."""
        cases = drawn_as_now(cases)
        origins = len({c.origin for c in cases})
        pits = np.array([c.pit_14 for c in cases if c.pit_14 is not None], dtype=float)
        if len(pits) < MIN_CALIBRATION_CASES or origins < MIN_CALIBRATION_ORIGINS:
            return None
        conditional = await self._conditional(cases, posted=False)
        if conditional is None:
            return [round(float(x), 5) for x in pit_density(pits)]
        stored = dict(conditional.as_dict())
        for_posted = await self._conditional(cases, posted=True)
        if for_posted is not None:
            stored["posted"] = for_posted.as_dict()
        return stored

    async def _conditional(
        self, cases: list[BacktestCase], posted: bool
    ) -> ConditionalCalibration | None:
        """The ordinal model of the stored products' PITs (`posted`: of their cut
        histories'), fitted in a worker process; None without enough described cases."""
        described = described_cases(cases, posted)
        if not described:
            return None
        pits, features = zip(*(c.calibration_case(posted) for c in described), strict=True)
        model: ConditionalCalibration | None = await self._pool.run(
            self._settings.global_model_timeout_seconds,
            fit_calibration,
            np.array(features, dtype=float),
            np.array(pits, dtype=float),
            posted,
        )
        return model

    async def _train(self, through: date) -> StoredGlobalModel:
        started = time.perf_counter()
        first_day = through - timedelta(days=self._settings.global_model_history_days - 1)
        async with self._engine.connect() as connection:
            data = await panel_data(
                connection, first_day, through, censoring=self._settings.demand_censoring
            )
        read_seconds = time.perf_counter() - started
        training: GlobalTraining = await self._pool.run(
            self._settings.global_model_timeout_seconds,
            _train,
            data,
            self._settings.global_model_threads,
        )
        origin = (
            None
            if training.backtest_origin_index is None
            else (first_day + timedelta(days=training.backtest_origin_index))
        )
        async with self._engine.begin() as connection:
            if origin is not None:
                await record_backtests(connection, origin, training.cases)
                await prune_backtests(connection, KEEP_BACKTEST_ORIGINS)
            cases = await recent_backtests(connection, SELECTION_ORIGINS)
            origins = await backtest_origins(connection, SELECTION_ORIGINS)
            default = DEFAULT if training.model is not None else LOCAL_ONLY
            combination, selection = _chosen_combination(cases, origins, default)
            selection["backtest"] = summary(training.cases)
            calibration = await self._calibration(cases)
            stored = StoredGlobalModel(
                version=0,
                trained_at=datetime.now(UTC),
                trained_through=through,
                model_text=None if training.model is None else training.model.to_text(),
                training_rows=0 if training.model is None else training.model.training_rows,
                products=len(data.items),
                combination=combination.as_dict(),
                selection=selection,
                calibration=calibration,
                seconds={
                    "read": round(read_seconds, 2),
                    **{k: round(v, 2) for k, v in training.seconds.items()},
                    "total": round(time.perf_counter() - started, 2),
                },
                note=training.note,
            )
            version = await save_global_model(connection, stored)
        metrics.GLOBAL_TRAININGS.inc()
        _log_trained(version, stored)
        self._follower.wake()  # load it
        return stored
