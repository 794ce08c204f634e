"""The ingestion subscriber: batches from both input topics into PostgreSQL.

Thin by design. FastStream's batch subscriber fetches; its handler hands each
batch to one worker (`IngestionPipeline`) and returns, so the next batch is
fetched and unpacked while the worker writes this one. The worker, one batch
at a time and in order: validates and writes the events (services.ingest),
publishes the dead letters, then commits exactly that batch's offsets. A batch
is never skipped: a failed write or publish is retried until it succeeds or the
service stops, and what was not committed is delivered again after a restart or
a rebalance, where the ledger of event ids makes it count once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage, Topic
from faststream.message import StreamMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.consumers.skipping import StallSkipper
from ml_analytics.consumers.stalls import PartitionStalls
from ml_analytics.events import DeadLetter
from ml_analytics.kafka import kafka_security
from ml_analytics.lifecycle import RetryPolicy, cancel_and_wait
from ml_analytics.services.ingest import (
    BatchOutcome,
    IngestResult,
    KafkaRecord,
    ingest_records,
)
from ml_analytics.settings import Settings

logger = logging.getLogger(__name__)

BatchListener = Callable[[BatchOutcome], Awaitable[None]]


def build_broker(settings: Settings) -> KafkaBroker:
    """The service's one broker connection (consumers and publishers)."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=settings.kafka_client_id,
        security=kafka_security(settings),
        enable_idempotence=settings.kafka_enable_idempotence,
        acks="all",
        linger_ms=5,
        max_batch_size=1024 * 1024,
        graceful_timeout=settings.shutdown_grace_seconds,
        logger=logging.getLogger("ml_analytics.broker"),
        # FastStream's per-message "Received"/"Processed" lines: one per batch here.
        log_level=logging.DEBUG,
    )


async def _raw_values(message: StreamMessage[Any]) -> Any:
    # Keep the bytes: each record is validated on its own, so one bad message
    # becomes one dead letter instead of failing the whole batch in a decoder.
    return message.body


Job = Callable[[], Awaitable[None]]


class IngestionPipeline:
    """One worker that writes handed-over batches in order and commits their offsets.

    Other work that must not overtake a batch's commit (skipping a bad batch moves
    a committed offset) runs through the same worker (`run_in_order`).
    """

    def __init__(
        self,
        broker: KafkaBroker,
        settings: Settings,
        engine: AsyncEngine,
        on_batch: BatchListener | None = None,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._engine = engine
        self._on_batch = on_batch
        self._retry = RetryPolicy(max_delay_seconds=settings.ingest_retry_max_seconds)
        # One batch waiting while one is written: backpressure on the fetch loop.
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=1)
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        # Since when (monotonic) the batch in hand keeps failing, and why: for /ready.
        self._failing: tuple[float, str] | None = None
        self._consumer: Callable[[], AIOKafkaConsumer | None] = lambda: None
        self.stalls = PartitionStalls(lambda: self._consumer(), on_stall=self._stalled)
        self._skipper = StallSkipper(
            self.stalls,
            lambda: self._consumer(),
            engine,
            self.run_in_order,
            lambda letters: _publish_dead_letters(broker, settings, letters),
        )

    def attach(self, consumer: Callable[[], AIOKafkaConsumer | None]) -> None:
        """Where to find the consumer (FastStream creates it when the broker starts);
        from now on its undecodable batches are claimed here."""
        self._consumer = consumer
        self.stalls.start()

    def _stalled(self) -> None:
        self._skipper.wake()

    async def submit(self, records: Sequence[KafkaRecord], consumer: AIOKafkaConsumer) -> None:
        """Hand a fetched batch over; waits while the previous one is still queued."""
        await self._put(functools.partial(self._process, records, consumer))

    async def run_in_order(self, job: Job) -> bool:
        """Run `job` in the worker after the batches handed over before it; False when
        the pipeline is shutting down (the job did not run)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def tracked() -> None:
            try:
                await job()
            except BaseException as error:
                done.set_exception(error)
                raise
            done.set_result(None)

        if not await self._put(tracked):
            return False
        await done
        return True

    async def _put(self, job: Job) -> bool:
        if self._closed:
            return False  # shutting down: not taken, not committed, delivered again later
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="ingestion-worker")
        await self._queue.put(job)
        return True

    def problems(self, after_seconds: float = 10.0) -> list[str]:
        """Why ingestion is not making progress, for /ready: a stalled partition, or a
        batch failing for longer than `after_seconds`."""
        found = [f"{stall.describe()}; see `ml-analytics skip`" for stall in self.stalls.current()]
        if self._failing is not None:
            since, error = self._failing
            failing_for = time.monotonic() - since
            if failing_for >= after_seconds:
                found.append(
                    f"a consumed batch has failed for {failing_for:.0f} s (retrying): {error}"
                )
        return found

    async def drain(self, timeout_seconds: float) -> None:
        """Finish and commit the batches handed over, take no more, stop the worker."""
        self._closed = True
        self.stalls.stop()
        await self._skipper.stop()
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout_seconds)
        except TimeoutError:
            logger.warning(
                "shutdown: batches in hand not finished in time; they will be delivered again",
                extra={"timeout_seconds": timeout_seconds},
            )
        await cancel_and_wait(self._worker)

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await job()
            except Exception:
                logger.exception("an ingestion job failed")
            finally:
                self._queue.task_done()

    async def _process(self, records: Sequence[KafkaRecord], consumer: AIOKafkaConsumer) -> None:
        started = time.perf_counter()
        pauses = self._retry.delays()
        while True:
            try:
                now = datetime.now(UTC)
                result = await ingest_records(
                    self._engine,
                    records,
                    transactions_topic=self._settings.transactions_topic,
                    stock_levels_topic=self._settings.stock_levels_topic,
                    zone=self._settings.timezone,
                    failed_at=now,
                    window=self._settings.event_time_window(now),
                    chunk_size=self._settings.ingest_chunk_size,
                    parallel_writes=self._settings.ingest_parallel_writes,
                    retry=self._retry,
                )
                await _publish_dead_letters(self._broker, self._settings, result.dead_letters)
                self._failing = None
                break
            except Exception as error:
                # Not a database outage (ingest_records waits those out): for
                # example the broker refusing dead letters. Keep the batch.
                if self._failing is None:
                    self._failing = (time.monotonic(), repr(error)[:300])
                delay = next(pauses)
                metrics.BATCHES.labels("failed").inc()
                logger.exception(
                    "batch failed; retrying it",
                    extra={"error": repr(error)[:500], "retry_in_seconds": delay},
                )
                await asyncio.sleep(delay)
        await _commit(consumer, records)
        _observe(result, self._settings, started)
        if self._on_batch is not None:
            await self._on_batch(result.outcome)


def add_ingestion(
    broker: KafkaBroker,
    settings: Settings,
    engine: AsyncEngine,
    *,
    on_batch: BatchListener | None = None,
) -> IngestionPipeline:
    """Subscribe to the transactions and stock-levels topics in one consumer group.

    Call the returned pipeline's `drain()` before stopping the broker.
    """
    pipeline = IngestionPipeline(broker, settings, engine, on_batch)
    subscriber = broker.subscriber(
        Topic(settings.transactions_topic, declare=False),
        Topic(settings.stock_levels_topic, declare=False),
        batch=True,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        max_records=settings.ingest_batch_max_records,
        batch_timeout_ms=settings.ingest_batch_timeout_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        # Offsets are committed by the pipeline, per batch, after the writes.
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_values,
        # A transactional producer's aborted events are never counted.
        isolation_level="read_committed",
        listener=_AssignmentListener(
            (settings.transactions_topic, settings.stock_levels_topic), pipeline.stalls
        ),
        title="ingest",
        description="Transactions and stock levels into the daily aggregates.",
    )
    pipeline.attach(lambda: subscriber.consumer)

    @subscriber
    async def ingest(values: Any, message: KafkaMessage) -> None:
        records = message.raw_message
        if not isinstance(records, tuple):
            records = (records,)
        await pipeline.submit(records, cast(AIOKafkaConsumer, message.consumer))

    return pipeline


class _AssignmentListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs and exposes which partitions (and so which products) this replica owns."""

    def __init__(self, topics: tuple[str, ...], stalls: PartitionStalls) -> None:
        self._topics = topics
        self._stalls = stalls
        self._owned: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._owned -= set(revoked)
        for partition in revoked:  # another replica reports these now
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(partition.topic, str(partition.partition))
            self._stalls.resolved(partition)  # its new owner meets the bad batch again
        self._publish("partitions revoked", revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._owned |= set(assigned)
        self._publish("partitions assigned", assigned)

    def _publish(self, message: str, changed: set[TopicPartition]) -> None:
        for topic in self._topics:
            metrics.ASSIGNED_PARTITIONS.labels(topic).set(
                sum(1 for tp in self._owned if tp.topic == topic)
            )
        logger.info(
            message,
            extra={
                "changed": sorted(f"{tp.topic}:{tp.partition}" for tp in changed),
                "owned": sorted(f"{tp.topic}:{tp.partition}" for tp in self._owned),
            },
        )


async def _publish_dead_letters(
    broker: KafkaBroker, settings: Settings, dead_letters: list[DeadLetter]
) -> None:
    if not dead_letters:
        return
    topic = settings.dead_letter_topic
    for letter in dead_letters:
        logger.warning(
            "message sent to the dead-letter topic",
            extra={
                "source_topic": letter.source_topic,
                "partition": letter.partition,
                "offset": letter.offset,
                "key": letter.key,
                "error": letter.error,
            },
        )
    await asyncio.gather(
        *(
            broker.publish(
                letter.model_dump_json().encode(),
                topic=topic,
                key=letter.kafka_key(),
                headers={"content-type": "application/json"},
            )
            for letter in dead_letters
        )
    )


async def _commit(consumer: AIOKafkaConsumer, records: Sequence[KafkaRecord]) -> None:
    """Commit the offsets just past this batch's records, for the partitions still owned."""
    # A batch holds each partition's records in offset order, so the last one
    # seen per partition is its highest.
    last = {(record.topic, record.partition): record.offset for record in records}
    owned = consumer.assignment()
    offsets = {
        partition: offset + 1
        for (topic, number), offset in last.items()
        if (partition := TopicPartition(topic, number)) in owned
    }
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
        metrics.BATCHES.labels("committed").inc()
        for partition, committed in offsets.items():
            # The partition's end as of the last fetch: records not yet counted.
            highwater = consumer.highwater(partition)
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(partition.topic, str(partition.partition)).set(
                    max(0, highwater - committed)
                )
    except (CommitFailedError, IllegalStateError, KafkaError) as error:
        # The partitions moved to another consumer during the batch. Its events
        # are in the database already; the new owner reads them again and the
        # ledger ignores them.
        logger.warning("offset commit failed after a rebalance", extra={"error": repr(error)})


def _observe(result: IngestResult, settings: Settings, started: float) -> None:
    outcome = result.outcome
    transactions_topic, stock_levels_topic = (
        settings.transactions_topic,
        settings.stock_levels_topic,
    )
    if result.database_retries:
        metrics.BATCHES.labels("retried").inc(result.database_retries)
    metrics.EVENTS_INGESTED.labels(transactions_topic, "counted").inc(outcome.transactions_counted)
    metrics.EVENTS_INGESTED.labels(transactions_topic, "seen_before").inc(
        outcome.transactions_seen_before
    )
    metrics.EVENTS_INGESTED.labels(stock_levels_topic, "counted").inc(
        outcome.stock_snapshots_recorded
    )
    metrics.EVENTS_INGESTED.labels(stock_levels_topic, "seen_before").inc(
        outcome.stock_snapshots_seen_before
    )
    for letter in result.dead_letters:
        metrics.DEAD_LETTERS.labels(letter.source_topic).inc()
    for topic, count in result.key_mismatches.items():
        metrics.KEY_MISMATCHES.labels(topic).inc(count)
    metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
    logger.debug(
        "batch committed",
        extra={
            "transactions_counted": outcome.transactions_counted,
            "seen_before": outcome.transactions_seen_before + outcome.stock_snapshots_seen_before,
            "repeated_in_batch": result.repeated_in_batch,
            "stock_snapshots": outcome.stock_snapshots_recorded,
            "dead_letters": len(result.dead_letters),
        },
    )
