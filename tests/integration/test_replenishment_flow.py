"""Replenishment recommendations through the real broker and PostgreSQL: the fields
of StockoutRisk, the event when the recommended order crosses zero, the API and the
CSV export."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.settings import Settings
from tests.helpers import keyed, publish
from tests.integration.test_forecasting import LAST_DAY, risk_events, two_steady_products_trained

pytestmark = pytest.mark.integration


def level(product: str, tag: str, units: float, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"{product}-{tag}",
        "product_id": product,
        "as_of": f"{LAST_DAY}T{18 + len(tag) % 4}:00:00Z",
        "stock_units": units,
        "lead_time_days": 7,
        **fields,
    }


async def test_stock_levels_with_orders_get_recommendations_on_the_topic_and_the_api(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with two_steady_products_trained(settings, engine, seed=5) as (app, short, plenty):
        await publish(
            settings,
            settings.stock_levels_topic,
            keyed(
                [
                    level(short, "a", 100, order_multiple_units=24),
                    level(plenty, "a", 100_000, target_service_level=0.9),
                ]
            ),
        )
        first = {event["product_id"]: event for event in await risk_events(settings, 2)}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            # What to order first: the product that needs an order, whatever the id order.
            listing = (await http.get("/products?sort=order_by_date")).json()
            top = listing["items"][0]
            assert top["product_id"] == short and len(listing["items"]) == 2
            assert top["recommended_order_units"] > 0 and top["order_by_date"] == str(LAST_DAY)
        # Units ordered arrive: same risk level on hand, but no order is needed any more.
        await publish(
            settings,
            settings.stock_levels_topic,
            keyed([level(short, "bb", 100, on_order_units=600, order_multiple_units=24)]),
        )
        events = await risk_events(settings, 3)

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            answers = {
                sl: (await http.get(f"/products/{short}/replenishment?service_level={sl}")).json()
                for sl in (0.9, 0.98)
            }
            longer = (await http.get(f"/products/{short}/replenishment?review_days=14")).json()
            unknown = await http.get("/products/nobody/replenishment")
            too_high = await http.get(f"/products/{short}/replenishment?service_level=1.5")
            exported = await http.get("/replenishment.csv")
            needed_only = await http.get("/replenishment.csv?needed_only=true")

    needing = first[short]
    assert needing["risk_level"] == "high" and needing["target_service_level"] == 0.95
    # ~20 a day: the 95% quantile of 7 days' demand, and of 14 days' (lead time + review),
    # above what a level known for sure gives (~160, ~310), within what a level that
    # can move by the paths' level factor gives (~230, ~450).
    assert 150 <= needing["reorder_point_units"] <= 260
    assert 300 <= needing["order_up_to_units"] <= 500
    order = needing["recommended_order_units"]
    assert order % 24 == 0 and 0 <= order - (needing["order_up_to_units"] - 100) < 24
    assert needing["order_by_date"] == str(LAST_DAY)  # below the reorder point: order today
    assert first[plenty]["target_service_level"] == 0.9  # the product's own target
    assert first[plenty]["recommended_order_units"] == 0
    assert first[plenty]["order_by_date"] is None or first[plenty]["order_by_date"] > str(
        LAST_DAY + timedelta(days=30)
    )

    crossed = events[-1]
    assert crossed["product_id"] == short
    assert crossed["risk_level"] == "high"  # the same level: published for the order alone
    assert crossed["recommended_order_units"] == 0

    assert answers[0.9]["order_up_to_units"] < answers[0.98]["order_up_to_units"]
    assert answers[0.98]["target_service_level"] == 0.98
    assert answers[0.9]["stock_position_units"] == 700 and answers[0.9]["on_order_units"] == 600
    assert longer["order_up_to_units"] > answers[0.9]["order_up_to_units"]
    assert longer["review_days"] == 14 and longer["lead_time_days"] == 7
    assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]
    assert too_high.status_code == 422 and "service_level" in json.dumps(too_high.json())

    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {row["product_id"] for row in rows} == {short, plenty}
    by_id = {row["product_id"]: row for row in rows}
    assert math.isclose(float(by_id[short]["order_up_to_units"]), crossed["order_up_to_units"])
    assert float(by_id[short]["current_stock_units"]) == 100
    assert float(by_id[short]["on_order_units"]) == 600
    assert list(csv.DictReader(io.StringIO(needed_only.text))) == []  # both covered now
    assert date.fromisoformat(by_id[short]["as_of"][:10]) == LAST_DAY
