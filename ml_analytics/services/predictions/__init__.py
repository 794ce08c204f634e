"""Forecasts and stockout predictions on request (the HTTP API), cached by content."""

from ml_analytics.services.predictions.requests import (
    BadRequest,
    Busy,
    FitTimedOut,
    ModelFailed,
    PredictionError,
    UnknownProduct,
)
from ml_analytics.services.predictions.service import PredictionService

__all__ = [
    "BadRequest",
    "Busy",
    "FitTimedOut",
    "ModelFailed",
    "PredictionError",
    "PredictionService",
    "UnknownProduct",
]
