"""Queries for models, risk assessments and the stockout-risk outbox."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


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
    row = (
        await connection.execute(
            text("SELECT * FROM product_models WHERE product_id = :product_id"),
            {"product_id": product_id},
        )
    ).one_or_none()
    if row is None:
        return None
    horizon = len(row.yhat)
    paths = np.frombuffer(row.sample_paths, dtype=np.float32).reshape(row.path_count, horizon)
    return StoredModel(
        product_id=row.product_id,
        model_name=row.model_name,
        trained_at=row.trained_at,
        trained_through=row.trained_through,
        training_days=row.training_days,
        units_seen=float(row.units_seen),
        forecast_start=row.forecast_start,
        yhat=list(row.yhat),
        yhat_lower=list(row.yhat_lower),
        yhat_upper=list(row.yhat_upper),
        sample_paths=paths.astype(float),
        metrics=row.metrics,
        seasonality=row.seasonality,
        fit_seconds=row.fit_seconds,
        global_version=row.global_version,
        weights=row.weights,
    )


async def demand_between(
    connection: AsyncConnection, product_id: str, after: date, before: date
) -> float:
    """Units on the days strictly after `after` and strictly before `before`."""
    value = (
        await connection.execute(
            text(
                "SELECT COALESCE(sum(quantity_units), 0) FROM daily_demand "
                "WHERE product_id = :p AND business_day > :after AND business_day < :before"
            ),
            {"p": product_id, "after": after, "before": before},
        )
    ).scalar_one()
    return float(value)


async def record_assessment(
    connection: AsyncConnection, product_id: str, assessment: dict[str, Any]
) -> bool:
    """Store the latest assessment; queue it in the outbox when its level differs from
    the last published one (or none was published yet). Returns whether it was queued.

    Call inside a transaction: the stored level and the outbox row commit together.
    Two assessments of one product (a stock level arriving as a fit finishes) take
    turns, so both cannot see "nothing published yet" and queue the same change twice.
    """
    await connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:p, 7411562021))"), {"p": product_id}
    )
    current = (
        await connection.execute(
            text("SELECT published_level FROM product_risk WHERE product_id = :p FOR UPDATE"),
            {"p": product_id},
        )
    ).one_or_none()
    level = assessment["risk_level"]
    publish = current is None or current.published_level != level
    await connection.execute(
        text(
            """
INSERT INTO product_risk (product_id, assessment, risk_level, stockout_probability, assessed_at,
                          published_level, published_event_id)
VALUES (:p, CAST(:assessment AS jsonb), :level, :probability, now(),
        CASE WHEN :publish THEN :level END, CASE WHEN :publish THEN :event_id END)
ON CONFLICT (product_id) DO UPDATE SET
    assessment = EXCLUDED.assessment, risk_level = EXCLUDED.risk_level,
    stockout_probability = EXCLUDED.stockout_probability, assessed_at = EXCLUDED.assessed_at,
    published_level = CASE WHEN :publish THEN EXCLUDED.published_level
                           ELSE product_risk.published_level END,
    published_event_id = CASE WHEN :publish THEN EXCLUDED.published_event_id
                              ELSE product_risk.published_event_id END
"""
        ),
        {
            "p": product_id,
            "assessment": json.dumps(assessment),
            "level": level,
            "probability": assessment["stockout_probability"],
            "publish": publish,
            "event_id": assessment["event_id"],
        },
    )
    if publish:
        await connection.execute(
            text(
                "INSERT INTO risk_outbox (event_id, product_id, payload) "
                "VALUES (:event_id, :p, CAST(:payload AS jsonb))"
            ),
            {
                "event_id": assessment["event_id"],
                "p": product_id,
                "payload": json.dumps(assessment),
            },
        )
    return publish


async def latest_assessment(connection: AsyncConnection, product_id: str) -> dict[str, Any] | None:
    row = (
        await connection.execute(
            text("SELECT assessment FROM product_risk WHERE product_id = :p"), {"p": product_id}
        )
    ).one_or_none()
    return None if row is None else dict(row.assessment)


@dataclass(frozen=True)
class OutboxEntry:
    event_id: str
    product_id: str
    payload: dict[str, Any]


async def unpublished_outbox(connection: AsyncConnection, limit: int = 500) -> list[OutboxEntry]:
    """The oldest unpublished risk events, locked for this transaction."""
    rows = await connection.execute(
        text(
            "SELECT event_id, product_id, payload FROM risk_outbox WHERE published_at IS NULL "
            "ORDER BY created_at, event_id LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {"limit": limit},
    )
    return [OutboxEntry(row.event_id, row.product_id, dict(row.payload)) for row in rows]


async def prune_published_outbox(connection: AsyncConnection, retention_days: int) -> int:
    """Delete outbox rows published more than `retention_days` ago; returns how many.
    Unpublished rows are never touched."""
    result = await connection.execute(
        text(
            "DELETE FROM risk_outbox WHERE published_at IS NOT NULL "
            "AND published_at < now() - make_interval(days => :days)"
        ),
        {"days": retention_days},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def mark_published(connection: AsyncConnection, event_ids: list[str]) -> None:
    await connection.execute(
        text("UPDATE risk_outbox SET published_at = now() WHERE event_id = ANY(:ids)"),
        {"ids": event_ids},
    )


@dataclass(frozen=True)
class ProductOverview:
    """A tracked product as an operator scans it: demand span, stock, latest risk, model."""

    product_id: str
    first_day: date | None
    last_day: date | None
    total_units: float
    transaction_count: int
    current_stock_units: float | None
    stock_as_of: datetime | None
    lead_time_days: int | None
    risk_level: str | None
    stockout_probability: float | None
    predicted_stockout_date: str | None
    days_until_stockout: int | None
    confidence: float | None
    assessed_at: datetime | None
    model_name: str | None
    trained_at: datetime | None
    training_days: int | None
    metrics: dict[str, Any] | None


# Most urgent first: level, then probability, then the nearest stockout.
_OVERVIEW_ORDER = {
    "risk": (
        "CASE r.risk_level WHEN 'high' THEN 0 WHEN 'medium' THEN 1 WHEN 'low' THEN 2 ELSE 3 END, "
        "r.stockout_probability DESC NULLS LAST, days_until_stockout ASC NULLS LAST, p.product_id"
    ),
    "days_until_stockout": "days_until_stockout ASC NULLS LAST, p.product_id",
    "product_id": "p.product_id",
    "last_day": "p.last_day DESC NULLS LAST, p.product_id",
}


async def product_overview(
    connection: AsyncConnection,
    *,
    sort: str = "risk",
    risk_levels: list[str] | None = None,
    search: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[ProductOverview]]:
    """One page of tracked products and the number matching. `risk_levels` may hold
    "none" for products without an assessment; `search` matches within product ids."""
    conditions = ["TRUE"]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if risk_levels:
        params["levels"] = [level for level in risk_levels if level != "none"]
        unassessed = " OR r.risk_level IS NULL" if "none" in risk_levels else ""
        conditions.append(f"(r.risk_level = ANY(:levels){unassessed})")
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["pattern"] = f"%{escaped}%"
        conditions.append("p.product_id ILIKE :pattern")
    rows = await connection.execute(
        text(
            f"""
SELECT p.product_id, p.first_day, p.last_day, p.total_units, p.transaction_count,
       p.stock_units, p.stock_as_of, p.lead_time_days,
       r.risk_level, r.stockout_probability, r.assessed_at,
       r.assessment ->> 'predicted_stockout_date' AS predicted_stockout_date,
       CAST(r.assessment ->> 'days_until_stockout' AS integer) AS days_until_stockout,
       CAST(r.assessment ->> 'confidence' AS double precision) AS confidence,
       m.model_name, m.trained_at, m.training_days, m.metrics,
       COUNT(*) OVER () AS total
FROM products AS p
LEFT JOIN product_risk AS r ON r.product_id = p.product_id
LEFT JOIN product_models AS m ON m.product_id = p.product_id
WHERE {" AND ".join(conditions)}
ORDER BY {_OVERVIEW_ORDER[sort]}
LIMIT :limit OFFSET :offset
"""
        ),
        params,
    )
    items = []
    total = 0
    for row in rows:
        total = int(row.total)
        items.append(
            ProductOverview(
                product_id=row.product_id,
                first_day=row.first_day,
                last_day=row.last_day,
                total_units=float(row.total_units),
                transaction_count=int(row.transaction_count),
                current_stock_units=None if row.stock_units is None else float(row.stock_units),
                stock_as_of=row.stock_as_of,
                lead_time_days=row.lead_time_days,
                risk_level=row.risk_level,
                stockout_probability=row.stockout_probability,
                predicted_stockout_date=row.predicted_stockout_date,
                days_until_stockout=row.days_until_stockout,
                confidence=row.confidence,
                assessed_at=row.assessed_at,
                model_name=row.model_name,
                trained_at=row.trained_at,
                training_days=row.training_days,
                metrics=None if row.metrics is None else dict(row.metrics),
            )
        )
    if not items and offset > 0:
        total = int(
            (
                await connection.execute(
                    text(
                        "SELECT COUNT(*) FROM products AS p LEFT JOIN product_risk AS r "
                        f"ON r.product_id = p.product_id WHERE {' AND '.join(conditions)}"
                    ),
                    params,
                )
            ).scalar_one()
        )
    return total, items
