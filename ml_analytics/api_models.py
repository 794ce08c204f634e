"""The HTTP API's request and response shapes (pydantic): the contract's, with additions.
The routes declare them (OpenAPI) and the services build the responses from them: one
shape, in one place."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field
from typing_extensions import TypedDict

from ml_analytics.events import MAX_QUANTITY_UNITS, MAX_STOCK_UNITS, Identifier
from ml_analytics.models.forecasters import registry


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


def _known_forecaster(name: str) -> str:
    if name not in registry.names():
        raise ValueError(f"unknown forecaster {name!r}: one of {', '.join(registry.names())}")
    return name


def _forecaster_choices(schema: dict[str, Any]) -> None:
    schema["enum"] = list(registry.names())


ModelChoice = Annotated[
    Annotated[
        str,
        AfterValidator(_known_forecaster),
        Field(json_schema_extra=_forecaster_choices),
    ]
    | None,
    Field(
        description="The forecaster (an addition to the contract), by its name in the "
        "registry: the combination of the global model and local members the service chose "
        "by backtest, or Prophet. Default: the service's FORECAST_MODEL."
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


class Health(BaseModel):
    status: str
    service: str
    version: str
    timestamp: datetime


class Ready(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]


class NotReady(BaseModel):
    status: Literal["unavailable"]
    detail: str
    failing: list[str]


class DemandDayOut(BaseModel):
    date: date
    quantity_units: float = Field(description="Units sold that day")
    transactions: int
    censored: bool = Field(
        default=False,
        description="The day ended with the shelf empty: its sales are a lower bound of its demand",
    )
    estimated_demand_units: float = Field(
        description="Demand that day: the sales where observed, the estimate where censored "
        "(unmet demand is this less quantity_units)"
    )


class ProductDemand(BaseModel):
    product_id: str
    days: list[DemandDayOut]


class ForecastDayOut(BaseModel):
    date: date
    yhat: float
    yhat_lower: float
    yhat_upper: float
    expected: float = Field(
        description="Mean of the sample paths: the daily demand stockout dates come from"
    )
    cumulative_p10: float = Field(
        description="10% quantile of the demand from forecast_start through this day"
    )
    cumulative_p50: float = Field(description="its median")
    cumulative_p90: float = Field(description="its 90% quantile")


class StoredForecast(BaseModel):
    """The product's current model, as the consumers trained it."""

    product_id: str
    model_name: str
    trained_at: datetime
    trained_through: date
    training_days: int
    forecast_start: date
    metrics: dict[str, float | int | None]
    seasonality: dict[str, bool | float]
    weights: dict[str, float] | None = Field(description="A combination's members and weights")
    days: list[ForecastDayOut]


class ProductItem(BaseModel):
    """A tracked product with its stock, latest risk assessment and model."""

    product_id: str
    first_day: date | None
    last_day: date | None
    total_units: float
    transactions: int
    current_stock_units: float | None
    stock_as_of: datetime | None
    lead_time_days: int | None
    risk_level: Literal["high", "medium", "low"] | None = Field(
        description="null until the product has a model and a stock level"
    )
    stockout_probability: float | None
    predicted_stockout_date: date | None
    days_until_stockout: int | None
    confidence: float | None
    assessed_at: datetime | None
    model_name: str | None
    trained_at: datetime | None
    training_days: int | None
    mape: float | None
    rmse: float | None
    wape: float | None
    mase: float | None
    skill_vs_moving_average: float | None = Field(
        description="0.18: 18% better than the 28-day moving average on 28-day totals"
    )
    skill_backtests: int
    on_order_units: float | None = None
    target_service_level: float | None = None
    order_up_to_units: float | None = None
    recommended_order_units: float | None = Field(
        default=None, description="Units to order now (0: none needed); null until assessed"
    )
    order_by_date: date | None = Field(
        default=None, description="The last day an order still arrives in time"
    )
    lost_sales_units_28d: float | None = Field(
        default=None,
        description="Estimated unmet demand over the last 28 complete days (days the shelf "
        "was empty); null until assessed",
    )


class Replenishment(BaseModel):
    """What to order, and by when, under a periodic review policy at a service level."""

    product_id: str
    as_of: datetime = Field(description="The stock level the recommendation starts from")
    current_stock_units: float
    on_order_units: float
    stock_position_units: float = Field(
        description="On hand, less demand observed since the stock was counted, plus on order"
    )
    lead_time_days: int
    review_days: int
    target_service_level: float
    reorder_point_units: float = Field(
        description="The service-level quantile of demand over the lead time"
    )
    order_up_to_units: float = Field(
        description="The service-level quantile of demand over lead time plus review period"
    )
    order_multiple_units: float | None
    recommended_order_units: float = Field(
        description="Order-up-to less the stock position, in order multiples; 0: none needed"
    )
    order_by_date: date | None = Field(
        description="The last day an order still arrives before stock falls below the reorder "
        "point; null when not within the forecast"
    )
    model_name: str
    trained_at: datetime


class ProductPage(BaseModel):
    total: int = Field(description="Products matching the filters")
    limit: int
    offset: int
    sort: str
    items: list[ProductItem]
