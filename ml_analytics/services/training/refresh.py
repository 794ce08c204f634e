"""Refresh products' forecasts: decide on the clock, fit in the pool, store them.

Runs on the connection that holds the products' advisory locks (ModelTrainer), one
connection per batch in hand: fits are quick, and the pool is shared with ingestion.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics import metrics
from ml_analytics.models.forecasters.base import Forecast
from ml_analytics.models.retrain import DataState, ModelState, retrain_decision
from ml_analytics.services.clock import clock_through
from ml_analytics.services.demand import DemandHistory, demand_history
from ml_analytics.settings import Settings
from ml_analytics.storage.demand import product_summary, units_between
from ml_analytics.storage.global_models import (
    ProductSkill,
    product_skill,
    shop_demand,
    shop_window_start,
)
from ml_analytics.storage.models_store import (
    ModelSeen,
    StoredModel,
    model_state,
    save_model,
)
from ml_analytics.workers.jobs import (
    NO_MODEL,
    CurrentModel,
    ForecastJob,
    GlobalModelSource,
    run_forecasts,
)
from ml_analytics.workers.pool import FitPool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    """A product due for a new forecast: its job, why, and what its model records."""

    job: ForecastJob
    reason: str
    skill: ProductSkill | None
    global_version: int | None
    trained_through: date
    # The units sold on the days fitted on (not the estimated demand): what the retrain
    # policy compares the stored sales with.
    units_sold: float


class ProductRefresher:
    def __init__(
        self,
        settings: Settings,
        pool: FitPool,
        global_models: GlobalModelSource | None,
    ) -> None:
        self._settings = settings
        self._config = settings.forecast_config()
        self._policy = settings.retrain_policy()
        self._pool = pool
        self._global_models = global_models
        self._shop_cache: tuple[date, date, np.ndarray] | None = None  # (first, last, demand)
        # Products due but within their cool-down, with the clock day they may be
        # refitted from: the trainer looks at them again when the clock gets there.
        self._cooling: dict[str, date] = {}

    def cooled_down(self, through: date | None) -> list[str]:
        """Products that were due within their cool-down and may be refitted now that
        the clock's last complete day is `through` (each listed once)."""
        if through is None:
            return []
        ready = [product_id for product_id, day in self._cooling.items() if day <= through]
        for product_id in ready:
            del self._cooling[product_id]
        return ready

    @property
    def current_global(self) -> CurrentModel:
        if not self._settings.forecaster().uses_global_model or self._global_models is None:
            return NO_MODEL
        return self._global_models.current

    async def refresh(
        self, connection: AsyncConnection, product_id: str, force: bool
    ) -> tuple[StoredModel, str] | None:
        """The product's new model and why, or None when none is due (or `force`);
        raises what stopped its fit."""
        stored, failed = await self.refresh_many(connection, [product_id], force=force)
        if failed:
            raise failed[0][1]
        return stored[0] if stored else None

    async def refresh_many(
        self, connection: AsyncConnection, product_ids: list[str], *, force: bool = False
    ) -> tuple[list[tuple[StoredModel, str]], list[tuple[str, Exception]]]:
        """Products at once, in one worker job (workers/jobs.run_forecasts): the new
        models with why, and the products whose fit failed with their errors. Products
        not due (unless `force`) are left out of both."""
        due: list[Due] = []
        for product_id in product_ids:
            prepared = await self._prepare(connection, product_id, force)
            if prepared is not None:
                due.append(prepared)
        if not due:
            return [], []
        metrics.FITS.labels("started").inc(len(due))
        outcomes = await self._pool.run(
            self._settings.worker_timeout, run_forecasts, [d.job for d in due]
        )
        stored, failed = [], []
        for prepared, (outcome, seconds) in zip(due, outcomes, strict=True):
            if isinstance(outcome, Exception):
                failed.append((prepared.job.product_id, outcome))
            else:
                model = await self._store(connection, prepared, outcome, seconds)
                stored.append((model, prepared.reason))
        await connection.commit()
        return stored, failed

    async def _prepare(
        self, connection: AsyncConnection, product_id: str, force: bool
    ) -> Due | None:
        """Decide on the clock whether the product is due; if so, its forecast job and
        why. Ends its transaction (not idle in a transaction through the fit)."""
        try:
            due = await self._decide(connection, product_id, force)
        except BaseException:
            await connection.rollback()
            raise
        await connection.commit()
        return due

    async def _decide(
        self, connection: AsyncConnection, product_id: str, force: bool
    ) -> Due | None:
        """Whether the product is due on the clock (or `force`); if so, its forecast job."""
        current_global = self.current_global
        through = await clock_through(connection, self._settings)
        summary = await product_summary(connection, product_id)
        if summary is None or through is None:
            return None
        seen = await model_state(connection, product_id)
        current, data = await _model_and_data(
            connection, product_id, summary.first_day, through, seen
        )
        reason = self._due_reason(product_id, data, current, seen, through, current_global, force)
        if reason is None:
            return None
        # Demand, not sales: days that ended with the shelf empty carry their estimate
        # (and are kept in censored_days for the API and the global model).
        history = await demand_history(
            connection,
            product_id,
            self._settings,
            through=through,
            max_days=self._config.history_days,
        )
        if history is None:
            return None
        job = await self._forecast_job(connection, product_id, history, through, current_global)
        skill = await product_skill(connection, product_id)
        # The global model's version the forecast was made under, also when that
        # version holds no model (too little data to learn from yet): a product is
        # refreshed once per version, not again and again for a model that is not there.
        return Due(
            job,
            reason,
            skill,
            current_global.version,
            history.last_day,
            float(history.sales.sum()),
        )

    def _due_reason(
        self,
        product_id: str,
        data: DataState,
        current: ModelState | None,
        seen: ModelSeen | None,
        through: date,
        current_global: CurrentModel,
        force: bool,
    ) -> str | None:
        """Why the product is due (None: it is not): the retrain policy's reason, a new
        global model, or `force`. Notes when it may be refitted after a cool-down."""
        decision = retrain_decision(data, current, self._policy)
        if decision.after_cooldown is not None:
            self._cooling[product_id] = decision.after_cooldown
        else:
            self._cooling.pop(product_id, None)
        if decision.on_the_clock and not force and self._global_model_coming(through):
            return None  # refreshed with the week's global model, once it is trained
        reason = decision.reason
        if (
            not decision.retrain
            and seen is not None
            and current_global.version is not None
            and seen.global_version != current_global.version
            and data.first_day is not None
            and (through - data.first_day).days + 1 >= self._policy.min_training_days
        ):
            reason = f"a new global model (version {current_global.version})"
        elif not (decision.retrain or force):
            return None
        if force:
            reason = "forced"
        return reason

    async def _forecast_job(
        self,
        connection: AsyncConnection,
        product_id: str,
        history: DemandHistory,
        through: date,
        current_global: CurrentModel,
    ) -> ForecastJob:
        """The product's forecast job: its demand, the forecaster, the global model's
        parts, and the shop's demand when the forecaster uses the global model."""
        job = ForecastJob(
            product_id=product_id,
            first_day=history.first_day,
            values=history.demand,
            observed=history.observed if history.censored.any() else None,
            config=self._config,
            forecaster=self._settings.forecaster(),
            combination=tuple(current_global.combination.items()),
            global_model=current_global.reference,
            calibration=current_global.calibration,
        )
        if job.forecaster.uses_global_model:
            shop_start, shop = await self._shop(connection, history.first_day, through)
            job = replace(job, shop_start=shop_start, shop=shop)
        return job

    async def _store(
        self, connection: AsyncConnection, due: Due, forecast: Forecast, seconds: float
    ) -> StoredModel:
        """Save a product's new model (the caller commits)."""
        metrics.FITS.labels("succeeded").inc()
        metrics.FIT_SECONDS.observe(seconds)
        figures = forecast.metrics_dict()
        skill = due.skill
        if skill is not None and skill.skill_vs_moving_average is not None:
            # Backtests at earlier origins with models that saw nothing after them.
            figures["skill_vs_moving_average"] = skill.skill_vs_moving_average
            figures["skill_backtests"] = skill.backtests
        stored = StoredModel(
            product_id=due.job.product_id,
            model_name=forecast.model_name,
            trained_at=datetime.now(UTC),
            trained_through=due.trained_through,
            training_days=forecast.training_days,
            units_seen=due.units_sold,
            forecast_start=forecast.start,
            yhat=forecast.yhat.tolist(),
            yhat_lower=forecast.yhat_lower.tolist(),
            yhat_upper=forecast.yhat_upper.tolist(),
            sample_paths=forecast.sample_paths,
            metrics=figures,
            seasonality=asdict(forecast.seasonality),
            fit_seconds=seconds,
            global_version=due.global_version,
            weights=forecast.weights,
        )
        await save_model(connection, stored)
        return stored

    def _global_model_coming(self, through: date) -> bool:
        """A new global model is due for this clock day and not long overdue: a product
        due only because the clock moved waits for it instead of being refreshed twice
        (with the old model now, with the new one minutes later)."""
        current = self.current_global
        if current.trained_through is None:
            return False
        behind = (through - current.trained_through).days
        retrain_days = self._settings.global_model_retrain_days
        return retrain_days <= behind < 2 * retrain_days

    async def _shop(
        self, connection: AsyncConnection, first_day: date, through: date
    ) -> tuple[date, np.ndarray]:
        """The shop's daily demand over the training window (from `first_day` when that
        is earlier) to `through`, kept while the clock stays on the same day: every
        product's features see the shop's whole window, as the global model's training
        did, and the products due at once share one calendar (workers/jobs.run_forecasts)."""
        cached = self._shop_cache
        if cached is None or cached[1] != through or cached[0] > first_day:
            start = shop_window_start(first_day, through, self._config.history_days)
            demand = await shop_demand(connection, start, through)
            cached = self._shop_cache = (start, through, demand)
        start, _, demand = cached
        return start, demand


async def _model_and_data(
    connection: AsyncConnection,
    product_id: str,
    first_day: date | None,
    through: date,
    seen: ModelSeen | None,
) -> tuple[ModelState | None, DataState]:
    """The product's model and data as the retrain policy weighs them: without a model,
    the days stored; with one, also the units after its last day and those now stored
    on the days it was fitted on."""
    if seen is None:
        return None, DataState(first_day, through)
    data = DataState(
        first_day,
        through,
        units_after_model=await units_between(
            connection, product_id, seen.trained_through + timedelta(days=1), through
        ),
        units_in_model_window=await units_between(
            connection,
            product_id,
            seen.trained_through - timedelta(days=seen.training_days - 1),
            seen.trained_through,
        ),
    )
    return ModelState(seen.trained_through, seen.units_seen), data
