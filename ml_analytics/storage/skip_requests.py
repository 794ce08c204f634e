"""Skip requests: an operator asks (`ml-analytics skip`), the replica that owns the
partition carries the request out or refuses it, and the operator reads the outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ml_analytics.storage.rows import all_of, one_or_none

SkipStatus = Literal["pending", "skipped", "refused"]


@dataclass(frozen=True, slots=True)
class SkipRequest:
    request_id: int
    topic: str
    partition: int
    offset: int
    reason: str | None
    requested_at: datetime
    status: SkipStatus
    outcome: str | None
    skipped_from: int | None
    skipped_to: int | None


_COLUMNS = (
    'request_id, topic, "partition", "offset", reason, requested_at, status, outcome, '
    "skipped_from, skipped_to"
)


def _request(row: Any) -> SkipRequest:
    return SkipRequest(*row)


async def request_skip(
    connection: AsyncConnection, topic: str, partition: int, offset: int, reason: str | None
) -> int:
    """Queue a request; returns its id."""
    return int(
        (
            await connection.execute(
                text(
                    'INSERT INTO partition_skips (topic, "partition", "offset", reason) '
                    "VALUES (:topic, :partition, :offset, :reason) RETURNING request_id"
                ),
                {"topic": topic, "partition": partition, "offset": offset, "reason": reason},
            )
        ).scalar_one()
    )


async def skip_request(connection: AsyncConnection, request_id: int) -> SkipRequest | None:
    return await one_or_none(
        connection,
        f"SELECT {_COLUMNS} FROM partition_skips WHERE request_id = :id",
        {"id": request_id},
        _request,
    )


async def pending_skips(connection: AsyncConnection, limit: int = 100) -> list[SkipRequest]:
    return await all_of(
        connection,
        f"SELECT {_COLUMNS} FROM partition_skips WHERE status = 'pending' "
        "ORDER BY requested_at, request_id LIMIT :limit",
        {"limit": limit},
        _request,
    )


async def finish_skip(
    connection: AsyncConnection,
    request_id: int,
    status: Literal["skipped", "refused"],
    outcome: str,
    skipped: tuple[int, int] | None = None,
) -> bool:
    """Record the outcome of a pending request; False when it was no longer pending."""
    result = await connection.execute(
        text(
            "UPDATE partition_skips SET status = :status, outcome = :outcome, "
            "skipped_from = :first, skipped_to = :last, done_at = now() "
            "WHERE request_id = :id AND status = 'pending'"
        ),
        {
            "id": request_id,
            "status": status,
            "outcome": outcome,
            "first": skipped[0] if skipped else None,
            "last": skipped[1] if skipped else None,
        },
    )
    return result.rowcount == 1
