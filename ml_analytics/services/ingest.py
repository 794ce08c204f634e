"""Ingest a batch of Kafka records: validate, count each event once, set aside the bad ones.

`sort_records` is pure (bytes in, rows and dead letters out); `record_batch` writes
the rows; `ingest_records` does both for a consumed batch, chunk by chunk. The
consumer calls it, then publishes the dead letters, then commits the offsets: an
event is counted before its offset is committed, and counted once because the
ledger remembers its event_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Protocol, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ml_analytics.events import (
    DeadLetter,
    EventTimeWindow,
    InvalidEvent,
    StockLevel,
    Transaction,
    decode_event,
    event_instant,
)
from ml_analytics.lifecycle import RetryPolicy, cancel_and_wait
from ml_analytics.storage.clock import advance_clock
from ml_analytics.storage.database import is_transient
from ml_analytics.storage.queries import (
    LedgerFloorMoved,
    StockSnapshotRow,
    TransactionRow,
    ledger_floor,
    record_stock_snapshots,
    record_transactions,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
    # Valid events keyed other than by their product_id, per topic. Counted all the
    # same, for the value's product: every write is per product and commutes, so the
    # partition an event arrives on does not change what is stored.
    key_mismatches: dict[str, int] = field(default_factory=dict)
    # The newest occurred_at among the valid transactions: the stream's clock.
    newest_event_at: datetime | None = None

    def count_key_mismatch(self, topic: str) -> None:
        self.key_mismatches[topic] = self.key_mismatches.get(topic, 0) + 1

    @property
    def valid_events(self) -> int:
        return len(self.transactions) + len(self.stock_snapshots) + self.repeated_in_batch


def sort_records(
    records: Iterable[KafkaRecord],
    *,
    transactions_topic: str,
    stock_levels_topic: str,
    zone: tzinfo,
    failed_at: datetime,
    window: EventTimeWindow | None = None,
    ledger_floor: date | None = None,
) -> SortedBatch:
    """Validate each record; valid ones become rows (first of a repeated event_id wins).

    An event whose business day falls outside `window` is a dead letter, and so is a
    transaction older than `ledger_floor`: the ledger no longer holds its day, so it
    could not be counted exactly once.
    """
    batch = SortedBatch()
    seen_transactions: set[str] = set()
    seen_snapshots: set[str] = set()
    newest_moment: datetime | None = None  # among events with a time
    newest_day: date | None = None  # among events with a plain date
    for record in records:
        try:
            if record.topic == transactions_topic:
                transaction = decode_event(Transaction, record.value)
                if record.key is not None and record.key != transaction.product_id.encode():
                    batch.count_key_mismatch(record.topic)
                if transaction.event_id in seen_transactions:
                    batch.repeated_in_batch += 1
                    continue
                occurred = transaction.occurred_at
                # business_day(), inlined: this loop runs once per event
                if isinstance(occurred, datetime):
                    day = occurred.astimezone(zone).date()
                else:
                    day = occurred
                if window is not None and (problem := window.problem("occurred_at", day)):
                    raise InvalidEvent(problem)
                if ledger_floor is not None and day < ledger_floor:
                    raise InvalidEvent(
                        f"occurred_at: {day.isoformat()} is older than the dedup window: the "
                        f"ledger of event ids keeps days from {ledger_floor.isoformat()} on "
                        "(DEDUP_WINDOW_DAYS), so this event cannot be counted exactly once"
                    )
                if isinstance(occurred, datetime):
                    if newest_moment is None or occurred > newest_moment:
                        newest_moment = occurred
                elif newest_day is None or occurred > newest_day:
                    newest_day = occurred
                seen_transactions.add(transaction.event_id)
                batch.transactions.append(
                    TransactionRow(
                        transaction.event_id,
                        transaction.product_id,
                        day,
                        transaction.quantity_units,
                    )
                )
            elif record.topic == stock_levels_topic:
                level = decode_event(StockLevel, record.value)
                if record.key is not None and record.key != level.product_id.encode():
                    batch.count_key_mismatch(record.topic)
                if level.event_id in seen_snapshots:
                    batch.repeated_in_batch += 1
                    continue
                as_of = level.as_of_instant(zone)
                if window is not None and (
                    problem := window.problem("as_of", as_of.astimezone(zone).date())
                ):
                    raise InvalidEvent(problem)
                seen_snapshots.add(level.event_id)
                batch.stock_snapshots.append(
                    StockSnapshotRow(
                        event_id=level.event_id,
                        product_id=level.product_id,
                        as_of=as_of,
                        stock_units=level.stock_units,
                        lead_time_days=level.lead_time_days,
                    )
                )
            else:
                raise InvalidEvent(f"record from unexpected topic {record.topic!r}")
        except Exception as error:
            # InvalidEvent says what is wrong; anything else (a time that overflows
            # when moved to the business zone, say) must not stall the partition either.
            reason = (
                str(error) if isinstance(error, InvalidEvent) else f"cannot be processed: {error!r}"
            )
            batch.dead_letters.append(
                DeadLetter.for_record(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    value=record.value,
                    error=reason,
                    failed_at=failed_at,
                )
            )
    candidates = [newest_moment] if newest_moment is not None else []
    if newest_day is not None:
        candidates.append(event_instant(newest_day, zone))
    batch.newest_event_at = max(candidates, default=None)
    return batch


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    transactions_counted: int = 0
    transactions_seen_before: int = 0
    stock_snapshots_recorded: int = 0
    stock_snapshots_seen_before: int = 0
    products_with_new_stock: frozenset[str] = frozenset()
    products_with_new_demand: frozenset[str] = frozenset()
    # Set when this batch moved the stream's clock: the newest occurred_at now.
    clock_moved_to: datetime | None = None

    def __add__(self, other: BatchOutcome) -> BatchOutcome:
        return BatchOutcome(
            self.transactions_counted + other.transactions_counted,
            self.transactions_seen_before + other.transactions_seen_before,
            self.stock_snapshots_recorded + other.stock_snapshots_recorded,
            self.stock_snapshots_seen_before + other.stock_snapshots_seen_before,
            self.products_with_new_stock | other.products_with_new_stock,
            self.products_with_new_demand | other.products_with_new_demand,
            max(
                (m for m in (self.clock_moved_to, other.clock_moved_to) if m is not None),
                default=None,
            ),
        )


async def record_batch(connection: asyncpg.Connection, batch: SortedBatch) -> BatchOutcome:
    """Write a sorted batch; events seen before change nothing.

    Each of the two statements is atomic on its own (ledger, aggregates and
    products in one statement) and idempotent, so no enclosing transaction is
    needed: that saves two round trips per write, which is what lets the next
    chunk be validated while PostgreSQL works on this one.
    """
    transactions = await record_transactions(connection, batch.transactions)
    snapshots = await record_stock_snapshots(connection, batch.stock_snapshots)
    return BatchOutcome(
        transactions_counted=transactions.new_events,
        transactions_seen_before=len(batch.transactions) - transactions.new_events,
        stock_snapshots_recorded=snapshots.new_snapshots,
        stock_snapshots_seen_before=len(batch.stock_snapshots) - snapshots.new_snapshots,
        products_with_new_stock=frozenset(snapshots.products_with_new_stock),
        products_with_new_demand=frozenset(transactions.products_with_new_demand),
    )


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: BatchOutcome
    dead_letters: list[DeadLetter]
    repeated_in_batch: int
    database_retries: int
    key_mismatches: dict[str, int] = field(default_factory=dict)


async def ingest_records(
    engine: AsyncEngine,
    records: Sequence[KafkaRecord],
    *,
    transactions_topic: str,
    stock_levels_topic: str,
    zone: tzinfo,
    failed_at: datetime,
    window: EventTimeWindow | None = None,
    chunk_size: int = 2500,
    parallel_writes: int = 2,
    retry: RetryPolicy | None = None,
) -> IngestResult:
    """Validate and write a consumed batch; return once every valid event is stored.

    The batch goes in chunks, and the next chunk is validated (Python) while
    PostgreSQL writes the previous ones, up to `parallel_writes` at once on as
    many connections. Chunks may land in any order: every write is idempotent
    and commutes with the others (sums, LEAST/GREATEST, newest as_of wins), and
    they lock rows in one sorted order. A write that fails is retried, with a
    growing pause, until it succeeds: a database outage delays events, it never
    turns them into dead letters. Cancel the call to give up (the caller then
    must not commit the batch's offsets).
    """
    writers = [_ChunkWriter(engine, retry or RetryPolicy()) for _ in range(max(1, parallel_writes))]
    total = BatchOutcome()
    dead_letters: list[DeadLetter] = []
    repeated = 0
    key_mismatches: dict[str, int] = {}
    newest: datetime | None = None
    in_flight: list[asyncio.Task[BatchOutcome]] = []
    try:
        # What the ledger still holds: older events are dead letters (read for every
        # batch: the retention job moves it).
        floor = await writers[0].ledger_floor()
        for number, start in enumerate(range(0, len(records), chunk_size)):
            batch = sort_records(
                records[start : start + chunk_size],
                transactions_topic=transactions_topic,
                stock_levels_topic=stock_levels_topic,
                zone=zone,
                failed_at=failed_at,
                window=window,
                ledger_floor=floor,
            )
            dead_letters.extend(batch.dead_letters)
            repeated += batch.repeated_in_batch
            if batch.newest_event_at is not None and (
                newest is None or batch.newest_event_at > newest
            ):
                newest = batch.newest_event_at
            for topic, count in batch.key_mismatches.items():
                key_mismatches[topic] = key_mismatches.get(topic, 0) + count
            if len(in_flight) == len(writers):
                total += await in_flight.pop(0)
            writer = writers[number % len(writers)]
            in_flight.append(asyncio.create_task(writer.write(batch)))
            await asyncio.sleep(0)  # let the write send its statement before the next sort
        while in_flight:
            total += await in_flight.pop(0)
        if newest is not None and await writers[0].advance_clock(newest):
            total = dataclasses.replace(total, clock_moved_to=newest)
    finally:
        for task in in_flight:  # left only when cancelled: the caller gave up
            await cancel_and_wait(task)
        for writer in writers:
            await writer.close()
    return IngestResult(
        total, dead_letters, repeated, sum(w.retries for w in writers), key_mismatches
    )


class _ChunkWriter:
    """Writes chunks one after another on one pooled connection, retrying failures."""

    def __init__(self, engine: AsyncEngine, retry: RetryPolicy) -> None:
        self._engine = engine
        self._retry = retry
        self._connection: AsyncConnection | None = None
        self.retries = 0

    async def write(self, batch: SortedBatch) -> BatchOutcome:
        pauses = self._retry.delays()
        while True:
            try:
                driver = await self._driver()
                return await record_batch(driver, batch)
            except LedgerFloorMoved:
                raise  # the whole batch is sorted again, against the new floor
            except Exception as error:
                delay = next(pauses)
                transient = is_transient(error)
                self.retries += 1
                logger.log(
                    logging.WARNING if transient else logging.ERROR,
                    "database write failed; retrying",
                    extra={
                        "error": repr(error)[:500],
                        "transient": transient,
                        "retry_in_seconds": delay,
                        "events": len(batch.transactions) + len(batch.stock_snapshots),
                    },
                    exc_info=not transient,
                )
                await self._discard_connection()
                await asyncio.sleep(delay)

    async def advance_clock(self, newest_event_at: datetime) -> bool:
        """Move the stream's clock (after the batch's events are stored), retrying."""
        return await self._retrying(
            "moving the stream clock", lambda c: advance_clock(c, newest_event_at)
        )

    async def ledger_floor(self) -> date | None:
        """The oldest day the ledger of event ids holds, retrying."""
        return await self._retrying("reading the ledger's floor", ledger_floor)

    async def _retrying(self, what: str, statement: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        pauses = self._retry.delays()
        while True:
            try:
                async with self._engine.begin() as connection:
                    return await statement(connection)
            except Exception as error:
                delay = next(pauses)
                self.retries += 1
                logger.warning(
                    f"{what} failed; retrying",
                    extra={"error": repr(error)[:500], "retry_in_seconds": delay},
                )
                await asyncio.sleep(delay)

    async def _driver(self) -> asyncpg.Connection:
        if self._connection is None:
            self._connection = await self._engine.connect()
        driver = (await self._connection.get_raw_connection()).driver_connection
        assert driver is not None
        return driver

    async def _discard_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
