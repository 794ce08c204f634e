"""Topic administration: create the contract's topics that are missing."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from ml_analytics.kafka import kafka_client_options
from ml_analytics.settings import Settings

logger = logging.getLogger(__name__)


async def ensure_topics(settings: Settings, *, wait_seconds: float = 60.0) -> list[str]:
    """Create the topics of topics.yaml that do not exist yet; return the ones created.

    Waits up to `wait_seconds` for the broker to answer (it may still be starting).
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        admin = AIOKafkaAdminClient(**kafka_client_options(settings, "admin"))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(
                    name=spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=settings.topics.replication_factor,
                )
                for spec in settings.topics.topics.values()
                if spec.name not in existing
            ]
            created: list[str] = []
            for topic in wanted:
                try:
                    await admin.create_topics([topic])
                    created.append(topic.name)
                except TopicAlreadyExistsError:  # another replica was first
                    pass
            if created:
                logger.info("created topics", extra={"topics": created})
            return created
        except (KafkaConnectionError, KafkaError, OSError) as error:
            if time.monotonic() >= deadline:
                raise
            logger.warning(
                "broker not reachable yet, retrying",
                extra={"bootstrap_servers": settings.kafka_bootstrap_servers, "error": repr(error)},
            )
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
