"""The settings turned into the pure models' configuration (each setting read here once),
and the clock as they define it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.models.clock import complete_through
from ml_analytics.models.forecasters.base import ForecastConfig
from ml_analytics.models.retrain import RetrainPolicy
from ml_analytics.models.risk import RiskThresholds
from ml_analytics.settings import Settings
from ml_analytics.storage.clock import read_clock


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


async def clock_through(connection: AsyncConnection, settings: Settings) -> date | None:
    """The stream clock's last complete day, as the settings define the clock."""
    return complete_through(
        await read_clock(connection),
        datetime.now(UTC),
        timedelta(seconds=settings.clock_allowed_lateness_seconds),
        settings.timezone,
    )
