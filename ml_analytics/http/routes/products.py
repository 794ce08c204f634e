"""Tracked products: the listing, stored demand, the stored forecast, the latest risk."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query

from ml_analytics.api_models import (
    DemandDayOut,
    ErrorBody,
    ForecastDayOut,
    ProductDemand,
    ProductItem,
    ProductPage,
    StoredForecast,
)
from ml_analytics.events import StockoutRisk
from ml_analytics.http.dependencies import AppSettings, Engine, ProductId
from ml_analytics.storage.assessments import latest_assessment
from ml_analytics.storage.censoring import censored_days_between
from ml_analytics.storage.demand import daily_demand_series, product_summary
from ml_analytics.storage.models_store import load_model
from ml_analytics.storage.overview import product_overview

router = APIRouter(tags=["products"])


@router.get("/products", response_model=ProductPage, tags=["products"])
async def products(
    engine: Engine,
    sort: Annotated[
        Literal["risk", "days_until_stockout", "product_id", "last_day", "order_by_date"],
        Query(
            description="risk: high first, then by probability, then nearest stockout; "
            "order_by_date: products that need an order, the earliest order-by day first"
        ),
    ] = "risk",
    risk_level: Annotated[
        list[Literal["high", "medium", "low", "none"]] | None,
        Query(description="Only these levels (repeatable); none: not assessed yet"),
    ] = None,
    search: Annotated[
        str | None,
        Query(max_length=128, pattern=r"^[^\x00]*$", description="Part of a product id"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> ProductPage:
    """Tracked products with their latest risk, most urgent first by default."""
    async with engine.connect() as connection:
        total, rows = await product_overview(
            connection,
            sort=sort,
            risk_levels=list(risk_level) if risk_level else None,
            search=search,
            limit=limit,
            offset=offset,
        )
    items = [ProductItem.model_validate(row) for row in rows]
    return ProductPage(total=total, limit=limit, offset=offset, sort=sort, items=items)


@router.get(
    "/products/{product_id:path}/demand",
    response_model=ProductDemand,
    tags=["products"],
    responses={
        400: {"model": ErrorBody, "description": "The range is too long: narrow it"},
        404: {"model": ErrorBody, "description": "Unknown product"},
    },
)
async def product_demand(
    product_id: ProductId,
    engine: Engine,
    settings: AppSettings,
    from_day: Annotated[date | None, Query(alias="from")] = None,
    to_day: Annotated[date | None, Query(alias="to")] = None,
) -> ProductDemand:
    """Stored daily demand, zero-filled between the first and last day with data.

    `from` and `to` (dates, inclusive) narrow the range. A day that ended with the
    shelf empty is `censored`: its `quantity_units` (sales) are a lower bound, and
    `estimated_demand_units` is the demand the service estimates and learns (as of the
    product's last assessment or fit).
    """
    if from_day and to_day and from_day > to_day:
        raise HTTPException(422, f"'from' ({from_day}) must not be after 'to' ({to_day})")
    async with engine.connect() as connection:
        summary = await product_summary(connection, product_id)
        if summary is None:
            raise HTTPException(404, f"Unknown product {product_id!r}")
        longest = settings.http_max_history_days
        if summary.first_day and summary.last_day:
            first = max(summary.first_day, from_day or summary.first_day)
            last = min(summary.last_day, to_day or summary.last_day)
            if (last - first).days + 1 > longest:
                raise HTTPException(
                    400,
                    f"the demand of {product_id!r} from {first} to {last} spans "
                    f"{(last - first).days + 1} days; at most {longest} are served at "
                    "once: narrow it with 'from' and 'to'",
                )
        series = await daily_demand_series(connection, product_id, from_day, to_day)
        censored = (
            await censored_days_between(connection, product_id, series[0].day, series[-1].day)
            if series
            else {}
        )
    return ProductDemand(
        product_id=product_id,
        days=[
            DemandDayOut(
                date=d.day,
                quantity_units=d.quantity_units,
                transactions=d.transactions,
                censored=d.day in censored,
                estimated_demand_units=max(
                    d.quantity_units,
                    censored[d.day].estimated_demand_units if d.day in censored else 0.0,
                ),
            )
            for d in series
        ],
    )


@router.get(
    "/products/{product_id:path}/forecast",
    response_model=StoredForecast,
    tags=["products"],
    responses={404: {"model": ErrorBody, "description": "No trained model yet"}},
)
async def product_forecast(product_id: ProductId, engine: Engine) -> StoredForecast:
    """The forecast of the product's current model (retrained by the consumers),
    with its holdout metrics. 404 until the product has a model."""
    async with engine.connect() as connection:
        model = await load_model(connection, product_id)
    if model is None:
        raise HTTPException(404, f"No trained model for product {product_id!r} yet")
    paths = model.sample_paths
    expected = paths.mean(axis=0) if len(paths) else np.asarray(model.yhat)
    cumulative = (
        np.quantile(np.cumsum(paths, axis=1), [0.1, 0.5, 0.9], axis=0)
        if len(paths)
        else np.tile(np.cumsum(model.yhat), (3, 1))
    )
    return StoredForecast(
        product_id=product_id,
        model_name=model.model_name,
        trained_at=model.trained_at,
        trained_through=model.trained_through,
        training_days=model.training_days,
        forecast_start=model.forecast_start,
        metrics=model.metrics,
        seasonality=model.seasonality,
        weights=model.weights,
        days=[
            ForecastDayOut(
                date=model.forecast_start + timedelta(days=i),
                yhat=model.yhat[i],
                yhat_lower=model.yhat_lower[i],
                yhat_upper=model.yhat_upper[i],
                expected=round(float(expected[i]), 4),
                cumulative_p10=round(float(cumulative[0, i]), 4),
                cumulative_p50=round(float(cumulative[1, i]), 4),
                cumulative_p90=round(float(cumulative[2, i]), 4),
            )
            for i in range(len(model.yhat))
        ],
    )


@router.get(
    "/products/{product_id:path}/stockout-risk",
    response_model=StockoutRisk,
    tags=["products"],
    responses={
        404: {"model": ErrorBody, "description": "No assessment yet"},
    },
)
async def product_stockout_risk(product_id: ProductId, engine: Engine) -> StockoutRisk:
    """The latest risk assessment, also when its level did not change (so no event
    was published). 404 until the product has a trained model and a known stock."""
    async with engine.connect() as connection:
        assessment = await latest_assessment(connection, product_id)
    if assessment is None:
        raise HTTPException(
            404,
            f"No stockout risk assessment for product {product_id!r} yet: it needs a "
            "trained model and a stock level",
        )
    return StockoutRisk.model_validate(assessment)
