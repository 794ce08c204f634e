"""Ingest a batch of Kafka records: validate, count each event once, set aside the bad ones.

`sort_records` is pure (bytes in, rows and dead letters out); `record_batch` writes
the rows in one PostgreSQL transaction. The consumer calls both, then publishes
the dead letters, then commits the offsets: an event is counted before its offset
is committed, and counted once because the ledger remembers its event_id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.events import DeadLetter, InvalidEvent, StockLevel, Transaction, decode_event
from ml_analytics.storage.queries import (
    StockSnapshotRow,
    TransactionRow,
    record_stock_snapshots,
    record_transactions,
)


class KafkaRecord(Protocol):
    """What ingestion needs of a consumed record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class SortedBatch:
    transactions: list[TransactionRow] = field(default_factory=list)
    stock_snapshots: list[StockSnapshotRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    repeated_in_batch: int = 0

    @property
    def valid_events(self) -> int:
        return len(self.transactions) + len(self.stock_snapshots) + self.repeated_in_batch


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    transactions_counted: int
    transactions_seen_before: int
    stock_snapshots_recorded: int
    stock_snapshots_seen_before: int
    products_with_new_stock: list[str]


def sort_records(
    records: Iterable[KafkaRecord],
    *,
    transactions_topic: str,
    stock_levels_topic: str,
    zone: tzinfo,
    failed_at: datetime,
) -> SortedBatch:
    """Validate each record; valid ones become rows (first of a repeated event_id wins)."""
    batch = SortedBatch()
    seen_transactions: set[str] = set()
    seen_snapshots: set[str] = set()
    for record in records:
        try:
            if record.topic == transactions_topic:
                transaction = decode_event(Transaction, record.value)
                if transaction.event_id in seen_transactions:
                    batch.repeated_in_batch += 1
                    continue
                seen_transactions.add(transaction.event_id)
                batch.transactions.append(
                    TransactionRow(
                        event_id=transaction.event_id,
                        product_id=transaction.product_id,
                        business_day=transaction.business_day(zone),
                        quantity_units=transaction.quantity_units,
                    )
                )
            elif record.topic == stock_levels_topic:
                level = decode_event(StockLevel, record.value)
                if level.event_id in seen_snapshots:
                    batch.repeated_in_batch += 1
                    continue
                seen_snapshots.add(level.event_id)
                batch.stock_snapshots.append(
                    StockSnapshotRow(
                        event_id=level.event_id,
                        product_id=level.product_id,
                        as_of=level.as_of_instant(zone),
                        stock_units=level.stock_units,
                        lead_time_days=level.lead_time_days,
                    )
                )
            else:
                raise InvalidEvent(f"record from unexpected topic {record.topic!r}")
        except InvalidEvent as error:
            batch.dead_letters.append(
                DeadLetter.for_record(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    value=record.value,
                    error=str(error),
                    failed_at=failed_at,
                )
            )
    return batch


async def record_batch(engine: AsyncEngine, batch: SortedBatch) -> BatchOutcome:
    """Write a sorted batch in one transaction; events seen before change nothing."""
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        async with driver.transaction():
            counted = await record_transactions(driver, batch.transactions)
            snapshots = await record_stock_snapshots(driver, batch.stock_snapshots)
    return BatchOutcome(
        transactions_counted=counted,
        transactions_seen_before=len(batch.transactions) - counted,
        stock_snapshots_recorded=snapshots.new_snapshots,
        stock_snapshots_seen_before=len(batch.stock_snapshots) - snapshots.new_snapshots,
        products_with_new_stock=snapshots.products_with_new_stock,
    )
