"""Record batches the consumer cannot decode: found per partition, made loud, and
skipped only when an operator says so.

aiokafka decodes a fetched batch while `getmany()` hands out records. A batch it
cannot decode (a corrupt batch, a compression it cannot undo) raises there, on
every fetch of that partition, forever; the records already drained from the
other partitions in that call are dropped with the exception, and FastStream's
consume loop logs and tries again. So one bad batch stalled its partition
silently and could lose the other partitions' records.

Here aiokafka's per-partition record iterator is replaced (adapters/aiokafka_fetcher.py)
by one that, on such an error, reports the batch with its offsets (its header is
readable even when its records are not) and ends that partition's records instead
of raising: `getmany()` returns the other partitions' records and this one's
records before the bad batch, and the consumer's position stays on it. The
ingestion consumer claims the stall (`PartitionStalls`): it pauses just that
partition, logs an ERROR once, counts it in
`ml_analytics_consumer_errors_total{topic,partition,reason}` and `GET /ready`
answers 503 naming it, while the other partitions keep flowing. `ml-analytics
skip` moves past it (see `skip_stalled_batch` in consumers/pipeline.py). A
consumer that does not claim a stall (a test's reader, `watch`) gets aiokafka's
error as before.

The replacement lives in adapters/aiokafka_fetcher.py (aiokafka is pinned to 0.14.x;
tests/unit/test_stalls.py checks it against real batches).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition

from ml_analytics import metrics
from ml_analytics.adapters import aiokafka_fetcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stall:
    """A partition whose records from `offset` on cannot be decoded, or whose record at
    `offset` cannot be written (`records` holds it: it was decoded)."""

    partition: TopicPartition
    offset: int  # the consumer's position: the first record not delivered
    batch_next_offset: int | None  # just past the bad batch (None: its header was unreadable)
    error: str  # the error, as "ClassName: message"
    reason: str  # the error's class name, the metric's label
    detected_at: datetime
    records: tuple[Any, ...] = ()  # a write stall's record(s), dead-lettered when skipped

    @property
    def label(self) -> str:
        return f"{self.partition.topic}[{self.partition.partition}]"

    @property
    def unwritable(self) -> bool:
        return bool(self.records)

    def describe(self) -> str:
        if self.unwritable:
            return (
                f"{self.label} stuck at offset {self.offset}, a record that cannot be "
                f"written: {self.error}"
            )
        end = (
            f" (the batch ends at offset {self.batch_next_offset - 1})"
            if self.batch_next_offset is not None
            else ""
        )
        return f"{self.label} stuck at offset {self.offset}{end}: {self.error}"


def _describe(error: Exception) -> str:
    """The error as one line that names its class (aiokafka's own messages often do)."""
    name, message = type(error).__name__, str(error)
    return (message if name in message else f"{name}: {message}")[:500]


def stall_of(batch: aiokafka_fetcher.UndecodableBatch) -> Stall:
    """The stall an undecodable batch makes of its partition."""
    return Stall(
        partition=batch.partition,
        offset=batch.offset,
        batch_next_offset=batch.batch_next_offset,
        error=_describe(batch.error),
        reason=type(batch.error).__name__,
        detected_at=datetime.now(UTC),
    )


class PartitionStalls:
    """The stalled partitions of one consumer: paused, reported, until skipped or revoked.

    `consumer` is a callable giving the consumer (FastStream creates it on start);
    `on_stall` is called, inside the consumer's fetch, whenever a stall is claimed.
    """

    def __init__(
        self, consumer: Callable[[], Any], on_stall: Callable[[], None] | None = None
    ) -> None:
        self._consumer = consumer
        self._on_stall = on_stall
        self._stalls: dict[TopicPartition, Stall] = {}

    def start(self) -> None:
        aiokafka_fetcher.claim_undecodable_batches(self._claim_batch)

    def stop(self) -> None:
        aiokafka_fetcher.release_undecodable_batches(self._claim_batch)

    def _claim_batch(self, batch: aiokafka_fetcher.UndecodableBatch) -> bool:
        return self._claim(stall_of(batch))

    def _claim(self, stall: Stall) -> bool:
        consumer = self._consumer()
        if consumer is None or stall.partition not in consumer.assignment():
            return False
        # Pause only this partition: the others keep flowing, and this one is not
        # fetched again in a tight loop. Its position stays on the bad batch.
        consumer.pause(stall.partition)
        if stall.partition not in self._stalls:
            metrics.CONSUMER_ERRORS.labels(
                stall.partition.topic, str(stall.partition.partition), stall.reason
            ).inc()
        self._register(stall, "a record batch cannot be decoded")
        return True

    def hold(self, stall: Stall) -> bool:
        """Stop the partition on a record that cannot be written: back to its offset and
        paused, until an operator skips it or the partition leaves this consumer (its new
        owner meets the record again). False when the partition is not this consumer's."""
        consumer = self._consumer()
        if consumer is None or stall.partition not in consumer.assignment():
            return False
        consumer.seek(stall.partition, stall.offset)
        consumer.pause(stall.partition)
        self._register(stall, "a record cannot be written")
        return True

    def _register(self, stall: Stall, what: str) -> None:
        if stall.partition not in self._stalls:
            logger.error(
                f"{what}: its partition is paused until an operator skips it "
                "(ml-analytics skip); the other partitions go on",
                extra={
                    "topic": stall.partition.topic,
                    "partition": stall.partition.partition,
                    "offset": stall.offset,
                    "batch_next_offset": stall.batch_next_offset,
                    "error": stall.error,
                },
            )
        self._stalls[stall.partition] = stall
        if self._on_stall is not None:
            self._on_stall()

    def holds_back(self, topic: str, partition: int, offset: int) -> bool:
        """Whether a record at `offset` lies at or past its partition's stall (fetched
        before the stall: it is read again once the partition moves on)."""
        stall = self._stalls.get(TopicPartition(topic, partition))
        return stall is not None and offset >= stall.offset

    def get(self, partition: TopicPartition) -> Stall | None:
        return self._stalls.get(partition)

    def resolved(self, partition: TopicPartition) -> None:
        """The partition moved past its bad batch (or left this consumer)."""
        self._stalls.pop(partition, None)

    def current(self) -> list[Stall]:
        return sorted(
            self._stalls.values(), key=lambda s: (s.partition.topic, s.partition.partition)
        )
