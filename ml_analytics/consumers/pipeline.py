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
from ml_analytics.consumers.broker import Publishers
from ml_analytics.consumers.skipping import StallSkipper
from ml_analytics.consumers.stalls import PartitionStalls
from ml_analytics.events import DeadLetter
from ml_analytics.lifecycle import RetryPolicy, cancel_and_wait
from ml_analytics.services.ingestion.sort import KafkaRecord
from ml_analytics.services.ingestion.write import BatchOutcome, IngestResult, ingest_records
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
                    routes=self._routes,
                    zone=self._settings.timezone,
                    failed_at=now,
                    window=self._settings.event_time_window(now),
                    chunk_size=self._settings.ingest_chunk_size,
                    parallel_writes=self._settings.ingest_parallel_writes,
                    retry=self._retry,
                )
                await _publish_dead_letters(self._dead_letters, result.dead_letters)
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
