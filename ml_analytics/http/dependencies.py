"""What routes take from the app: typed with Annotated aliases (FastAPI's template)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, TypeVar

from fastapi import Depends, Path, Request
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.services.predictions import PredictionService
from ml_analytics.settings import Settings

T = TypeVar("T")


def app_state(name: str, kind: type[T]) -> Callable[[Request], Coroutine[None, None, T]]:
    """A dependency that gives the app's `state.<name>`, a `kind` (set by create_app)."""

    async def from_state(request: Request) -> T:  # async: no thread-pool hop per request
        value: T = getattr(request.app.state, name)
        return value

    from_state.__name__ = f"get_{name}"
    return from_state


Engine = Annotated[AsyncEngine, Depends(app_state("engine", AsyncEngine))]
Broker = Annotated[KafkaBroker, Depends(app_state("broker", KafkaBroker))]
AppSettings = Annotated[Settings, Depends(app_state("settings", Settings))]
Predictions = Annotated[PredictionService, Depends(app_state("predictions", PredictionService))]
ProductId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]
