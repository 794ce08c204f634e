"""The current replenishment recommendations of every assessed product, for the CSV export."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

RECOMMENDATION_COLUMNS = (
    "product_id",
    "as_of",
    "current_stock_units",
    "on_order_units",
    "risk_window_days",
    "target_service_level",
    "reorder_point_units",
    "order_up_to_units",
    "recommended_order_units",
    "order_by_date",
    "risk_level",
    "stockout_probability",
    "predicted_stockout_date",
)


# What to order first: products that need an order, the earliest order-by day first,
# then the larger order (over product_risk AS r and products AS p; the listing's
# sort=order_by_date and the CSV export share it).
_NEEDED = "CAST(r.assessment ->> 'recommended_order_units' AS float8) > 0"
ORDER_FIRST = (
    f"CASE WHEN {_NEEDED} THEN 0 ELSE 1 END, "
    "CAST(r.assessment ->> 'order_by_date' AS date) ASC NULLS LAST, "
    "CAST(r.assessment ->> 'recommended_order_units' AS float8) DESC NULLS LAST, p.product_id"
)


async def stream_recommendations(
    connection: AsyncConnection, *, needed_only: bool
) -> AsyncIterator[dict[str, Any]]:
    """Each assessed product's latest recommendation, what to order first first
    (those needing an order, by order-by day); read with a server-side cursor, so the
    export of any number of products holds one batch in memory at a time."""
    condition = f"AND {_NEEDED}" if needed_only else ""
    # Units on order are the stock level's (the product's current one); the rest is
    # the latest assessment's.
    fields = ", ".join(
        "p.on_order_units"
        if column == "on_order_units"
        else f"r.assessment ->> '{column}' AS {column}"
        for column in RECOMMENDATION_COLUMNS[1:]
    )
    result = await connection.stream(
        text(
            f"""
SELECT r.product_id, {fields}
FROM product_risk AS r JOIN products AS p ON p.product_id = r.product_id
WHERE TRUE {condition}
ORDER BY {ORDER_FIRST}
"""
        ).execution_options(yield_per=1000)
    )
    async for row in result:
        yield dict(row._mapping)
