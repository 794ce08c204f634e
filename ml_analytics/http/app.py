"""The FastAPI application: the routes of each area, the middleware, the error handlers.

Errors are JSON `{"detail": "..."}` with a message naming the problem (http/errors.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import __version__
from ml_analytics.api_models import ERROR_RESPONSES
from ml_analytics.http.errors import add_error_handlers
from ml_analytics.http.middleware import BearerToken, BodyLimit, RequestMetrics
from ml_analytics.http.routes import dashboard, operations, products, replenishment
from ml_analytics.http.routes import predictions as prediction_routes
from ml_analytics.services.global_model import GlobalModelService
from ml_analytics.services.predictions import PredictionService
from ml_analytics.settings import Settings


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
    app = FastAPI(
        title="ml-analytics",
        version=__version__,
        description="Inventory demand aggregates, forecasts and stockout risk.",
        lifespan=_lifespan(broker, manage_broker, after_broker_start, before_broker_stop),
        # Every validation error is {"detail": "<field>: <problem>"}, not FastAPI's list.
        responses={422: ERROR_RESPONSES[422]},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.broker = broker
    # Without the service around it (tests, a bare API), the app loads the stored
    # global model itself.
    app.state.predictions = predictions or PredictionService(
        engine, settings, global_models=GlobalModelService(engine, settings, train=False)
    )
    app.add_middleware(BodyLimit, max_bytes=settings.http_max_body_bytes)
    if settings.http_bearer_token is not None:
        app.add_middleware(BearerToken, token=settings.http_bearer_token.get_secret_value())
    app.add_middleware(RequestMetrics)
    add_error_handlers(app)
    app.state.asyncapi = AsyncAPI(
        broker,
        title="ml-analytics",
        version=__version__,
        description="The topics ml-analytics consumes and publishes.",
    )
    for router in (
        operations.router,
        products.router,
        replenishment.router,
        prediction_routes.router,
        dashboard.router,
    ):
        app.include_router(router)
    return app


def _lifespan(
    broker: KafkaBroker,
    manage_broker: bool,
    after_broker_start: Callable[[], Awaitable[None]] | None,
    before_broker_stop: Callable[[], Awaitable[None]] | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the broker started (with `manage_broker`) before it serves,
    and stopped, then the prediction service, when it ends."""

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

    return lifespan
