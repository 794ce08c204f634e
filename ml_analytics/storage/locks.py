"""PostgreSQL advisory locks: one key scheme for everything replicas must not do twice
at once (train a product, train the global model, relay the outbox)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger(__name__)


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
    are held elsewhere) and the connection; they are released on leaving.

    A session lock outlives a rollback, so a connection whose taking or releasing
    failed (an error, a timeout, a cancellation) may still hold some of them; it is
    invalidated instead of going back to the pool, and PostgreSQL ends its session
    and with it every lock it held. A failed release is logged, not raised: the locks
    are gone either way, and what was done under them stands.
    """
    async with engine.connect() as connection:
        try:
            taken = await connection.execute(
                text(
                    "SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k "
                    "WHERE pg_try_advisory_lock(k)"
                ),
                {"keys": keys},
            )
            acquired = {int(key) for key in taken.scalars()}
            await connection.commit()
        except BaseException:
            await _end_session(connection)
            raise
        try:
            yield acquired, connection
        finally:
            if acquired:
                await _release(connection, acquired)


async def _release(connection: AsyncConnection, keys: set[int]) -> None:
    try:
        await connection.rollback()
        await connection.execute(
            text("SELECT pg_advisory_unlock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
            {"keys": sorted(keys)},
        )
        await connection.commit()
    except Exception as error:
        logger.warning(
            "releasing advisory locks failed; their connection is closed instead",
            extra={"locks": len(keys), "error": f"{type(error).__name__}: {str(error)[:200]}"},
        )
        await _end_session(connection)
    except BaseException:  # cancelled meanwhile: the same, then go on unwinding
        await _end_session(connection)
        raise


async def _end_session(connection: AsyncConnection) -> None:
    """Close the connection's session for good: the pool replaces it."""
    with contextlib.suppress(Exception):
        await connection.invalidate()
