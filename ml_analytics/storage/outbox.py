"""The outbox of stockout-risk events: queued in the assessment's transaction, then relayed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


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
