"""Forecasts and stockout predictions on request (the HTTP API), cached by content.

The same forecaster and risk model as the consumers' retraining. A request brings
its history (`transaction_data`) or uses the stored daily aggregates; either way
the cache key is a digest of the history actually used, the stock, and the model
settings, so a cached answer is never served for different data. The cache is a
PostgreSQL table shared by the replicas; each process also keeps the newest answers
it made or served (`recent.py`), so a repeated request needs no round trip.

Fits run in their own small process pool (the holdout fit and the final fit side
by side, for latency), never on the event loop. At most `HTTP_MAX_FITS_IN_FLIGHT`
fits run or wait; past that a request is refused (503 with Retry-After) rather than
queued without limit. Identical requests in flight share one fit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.api_models import ForecastResponse, StockoutResponse
from ml_analytics.models.forecasters import registry
from ml_analytics.models.forecasters.base import (
    Forecast,
    ForecastConfig,
)
from ml_analytics.models.risk import NotAssessable, assess_stockout_risk, risk_window_days
from ml_analytics.services.demand import demand_history
from ml_analytics.services.predictions.fitting import RequestForecaster
from ml_analytics.services.predictions.recent import RecentAnswers
from ml_analytics.services.predictions.requests import (
    MAX_HORIZON_DAYS,
    BadRequest,
    DemandHistory,
    UnknownProduct,
    cache_key,
    check_enough,
    check_horizon,
    with_cached_flag,
)
from ml_analytics.services.predictions.responses import model_metrics, shaped, units
from ml_analytics.settings import Settings
from ml_analytics.storage.demand import StockSnapshot, latest_stock_snapshot
from ml_analytics.storage.prediction_cache import cached_response, prune_expired, store_response
from ml_analytics.workers.jobs import (
    GlobalModelSource,
)
from ml_analytics.workers.pool import FitPool

logger = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 600.0


@dataclasses.dataclass(frozen=True, slots=True)
class _StockPosition:
    """The stock a stockout prediction starts from: its units at the end of
    `snapshot_day`, the stored level's as_of (None: the request's), the risk window."""

    stock_units: float
    snapshot_day: date
    as_of: str | None
    window_days: int


class PredictionService:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        global_models: GlobalModelSource,
        pool: FitPool | None = None,
    ):
        self._engine = engine
        self._settings = settings
        self._forecasts = RequestForecaster(engine, settings, global_models, pool)
        self._thresholds = settings.risk_thresholds()
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._recent = RecentAnswers()  # this process's copy of the newest cached answers
        self._last_prune = 0.0

    def stop(self) -> None:
        self._forecasts.stop()

    @property
    def fits_in_flight(self) -> int:
        """Fits running or waiting for requests now."""
        return self._forecasts.fits_in_flight

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
        check_horizon(horizon_days)
        forecaster = self.forecaster(model)
        history = await self._history(product_id, points)
        config = self._config(horizon_days)
        check_enough(history, config)
        key = await self._cache_key(
            "forecast/demand", product_id, horizon_days, history, config, forecaster
        )

        async def compute() -> BaseModel:
            forecast = await self._forecasts.forecast(
                product_id, history, config, registry.forecaster(forecaster), points is None
            )
            return shaped(
                ForecastResponse,
                {
                    "productId": product_id,
                    "predictions": [
                        {
                            "ds": day.isoformat(),
                            "yhat": units(forecast.yhat[i]),
                            "yhat_lower": units(forecast.yhat_lower[i]),
                            "yhat_upper": units(forecast.yhat_upper[i]),
                        }
                        for i, day in enumerate(forecast.days())
                    ],
                    "model_metrics": model_metrics(forecast),
                    "generated_at": datetime.now(UTC).isoformat(),
                    "horizon_days": horizon_days,
                },
            )

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
        check_horizon(horizon_days)
        forecaster = self.forecaster(model)
        history = await self._history(product_id, points)
        stock = await self._stock_position(product_id, history, current_stock_units, lead_time_days)
        forecast_start = history.last_day + timedelta(days=1)
        skip = max(0, (stock.snapshot_day - history.last_day).days)  # stock newer than the history
        if skip > MAX_HORIZON_DAYS:
            raise BadRequest(
                f"the stock level's day {stock.snapshot_day} is {skip} days after the last day "
                f"of demand data ({history.last_day}); send transaction_data up to it"
            )
        config = self._config(max(horizon_days, skip + stock.window_days, 1))
        check_enough(history, config)
        observed = history.units_after(stock.snapshot_day)
        key = await self._cache_key(
            "predict/stockout",
            product_id,
            horizon_days,
            history,
            config,
            forecaster,
            stock.stock_units,
            stock.snapshot_day.isoformat(),
            stock.window_days,
            observed,
            self._thresholds,
        )

        async def compute() -> BaseModel:
            forecast = await self._forecasts.forecast(
                product_id, history, config, registry.forecaster(forecaster), points is None
            )
            return self._stockout_response(
                product_id, horizon_days, forecast, stock, observed, forecast_start
            )

        return await self._cached("predict/stockout", product_id, key, cache_bypass, compute)

    # -- parts -------------------------------------------------------------------

    async def _stock_position(
        self,
        product_id: str,
        history: DemandHistory,
        current_stock_units: float | None,
        lead_time_days: int | None,
    ) -> _StockPosition:
        """The stock a prediction starts from: the request's, at the end of the history's
        last day, else the latest stored stock level; the risk window from the request's
        lead time, else the stored level's."""
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
        return _StockPosition(stock_units, snapshot_day, as_of, window)

    def _stockout_response(
        self,
        product_id: str,
        horizon_days: int,
        forecast: Forecast,
        stock: _StockPosition,
        observed: float,
        forecast_start: date,
    ) -> BaseModel:
        """The stockout risk of the forecast's sample paths, as the endpoint's response."""
        try:
            risk = assess_stockout_risk(
                forecast_start=forecast.start,
                sample_paths=forecast.sample_paths,
                stock_units=stock.stock_units,
                snapshot_day=stock.snapshot_day,
                window_days=stock.window_days,
                thresholds=self._thresholds,
                observed_since_snapshot_units=observed,
            )
        except NotAssessable as error:  # guarded above; kept for a clear answer
            raise BadRequest(str(error)) from error
        stockout_date = risk.predicted_stockout_date
        return shaped(
            StockoutResponse,
            {
                "productId": product_id,
                "predicted_stockout_date": stockout_date.isoformat() if stockout_date else None,
                "days_until_stockout": risk.days_until_stockout,
                "confidence": risk.confidence,
                # The expectation the date comes from (the mean of the sample paths),
                # so the usage adds up to the stock on the predicted day.
                "daily_usage_forecast": [
                    units(v) for v in forecast.sample_paths[:, :horizon_days].mean(axis=0)
                ],
                "generated_at": datetime.now(UTC).isoformat(),
                "stockout_probability": risk.stockout_probability,
                "risk_level": risk.risk_level,
                "risk_window_days": risk.risk_window_days,
                "current_stock_units": stock.stock_units,
                "stock_day": stock.snapshot_day.isoformat(),
                "as_of": stock.as_of,
                "forecast_start": forecast_start.isoformat(),
                "horizon_days": horizon_days,
                "model_metrics": model_metrics(forecast),
            },
        )

    def _config(self, horizon_days: int) -> ForecastConfig:
        return dataclasses.replace(self._settings.forecast_config(), horizon_days=horizon_days)

    async def _cache_key(
        self,
        endpoint: str,
        product_id: str,
        horizon_days: int,
        history: DemandHistory,
        config: ForecastConfig,
        forecaster: str,
        *request_parts: Any,
    ) -> str:
        """The request's cache key: the history actually used, the model settings, the
        current global model's version, then the endpoint's own `request_parts`."""
        version = await self._forecasts.current_version()
        return cache_key(
            endpoint,
            product_id,
            horizon_days,
            history.digest(),
            config,
            forecaster,
            version,
            *request_parts,
        )

    async def _history(
        self, product_id: str, points: list[tuple[date, float]] | None
    ) -> DemandHistory:
        if points is not None:
            return DemandHistory.from_points(points, self._settings.http_max_history_days)
        through = await self._forecasts.through()
        async with self._engine.connect() as connection:
            # Zero-filled to the clock's last complete day, as the consumers' forecasts,
            # and demand where the shelf was empty, as they learn it.
            stored = await demand_history(
                connection,
                product_id,
                self._settings,
                through=through,
                max_days=self._settings.http_max_history_days,
                store=False,
            )
        if stored is None:
            raise UnknownProduct(
                f"No stored demand for product {product_id!r}: send transaction_data, or "
                "publish its transactions first"
            )
        observed = stored.observed if stored.censored.any() else None
        return DemandHistory(stored.first_day, stored.demand, observed)

    async def _stored_stock(self, product_id: str) -> StockSnapshot | None:
        async with self._engine.connect() as connection:
            return await latest_stock_snapshot(connection, product_id)

    async def _cached(
        self,
        endpoint: str,
        product_id: str,
        key: str,
        bypass: bool,
        compute: Callable[[], Awaitable[BaseModel]],
    ) -> bytes:
        """The response as JSON bytes, with `"cached"` saying whether it was a hit.

        Entries are stored as the JSON text that was sent (without `cached`), so a
        hit is returned without decoding and encoding it again.
        """
        ttl = self._settings.prediction_cache_ttl
        if ttl > 0 and not bypass:
            now = datetime.now(UTC)
            hit = self._recent.get(key, now)
            if hit is None:
                async with self._engine.connect() as connection:
                    stored = await cached_response(connection, key, now)
                if stored is not None:
                    hit = stored[0]
                    self._recent.put(key, *stored)
            if hit is not None:
                metrics.PREDICTIONS.labels(endpoint, "hit").inc()
                return with_cached_flag(hit, True)
        metrics.PREDICTIONS.labels(endpoint, "bypass" if bypass else "miss").inc()
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                self._compute_and_store(endpoint, product_id, key, compute)
            )
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return with_cached_flag(await asyncio.shield(pending), False)

    async def _compute_and_store(
        self,
        endpoint: str,
        product_id: str,
        key: str,
        compute: Callable[[], Awaitable[BaseModel]],
    ) -> str:
        # As sent, without "cached" (added to each answer: a hit is served as stored).
        response = (await compute()).model_dump_json(exclude={"cached"})
        ttl = self._settings.prediction_cache_ttl
        if ttl > 0:
            now = datetime.now(UTC)
            async with self._engine.begin() as connection:
                expires_at = await store_response(
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
            self._recent.put(key, response, expires_at)
        return response
