"""The FastAPI application: health, readiness, metrics and the product queries.

Errors are JSON `{"detail": "..."}` with a message naming the problem, also for
request validation (FastAPI's default is a list of error objects).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import SERVICE_NAME, __version__
from ml_analytics.events import StockoutRisk
from ml_analytics.storage.database import database_answers
from ml_analytics.storage.models_queries import latest_assessment
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


class Health(BaseModel):
    status: str
    service: str
    version: str
    timestamp: datetime


class DemandDayOut(BaseModel):
    date: date
    quantity_units: float
    transactions: int


class ProductDemand(BaseModel):
    product_id: str
    days: list[DemandDayOut]


def create_app(
    engine: AsyncEngine,
    broker: KafkaBroker,
    *,
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

    app = FastAPI(
        title="ml-analytics",
        version=__version__,
        description="Inventory demand aggregates, forecasts and stockout risk.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.broker = broker

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": describe_request_errors(error)})

    @app.get("/health", response_model=Health, tags=["operations"])
    async def health() -> Health:
        """Liveness: the process answers."""
        return Health(
            status="healthy",
            service=SERVICE_NAME,
            version=__version__,
            timestamp=datetime.now(UTC),
        )

    @app.get("/ready", tags=["operations"])
    async def ready(engine: Engine, broker: Broker) -> JSONResponse:
        """200 when PostgreSQL and the broker answer; 503 naming the part that does not."""
        checks = await asyncio.gather(
            _check("postgresql", database_answers(engine)),
            _check("kafka", _broker_answers(broker)),
        )
        failing = {name: problem for name, problem in checks if problem}
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
        return JSONResponse(
            content={"status": "ready", "checks": {"postgresql": "ok", "kafka": "ok"}}
        )

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics_text() -> PlainTextResponse:
        """Prometheus metrics, text format."""
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/products/{product_id:path}/demand",
        response_model=ProductDemand,
        tags=["products"],
        responses={404: {"description": "Unknown product"}},
    )
    async def product_demand(
        product_id: str,
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
        "/products/{product_id:path}/stockout-risk",
        response_model=StockoutRisk,
        tags=["products"],
        responses={404: {"description": "No assessment yet"}},
    )
    async def product_stockout_risk(product_id: str, engine: Engine) -> StockoutRisk:
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


def describe_request_errors(error: RequestValidationError) -> str:
    problems = []
    for item in error.errors():
        location = [
            str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path")
        ]
        field = ".".join(location) or "request"
        problems.append(f"{field}: {item.get('msg', 'invalid')}")
    return "; ".join(problems)
