"""The HTTP API's prediction cache: responses by request content, until they expire."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.storage.rows import one_or_none


async def cached_response(
    connection: AsyncConnection, cache_key: str, now: datetime
) -> tuple[str, datetime] | None:
    """The stored response (a JSON text) for this key and when it expires, unless it
    has expired."""
    return await one_or_none(
        connection,
        "SELECT response, expires_at FROM prediction_cache "
        "WHERE cache_key = :key AND expires_at > :now",
        {"key": cache_key, "now": now},
        lambda row: (str(row.response), row.expires_at),
    )


async def store_response(
    connection: AsyncConnection,
    *,
    cache_key: str,
    endpoint: str,
    product_id: str,
    response: str,
    now: datetime,
    ttl: timedelta,
) -> datetime:
    """Store (or replace) the response for this key; returns when it expires."""
    expires_at = now + ttl
    await connection.execute(
        text(
            "INSERT INTO prediction_cache "
            "(cache_key, endpoint, product_id, response, created_at, expires_at) "
            "VALUES (:key, :endpoint, :product_id, :response, :now, :expires) "
            "ON CONFLICT (cache_key) DO UPDATE SET response = EXCLUDED.response, "
            "created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at"
        ),
        {
            "key": cache_key,
            "endpoint": endpoint,
            "product_id": product_id,
            "response": response,
            "now": now,
            "expires": expires_at,
        },
    )
    return expires_at


async def prune_expired(connection: AsyncConnection, now: datetime) -> int:
    """Delete expired entries; returns how many."""
    result = await connection.execute(
        text("DELETE FROM prediction_cache WHERE expires_at <= :now"), {"now": now}
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
