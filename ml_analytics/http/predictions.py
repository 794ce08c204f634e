"""`POST /forecast/demand` and `POST /predict/stockout`: the contract's request and
response shapes (extra response fields are additions, never changes)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from ml_analytics.events import MAX_QUANTITY_UNITS, MAX_STOCK_UNITS, Identifier
from ml_analytics.services.predictions import BadRequest, PredictionService
from ml_analytics.settings import Settings


class ErrorBody(BaseModel):
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The request cannot be answered as sent"},
    404: {"model": ErrorBody, "description": "No stored demand for the product"},
    413: {"model": ErrorBody, "description": "Request body too large"},
    415: {"model": ErrorBody, "description": "The body was not sent as application/json"},
    422: {"model": ErrorBody, "description": "A field is missing or invalid"},
    500: {"model": ErrorBody, "description": "Model training failed: <reason>"},
    503: {"model": ErrorBody, "description": "Too many fits in flight; see Retry-After"},
    504: {"model": ErrorBody, "description": "The fit took longer than WORKER_TIMEOUT"},
}

# Types are checked, not coerced: "5" is not a number, true is not 1 (422 naming the field).
Quantity = Annotated[float, Field(strict=True, ge=0, le=MAX_QUANTITY_UNITS, allow_inf_nan=False)]


class DemandPoint(TypedDict):
    """Units used on one day (`date`: YYYY-MM-DD). Several points on one day are
    summed; days without a point are zero demand. (A TypedDict: validating 365 of
    these is four times faster than as models.)"""

    date: date
    quantity: Quantity


TransactionData = Annotated[
    list[DemandPoint] | None,
    Field(
        description="Daily demand history. Omit it to use the demand the service has stored "
        "for the product."
    ),
]
HorizonDays = Annotated[int, Field(strict=True, description="Days to forecast, 1 to 365.")]
CacheBypass = Annotated[
    bool, Field(strict=True, description="true: compute afresh, ignoring the cache")
]


ModelChoice = Annotated[
    Literal["combination", "prophet"] | None,
    Field(
        description="The forecaster (an addition to the contract): the combination of the "
        "global model and local members the service chose by backtest, or Prophet. Default: "
        "the service's FORECAST_MODEL."
    ),
]


class ForecastRequest(BaseModel):
    product_id: Identifier
    horizon_days: HorizonDays = 30
    transaction_data: TransactionData = None
    cache_bypass: CacheBypass = False
    model: ModelChoice = None


class StockoutRequest(BaseModel):
    product_id: Identifier
    current_stock_units: (
        Annotated[float, Field(strict=True, ge=0, le=MAX_STOCK_UNITS, allow_inf_nan=False)] | None
    ) = Field(
        None,
        description="Units on hand at the end of the history's last day. Omit it to use the "
        "latest stored stock level.",
    )
    horizon_days: HorizonDays = 90
    transaction_data: TransactionData = None
    lead_time_days: Annotated[int, Field(strict=True, ge=0, le=365)] | None = Field(
        None,
        description="The risk window (an addition to the contract). Default: the stored stock "
        "level's lead time, else DEFAULT_RISK_WINDOW_DAYS.",
    )
    cache_bypass: CacheBypass = False
    model: ModelChoice = None


class PredictionPoint(BaseModel):
    ds: date
    yhat: float
    yhat_lower: float
    yhat_upper: float


class Seasonality(BaseModel):
    weekly: bool
    yearly: bool
    weekly_strength: float


class ModelMetrics(BaseModel):
    """Accuracy on a holdout of the history's last days (up to 28), before the final
    fit on all of it. MAPE is over days with non-zero demand only: it is undefined on
    zero days, which are common in real demand. MASE is against a seasonal-naive
    forecast (same weekday a week earlier). None where a figure is undefined."""

    mape: float | None
    rmse: float | None
    training_samples: int = Field(description="Days of history the model was fitted on")
    seasonality_detected: bool = Field(description="Weekly or yearly seasonality is modelled")
    mae: float | None
    wape: float | None
    mase: float | None
    holdout_days: int
    seasonality: Seasonality
    model: str = Field(description="The forecaster that made the forecast")
    skill_vs_moving_average: float | None = Field(
        description="0.18: the error of 28-day totals is 18% below a 28-day moving average's, "
        "over `skill_backtests` backtests (or the holdout); null while unknown"
    )
    skill_backtests: int
    weights: dict[str, float] | None = Field(description="A combination's members and weights")


class ForecastResponse(BaseModel):
    productId: str  # the contract spells it so
    predictions: list[PredictionPoint]
    model_metrics: ModelMetrics
    generated_at: datetime
    horizon_days: int
    cached: bool = Field(description="Served from the prediction cache")


class StockoutResponse(BaseModel):
    productId: str  # the contract spells it so
    predicted_stockout_date: date | None = Field(
        description="The day by which a stockout is more likely than not: the median over "
        "the sample paths of the first day cumulative demand exceeds the stock; null when "
        "fewer than half run out within the horizon"
    )
    days_until_stockout: int | None = Field(description="Days from the stock's day to that date")
    confidence: float = Field(
        description="Share of sample paths that run out within ±2 days of the predicted date "
        "(when none is predicted: share that do not run out within the horizon)"
    )
    daily_usage_forecast: list[float] = Field(
        description="Expected daily demand from forecast_start, horizon_days long: the mean "
        "of the sample paths the date and probability come from"
    )
    generated_at: datetime
    stockout_probability: float = Field(
        description="Share of sample paths whose demand over the risk window exceeds the stock"
    )
    risk_level: str
    risk_window_days: int
    current_stock_units: float
    stock_day: date = Field(description="The day at whose end the stock was counted")
    as_of: datetime | None = Field(description="The stored stock level's as_of, when used")
    forecast_start: date
    horizon_days: int
    model_metrics: ModelMetrics
    cached: bool


def get_predictions(request: Request) -> PredictionService:
    service: PredictionService = request.app.state.predictions
    return service


Predictions = Annotated[PredictionService, Depends(get_predictions)]


def _points(data: list[DemandPoint] | None, request: Request) -> list[tuple[date, float]] | None:
    if data is None:
        return None
    settings: Settings = request.app.state.settings
    limit = settings.http_max_transaction_points
    if len(data) > limit:
        raise BadRequest(f"transaction_data has {len(data)} points; at most {limit} are accepted")
    # The same dates as on the topics: a history ending near 9999-12-31 cannot be
    # forecast past it, and one starting in year 1 is a mistake.
    window = settings.event_time_window(datetime.now(UTC))
    for index, point in enumerate(data):
        if problem := window.problem(f"transaction_data[{index}].date", point["date"]):
            raise BadRequest(problem)
    return [(point["date"], point["quantity"]) for point in data]


def prediction_router() -> APIRouter:
    """The two prediction routes. The service builds their responses in the documented
    shape (the schemathesis test checks them against it) as JSON, and a cache hit is
    returned as stored, not decoded, validated and encoded again."""
    router = APIRouter(tags=["predictions"], responses=ERROR_RESPONSES)

    @router.post("/forecast/demand", response_model=ForecastResponse)
    async def forecast_demand(
        body: ForecastRequest, predictions: Predictions, request: Request
    ) -> Response:
        """Daily demand forecast for `horizon_days` after the history's last day.

        Values are never negative. Responses are cached by content for
        PREDICTION_CACHE_TTL; `cache_bypass: true` forces a fresh fit.
        """
        return Response(
            await predictions.forecast_demand(
                body.product_id,
                body.horizon_days,
                _points(body.transaction_data, request),
                body.cache_bypass,
                body.model,
            ),
            media_type="application/json",
        )

    @router.post("/predict/stockout", response_model=StockoutResponse)
    async def predict_stockout(
        body: StockoutRequest, predictions: Predictions, request: Request
    ) -> Response:
        """When the stock runs out, and how likely that is within the risk window.

        `stockout_probability`, `risk_level` and `risk_window_days` are additions to
        the contract's response, computed as for the stockout-risk events.
        """
        return Response(
            await predictions.predict_stockout(
                body.product_id,
                body.horizon_days,
                _points(body.transaction_data, request),
                body.current_stock_units,
                body.lead_time_days,
                body.cache_bypass,
                body.model,
            ),
            media_type="application/json",
        )

    return router
