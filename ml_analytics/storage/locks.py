"""PostgreSQL advisory locks: one key scheme for everything replicas must not do twice
at once (train a product, train the global model, relay the outbox)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


def lock_key(kind: str, name: str = "") -> int:
    """A signed 64-bit key for (kind, name), the same in every replica."""
    digest = hashlib.blake2b(f"ml-analytics:{kind}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


GLOBAL_MODEL_LOCK = lock_key("global-model")
RISK_RELAY_LOCK = lock_key("risk-relay")
LEDGER_RETENTION_LOCK = lock_key("ledger-retention")


def product_lock(product_id: str) -> int:
    return lock_key("product", product_id)


@asynccontextmanager
async def advisory_lock(
    engine: AsyncEngine, key: int
) -> AsyncIterator[tuple[bool, AsyncConnection]]:
    """Try the session lock `key` on a connection of its own; yields whether it was taken
    and the connection, which the holder may use meanwhile (the lock is released on
    leaving, or when the connection dies with its replica). The connection is left out
    of any transaction, so holding the lock through a long fit is not "idle in
    transaction" (which PostgreSQL would end)."""
    async with advisory_locks(engine, [key]) as (acquired, connection):
        yield key in acquired, connection


@asynccontextmanager
async def advisory_locks(
    engine: AsyncEngine, keys: list[int]
) -> AsyncIterator[tuple[set[int], AsyncConnection]]:
    """`advisory_lock` for several keys on one connection: yields the keys taken (others
    are held elsewhere) and the connection; they are released on leaving."""
    async with engine.connect() as connection:
        taken = await connection.execute(
            text(
                "SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k WHERE pg_try_advisory_lock(k)"
            ),
            {"keys": keys},
        )
        acquired = {int(key) for key in taken.scalars()}
        await connection.commit()
        try:
            yield acquired, connection
        finally:
            if acquired:
                await connection.rollback()
                await connection.execute(
                    text("SELECT pg_advisory_unlock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
                    {"keys": sorted(acquired)},
                )
                await connection.commit()
