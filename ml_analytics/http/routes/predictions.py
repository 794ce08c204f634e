"""`POST /forecast/demand` and `POST /predict/stockout`: the contract's request and
response shapes (extra fields are additions, never changes)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from fastapi import APIRouter
from fastapi.responses import Response

from ml_analytics.api_models import (
    ERROR_RESPONSES,
    DemandPoint,
    ForecastRequest,
    ForecastResponse,
    StockoutRequest,
    StockoutResponse,
)
from ml_analytics.http.dependencies import AppSettings, Predictions
from ml_analytics.services.predictions import BadRequest
from ml_analytics.settings import Settings


def _points(data: list[DemandPoint] | None, settings: Settings) -> list[tuple[date, float]] | None:
    if data is None:
        return None
    limit = settings.http_max_transaction_points
    if len(data) > limit:
        raise BadRequest(f"transaction_data has {len(data)} points; at most {limit} are accepted")
    # The same dates as on the topics: a history ending near 9999-12-31 cannot be
    # forecast past it, and one starting in year 1 is a mistake.
    window = settings.event_time_window(datetime.now(UTC))
    points = [(point["date"], point["quantity"]) for point in data]
    days = [day for day, _ in points]
    if days and window.contains(min(days)) and window.contains(max(days)):
        return points
    for index, day in enumerate(days):  # the first point outside, by name
        if problem := window.problem(f"transaction_data[{index}].date", day):
            raise BadRequest(problem)
    return points


# The service builds the responses in the documented shape (the schemathesis test
# checks them against it) as JSON, and a cache hit is returned as stored, not decoded,
# validated and encoded again.
router = APIRouter(tags=["predictions"], responses=ERROR_RESPONSES)


@router.post("/forecast/demand", response_model=ForecastResponse)
async def forecast_demand(
    body: ForecastRequest, predictions: Predictions, settings: AppSettings
) -> Response:
    """Daily demand forecast for `horizon_days` after the history's last day.

    Values are never negative. Responses are cached by content for
    PREDICTION_CACHE_TTL; `cache_bypass: true` forces a fresh fit.
    """
    return Response(
        await predictions.forecast_demand(
            body.product_id,
            body.horizon_days,
            _points(body.transaction_data, settings),
            body.cache_bypass,
            body.model,
        ),
        media_type="application/json",
    )


@router.post("/predict/stockout", response_model=StockoutResponse)
async def predict_stockout(
    body: StockoutRequest, predictions: Predictions, settings: AppSettings
) -> Response:
    """When the stock runs out, and how likely that is within the risk window.

    `stockout_probability`, `risk_level` and `risk_window_days` are additions to
    the contract's response, computed as for the stockout-risk events.
    """
    return Response(
        await predictions.predict_stockout(
            body.product_id,
            body.horizon_days,
            _points(body.transaction_data, settings),
            body.current_stock_units,
            body.lead_time_days,
            body.cache_bypass,
            body.model,
        ),
        media_type="application/json",
    )
