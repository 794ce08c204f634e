"""Forecasts and stockout predictions on request (the HTTP API), cached by content.

The same forecaster and risk model as the consumers' retraining. A request brings
its history (`transaction_data`) or uses the stored daily aggregates; either way
the cache key is a digest of the history actually used, the stock, and the model
settings, so a cached answer is never served for different data.

Fits run in their own small process pool (the holdout fit and the final fit side
by side, for latency), never on the event loop. At most `HTTP_MAX_FITS_IN_FLIGHT`
fits run or wait; past that a request is refused (503 with Retry-After) rather than
queued without limit. Identical requests in flight share one fit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.models.forecasters.base import (
    MODEL_REVISION,
    AccuracyMetrics,
    Forecast,
    ForecastConfig,
    InsufficientData,
    ModelFailure,
    Seasonality,
    check_history,
    ensure_enough_history,
)
from ml_analytics.models.forecasters.combination import LOCAL_ONLY
from ml_analytics.models.forecasters.prophet import assemble_forecast
from ml_analytics.models.risk import NotAssessable, assess_stockout_risk, risk_window_days
from ml_analytics.services.config import forecast_config, risk_thresholds
from ml_analytics.services.fit_pool import FitPool, FitTimeout
from ml_analytics.services.forecast_jobs import (
    ForecastJob,
    prophet_final,
    prophet_holdout,
    run_forecast,
)
from ml_analytics.services.global_model import GlobalModelService
from ml_analytics.settings import Settings
from ml_analytics.storage.global_models import shop_demand
from ml_analytics.storage.models_queries import StoredModel, load_model
from ml_analytics.storage.prediction_cache import cached_response, prune_expired, store_response
from ml_analytics.storage.queries import (
    StockSnapshot,
    daily_demand_series,
    latest_stock_snapshot,
)

logger = logging.getLogger(__name__)

MAX_HORIZON_DAYS = 365
PRUNE_INTERVAL_SECONDS = 600.0


class PredictionError(Exception):
    """A request that cannot be answered: an HTTP status and a `detail` for the caller."""

    status_code = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(PredictionError):
    status_code = 400


class UnknownProduct(PredictionError):
    status_code = 404


class Busy(PredictionError):
    status_code = 503


class FitTimedOut(PredictionError):
    status_code = 504


class ModelFailed(PredictionError):
    status_code = 500


@dataclass(frozen=True)
class DemandHistory:
    """A zero-filled daily demand series."""

    first_day: date
    values: np.ndarray

    @property
    def last_day(self) -> date:
        return self.first_day + timedelta(days=len(self.values) - 1)

    @classmethod
    def from_points(cls, points: Iterable[tuple[date, float]], max_days: int) -> DemandHistory:
        """Points in any order; two points on one day are summed, days without a point
        are zero demand. Raises BadRequest when the span exceeds `max_days`."""
        totals: dict[date, float] = {}
        for day, quantity in points:
            totals[day] = totals.get(day, 0.0) + quantity
        if not totals:
            raise BadRequest("transaction_data is empty: send at least one day, or omit it")
        first, last = min(totals), max(totals)
        span = (last - first).days + 1
        if span > max_days:
            raise BadRequest(
                f"transaction_data spans {span} days ({first} to {last}); at most "
                f"{max_days} are accepted"
            )
        values = np.zeros(span)
        for day, quantity in totals.items():
            values[(day - first).days] = quantity
        if not np.all(np.isfinite(values)):
            raise BadRequest("transaction_data: the quantities of one day add up past a float")
        return cls(first, values)

    def digest(self) -> str:
        hasher = hashlib.sha256(self.first_day.isoformat().encode())
        hasher.update(np.ascontiguousarray(self.values, dtype="<f8").tobytes())
        return hasher.hexdigest()

    def units_after(self, day: date) -> float:
        """Demand on the days after `day` within this history."""
        start = (day - self.first_day).days + 1
        return float(self.values[max(0, start) :].sum()) if start < len(self.values) else 0.0


class PredictionService:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        pool: FitPool | None = None,
        global_models: GlobalModelService | None = None,
    ):
        self._engine = engine
        self._settings = settings
        self._pool = pool or FitPool(settings.http_fit_workers, settings.worker_max_fits)
        # The consumers' global model; a service without consumers loads it itself.
        self._global = global_models or GlobalModelService(engine, settings, train=False)
        self._thresholds = risk_thresholds(settings)
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._fits_in_flight = 0
        self._recent_fit_seconds = 5.0
        self._last_prune = 0.0

    def stop(self) -> None:
        self._pool.shutdown()

    def forecaster(self, requested: str | None) -> str:
        """The forecaster a request asked for, else the service's (FORECAST_MODEL)."""
        return requested or self._settings.forecast_model

    # -- use cases ---------------------------------------------------------------

    async def forecast_demand(
        self,
        product_id: str,
        horizon_days: int,
        points: list[tuple[date, float]] | None,
        cache_bypass: bool = False,
        model: str | None = None,
    ) -> bytes:
        """The contract's `POST /forecast/demand` response, as JSON."""
        _check_horizon(horizon_days)
        forecaster = self.forecaster(model)
        history = await self._history(product_id, points)
        config = self._config(horizon_days)
        _check_enough(history, config)
        current = await self._global.refresh()
        key = _cache_key(
            "forecast/demand",
            product_id,
            horizon_days,
            history.digest(),
            config,
            forecaster,
            current.version,
        )

        async def compute() -> dict[str, Any]:
            forecast = await self._forecast(product_id, history, config, forecaster, points is None)
            return {
                "productId": product_id,
                "predictions": [
                    {
                        "ds": day.isoformat(),
                        "yhat": _units(forecast.yhat[i]),
                        "yhat_lower": _units(forecast.yhat_lower[i]),
                        "yhat_upper": _units(forecast.yhat_upper[i]),
                    }
                    for i, day in enumerate(forecast.days())
                ],
                "model_metrics": _model_metrics(forecast),
                "generated_at": datetime.now(UTC).isoformat(),
                "horizon_days": horizon_days,
            }

        return await self._cached("forecast/demand", product_id, key, cache_bypass, compute)

    async def predict_stockout(
        self,
        product_id: str,
        horizon_days: int,
        points: list[tuple[date, float]] | None,
        current_stock_units: float | None,
        lead_time_days: int | None = None,
        cache_bypass: bool = False,
        model: str | None = None,
    ) -> bytes:
        """The contract's `POST /predict/stockout` response, plus the risk fields, as JSON.

        A `current_stock_units` in the request is the stock at the end of the
        history's last day; without it the latest stored stock level is used, and
        demand in the history after its day is taken off it.
        """
        _check_horizon(horizon_days)
        forecaster = self.forecaster(model)
        history = await self._history(product_id, points)
        stored_stock = await self._stored_stock(product_id)
        if current_stock_units is not None:
            stock_units, snapshot_day = current_stock_units, history.last_day
            as_of: str | None = None
        elif stored_stock is not None:
            stock_units = stored_stock.stock_units
            snapshot_day = stored_stock.as_of.astimezone(self._settings.timezone).date()
            as_of = stored_stock.as_of.isoformat()
        else:
            raise BadRequest(
                f"current_stock_units is required: no stock level is stored for product "
                f"{product_id!r}"
            )
        window = risk_window_days(
            lead_time_days
            if lead_time_days is not None
            else (stored_stock.lead_time_days if stored_stock else None),
            self._settings.default_risk_window_days,
        )
        forecast_start = history.last_day + timedelta(days=1)
        skip = max(0, (snapshot_day - history.last_day).days)  # stock newer than the history
        if skip > MAX_HORIZON_DAYS:
            raise BadRequest(
                f"the stock level's day {snapshot_day} is {skip} days after the last day of "
                f"demand data ({history.last_day}); send transaction_data up to it"
            )
        config = self._config(max(horizon_days, skip + window, 1))
        _check_enough(history, config)
        observed = history.units_after(snapshot_day)
        current = await self._global.refresh()
        key = _cache_key(
            "predict/stockout",
            product_id,
            horizon_days,
            history.digest(),
            config,
            forecaster,
            current.version,
            stock_units,
            snapshot_day.isoformat(),
            window,
            observed,
            self._thresholds,
        )

        async def compute() -> dict[str, Any]:
            forecast = await self._forecast(product_id, history, config, forecaster, points is None)
            try:
                risk = assess_stockout_risk(
                    forecast_start=forecast.start,
                    sample_paths=forecast.sample_paths,
                    stock_units=stock_units,
                    snapshot_day=snapshot_day,
                    window_days=window,
                    thresholds=self._thresholds,
                    observed_since_snapshot_units=observed,
                )
            except NotAssessable as error:  # guarded above; kept for a clear answer
                raise BadRequest(str(error)) from error
            stockout_date = risk.predicted_stockout_date
            return {
                "productId": product_id,
                "predicted_stockout_date": stockout_date.isoformat() if stockout_date else None,
                "days_until_stockout": risk.days_until_stockout,
                "confidence": risk.confidence,
                # The expectation the date comes from (the mean of the sample paths),
                # so the usage adds up to the stock on the predicted day.
                "daily_usage_forecast": [
                    _units(v) for v in forecast.sample_paths[:, :horizon_days].mean(axis=0)
                ],
                "generated_at": datetime.now(UTC).isoformat(),
                "stockout_probability": risk.stockout_probability,
                "risk_level": risk.risk_level,
                "risk_window_days": risk.risk_window_days,
                "current_stock_units": stock_units,
                "stock_day": snapshot_day.isoformat(),
                "as_of": as_of,
                "forecast_start": forecast_start.isoformat(),
                "horizon_days": horizon_days,
                "model_metrics": _model_metrics(forecast),
            }

        return await self._cached("predict/stockout", product_id, key, cache_bypass, compute)

    # -- parts -------------------------------------------------------------------

    def _config(self, horizon_days: int) -> ForecastConfig:
        return dataclasses.replace(forecast_config(self._settings), horizon_days=horizon_days)

    async def _history(
        self, product_id: str, points: list[tuple[date, float]] | None
    ) -> DemandHistory:
        if points is not None:
            return DemandHistory.from_points(points, self._settings.http_max_history_days)
        through = await self._global.through()
        async with self._engine.connect() as connection:
            # Zero-filled to the clock's last complete day, as the consumers' forecasts.
            series = await daily_demand_series(connection, product_id, through=through)
        if not series:
            raise UnknownProduct(
                f"No stored demand for product {product_id!r}: send transaction_data, or "
                "publish its transactions first"
            )
        first_day = series[0].day
        values = np.array([day.quantity_units for day in series], dtype=float)
        keep = self._settings.http_max_history_days
        if len(values) > keep:  # stored history longer than a request may be: its latest part
            first_day += timedelta(days=len(values) - keep)
            values = values[-keep:]
        return DemandHistory(first_day, values)

    async def _stored_stock(self, product_id: str) -> StockSnapshot | None:
        async with self._engine.connect() as connection:
            return await latest_stock_snapshot(connection, product_id)

    async def _cached(
        self,
        endpoint: str,
        product_id: str,
        key: str,
        bypass: bool,
        compute: Callable[[], Awaitable[dict[str, Any]]],
    ) -> bytes:
        """The response as JSON bytes, with `"cached"` saying whether it was a hit.

        Entries are stored as the JSON text that was sent (without `cached`), so a
        hit is returned without decoding and encoding it again.
        """
        ttl = self._settings.prediction_cache_ttl
        if ttl > 0 and not bypass:
            async with self._engine.connect() as connection:
                hit = await cached_response(connection, key, datetime.now(UTC))
            if hit is not None:
                metrics.PREDICTIONS.labels(endpoint, "hit").inc()
                return _with_cached_flag(hit, True)
        metrics.PREDICTIONS.labels(endpoint, "bypass" if bypass else "miss").inc()
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                self._compute_and_store(endpoint, product_id, key, compute)
            )
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return _with_cached_flag(await asyncio.shield(pending), False)

    async def _compute_and_store(
        self,
        endpoint: str,
        product_id: str,
        key: str,
        compute: Callable[[], Awaitable[dict[str, Any]]],
    ) -> str:
        try:
            response = json.dumps(await compute(), separators=(",", ":"), allow_nan=False)
        except ValueError as error:
            raise ModelFailed(
                "Model training failed: the forecast has non-finite values"
            ) from error
        ttl = self._settings.prediction_cache_ttl
        if ttl > 0:
            now = datetime.now(UTC)
            async with self._engine.begin() as connection:
                await store_response(
                    connection,
                    cache_key=key,
                    endpoint=endpoint,
                    product_id=product_id,
                    response=response,
                    now=now,
                    ttl=timedelta(seconds=ttl),
                )
                if time.monotonic() - self._last_prune > PRUNE_INTERVAL_SECONDS:
                    self._last_prune = time.monotonic()
                    pruned = await prune_expired(connection, now)
                    if pruned:
                        logger.info("pruned expired predictions", extra={"entries": pruned})
        return response

    async def _forecast(
        self,
        product_id: str,
        history: DemandHistory,
        config: ForecastConfig,
        forecaster: str,
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
            config=config,
            forecaster=forecaster,
        )
        if forecaster == "combination":
            job = await self._with_global_model(job)
        return await self._fit(product_id, job)

    async def _with_global_model(self, job: ForecastJob) -> ForecastJob:
        """The combination with the global model, the shop's demand and the calibration
        when the stored data covers the history's last days (the shop-wide features come
        from it); the local members alone otherwise (a service with no data yet, or a
        history from another period)."""
        current = await self._global.refresh()
        through = await self._global.through()
        combination = dataclasses.replace(job, calibration=current.calibration)
        if current.reference is None or through is None or job.last_day > through:
            return dataclasses.replace(combination, combination=tuple(LOCAL_ONLY.as_dict().items()))
        async with self._engine.connect() as connection:
            shop = await shop_demand(connection, job.first_day, job.last_day)
        if not shop[-91:].any():
            return dataclasses.replace(combination, combination=tuple(LOCAL_ONLY.as_dict().items()))
        return dataclasses.replace(
            combination,
            combination=tuple(current.combination.items()),
            global_model=current.reference,
            shop_start=job.first_day,
            shop=shop,
        )

    async def _fit(self, product_id: str, job: ForecastJob) -> Forecast:
        if self._fits_in_flight >= self._settings.http_max_fits_in_flight:
            retry_after = max(1, math.ceil(self._recent_fit_seconds))
            raise Busy(
                f"{self._fits_in_flight} model fits are already running or waiting; "
                f"try again in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        self._fits_in_flight += 1
        metrics.FITS.labels("started").inc()
        timeout = self._settings.worker_timeout
        started = time.perf_counter()
        try:
            if job.forecaster == "prophet":
                # The holdout fit and the final fit side by side: best latency.
                holdout, predicted = await self._pool.run_all(
                    timeout, [(prophet_holdout, (job,)), (prophet_final, (job,))]
                )
                seasonality = check_history(job.values, job.first_day, job.config)
                forecast = assemble_forecast(
                    job.values, job.first_day, job.config, seasonality, holdout, predicted
                )
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
            self._fits_in_flight -= 1
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
    stored: StoredModel | None, history: DemandHistory, config: ForecastConfig, forecaster: str
) -> Forecast | None:
    """The consumers' stored forecast of this history, when it is one: made by the same
    forecaster from the same last day, covering the horizon."""
    if (
        stored is None
        or stored.trained_through != history.last_day
        or len(stored.yhat) < config.horizon_days
        or (stored.model_name == "prophet") != (forecaster == "prophet")
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


def _check_horizon(horizon_days: int) -> None:
    if not 1 <= horizon_days <= MAX_HORIZON_DAYS:
        raise BadRequest(f"horizon_days must be between 1 and {MAX_HORIZON_DAYS}")


def _check_enough(history: DemandHistory, config: ForecastConfig) -> None:
    try:
        ensure_enough_history(len(history.values), config)
    except InsufficientData as error:
        raise BadRequest(str(error)) from error


def _with_cached_flag(response: str, cached: bool) -> bytes:
    """Append `"cached"` to a JSON object's text (one we encoded: it ends with "}")."""
    return f'{response[:-1]},"cached":{"true" if cached else "false"}}}'.encode()


def _cache_key(*parts: Any) -> str:
    content = json.dumps([MODEL_REVISION, *map(repr, parts)], separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


def _units(value: float) -> float:
    return round(float(value), 4)


def _model_metrics(forecast: Forecast) -> dict[str, Any]:
    """The contract's `model_metrics`, plus the other holdout figures."""
    figures = forecast.metrics
    return {
        "mape": figures.mape,
        "rmse": figures.rmse,
        "training_samples": forecast.training_days,
        "seasonality_detected": forecast.seasonality.weekly or forecast.seasonality.yearly,
        "mae": figures.mae,
        "wape": figures.wape,
        "mase": figures.mase,
        "holdout_days": figures.holdout_days,
        "seasonality": dataclasses.asdict(forecast.seasonality),
        "model": forecast.model_name,
        "skill_vs_moving_average": figures.skill_vs_moving_average,
        "skill_backtests": figures.skill_backtests,
        "weights": forecast.weights or None,
    }
