"""What routes take from the app: typed with Annotated aliases (FastAPI's template)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.services.predictions import PredictionService
from ml_analytics.settings import Settings


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def get_broker(request: Request) -> KafkaBroker:
    broker: KafkaBroker = request.app.state.broker
    return broker


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_predictions(request: Request) -> PredictionService:
    service: PredictionService = request.app.state.predictions
    return service


Engine = Annotated[AsyncEngine, Depends(get_engine)]
Broker = Annotated[KafkaBroker, Depends(get_broker)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Predictions = Annotated[PredictionService, Depends(get_predictions)]
ProductId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]
