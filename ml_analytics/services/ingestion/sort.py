"""Sort a consumed batch: each record validated against its topic's schema and handed to
its topic's handler (ml_analytics/topics.py), which turns it into the row its storage
write takes, or a dead letter with the reason. Pure: bytes in, rows and dead letters out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any, Protocol

from pydantic import BaseModel

from ml_analytics.events import (
    DeadLetter,
    EventTimeWindow,
    InvalidEvent,
    StockLevel,
    Transaction,
    decode_event,
    event_instant,
)
from ml_analytics.storage.demand import StockSnapshot
from ml_analytics.storage.ingest_writes import TransactionRow
from ml_analytics.storage.rows import from_fields


class KafkaRecord(Protocol):
    """What ingestion needs of a consumed record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class SortedBatch:
    """Rows per input topic role (what each topic's storage write takes) with the record
    each came from, dead letters."""

    rows: dict[str, list[Any]] = field(default_factory=dict)
    sources: dict[str, list[KafkaRecord]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    repeated_in_batch: int = 0
    # Valid events keyed other than by their product_id, per topic. Counted all the
    # same, for the value's product: every write is per product and commutes, so the
    # partition an event arrives on does not change what is stored.
    key_mismatches: dict[str, int] = field(default_factory=dict)
    # The newest occurred_at among the valid transactions (the clock moves only as far
    # as other products corroborate it: storage/clock.py).
    newest_event_at: datetime | None = None

    @classmethod
    def of(cls, **rows: list[Any]) -> SortedBatch:
        return cls(rows=dict(rows))

    @property
    def transactions(self) -> list[TransactionRow]:
        return self.rows.setdefault("transactions", [])

    @property
    def stock_snapshots(self) -> list[StockSnapshot]:
        return self.rows.setdefault("stock_levels", [])

    def count_key_mismatch(self, topic: str) -> None:
        self.key_mismatches[topic] = self.key_mismatches.get(topic, 0) + 1

    @property
    def valid_events(self) -> int:
        return sum(len(rows) for rows in self.rows.values()) + self.repeated_in_batch


@dataclass(slots=True)
class SortContext:
    """What a topic's handler may need beyond its event."""

    zone: tzinfo
    window: EventTimeWindow | None
    batch: SortedBatch
    newest_moment: datetime | None = None  # among events with a time
    newest_day: date | None = None  # among events with a plain date


class InputRoute(Protocol):
    """An input topic as sorting sees it (ml_analytics/topics.py's InputTopic)."""

    role: str
    event: type[BaseModel]
    handle: Callable[[Any, SortContext], Any]


def sort_records(
    records: Iterable[KafkaRecord],
    *,
    routes: Mapping[str, InputRoute],
    zone: tzinfo,
    failed_at: datetime,
    window: EventTimeWindow | None = None,
) -> SortedBatch:
    """Validate each record against its topic (`routes`: topic name -> input topic);
    valid ones become rows, the rest dead letters. An event outside `window` is a dead
    letter too. An event_id repeated in the batch is counted once when it names the
    same event (product and quantity), whatever its day; when it names another, the
    repeat is a dead letter naming the conflict."""
    batch = SortedBatch()
    context = SortContext(zone, window, batch)
    seen: dict[str, dict[str, tuple[Any, ...]]] = {route.role: {} for route in routes.values()}
    for record in records:
        try:
            route = routes.get(record.topic)
            if route is None:
                raise InvalidEvent(f"record from unexpected topic {record.topic!r}")
            event = decode_event(route.event, record.value)
            product_id: str = event.product_id  # type: ignore[attr-defined]
            if record.key is not None and record.key != product_id.encode():
                batch.count_key_mismatch(record.topic)
            event_id: str = event.event_id  # type: ignore[attr-defined]
            identity = event.identity()  # type: ignore[attr-defined]
            first = seen[route.role].get(event_id)
            if first is not None:
                if first != identity:
                    raise InvalidEvent(
                        f"event_id: {event_id!r} names two events in one batch (first "
                        f"{_described(first)}, then {_described(identity)}): an event_id must "
                        "name one event, so this one is not counted"
                    )
                batch.repeated_in_batch += 1
                continue
            row = route.handle(event, context)
            seen[route.role][event_id] = identity
            batch.rows.setdefault(route.role, []).append(row)
            batch.sources.setdefault(route.role, []).append(record)
        except Exception as error:
            # InvalidEvent says what is wrong; anything else (a time that overflows
            # when moved to the business zone, say) must not stall the partition either.
            reason = (
                str(error) if isinstance(error, InvalidEvent) else f"cannot be processed: {error!r}"
            )
            batch.dead_letters.append(dead_letter_for(record, reason, failed_at))
    batch.newest_event_at = _newest_event_at(context)
    return batch


def _newest_event_at(context: SortContext) -> datetime | None:
    """The newest event time the batch's valid events showed, a plain date taken as the
    start of its day in the business zone."""
    candidates = [context.newest_moment] if context.newest_moment is not None else []
    if context.newest_day is not None:
        candidates.append(event_instant(context.newest_day, context.zone))
    return max(candidates, default=None)


def dead_letter_for(record: KafkaRecord, reason: str, failed_at: datetime) -> DeadLetter:
    """The dead letter of a record that is not counted: where it was, what it held, why."""
    return DeadLetter.for_record(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        error=reason,
        failed_at=failed_at,
    )


def _described(identity: tuple[Any, ...]) -> str:
    product_id, units = identity
    return f"product_id {product_id!r} with {units:g} units"


def transaction_row(transaction: Transaction, context: SortContext) -> TransactionRow:
    """The ledger and aggregates' row of a transaction: its business day, checked."""
    occurred = transaction.occurred_at
    # business_day(), inlined: this runs once per event
    day = occurred.astimezone(context.zone).date() if isinstance(occurred, datetime) else occurred
    if context.window is not None and (problem := context.window.problem("occurred_at", day)):
        raise InvalidEvent(problem)
    if isinstance(occurred, datetime):
        if context.newest_moment is None or occurred > context.newest_moment:
            context.newest_moment = occurred
        instant = occurred
    else:
        if context.newest_day is None or occurred > context.newest_day:
            context.newest_day = occurred
        instant = event_instant(occurred, context.zone)
    return TransactionRow(
        transaction.event_id, transaction.product_id, day, transaction.quantity_units, instant
    )


def stock_snapshot_row(level: StockLevel, context: SortContext) -> StockSnapshot:
    """The stock history's row of a stock level: its as_of as an instant, checked."""
    as_of = level.as_of_instant(context.zone)
    if context.window is not None and (
        problem := context.window.problem("as_of", as_of.astimezone(context.zone).date())
    ):
        raise InvalidEvent(problem)
    return from_fields(StockSnapshot, level, as_of=as_of)
