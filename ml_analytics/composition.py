"""The running service's parts wired together: consumers, training, risk publishing and
HTTP in one process (model fits run in its worker processes). `cli/run.py` serves it."""

from __future__ import annotations

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.consumers.broker import declare_publishers
from ml_analytics.consumers.pipeline import BatchListener
from ml_analytics.consumers.subscriber import add_ingestion
from ml_analytics.http.app import create_app
from ml_analytics.services.global_model import GlobalModelService
from ml_analytics.services.ingestion.write import BatchOutcome
from ml_analytics.services.ledger import LedgerRetention
from ml_analytics.services.predictions import PredictionService
from ml_analytics.services.risk import RiskService
from ml_analytics.services.training import ModelTrainer
from ml_analytics.settings import Settings


def build_app(settings: Settings, engine: AsyncEngine, broker: KafkaBroker) -> FastAPI:
    """Consumers, training, risk publishing and HTTP, wired together."""
    publishers = declare_publishers(broker, settings)
    risk = RiskService(engine, publishers["stockout_risk"], settings)

    async def model_trained(product_id: str) -> None:
        # The model's save marked the product for assessment in its own transaction.
        risk.assess_soon()

    global_models = GlobalModelService(
        engine,
        settings,
        train=settings.training_enabled and settings.forecaster().uses_global_model,
    )
    trainer = ModelTrainer(engine, settings, on_model=model_trained, global_models=global_models)
    ingestion = add_ingestion(
        broker,
        settings,
        engine,
        publishers=publishers,
        on_batch=_batch_listener(settings, trainer, risk),
    )

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


def _batch_listener(settings: Settings, trainer: ModelTrainer, risk: RiskService) -> BatchListener:
    """What a recorded batch sets going: refits of the products with new demand, the
    trainer's look at a moved clock, assessments of the products with new stock."""

    async def batch_recorded(outcome: BatchOutcome) -> None:
        if settings.training_enabled:
            trainer.notify(outcome.products_with_new_demand)
            if outcome.clock_moved_to is not None:
                trainer.clock_moved()
        if outcome.products_with_new_stock:
            # A stock level re-evaluates risk with the current model, no refit: its
            # write marked the product for assessment, which the risk service does.
            risk.assess_soon()

    return batch_recorded
