"""The ingestion subscriber: one FastStream batch subscriber on every input topic of the
topics table, in one consumer group.

Thin by design: its handler hands each batch to the pipeline (consumers/pipeline.py)
and returns, so the next batch is fetched and unpacked while the pipeline writes this
one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage, Topic
from faststream.message import StreamMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.consumers.broker import Publishers, declare_publishers
from ml_analytics.consumers.pipeline import BatchListener, IngestionPipeline
from ml_analytics.consumers.stalls import PartitionStalls
from ml_analytics.settings import Settings
from ml_analytics.topics import INPUT_TOPICS

logger = logging.getLogger(__name__)


async def _raw_values(message: StreamMessage[Any]) -> Any:
    # Keep the bytes: each record is validated on its own, so one bad message
    # becomes one dead letter instead of failing the whole batch in a decoder.
    return message.body


def add_ingestion(
    broker: KafkaBroker,
    settings: Settings,
    engine: AsyncEngine,
    *,
    publishers: Publishers | None = None,
    on_batch: BatchListener | None = None,
) -> IngestionPipeline:
    """Subscribe to every input topic in one consumer group (and declare the output
    topics' publishers, unless given). Call the returned pipeline's `drain()` before
    stopping the broker.
    """
    publishers = publishers or declare_publishers(broker, settings)
    pipeline = IngestionPipeline(publishers, settings, engine, on_batch)
    names = tuple(settings.topic_name(topic.role) for topic in INPUT_TOPICS)
    subscriber = broker.subscriber(
        *(Topic(name, declare=False) for name in names),
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
        listener=_AssignmentListener(names, pipeline.stalls),
        title="ingest",
        description=" ".join(topic.description for topic in INPUT_TOPICS),
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
