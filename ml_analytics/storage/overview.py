"""The listing of tracked products with stock, risk and model, for GET /products."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.storage.recommendations import ORDER_FIRST

# Most urgent first: level, then probability, then the nearest stockout.
_OVERVIEW_ORDER = {
    "risk": (
        "CASE r.risk_level WHEN 'high' THEN 0 WHEN 'medium' THEN 1 WHEN 'low' THEN 2 ELSE 3 END, "
        "r.stockout_probability DESC NULLS LAST, days_until_stockout ASC NULLS LAST, p.product_id"
    ),
    "days_until_stockout": "days_until_stockout ASC NULLS LAST, p.product_id",
    "product_id": "p.product_id",
    "last_day": "p.last_day DESC NULLS LAST, p.product_id",
    "order_by_date": ORDER_FIRST,
}

# The page of products: {where} and {order} are filled in by product_overview.
_OVERVIEW_QUERY = """
SELECT p.product_id, p.first_day, p.last_day, CAST(p.total_units AS float8) AS total_units,
       p.transaction_count AS transactions,
       CAST(p.stock_units AS float8) AS current_stock_units, p.stock_as_of, p.lead_time_days,
       r.risk_level, r.stockout_probability, r.assessed_at,
       r.assessment ->> 'predicted_stockout_date' AS predicted_stockout_date,
       CAST(r.assessment ->> 'days_until_stockout' AS integer) AS days_until_stockout,
       CAST(r.assessment ->> 'confidence' AS double precision) AS confidence,
       p.on_order_units,
       CAST(r.assessment ->> 'target_service_level' AS float8) AS target_service_level,
       CAST(r.assessment ->> 'order_up_to_units' AS float8) AS order_up_to_units,
       CAST(r.assessment ->> 'recommended_order_units' AS float8) AS recommended_order_units,
       CAST(r.assessment ->> 'order_by_date' AS date) AS order_by_date,
       CAST(r.assessment ->> 'lost_sales_units_28d' AS float8) AS lost_sales_units_28d,
       m.model_name, m.trained_at, m.training_days,
       CAST(m.metrics ->> 'mape' AS float8) AS mape,
       CAST(m.metrics ->> 'rmse' AS float8) AS rmse,
       CAST(m.metrics ->> 'wape' AS float8) AS wape,
       CAST(m.metrics ->> 'mase' AS float8) AS mase,
       CAST(m.metrics ->> 'skill_vs_moving_average' AS float8) AS skill_vs_moving_average,
       COALESCE(CAST(m.metrics ->> 'skill_backtests' AS integer), 0) AS skill_backtests,
       COUNT(*) OVER () AS total
FROM products AS p
LEFT JOIN product_risk AS r ON r.product_id = p.product_id
LEFT JOIN product_models AS m ON m.product_id = p.product_id
WHERE {where}
ORDER BY {order}
LIMIT :limit OFFSET :offset
"""


async def product_overview(
    connection: AsyncConnection,
    *,
    sort: str = "risk",
    risk_levels: list[str] | None = None,
    search: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """One page of tracked products (each with the fields of the API's ProductItem, which
    validates them: one shape) and the number matching. `risk_levels` may hold "none"
    for products without an assessment; `search` matches within product ids."""
    where, filter_params = _overview_filter(risk_levels, search)
    params: dict[str, Any] = {"limit": limit, "offset": offset, **filter_params}
    rows = await connection.execute(
        text(_OVERVIEW_QUERY.format(where=where, order=_OVERVIEW_ORDER[sort])), params
    )
    items = []
    total = 0
    for row in rows:
        fields = dict(row._mapping)
        total = int(fields.pop("total"))
        items.append(fields)
    if not items and offset > 0:
        total = int(
            (
                await connection.execute(
                    text(
                        "SELECT COUNT(*) FROM products AS p LEFT JOIN product_risk AS r "
                        f"ON r.product_id = p.product_id WHERE {where}"
                    ),
                    params,
                )
            ).scalar_one()
        )
    return total, items


def _overview_filter(
    risk_levels: list[str] | None, search: str | None
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause of the listing's filters, and the values it binds."""
    conditions = ["TRUE"]
    params: dict[str, Any] = {}
    if risk_levels:
        params["levels"] = [level for level in risk_levels if level != "none"]
        unassessed = " OR r.risk_level IS NULL" if "none" in risk_levels else ""
        conditions.append(f"(r.risk_level = ANY(:levels){unassessed})")
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["pattern"] = f"%{escaped}%"
        conditions.append("p.product_id ILIKE :pattern")
    return " AND ".join(conditions), params
