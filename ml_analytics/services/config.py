"""The settings turned into the pure models' configuration: each setting read here once."""

from __future__ import annotations

from ml_analytics.models.forecasters.base import ForecastConfig
from ml_analytics.models.retrain import RetrainPolicy
from ml_analytics.models.risk import RiskThresholds
from ml_analytics.settings import Settings


def forecast_config(settings: Settings, horizon_days: int | None = None) -> ForecastConfig:
    return ForecastConfig(
        horizon_days=horizon_days or settings.forecast_horizon_days,
        seasonality_mode=settings.prophet_seasonality_mode,
        interval_width=settings.prophet_interval_width,
        min_training_days=settings.min_training_days,
        sample_paths=settings.forecast_sample_paths,
        history_days=settings.training_max_history_days,
    )


def retrain_policy(settings: Settings) -> RetrainPolicy:
    return RetrainPolicy(
        min_training_days=settings.min_training_days,
        min_new_days=settings.retrain_min_new_days,
        min_new_units_ratio=settings.retrain_min_new_units_ratio,
        cooldown_days=settings.retrain_cooldown_days,
    )


def risk_thresholds(settings: Settings) -> RiskThresholds:
    return RiskThresholds(
        high=settings.risk_high_probability, medium=settings.risk_medium_probability
    )
