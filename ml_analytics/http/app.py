"""The FastAPI application: health, readiness, metrics, predictions and product queries.

Errors are JSON `{"detail": "..."}` with a message naming the problem, also for
request validation (FastAPI's default is a list of error objects).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_analytics import SERVICE_NAME, __version__, metrics
from ml_analytics.events import StockoutRisk, describe_errors
from ml_analytics.http.dashboard import dashboard_router
from ml_analytics.http.predictions import ERROR_RESPONSES, ErrorBody, prediction_router
from ml_analytics.services.predictions import PredictionError, PredictionService
from ml_analytics.settings import Settings
from ml_analytics.storage.database import database_answers
from ml_analytics.storage.models_queries import (
    ProductOverview,
    latest_assessment,
    load_model,
    product_overview,
)
from ml_analytics.storage.queries import daily_demand_series, product_summary

READINESS_TIMEOUT_SECONDS = 3.0


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def get_broker(request: Request) -> KafkaBroker:
    broker: KafkaBroker = request.app.state.broker
    return broker


Engine = Annotated[AsyncEngine, Depends(get_engine)]
Broker = Annotated[KafkaBroker, Depends(get_broker)]
ProductId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]


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
    quantity_units: float
    transactions: int


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


class ProductPage(BaseModel):
    total: int = Field(description="Products matching the filters")
    limit: int
    offset: int
    sort: str
    items: list[ProductItem]


def create_app(
    settings: Settings,
    engine: AsyncEngine,
    broker: KafkaBroker,
    *,
    predictions: PredictionService | None = None,
    after_broker_start: Callable[[], Awaitable[None]] | None = None,
    before_broker_stop: Callable[[], Awaitable[None]] | None = None,
    manage_broker: bool = True,
) -> FastAPI:
    """The HTTP app. With `manage_broker`, its lifespan starts the Kafka broker (then
    calls `after_broker_start`) and stops it (calling `before_broker_stop` first, to
    finish the batch in hand and stop training)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_broker:
            await broker.start()
            if after_broker_start is not None:
                await after_broker_start()
        try:
            yield
        finally:
            if manage_broker:
                if before_broker_stop is not None:
                    await before_broker_stop()
                await broker.stop()
            app.state.predictions.stop()

    app = FastAPI(
        title="ml-analytics",
        version=__version__,
        description="Inventory demand aggregates, forecasts and stockout risk.",
        lifespan=lifespan,
        # Every validation error is {"detail": "<field>: <problem>"}, not FastAPI's list.
        responses={422: ERROR_RESPONSES[422]},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.broker = broker
    app.state.predictions = predictions or PredictionService(engine, settings)
    app.add_middleware(BodyLimit, max_bytes=settings.http_max_body_bytes)
    if settings.http_bearer_token is not None:
        app.add_middleware(BearerToken, token=settings.http_bearer_token.get_secret_value())
    app.add_middleware(RequestMetrics)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        status, detail = describe_request_errors(error, request.headers.get("content-type"))
        return JSONResponse(status_code=status, content={"detail": detail})

    @app.exception_handler(PredictionError)
    async def _prediction_error(request: Request, error: PredictionError) -> JSONResponse:
        return JSONResponse(
            status_code=error.status_code, content={"detail": error.detail}, headers=error.headers
        )

    app.include_router(prediction_router())
    app.include_router(dashboard_router())
    asyncapi = AsyncAPI(
        broker,
        title="ml-analytics",
        version=__version__,
        description="The topics ml-analytics consumes and publishes.",
    )

    @app.get("/health", response_model=Health, tags=["operations"])
    @app.head("/health", response_model=Health, tags=["operations"], operation_id="health_head")
    async def health() -> Health:
        """Liveness: the process answers."""
        return Health(
            status="healthy",
            service=SERVICE_NAME,
            version=__version__,
            timestamp=datetime.now(UTC),
        )

    readiness_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": Ready, "description": "PostgreSQL and the broker answer"},
        503: {"model": NotReady, "description": "A dependency does not answer"},
    }

    @app.get("/ready", tags=["operations"], responses=readiness_responses)
    @app.head(
        "/ready", tags=["operations"], responses=readiness_responses, operation_id="ready_head"
    )
    async def ready(engine: Engine, broker: Broker, request: Request) -> JSONResponse:
        """200 when PostgreSQL and the broker answer and ingestion makes progress; 503
        naming the part that does not (a partition stuck on a batch that cannot be
        decoded, a batch that keeps failing)."""
        checks = await asyncio.gather(
            _check("postgresql", database_answers(engine)),
            _check("kafka", _broker_answers(broker)),
        )
        failing = {name: problem for name, problem in checks if problem}
        ingestion = getattr(request.app.state, "ingestion", None)
        if ingestion is not None and (stuck := ingestion.problems()):
            failing["ingestion"] = "; ".join(stuck)
        if failing:
            detail = "; ".join(f"{name}: {problem}" for name, problem in failing.items())
            return JSONResponse(
                status_code=503,
                content={
                    "status": "unavailable",
                    "detail": f"not ready: {detail}",
                    "failing": sorted(failing),
                },
            )
        checked = ("postgresql", "kafka", "ingestion") if ingestion else ("postgresql", "kafka")
        return JSONResponse(content={"status": "ready", "checks": dict.fromkeys(checked, "ok")})

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics_text() -> PlainTextResponse:
        """Prometheus metrics, text format."""
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/asyncapi", tags=["operations"])
    async def asyncapi_document() -> Response:
        """The AsyncAPI document of the topics consumed and published (JSON)."""
        return Response(asyncapi.to_specification().to_json(), media_type="application/json")

    @app.get("/products", response_model=ProductPage, tags=["products"])
    async def products(
        engine: Engine,
        sort: Annotated[
            Literal["risk", "days_until_stockout", "product_id", "last_day"],
            Query(description="risk: high first, then by probability, then nearest stockout"),
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
        items = [_product_item(row) for row in rows]
        return ProductPage(total=total, limit=limit, offset=offset, sort=sort, items=items)

    @app.get(
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
        from_day: Annotated[date | None, Query(alias="from")] = None,
        to_day: Annotated[date | None, Query(alias="to")] = None,
    ) -> ProductDemand:
        """Stored daily demand, zero-filled between the first and last day with data.

        `from` and `to` (dates, inclusive) narrow the range.
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
        return ProductDemand(
            product_id=product_id,
            days=[
                DemandDayOut(
                    date=d.day, quantity_units=d.quantity_units, transactions=d.transactions
                )
                for d in series
            ],
        )

    @app.get(
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

    @app.get(
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

    return app


def _product_item(row: ProductOverview) -> ProductItem:
    """The listing's row, with the model's headline metrics lifted out of `metrics`."""
    fields: dict[str, Any] = asdict(row)
    metrics_of_model = fields.pop("metrics") or {}
    fields["transactions"] = fields.pop("transaction_count")
    for name in ("mape", "rmse", "wape", "mase", "skill_vs_moving_average"):
        fields[name] = metrics_of_model.get(name)
    fields["skill_backtests"] = metrics_of_model.get("skill_backtests") or 0
    return ProductItem.model_validate(fields)


async def _check(name: str, probe: object) -> tuple[str, str | None]:
    try:
        await asyncio.wait_for(probe, READINESS_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    except TimeoutError:
        return name, f"no answer within {READINESS_TIMEOUT_SECONDS:g} s"
    except Exception as error:
        return name, f"{type(error).__name__}: {str(error)[:200]}"
    return name, None


async def _broker_answers(broker: KafkaBroker) -> None:
    if not await broker.ping(timeout=READINESS_TIMEOUT_SECONDS):
        raise ConnectionError("the broker does not answer")


def describe_request_errors(
    error: RequestValidationError, content_type: str | None
) -> tuple[int, str]:
    """The status and `detail` for a request that failed validation: 415 for a body
    that was not sent as JSON (FastAPI then hands the model the raw bytes), 422 naming
    each field otherwise."""
    items = error.errors()
    whole_body = [item for item in items if tuple(item["loc"]) == ("body",)]
    if any(item["type"] == "missing" for item in whole_body):
        return 422, "request body is required: a JSON object"
    if any(item["type"] in {"model_attributes_type", "dict_type"} for item in whole_body) and (
        isinstance(whole_body[0].get("input"), bytes | str)
    ):
        sent = f"got {content_type!r}" if content_type else "none was sent"
        return 415, f"Content-Type must be application/json ({sent})"
    return 422, describe_errors(items, skip=("body", "query", "path"))


class BodyLimit:
    """413 for a request body over `max_bytes`, whether it declares its length or not.

    The body is read here (at most `max_bytes` of it) and handed on whole: FastAPI
    would turn an error raised while it reads the body into a plain 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # waits for the disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            status_code=413,
            content={"detail": f"request body is larger than {self.max_bytes} bytes"},
        )
        await response(scope, receive, send)


class BearerToken:
    """401 unless the request carries `Authorization: Bearer <HTTP_BEARER_TOKEN>`;
    /health stays open for liveness probes."""

    OPEN_PATHS = frozenset({"/health"})

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        # The scheme is case-insensitive (RFC 9110 11.1): "bearer" and "BEARER" too.
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            status_code=401,
            content={"detail": "missing or wrong bearer token (Authorization: Bearer …)"},
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class RequestMetrics:
    """Latency of every request, by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.HTTP_REQUEST_SECONDS.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
