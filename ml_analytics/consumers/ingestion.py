"""The ingestion subscriber: batches from both input topics into PostgreSQL.

Thin by design: sort the batch (services.ingest), write it, publish its dead
letters, then commit the offsets. The offsets are committed only after the
database commit and the dead-letter acks, and the subscriber never lets a batch
go without either committing it or rewinding to it, so a crash, a rebalance or
a database outage can delay an event but never lose it; the ledger of event ids
makes the redelivery count once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage, Topic
from faststream.message import StreamMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.events import DeadLetter
from ml_analytics.services.ingest import BatchOutcome, SortedBatch, record_batch, sort_records
from ml_analytics.settings import Settings
from ml_analytics.storage.database import is_transient

logger = logging.getLogger(__name__)

BatchListener = Callable[[BatchOutcome], Awaitable[None]]


def build_broker(settings: Settings) -> KafkaBroker:
    """The service's one broker connection (consumers and publishers)."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=settings.kafka_client_id,
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


def add_ingestion(
    broker: KafkaBroker,
    settings: Settings,
    engine: AsyncEngine,
    *,
    on_batch: BatchListener | None = None,
) -> None:
    """Subscribe to the transactions and stock-levels topics in one consumer group."""
    zone = settings.timezone
    transactions_topic = settings.transactions_topic
    stock_levels_topic = settings.stock_levels_topic

    @broker.subscriber(
        Topic(transactions_topic, declare=False),
        Topic(stock_levels_topic, declare=False),
        batch=True,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        max_records=settings.ingest_batch_max_records,
        batch_timeout_ms=settings.ingest_batch_timeout_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_values,
        listener=_AssignmentListener((transactions_topic, stock_levels_topic)),
        title="ingest",
        description="Transactions and stock levels into the daily aggregates.",
    )
    async def ingest(values: Any, message: KafkaMessage) -> None:
        started = time.perf_counter()
        records = message.raw_message
        if not isinstance(records, tuple):
            records = (records,)
        batch = sort_records(
            records,
            transactions_topic=transactions_topic,
            stock_levels_topic=stock_levels_topic,
            zone=zone,
            failed_at=datetime.now(UTC),
        )
        try:
            outcome = await _record_with_retries(engine, batch, settings)
            await _publish_dead_letters(broker, settings, batch.dead_letters)
        except BaseException:
            # Cancelled (shutdown) or a failure that is not a passing one: rewind
            # so the batch is read again; nothing is committed past it.
            metrics.BATCHES.labels("failed").inc()
            await message.nack()
            raise
        await _commit(message)
        _observe(outcome, batch, transactions_topic, stock_levels_topic, started)
        if on_batch is not None:
            await on_batch(outcome)


class _AssignmentListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs and exposes which partitions (and so which products) this replica owns."""

    def __init__(self, topics: tuple[str, ...]) -> None:
        self._topics = topics
        self._owned: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._owned -= set(revoked)
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


async def _record_with_retries(
    engine: AsyncEngine, batch: SortedBatch, settings: Settings
) -> BatchOutcome:
    """Write the batch, waiting out database outages (good events never become dead letters)."""
    delay = 0.5
    while True:
        try:
            return await record_batch(engine, batch)
        except Exception as error:
            transient = is_transient(error)
            metrics.BATCHES.labels("retried").inc()
            logger.log(
                logging.WARNING if transient else logging.ERROR,
                "database write failed, retrying the batch",
                extra={
                    "error": repr(error)[:500],
                    "transient": transient,
                    "retry_in_seconds": delay,
                    "batch_events": batch.valid_events,
                },
                exc_info=not transient,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.ingest_retry_max_seconds)


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
                key=_original_key(letter),
                headers={"content-type": "application/json"},
            )
            for letter in dead_letters
        )
    )


def _original_key(letter: DeadLetter) -> bytes | None:
    if letter.key is None:
        return None
    if letter.key_encoding == "base64":
        return base64.b64decode(letter.key)
    return letter.key.encode()


async def _commit(message: KafkaMessage) -> None:
    try:
        await message.ack()
        metrics.BATCHES.labels("committed").inc()
    except (CommitFailedError, IllegalStateError, KafkaError) as error:
        # The partitions moved to another consumer during the batch. Its events
        # are in the database already; the new owner re-reads them and the
        # ledger ignores them.
        logger.warning("offset commit failed after a rebalance", extra={"error": repr(error)})


def _observe(
    outcome: BatchOutcome,
    batch: SortedBatch,
    transactions_topic: str,
    stock_levels_topic: str,
    started: float,
) -> None:
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
    for letter in batch.dead_letters:
        metrics.DEAD_LETTERS.labels(letter.source_topic).inc()
    metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
    logger.debug(
        "batch committed",
        extra={
            "transactions_counted": outcome.transactions_counted,
            "seen_before": outcome.transactions_seen_before + outcome.stock_snapshots_seen_before,
            "repeated_in_batch": batch.repeated_in_batch,
            "stock_snapshots": outcome.stock_snapshots_recorded,
            "dead_letters": len(batch.dead_letters),
        },
    )
