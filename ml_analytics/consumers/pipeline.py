"""The ingestion pipeline: batches from the input topics into PostgreSQL, in order.

Thin by design. FastStream's batch subscriber fetches; its handler hands each
batch to one worker (`IngestionPipeline`) and returns, so the next batch is
fetched and unpacked while the worker writes this one. The worker, one batch
at a time and in order: validates and writes the events (services/ingestion),
publishes the dead letters, then commits exactly that batch's offsets. A batch
is never skipped: a failed write or publish is retried until it succeeds or the
service stops, and what was not committed is delivered again after a restart or
a rebalance, where the ledger of event ids makes it count once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.background import RetryPolicy, cancel_and_wait
from ml_analytics.consumers.broker import Publishers
from ml_analytics.consumers.skip_requests import StallSkipper
from ml_analytics.consumers.stalls import PartitionStalls, Stall
from ml_analytics.events import DeadLetter
from ml_analytics.services.ingestion.sort import KafkaRecord
from ml_analytics.services.ingestion.write import (
    BatchOutcome,
    ChunkFailed,
    IngestResult,
    WriteFailure,
    WriteOptions,
    describe_error,
    ingest_records,
)
from ml_analytics.settings import Settings
from ml_analytics.topics import INPUT_TOPICS, input_routes

logger = logging.getLogger(__name__)

BatchListener = Callable[[BatchOutcome], Awaitable[None]]
Job = Callable[[], Awaitable[None]]


class IngestionPipeline:
    """One worker that writes handed-over batches in order and commits their offsets.

    Other work that must not overtake a batch's commit (skipping a bad batch moves
    a committed offset) runs through the same worker (`run_in_order`).
    """

    def __init__(
        self,
        publishers: Publishers,
        settings: Settings,
        engine: AsyncEngine,
        on_batch: BatchListener | None = None,
    ) -> None:
        self._dead_letters = publishers["dead_letter"]
        self._routes = input_routes(settings)
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
        # The batch in hand's latest write that failed for a reason other than an outage.
        self._write_failure: WriteFailure | None = None
        self._consumer: Callable[[], AIOKafkaConsumer | None] = lambda: None
        self.stalls = PartitionStalls(lambda: self._consumer(), on_stall=self._stalled)
        self._skipper = StallSkipper(
            self.stalls,
            lambda: self._consumer(),
            engine,
            self.run_in_order,
            lambda letters: _publish_dead_letters(self._dead_letters, letters),
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
        """Why ingestion is not making progress, for /ready: a stalled partition, a write
        failing for a reason other than an outage (at once, naming its partitions and
        offsets), or a batch failing for longer than `after_seconds`."""
        found = [f"{stall.describe()}; see `ml-analytics skip`" for stall in self.stalls.current()]
        if self._write_failure is not None:
            found.append(self._write_failure.describe())
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
        # Records fetched before their partition stalled are read again once it moves on.
        records = [r for r in records if not self.stalls.holds_back(r.topic, r.partition, r.offset)]
        try:
            result = await self._write(records)
        except ChunkFailed as failed:
            await self._isolate(records, consumer, failed, started)
            return
        await self._finish(records, consumer, result, started)

    async def _finish(
        self,
        records: Sequence[KafkaRecord],
        consumer: AIOKafkaConsumer,
        result: IngestResult,
        started: float,
    ) -> None:
        """Dead letters, then the offsets; then the listeners."""
        await self._publish_once(result.dead_letters)
        await _commit(consumer, records)
        _observe(result, self._settings, started)
        if self._on_batch is not None:
            await self._on_batch(result.outcome)

    async def _write(
        self, records: Sequence[KafkaRecord], max_attempts: int | None = None
    ) -> IngestResult:
        """Validate and write the records, retrying what fails (an outage without end, a
        write that fails otherwise up to INGEST_MAX_WRITE_ATTEMPTS: then ChunkFailed)."""
        pauses = self._retry.delays()
        while True:
            try:
                now = datetime.now(UTC)
                result = await ingest_records(
                    self._engine,
                    records,
                    routes=self._routes,
                    zone=self._settings.timezone,
                    failed_at=now,
                    window=self._settings.event_time_window(now),
                    chunk_size=self._settings.ingest_chunk_size,
                    parallel_writes=self._settings.ingest_parallel_writes,
                    retry=self._retry,
                    max_attempts=max_attempts or self._settings.ingest_max_write_attempts,
                    on_failure=self._write_failed,
                    corroborating_products=self._settings.clock_corroboration_products,
                    options=WriteOptions(evidence_seconds=self._settings.clock_evidence_seconds),
                )
                self._failing = None
                self._write_failure = None
                return result
            except ChunkFailed:
                self._failing = None
                raise
            except Exception as error:
                # Not a database outage (ingest_records waits those out), nor a write that
                # failed for good: a bug of ours, say. Keep the batch, and say so.
                if self._failing is None:
                    self._failing = (time.monotonic(), repr(error)[:300])
                delay = next(pauses)
                metrics.BATCHES.labels("failed").inc()
                logger.exception(
                    "batch failed; retrying it",
                    extra={"error": repr(error)[:500], "retry_in_seconds": delay},
                )
                await asyncio.sleep(delay)

    def _write_failed(self, failure: WriteFailure) -> None:
        """Loud at once: /ready names the partitions and offsets, and each try counts."""
        self._write_failure = failure
        for topic, partition in {(r.topic, r.partition) for r in failure.records}:
            metrics.CONSUMER_ERRORS.labels(
                topic, str(partition), type(failure.error).__name__
            ).inc()

    async def _isolate(
        self,
        records: Sequence[KafkaRecord],
        consumer: AIOKafkaConsumer,
        failed: ChunkFailed,
        started: float,
    ) -> None:
        """A write failed for good. Per partition, find the first record that cannot be
        written (each prefix is written once more, which is idempotent); write and commit
        what comes before it, and stall the partition on it (see `ml-analytics skip`)."""
        by_partition: dict[tuple[str, int], list[KafkaRecord]] = {}
        for record in records:
            by_partition.setdefault((record.topic, record.partition), []).append(record)
        writable: list[KafkaRecord] = []
        stuck: list[tuple[KafkaRecord, BaseException]] = []
        for partition_records in by_partition.values():
            first_bad = await self._first_unwritable(partition_records)
            if first_bad is None:
                writable.extend(partition_records)
            else:
                index, error = first_bad
                writable.extend(partition_records[:index])
                stuck.append((partition_records[index], error))
        try:
            result = await self._write(writable, max_attempts=1)
        except ChunkFailed as again:  # what wrote alone fails together: stop at the first
            result, stuck = None, [(r[0], again.failure.error) for r in by_partition.values()]
        for record, error in stuck:
            self.stalls.hold(
                Stall(
                    partition=TopicPartition(record.topic, record.partition),
                    offset=record.offset,
                    batch_next_offset=record.offset + 1,
                    error=describe_error(error),
                    reason=type(error).__name__,
                    detected_at=datetime.now(UTC),
                    records=(record,),
                )
            )
        self._write_failure = None
        if result is not None:
            await self._finish(writable, consumer, result, started)

    async def _first_unwritable(
        self, records: list[KafkaRecord]
    ) -> tuple[int, BaseException] | None:
        """The index of the first record whose prefix cannot be written, with the error;
        None when all of them can be (a bisection: about log2(n) writes)."""
        error = await self._write_error(records)
        if error is None:
            return None
        good, bad = 0, len(records)  # records[:good] can be written, records[:bad] cannot
        while bad - good > 1:
            middle = (good + bad) // 2
            found = await self._write_error(records[:middle])
            if found is None:
                good = middle
            else:
                bad, error = middle, found
        return bad - 1, error

    async def _write_error(self, records: Sequence[KafkaRecord]) -> BaseException | None:
        try:
            await self._write(records, max_attempts=1)
        except ChunkFailed as failed:
            return failed.failure.error
        return None

    async def _publish_once(self, dead_letters: list[DeadLetter]) -> None:
        """Publish the batch's dead letters, retrying those the broker has not
        acknowledged yet (never one twice within the batch), until all are."""
        pending = list(dead_letters)
        pauses = self._retry.delays()
        while pending:
            outcomes = await asyncio.gather(
                *(_publish_dead_letters(self._dead_letters, [letter]) for letter in pending),
                return_exceptions=True,
            )
            failed = [
                (letter, outcome)
                for letter, outcome in zip(pending, outcomes, strict=True)
                if isinstance(outcome, BaseException)
            ]
            pending = [letter for letter, _ in failed]
            if not pending:
                self._failing = None
                return
            error = failed[0][1]
            if self._failing is None:
                self._failing = (time.monotonic(), repr(error)[:300])
            delay = next(pauses)
            metrics.BATCHES.labels("failed").inc()
            logger.warning(
                "publishing dead letters failed; retrying those not acknowledged",
                extra={
                    "error": repr(error)[:500],
                    "pending": len(pending),
                    "retry_in_seconds": delay,
                },
            )
            await asyncio.sleep(delay)


async def _publish_dead_letters(publisher: Any, dead_letters: list[DeadLetter]) -> None:
    if not dead_letters:
        return
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
            publisher.publish(letter.model_dump_json().encode(), key=letter.kafka_key())
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
    if result.database_retries:
        metrics.BATCHES.labels("retried").inc(result.database_retries)
    for topic in INPUT_TOPICS:
        name = settings.topic_name(topic.role)
        metrics.EVENTS_INGESTED.labels(name, "counted").inc(outcome.counted.get(topic.role, 0))
        metrics.EVENTS_INGESTED.labels(name, "seen_before").inc(
            outcome.seen_before.get(topic.role, 0)
        )
    for letter in result.dead_letters:
        metrics.DEAD_LETTERS.labels(letter.source_topic).inc()
    for name, count in result.key_mismatches.items():
        metrics.KEY_MISMATCHES.labels(name).inc(count)
    metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
    logger.debug(
        "batch committed",
        extra={
            "counted": dict(outcome.counted),
            "seen_before": dict(outcome.seen_before),
            "repeated_in_batch": result.repeated_in_batch,
            "dead_letters": len(result.dead_letters),
        },
    )
