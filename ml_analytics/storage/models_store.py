"""Each product's stored forecast model: saved, loaded, and which products are due."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.storage.ingest_writes import REQUEST_ASSESSMENTS
from ml_analytics.storage.rows import from_fields, one_or_none


@dataclass(frozen=True)
class StoredModel:
    product_id: str
    model_name: str
    trained_at: datetime
    trained_through: date
    training_days: int
    units_seen: float
    forecast_start: date
    yhat: list[float]
    yhat_lower: list[float]
    yhat_upper: list[float]
    sample_paths: np.ndarray
    metrics: dict[str, Any]
    seasonality: dict[str, Any]
    fit_seconds: float
    global_version: int | None = None  # the global model the forecast used (None: none)
    weights: dict[str, float] | None = None  # a combination's members and weights


async def save_model(connection: AsyncConnection, model: StoredModel) -> None:
    paths = np.ascontiguousarray(model.sample_paths, dtype=np.float32)
    await connection.execute(
        text(
            """
INSERT INTO product_models (product_id, model_name, trained_at, trained_through, training_days,
    units_seen, forecast_start, yhat, yhat_lower, yhat_upper, sample_paths, path_count, metrics,
    seasonality, fit_seconds, global_version, weights)
VALUES (:product_id, :model_name, :trained_at, :trained_through, :training_days, :units_seen,
    :forecast_start, :yhat, :yhat_lower, :yhat_upper, :sample_paths, :path_count,
    CAST(:metrics AS jsonb), CAST(:seasonality AS jsonb), :fit_seconds, :global_version,
    CAST(:weights AS jsonb))
ON CONFLICT (product_id) DO UPDATE SET
    model_name = EXCLUDED.model_name, trained_at = EXCLUDED.trained_at,
    trained_through = EXCLUDED.trained_through, training_days = EXCLUDED.training_days,
    units_seen = EXCLUDED.units_seen, forecast_start = EXCLUDED.forecast_start,
    yhat = EXCLUDED.yhat, yhat_lower = EXCLUDED.yhat_lower, yhat_upper = EXCLUDED.yhat_upper,
    sample_paths = EXCLUDED.sample_paths, path_count = EXCLUDED.path_count,
    metrics = EXCLUDED.metrics, seasonality = EXCLUDED.seasonality,
    fit_seconds = EXCLUDED.fit_seconds, global_version = EXCLUDED.global_version,
    weights = EXCLUDED.weights
WHERE product_models.trained_through <= EXCLUDED.trained_through
"""
        ),
        {
            "product_id": model.product_id,
            "model_name": model.model_name,
            "trained_at": model.trained_at,
            "trained_through": model.trained_through,
            "training_days": model.training_days,
            "units_seen": model.units_seen,
            "forecast_start": model.forecast_start,
            "yhat": list(map(float, model.yhat)),
            "yhat_lower": list(map(float, model.yhat_lower)),
            "yhat_upper": list(map(float, model.yhat_upper)),
            "sample_paths": paths.tobytes(),
            "path_count": int(paths.shape[0]),
            "metrics": json.dumps(model.metrics),
            "seasonality": json.dumps(model.seasonality),
            "fit_seconds": model.fit_seconds,
            "global_version": model.global_version,
            "weights": None if model.weights is None else json.dumps(model.weights),
        },
    )
    # Committed with the model: its product's risk is to be assessed with it (one that
    # has a stock level; services/risk.py).
    await connection.execute(
        text(
            REQUEST_ASSESSMENTS.format(
                products="SELECT product_id FROM products "
                "WHERE product_id = :product_id AND stock_as_of IS NOT NULL"
            )
        ),
        {"product_id": model.product_id},
    )


@dataclass(frozen=True)
class ModelSeen:
    """What a product's model saw, without its forecast."""

    trained_through: date
    units_seen: float
    training_days: int
    global_version: int | None


async def model_state(connection: AsyncConnection, product_id: str) -> ModelSeen | None:
    row = (
        await connection.execute(
            text(
                "SELECT trained_through, units_seen, training_days, global_version "
                "FROM product_models WHERE product_id = :p"
            ),
            {"p": product_id},
        )
    ).one_or_none()
    if row is None:
        return None
    return ModelSeen(
        row.trained_through, float(row.units_seen), int(row.training_days), row.global_version
    )


async def products_on_older_global_model(connection: AsyncConnection, version: int) -> list[str]:
    """Products whose forecast did not use global model `version` (due for a refresh)."""
    rows = await connection.execute(
        text(
            "SELECT product_id FROM product_models WHERE global_version IS DISTINCT FROM :v "
            "ORDER BY product_id"
        ),
        {"v": version},
    )
    return [row.product_id for row in rows]


async def products_to_consider(
    connection: AsyncConnection,
    through: date | None,
    min_training_days: int,
    min_new_days: int,
    *,
    changed_since_model: bool = False,
) -> list[str]:
    """Products that may be due for a fit as the clock stands at `through` (its last
    complete day): no model and enough history, or a model `min_new_days` behind the
    clock; with `changed_since_model`, also those whose data changed after their
    model was trained (events that arrived while the service was down; the retrain
    policy decides on them)."""
    if through is None:
        return []
    changed = "OR p.data_updated_at > m.trained_at" if changed_since_model else ""
    rows = await connection.execute(
        text(
            "SELECT p.product_id FROM products p "
            "LEFT JOIN product_models m ON m.product_id = p.product_id "
            "WHERE p.first_day IS NOT NULL AND ("
            "  (m.product_id IS NULL AND p.first_day <= CAST(:first_by AS date))"
            f"  OR m.trained_through <= CAST(:due_by AS date) {changed}) "
            "ORDER BY p.product_id"
        ),
        {
            "first_by": through - timedelta(days=min_training_days - 1),
            "due_by": through - timedelta(days=min_new_days),
        },
    )
    return [row.product_id for row in rows]


async def load_model(connection: AsyncConnection, product_id: str) -> StoredModel | None:
    return await one_or_none(
        connection,
        "SELECT * FROM product_models WHERE product_id = :product_id",
        {"product_id": product_id},
        _stored_model,
    )


def _stored_model(row: Any) -> StoredModel:
    paths = np.frombuffer(row.sample_paths, dtype=np.float32).reshape(row.path_count, len(row.yhat))
    return from_fields(
        StoredModel,
        row,
        numeric=["units_seen"],
        yhat=list(row.yhat),
        yhat_lower=list(row.yhat_lower),
        yhat_upper=list(row.yhat_upper),
        sample_paths=paths.astype(float),
    )
