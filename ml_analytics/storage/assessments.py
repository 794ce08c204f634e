"""Risk assessments: the latest per product, and the event queued when its level changes."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.storage.ingest_writes import REQUEST_ASSESSMENTS
from ml_analytics.storage.rows import one_or_none

# The latest assessment, and the published level, event and order need when `publish`.
_STORE_ASSESSMENT = """
INSERT INTO product_risk (product_id, assessment, risk_level, stockout_probability, assessed_at,
                          published_level, published_event_id, published_order_needed)
VALUES (:p, CAST(:assessment AS jsonb), :level, :probability, now(),
        CASE WHEN :publish THEN :level END, CASE WHEN :publish THEN :event_id END,
        CASE WHEN :publish THEN CAST(:order_needed AS boolean) END)
ON CONFLICT (product_id) DO UPDATE SET
    assessment = EXCLUDED.assessment, risk_level = EXCLUDED.risk_level,
    stockout_probability = EXCLUDED.stockout_probability, assessed_at = EXCLUDED.assessed_at,
    published_level = CASE WHEN :publish THEN EXCLUDED.published_level
                           ELSE product_risk.published_level END,
    published_event_id = CASE WHEN :publish THEN EXCLUDED.published_event_id
                              ELSE product_risk.published_event_id END,
    published_order_needed = CASE WHEN :publish THEN EXCLUDED.published_order_needed
                                  ELSE product_risk.published_order_needed END
"""


async def record_assessment(
    connection: AsyncConnection, product_id: str, assessment: dict[str, Any]
) -> bool:
    """Store the latest assessment; queue it in the outbox when its level differs from
    the last published one (or none was published yet), or when whether it asks for
    an order (`recommended_order_units` > 0) does. Returns whether it was queued.

    Call inside a transaction: the stored level and the outbox row commit together.
    Two assessments of one product (a stock level arriving as a fit finishes) take
    turns, so both cannot see "nothing published yet" and queue the same change twice.
    """
    current = await _last_published(connection, product_id)
    level = assessment["risk_level"]
    recommended = assessment.get("recommended_order_units")
    order_needed = None if recommended is None else recommended > 0
    publish = (
        current is None
        or current.published_level != level
        or (order_needed is not None and current.published_order_needed != order_needed)
    )
    await connection.execute(
        text(_STORE_ASSESSMENT),
        {
            "p": product_id,
            "assessment": json.dumps(assessment),
            "level": level,
            "probability": assessment["stockout_probability"],
            "publish": publish,
            "event_id": assessment["event_id"],
            "order_needed": order_needed,
        },
    )
    if publish:
        await _queue_risk_event(connection, product_id, assessment)
    return publish


async def _last_published(connection: AsyncConnection, product_id: str) -> Row[Any] | None:
    """The level and order need last published for the product (None: nothing yet),
    with the product's assessments taking turns until the caller's transaction ends."""
    await connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:p, 7411562021))"), {"p": product_id}
    )
    return (
        await connection.execute(
            text(
                "SELECT published_level, published_order_needed FROM product_risk "
                "WHERE product_id = :p FOR UPDATE"
            ),
            {"p": product_id},
        )
    ).one_or_none()


async def _queue_risk_event(
    connection: AsyncConnection, product_id: str, assessment: dict[str, Any]
) -> None:
    """Put the assessment in the outbox, for the relay to publish on the risk topic."""
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


async def latest_assessment(connection: AsyncConnection, product_id: str) -> dict[str, Any] | None:
    return await one_or_none(
        connection,
        "SELECT assessment FROM product_risk WHERE product_id = :p",
        {"p": product_id},
        lambda row: dict(row.assessment),
    )


async def request_assessments(connection: AsyncConnection, product_ids: list[str]) -> None:
    """Mark products for assessment, in the caller's transaction (the one that changed
    their stock level or model): see services/risk.py."""
    if product_ids:
        await connection.execute(
            text(
                REQUEST_ASSESSMENTS.format(
                    products="SELECT unnest(CAST(:products AS text[])) AS product_id"
                )
            ),
            {"products": product_ids},
        )


async def take_pending(connection: AsyncConnection, limit: int) -> list[tuple[str, int]]:
    """Up to `limit` products marked for assessment and due (not backing off), locked
    for the caller's transaction; those another transaction holds are left to it.
    Returns (product_id, attempts so far)."""
    rows = await connection.execute(
        text(
            "SELECT product_id, attempts FROM pending_assessments WHERE not_before <= now() "
            "ORDER BY not_before, product_id LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {"limit": limit},
    )
    return [(row.product_id, int(row.attempts)) for row in rows]


async def finish_pending(connection: AsyncConnection, product_ids: list[str]) -> None:
    """The products were assessed: unmark them. A request made meanwhile waited on the
    lock `take_pending` took and marks them again after this commits."""
    if product_ids:
        await connection.execute(
            text("DELETE FROM pending_assessments WHERE product_id = ANY(CAST(:p AS text[]))"),
            {"p": product_ids},
        )


async def retry_pending(
    connection: AsyncConnection, product_id: str, delay_seconds: float, error: str
) -> None:
    """The product's assessment failed: keep it marked, to be tried after `delay_seconds`."""
    await connection.execute(
        text(
            "UPDATE pending_assessments SET attempts = attempts + 1, last_error = :error, "
            "not_before = now() + make_interval(secs => :delay) WHERE product_id = :p"
        ),
        {"p": product_id, "delay": float(delay_seconds), "error": error},
    )


async def count_pending(connection: AsyncConnection) -> tuple[int, float | None]:
    """How many products are marked for assessment, and in how many seconds the first
    one not due yet (backing off after a failure) comes due (None: none waits)."""
    row = (
        await connection.execute(
            text(
                "SELECT count(*) AS pending, EXTRACT(EPOCH FROM min(not_before) "
                "FILTER (WHERE not_before > now()) - now()) AS next_due "
                "FROM pending_assessments"
            )
        )
    ).one()
    return int(row.pending), None if row.next_due is None else float(row.next_due)
