"""Global models, their backtests, and the demand panel they are trained on."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.models.backtest import BacktestCase
from ml_analytics.models.forecasters.base import skill_against
from ml_analytics.models.forecasters.panel import Panel
from ml_analytics.storage.censoring import CensoredPanel, censored_panel

KEEP_GLOBAL_MODELS = 3


@dataclass(frozen=True)
class StoredGlobalModel:
    version: int
    trained_at: datetime
    trained_through: date
    model_text: str | None
    training_rows: int
    products: int
    combination: dict[str, float]
    selection: dict[str, Any]
    calibration: list[float] | dict[str, Any] | None  # models/calibration.py
    seconds: dict[str, float]
    note: str


async def save_global_model(connection: AsyncConnection, model: StoredGlobalModel) -> int:
    """Store a new version (its `version` field is ignored) and keep the latest few."""
    version = int(
        (
            await connection.execute(
                text(
                    "INSERT INTO global_models (trained_at, trained_through, model_text, "
                    "training_rows, products, combination, selection, calibration, seconds, note) "
                    "VALUES (:trained_at, :trained_through, :model_text, :training_rows, "
                    ":products, CAST(:combination AS jsonb), CAST(:selection AS jsonb), "
                    "CAST(:calibration AS jsonb), CAST(:seconds AS jsonb), :note) "
                    "RETURNING version"
                ),
                {
                    "trained_at": model.trained_at,
                    "trained_through": model.trained_through,
                    "model_text": model.model_text,
                    "training_rows": model.training_rows,
                    "products": model.products,
                    "combination": json.dumps(model.combination),
                    "selection": json.dumps(model.selection),
                    "calibration": None
                    if model.calibration is None
                    else json.dumps(model.calibration),
                    "seconds": json.dumps(model.seconds),
                    "note": model.note,
                },
            )
        ).scalar_one()
    )
    await connection.execute(
        text(
            "DELETE FROM global_models WHERE version NOT IN "
            "(SELECT version FROM global_models ORDER BY version DESC LIMIT :keep)"
        ),
        {"keep": KEEP_GLOBAL_MODELS},
    )
    return version


_META = (
    "version, trained_at, trained_through, training_rows, products, combination, selection, "
    "calibration, seconds, note"
)


async def latest_global_model(
    connection: AsyncConnection, *, with_model: bool = True
) -> StoredGlobalModel | None:
    """The newest global model (without LightGBM's text unless `with_model`)."""
    columns = _META + (", model_text" if with_model else ", NULL AS model_text")
    row = (
        await connection.execute(
            text(f"SELECT {columns} FROM global_models ORDER BY version DESC LIMIT 1")
        )
    ).one_or_none()
    if row is None:
        return None
    return StoredGlobalModel(
        version=int(row.version),
        trained_at=row.trained_at,
        trained_through=row.trained_through,
        model_text=row.model_text,
        training_rows=int(row.training_rows),
        products=int(row.products),
        combination=dict(row.combination),
        selection=dict(row.selection),
        calibration=row.calibration,
        seconds=dict(row.seconds),
        note=row.note,
    )


async def record_backtests(
    connection: AsyncConnection, origin: date, cases: list[BacktestCase]
) -> None:
    if not cases:
        return
    await connection.execute(
        text(
            "INSERT INTO product_backtests (product_id, origin, member_totals, forecast_total, "
            "actual_total, actual_14, pit_14, rmse, mape, features, posted_pit_14, "
            "posted_features, paths_version) VALUES (:product_id, :origin, "
            "CAST(:member_totals AS jsonb), "
            ":forecast_total, :actual_total, :actual_14, :pit_14, :rmse, :mape, "
            "CAST(:features AS jsonb), :posted_pit_14, CAST(:posted_features AS jsonb), "
            ":paths_version) "
            "ON CONFLICT (product_id, origin) DO UPDATE SET "
            "member_totals = EXCLUDED.member_totals, forecast_total = EXCLUDED.forecast_total, "
            "actual_total = EXCLUDED.actual_total, actual_14 = EXCLUDED.actual_14, "
            "pit_14 = EXCLUDED.pit_14, rmse = EXCLUDED.rmse, mape = EXCLUDED.mape, "
            "features = EXCLUDED.features, posted_pit_14 = EXCLUDED.posted_pit_14, "
            "posted_features = EXCLUDED.posted_features, paths_version = EXCLUDED.paths_version"
        ),
        [
            {
                "product_id": case.product_id,
                "origin": origin,
                "member_totals": json.dumps(case.member_totals),
                "forecast_total": case.forecast_total,
                "actual_total": case.actual_total,
                "actual_14": case.actual_14,
                "pit_14": case.pit_14,
                "rmse": case.rmse,
                "mape": case.mape,
                "features": _stored_features(case.features),
                "posted_pit_14": case.posted_pit_14,
                "posted_features": _stored_features(case.posted_features),
                "paths_version": case.paths_version,
            }
            for case in cases
        ],
    )


def _stored_features(features: tuple[float, ...] | None) -> str | None:
    """Features as JSON, NaN (a ratio to an empty window) as null."""
    if features is None:
        return None
    return json.dumps([None if math.isnan(x) else x for x in features])


def _read_features(stored: list[float | None] | None) -> tuple[float, ...] | None:
    return None if stored is None else tuple(math.nan if x is None else float(x) for x in stored)


async def backtest_origins(connection: AsyncConnection, origins: int) -> int:
    """How many of the latest `origins` backtest origins are stored."""
    return int(
        (
            await connection.execute(
                text(
                    "SELECT count(*) FROM (SELECT DISTINCT origin FROM product_backtests "
                    "ORDER BY origin DESC LIMIT :origins) AS latest"
                ),
                {"origins": origins},
            )
        ).scalar_one()
    )


async def recent_backtests(
    connection: AsyncConnection, origins: int, before: date | None = None
) -> list[BacktestCase]:
    """Every product's backtests at the latest `origins` backtest origins (before `before`)."""
    result = await connection.execute(
        text(
            "SELECT product_id, member_totals, forecast_total, actual_total, actual_14, pit_14, "
            "rmse, mape, features, posted_pit_14, posted_features, paths_version, origin "
            "FROM product_backtests "
            "WHERE origin IN (SELECT DISTINCT "
            "origin FROM product_backtests WHERE CAST(:before AS date) IS NULL OR origin < :before "
            "ORDER BY origin DESC LIMIT :origins)"
        ),
        {"origins": origins, "before": before},
    )
    return [
        BacktestCase(
            product_id=row.product_id,
            member_totals=dict(row.member_totals),
            forecast_total=row.forecast_total,
            actual_total=row.actual_total,
            actual_14=row.actual_14,
            pit_14=row.pit_14,
            rmse=row.rmse,
            mape=row.mape,
            features=_read_features(row.features),
            origin=row.origin,
            posted_pit_14=row.posted_pit_14,
            posted_features=_read_features(row.posted_features),
            paths_version=row.paths_version,
        )
        for row in result
    ]


async def prune_backtests(connection: AsyncConnection, keep_origins: int) -> None:
    """Forget backtests older than the latest `keep_origins` origins (the table stays bounded)."""
    await connection.execute(
        text(
            "DELETE FROM product_backtests WHERE origin < (SELECT min(origin) FROM "
            "(SELECT DISTINCT origin FROM product_backtests ORDER BY origin DESC "
            "LIMIT :keep) AS kept)"
        ),
        {"keep": keep_origins},
    )


@dataclass(frozen=True)
class ProductSkill:
    """A product's accuracy over its latest backtests."""

    backtests: int
    skill_vs_moving_average: float | None
    wape: float | None
    rmse: float | None
    mape: float | None


async def product_skill(
    connection: AsyncConnection, product_id: str, backtests: int = 4
) -> ProductSkill | None:
    result = await connection.execute(
        text(
            "SELECT forecast_total, actual_total, member_totals->>'ma28' AS ma28, rmse, mape "
            "FROM product_backtests WHERE product_id = :p ORDER BY origin DESC LIMIT :n"
        ),
        {"p": product_id, "n": backtests},
    )
    rows = list(result)
    if not rows:
        return None
    with_ma = [row for row in rows if row.ma28 is not None]
    actual = sum(row.actual_total for row in rows)
    return ProductSkill(
        backtests=len(rows),
        skill_vs_moving_average=skill_against(
            [row.forecast_total for row in with_ma],
            [float(row.ma28) for row in with_ma],
            [row.actual_total for row in with_ma],
        )
        if with_ma
        else None,
        wape=round(sum(abs(r.forecast_total - r.actual_total) for r in rows) / actual, 4)
        if actual > 0
        else None,
        rmse=round(float(np.mean([row.rmse for row in rows])), 4),
        mape=rows[0].mape if rows[0].mape is None else round(rows[0].mape, 4),
    )


@dataclass(frozen=True)
class PanelData:
    """Stored daily demand of every product over [first_day, last_day], compact enough
    to hand to a worker process: per product its first day and its days with sales."""

    first_day: date
    last_day: date
    items: list[str]
    product_first_days: list[date]
    sale_days: list[np.ndarray]  # per product: day offsets from first_day
    sale_units: list[np.ndarray]
    shop: np.ndarray  # the whole shop's daily demand, every product counted
    # Days the shelf was empty, with their estimated demand (storage/censoring.py).
    censored: CensoredPanel | None = None

    def panel(self) -> Panel:
        """The panel of demand: sales, and the estimates on censored days (`observed`
        False there: the backtest scores only where demand was observed)."""
        days = (self.last_day - self.first_day).days + 1
        Y = np.full((len(self.items), days), np.nan)
        observed = None
        if self.censored is not None and self.censored.days:
            observed = np.ones((len(self.items), days), dtype=bool)
        for row, product_first in enumerate(self.product_first_days):
            Y[row, max(0, (product_first - self.first_day).days) :] = 0.0
            Y[row, self.sale_days[row]] = self.sale_units[row]
            if observed is not None and self.censored is not None:
                item = self.items[row]
                if item in self.censored.days:
                    censored_days = self.censored.days[item]
                    Y[row, censored_days] = self.censored.demand[item]
                    observed[row, censored_days] = False
        return Panel(list(self.items), self.first_day, Y, self.shop, observed)


async def panel_data(
    connection: AsyncConnection,
    first_day: date,
    last_day: date,
    min_first_day_age: int = 0,
    censoring: bool = True,
) -> PanelData:
    """Every product whose first sale is `min_first_day_age` days or more before
    `last_day`, with its sales over [first_day, last_day] (one row per product, arrays:
    the driver decodes them fast), the shop's daily totals over the same days, and
    (`censoring`) the days its shelf was empty with their estimated demand."""
    result = await connection.execute(
        text(
            "SELECT p.product_id, p.first_day, "
            "COALESCE(array_agg(d.business_day - CAST(:first AS date) ORDER BY d.business_day) "
            "  FILTER (WHERE d.business_day IS NOT NULL), '{}') AS days, "
            "COALESCE(array_agg(CAST(d.quantity_units AS float8) ORDER BY d.business_day) "
            "  FILTER (WHERE d.business_day IS NOT NULL), '{}') AS units "
            "FROM products p LEFT JOIN daily_demand d ON d.product_id = p.product_id "
            "  AND d.business_day BETWEEN :first AND :last "
            "WHERE p.first_day IS NOT NULL "
            "  AND p.first_day <= CAST(:last AS date) - CAST(:age AS integer) "
            "GROUP BY p.product_id, p.first_day ORDER BY p.product_id"
        ),
        {"first": first_day, "last": last_day, "age": min_first_day_age},
    )
    items, firsts, days, units = [], [], [], []
    for row in result:
        items.append(row.product_id)
        firsts.append(row.first_day)
        days.append(np.asarray(row.days, dtype=np.int64))
        units.append(np.asarray(row.units, dtype=float))
    shop = await shop_demand(connection, first_day, last_day)
    censored = await censored_panel(connection, first_day, last_day) if censoring else None
    return PanelData(first_day, last_day, items, firsts, days, units, shop, censored)


def shop_window_start(first_day: date, last_day: date, history_days: int) -> date:
    """Where the shop's days given to a forecast start: the forecast's whole training
    window (`history_days` to `last_day`), or the product's first day when earlier. The
    trainer and the HTTP API both take it, so a history's shop-wide features (some
    reach a year and a quarter back) are those the global model was trained with, not
    cut off at the first day of a short history."""
    return min(first_day, last_day - timedelta(days=history_days - 1))


async def shop_demand(connection: AsyncConnection, first_day: date, last_day: date) -> np.ndarray:
    """The whole shop's demand per day over [first_day, last_day] (zeros where none)."""
    result = await connection.execute(
        text(
            "SELECT business_day - CAST(:first AS date) AS offset, "
            "CAST(sum(quantity_units) AS float8) AS units FROM daily_demand "
            "WHERE business_day BETWEEN :first AND :last GROUP BY business_day"
        ),
        {"first": first_day, "last": last_day},
    )
    shop = np.zeros((last_day - first_day).days + 1)
    for row in result:
        shop[row.offset] = row.units
    return shop
