"""The service's one broker connection, and the publishers of its output topics, declared
from the topics table (so /asyncapi documents them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from faststream.kafka import KafkaBroker

from ml_analytics.kafka import kafka_security
from ml_analytics.settings import Settings
from ml_analytics.topics import OUTPUT_TOPICS

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Publishers:
    """A declared FastStream publisher per output topic role."""

    by_role: dict[str, Any]

    def __getitem__(self, role: str) -> Any:
        return self.by_role[role]


def declare_publishers(broker: KafkaBroker, settings: Settings) -> Publishers:
    return Publishers(
        {
            topic.role: broker.publisher(
                settings.topic_name(topic.role),
                title=topic.role,
                description=topic.description,
                schema=topic.message,
                headers={"content-type": "application/json"},
            )
            for topic in OUTPUT_TOPICS
        }
    )
