"""Write a sorted batch: each input topic's rows with its storage call (idempotent), chunk
by chunk, then move the stream's clock. The consumer calls `ingest_records`, then
publishes the dead letters, then commits the offsets: an event is counted before its
offset is committed, and counted once because the ledger remembers its event_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any, Protocol, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ml_analytics import metrics
from ml_analytics.background import RetryPolicy, cancel_and_wait
from ml_analytics.events import DeadLetter, EventTimeWindow
from ml_analytics.services.ingestion.sort import (
    KafkaRecord,
    SortedBatch,
    dead_letter_for,
    sort_records,
)
from ml_analytics.storage.clock import advance_clock
from ml_analytics.storage.database import is_transient
from ml_analytics.storage.demand import StockSnapshot
from ml_analytics.storage.ingest_writes import (
    DEFAULT_EVIDENCE_SECONDS,
    Conflict,
    Recorded,
    TransactionRow,
    record_stock_snapshots,
    record_transactions,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What writing a batch did: events counted and seen before, per input topic role;
    the products whose demand or stock changed; the clock, when it moved."""

    counted: Mapping[str, int] = field(default_factory=dict)
    seen_before: Mapping[str, int] = field(default_factory=dict)
    products_with_new_stock: frozenset[str] = frozenset()
    products_with_new_demand: frozenset[str] = frozenset()
    # Set when this batch moved the stream's clock: its corroborated event time now.
    clock_moved_to: datetime | None = None
    # Events whose event_id was first counted for another event, per input topic role.
    conflicts: tuple[tuple[str, Conflict], ...] = ()

    def __add__(self, other: BatchOutcome) -> BatchOutcome:
        return BatchOutcome(
            _summed(self.counted, other.counted),
            _summed(self.seen_before, other.seen_before),
            self.products_with_new_stock | other.products_with_new_stock,
            self.products_with_new_demand | other.products_with_new_demand,
            max(
                (m for m in (self.clock_moved_to, other.clock_moved_to) if m is not None),
                default=None,
            ),
            self.conflicts + other.conflicts,
        )

    @property
    def transactions_counted(self) -> int:
        return self.counted.get("transactions", 0)

    @property
    def transactions_seen_before(self) -> int:
        return self.seen_before.get("transactions", 0)

    @property
    def stock_snapshots_recorded(self) -> int:
        return self.counted.get("stock_levels", 0)


def _summed(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {role: a.get(role, 0) + b.get(role, 0) for role in {*a, *b}}


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """What the storage writes take beyond their rows (from the settings)."""

    # How long a product's newest event time stays the clock's evidence (seconds).
    evidence_seconds: float = DEFAULT_EVIDENCE_SECONDS


class InputWrite(Protocol):
    """An input topic as writing sees it (ml_analytics/topics.py's InputTopic)."""

    role: str
    write: Callable[[asyncpg.Connection, list[Any], WriteOptions], Awaitable[BatchOutcome]]


async def record_batch(
    connection: asyncpg.Connection,
    batch: SortedBatch,
    writes: Sequence[InputWrite],
    options: WriteOptions | None = None,
) -> BatchOutcome:
    """Write a sorted batch, each topic's rows with its storage call; events seen
    before change nothing.

    Each statement is atomic on its own (ledger, aggregates and products in one) and
    idempotent, so no enclosing transaction is needed: that saves round trips, which is
    what lets the next chunk be validated while PostgreSQL works on this one.
    """
    total = BatchOutcome()
    for topic in writes:
        rows = batch.rows.get(topic.role)
        if rows:
            total += await topic.write(connection, rows, options or WriteOptions())
    return total


def _outcome(
    role: str,
    rows: Sized,
    recorded: Recorded,
    *,
    new_demand: frozenset[str] = frozenset(),
    new_stock: frozenset[str] = frozenset(),
) -> BatchOutcome:
    """One topic's rows written: the events counted, those seen before, and the products
    with new demand or a new current stock."""
    return BatchOutcome(
        counted={role: recorded.new_events},
        seen_before={role: len(rows) - recorded.new_events - len(recorded.conflicts)},
        products_with_new_stock=new_stock,
        products_with_new_demand=new_demand,
        conflicts=tuple((role, conflict) for conflict in recorded.conflicts),
    )


async def write_transactions(
    connection: asyncpg.Connection, rows: list[TransactionRow], options: WriteOptions
) -> BatchOutcome:
    recorded = await record_transactions(connection, rows, options.evidence_seconds)
    return _outcome("transactions", rows, recorded, new_demand=frozenset(recorded.products_changed))


async def write_stock_levels(
    connection: asyncpg.Connection, rows: list[StockSnapshot], options: WriteOptions
) -> BatchOutcome:
    recorded = await record_stock_snapshots(connection, rows)
    return _outcome("stock_levels", rows, recorded, new_stock=frozenset(recorded.products_changed))


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: BatchOutcome
    dead_letters: list[DeadLetter]
    repeated_in_batch: int
    database_retries: int
    key_mismatches: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """A write that failed for a reason other than an outage: where, why, how often."""

    records: tuple[KafkaRecord, ...]  # the chunk's records, in their partitions' order
    error: BaseException
    attempts: int
    max_attempts: int

    def where(self) -> str:
        """The chunk's partitions and offsets: "topic[0] offsets 10..42, topic[1] ..."."""
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for record in self.records:
            key = (record.topic, record.partition)
            low, high = spans.get(key, (record.offset, record.offset))
            spans[key] = (min(low, record.offset), max(high, record.offset))
        return ", ".join(
            f"{topic}[{partition}] offsets {low}..{high}"
            for (topic, partition), (low, high) in sorted(spans.items())
        )

    def describe(self) -> str:
        return (
            f"writing {self.where()} failed {self.attempts} of at most {self.max_attempts} "
            f"times: {describe_error(self.error)}"
        )


class ChunkFailed(RuntimeError):
    """A chunk's write failed INGEST_MAX_WRITE_ATTEMPTS times for a reason other than an
    outage: its batch is not committed, and the caller finds the record to stall on."""

    def __init__(self, failure: WriteFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


def describe_error(error: BaseException) -> str:
    """The error as one line that names its class."""
    name, message = type(error).__name__, " ".join(str(error).split())
    return (message if name in message else f"{name}: {message}")[:500]


FailureListener = Callable[[WriteFailure], None]


async def ingest_records(
    engine: AsyncEngine,
    records: Sequence[KafkaRecord],
    *,
    routes: Mapping[str, Any],
    zone: tzinfo,
    failed_at: datetime,
    window: EventTimeWindow | None = None,
    chunk_size: int = 2500,
    parallel_writes: int = 2,
    retry: RetryPolicy | None = None,
    max_attempts: int | None = None,
    on_failure: FailureListener | None = None,
    corroborating_products: int = 1,
    options: WriteOptions | None = None,
) -> IngestResult:
    """Validate and write a consumed batch; return once every valid event is stored.

    The batch goes in chunks, and the next chunk is validated (Python) while
    PostgreSQL writes the previous ones, up to `parallel_writes` at once on as
    many connections. Chunks may land in any order: every write is idempotent
    and commutes with the others (sums, LEAST/GREATEST, newest as_of wins), and
    they lock rows in one sorted order. A write that fails because the database
    cannot be reached is retried, with a growing pause, until it succeeds: an outage
    delays events, it never turns them into dead letters. A write that fails for
    another reason (a poison row, a constraint) is reported to `on_failure` at once
    and, after `max_attempts` tries (None: without end), raises ChunkFailed. Cancel
    the call to give up (the caller then must not commit the batch's offsets).

    Then the stream's clock moves to the newest event time `corroborating_products`
    distinct products have reached (storage/clock.py).
    """
    writes = list(dict.fromkeys(routes.values()))  # each input topic once
    writers = [
        _ChunkWriter(
            engine, retry or RetryPolicy(), writes, options or WriteOptions(), max_attempts,
            on_failure,
        )
        for _ in range(max(1, parallel_writes))
    ]  # fmt: skip
    tally = _BatchTally(failed_at)
    sort = functools.partial(
        sort_records, routes=routes, zone=zone, failed_at=failed_at, window=window
    )
    try:
        await _write_chunks(records, chunk_size, sort, writers, tally)
        if tally.newest is not None:
            moved, clock = await writers[0].advance_clock(corroborating_products)
            if moved:
                tally.total = dataclasses.replace(tally.total, clock_moved_to=clock)
            _observe_clock(clock, tally.newest if tally.total.transactions_counted else None)
    finally:
        for writer in writers:
            await writer.close()
    return tally.result(database_retries=sum(w.retries for w in writers))


@dataclass(slots=True)
class _BatchTally:
    """What a batch's chunks add up to, as each is sorted and as its write lands."""

    failed_at: datetime
    total: BatchOutcome = field(default_factory=BatchOutcome)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    repeated: int = 0
    key_mismatches: dict[str, int] = field(default_factory=dict)
    newest: datetime | None = None

    def sorted(self, batch: SortedBatch) -> None:
        """A chunk sorted: its dead letters, repeats, key mismatches, newest event time."""
        self.dead_letters.extend(batch.dead_letters)
        self.repeated += batch.repeated_in_batch
        if batch.newest_event_at is not None and (
            self.newest is None or batch.newest_event_at > self.newest
        ):
            self.newest = batch.newest_event_at
        for topic, count in batch.key_mismatches.items():
            self.key_mismatches[topic] = self.key_mismatches.get(topic, 0) + count

    def landed(self, batch: SortedBatch, outcome: BatchOutcome) -> None:
        """A chunk written: its outcome, and a dead letter for each event_id conflict."""
        for role, conflict in outcome.conflicts:
            record = batch.sources[role][conflict.index]
            self.dead_letters.append(dead_letter_for(record, conflict.reason, self.failed_at))
        self.total += dataclasses.replace(outcome, conflicts=())

    def result(self, database_retries: int) -> IngestResult:
        return IngestResult(
            self.total, self.dead_letters, self.repeated, database_retries, self.key_mismatches
        )


async def _write_chunks(
    records: Sequence[KafkaRecord],
    chunk_size: int,
    sort: Callable[[Sequence[KafkaRecord]], SortedBatch],
    writers: Sequence[_ChunkWriter],
    tally: _BatchTally,
) -> None:
    """Sort the records chunk by chunk while the writers store the chunks before, one
    chunk in flight per writer; cancel the writes in flight when giving up."""
    in_flight: list[tuple[SortedBatch, asyncio.Task[BatchOutcome]]] = []
    try:
        for number, start in enumerate(range(0, len(records), chunk_size)):
            batch = sort(records[start : start + chunk_size])
            tally.sorted(batch)
            if len(in_flight) == len(writers):
                done, task = in_flight.pop(0)
                tally.landed(done, await task)
            writer = writers[number % len(writers)]
            in_flight.append((batch, asyncio.create_task(writer.write(batch))))
            await asyncio.sleep(0)  # let the write send its statement before the next sort
        while in_flight:
            done, task = in_flight.pop(0)
            tally.landed(done, await task)
    finally:
        for _, task in in_flight:  # left only when cancelled or failed: the caller gave up
            await cancel_and_wait(task)


def _observe_clock(clock: datetime | None, newest: datetime | None) -> None:
    """The clock's gauge; a warning when this batch's newest new event is held ahead."""
    if clock is None:
        return
    metrics.STREAM_CLOCK.set(clock.timestamp())
    if newest is not None and newest - clock > HELD_AHEAD_WARNING:
        logger.warning(
            "an event far ahead of the stream's clock is counted on its day; the clock waits "
            "until other products' events corroborate it (CLOCK_CORROBORATION_PRODUCTS)",
            extra={"newest_occurred_at": newest.isoformat(), "clock": clock.isoformat()},
        )


HELD_AHEAD_WARNING = timedelta(days=1)


class _ChunkWriter:
    """Writes chunks one after another on one pooled connection, retrying failures."""

    def __init__(
        self,
        engine: AsyncEngine,
        retry: RetryPolicy,
        writes: Sequence[Any],
        options: WriteOptions,
        max_attempts: int | None,
        on_failure: FailureListener | None,
    ) -> None:
        self._engine = engine
        self._retry = retry
        self._writes = writes
        self._options = options
        self._max_attempts = max_attempts
        self._on_failure = on_failure
        self._connection: AsyncConnection | None = None
        self.retries = 0

    async def write(self, batch: SortedBatch) -> BatchOutcome:
        pauses = self._retry.delays()
        failures = 0
        while True:
            try:
                driver = await self._driver()
                return await record_batch(driver, batch, self._writes, self._options)
            except Exception as error:
                transient = is_transient(error)
                self.retries += 1
                await self._discard_connection()
                if not transient:
                    failures += 1
                    failure = WriteFailure(
                        tuple(r for sources in batch.sources.values() for r in sources),
                        error,
                        failures,
                        self._max_attempts or 0,
                    )
                    if self._on_failure is not None:
                        self._on_failure(failure)
                    if self._max_attempts is not None and failures >= self._max_attempts:
                        raise ChunkFailed(failure) from error
                delay = next(pauses)
                logger.log(
                    logging.WARNING if transient else logging.ERROR,
                    "database write failed; retrying",
                    extra={
                        "error": repr(error)[:500],
                        "transient": transient,
                        "attempt": failures,
                        "retry_in_seconds": delay,
                        "events": len(batch.transactions) + len(batch.stock_snapshots),
                    },
                    exc_info=not transient,
                )
                await asyncio.sleep(delay)

    async def advance_clock(self, corroborating_products: int) -> tuple[bool, datetime | None]:
        """Move the stream's clock (after the batch's events are stored), retrying."""
        return await self._retrying(
            "moving the stream clock", lambda c: advance_clock(c, corroborating_products)
        )

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
