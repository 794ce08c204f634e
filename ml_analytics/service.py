"""The running service: migrations, topics, consumers, training, risk events and HTTP
in one process (model fits run in its worker processes)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import __version__
from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.consumers.ingestion import add_ingestion, build_broker
from ml_analytics.http.app import create_app
from ml_analytics.http.server import uvicorn_config
from ml_analytics.logs import configure_logging
from ml_analytics.services.global_model import GlobalModelService
from ml_analytics.services.ingest import BatchOutcome
from ml_analytics.services.ledger import LedgerRetention
from ml_analytics.services.predictions import PredictionService
from ml_analytics.services.risk import RiskService
from ml_analytics.services.training import ModelTrainer
from ml_analytics.settings import Settings, redact_url
from ml_analytics.storage.database import create_engine, migrate

logger = logging.getLogger(__name__)


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, except that after a graceful stop on SIGTERM/SIGINT it
    returns instead of re-raising the signal: the caller still has clean-up to do
    (dispose the database pool) and the exit code of a clean stop is 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def build_app(settings: Settings, engine: AsyncEngine, broker: KafkaBroker) -> FastAPI:
    """Consumers, training, risk publishing and HTTP, wired together."""
    risk = RiskService(engine, broker, settings)

    async def model_trained(product_id: str) -> None:
        await risk.reassess([product_id])

    global_models = GlobalModelService(
        engine,
        settings,
        train=settings.training_enabled and settings.forecast_model == "combination",
    )
    trainer = ModelTrainer(engine, settings, on_model=model_trained, global_models=global_models)

    async def batch_recorded(outcome: BatchOutcome) -> None:
        if settings.training_enabled:
            trainer.notify(outcome.products_with_new_demand)
            if outcome.clock_moved_to is not None:
                trainer.clock_moved()
        if outcome.products_with_new_stock:
            # A stock level re-evaluates risk with the current model, no refit.
            await risk.reassess(outcome.products_with_new_stock)

    ingestion = add_ingestion(broker, settings, engine, on_batch=batch_recorded)

    predictions = PredictionService(engine, settings, global_models=global_models)
    ledger = LedgerRetention(engine, settings)

    async def started() -> None:
        # The prediction API's fit workers start with its first fit: a replica that
        # never serves one does not hold their memory.
        risk.start()
        ledger.start()
        await global_models.start()
        if settings.training_enabled:
            await trainer.start()

    async def stopping() -> None:
        await ingestion.drain(settings.shutdown_grace_seconds)
        await trainer.stop()
        await global_models.stop()
        await ledger.stop()
        await risk.stop()

    app = create_app(
        settings,
        engine,
        broker,
        predictions=predictions,
        after_broker_start=started,
        before_broker_stop=stopping,
    )
    app.state.trainer = trainer
    app.state.global_models = global_models
    app.state.risk = risk
    app.state.ingestion = ingestion
    return app


async def run_service(settings: Settings) -> None:
    """Apply migrations, create missing topics, then consume and serve until SIGTERM/SIGINT."""
    configure_logging(settings.log_level)
    logger.info(
        "starting ml-analytics",
        extra={
            "version": __version__,
            "database": redact_url(settings.database_url),
            "kafka": settings.kafka_bootstrap_servers,
            "group_id": settings.group_id,
            "topics": {role: spec.name for role, spec in settings.topics.topics.items()},
        },
    )
    await migrate(settings.database_url)
    await ensure_topics(settings)
    engine = create_engine(settings)
    broker = build_broker(settings)
    app = build_app(settings, engine, broker)
    server = _GracefulServer(
        uvicorn_config(
            app,
            settings,
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        )
    )
    try:
        await server.serve()  # returns after SIGTERM/SIGINT, once the lifespan has shut down
    finally:
        await engine.dispose()
        logger.info("stopped")
