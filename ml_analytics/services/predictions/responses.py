"""The prediction responses in their documented shapes (api_models)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from pydantic import BaseModel

from ml_analytics.models.forecasters.base import (
    Forecast,
)
from ml_analytics.services.predictions.requests import ModelFailed


def units(value: float) -> float:
    return round(float(value), 4)


ResponseT = TypeVar("ResponseT", bound=BaseModel)


def shaped(shape: type[ResponseT], fields: dict[str, Any]) -> ResponseT:
    """The response in its documented shape (api_models); a forecast with non-finite
    values is a model failure, not an answer."""
    try:
        json.dumps(fields, allow_nan=False, default=str)
    except ValueError as error:
        raise ModelFailed("Model training failed: the forecast has non-finite values") from error
    return shape.model_validate({**fields, "cached": False})


def model_metrics(forecast: Forecast) -> dict[str, Any]:
    """The contract's `model_metrics`, plus the other holdout figures."""
    figures = forecast.metrics
    return {
        "mape": figures.mape,
        "rmse": figures.rmse,
        "training_samples": forecast.training_days,
        "seasonality_detected": forecast.seasonality.weekly or forecast.seasonality.yearly,
        "mae": figures.mae,
        "wape": figures.wape,
        "mase": figures.mase,
        "holdout_days": figures.holdout_days,
        "seasonality": dataclasses.asdict(forecast.seasonality),
        "model": forecast.model_name,
        "skill_vs_moving_average": figures.skill_vs_moving_average,
        "skill_backtests": figures.skill_backtests,
        "weights": forecast.weights or None,
    }
