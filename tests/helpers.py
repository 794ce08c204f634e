"""Helpers the integration and end-to-end tests share: publish, wait, read topics, the
database and the consumer group's offsets."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.consumers.broker import build_broker
from ml_analytics.consumers.subscriber import add_ingestion
from ml_analytics.settings import Settings

T = TypeVar("T")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def transaction(
    event_id: str, product_id: str, occurred_at: str, units: float = 1
) -> dict[str, Any]:
    """A transaction event as the contract has it."""
    return {
        "event_id": event_id,
        "product_id": product_id,
        "occurred_at": occurred_at,
        "quantity_units": units,
    }


def encode(event: dict[str, Any] | bytes) -> bytes:
    return event if isinstance(event, bytes) else json.dumps(event).encode()


async def publish(
    settings: Settings,
    topic: str,
    events: Iterable[tuple[bytes | None, dict[str, Any] | bytes]],
) -> int:
    """Publish (key, value) pairs and wait for every ack; returns how many."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=settings.kafka_enable_idempotence,
        acks="all",
        linger_ms=10,
        max_batch_size=1024 * 1024,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=key, value=encode(value)) for key, value in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


async def publish_to_partition(
    settings: Settings,
    topic: str,
    partition: int,
    events: Iterable[tuple[bytes | None, bytes]],
    *,
    compression: str | None = None,
    one_batch: bool = False,
) -> None:
    """Publish (key, value) pairs to one partition, in order, waiting for every ack;
    with `one_batch`, as a single record batch (compressed as one, if at all)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=settings.kafka_enable_idempotence,
        acks="all",
        compression_type=compression,
    )
    await producer.start()
    try:
        if one_batch:
            batch = producer.create_batch()
            for key, value in events:
                assert batch.append(key=key, value=value, timestamp=None) is not None
            await (await producer.send_batch(batch, topic, partition=partition))
        else:
            for key, value in events:
                await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def keyed(events: Iterable[dict[str, Any]]) -> list[tuple[bytes | None, dict[str, Any] | bytes]]:
    return [(str(event["product_id"]).encode(), event) for event in events]


@asynccontextmanager
async def reading_from_start(settings: Settings, topic: str):  # type: ignore[no-untyped-def]
    """A consumer without a group, assigned every partition of `topic` from its start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        yield consumer
    finally:
        await consumer.stop()


async def read_topic(
    settings: Settings,
    topic: str,
    expected: int,
    timeout: float = 30.0,
    enough: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """Read records from the start of `topic` (no consumer group) until there are
    `expected` of them, or until `enough(records)` says so when given."""
    records: list[Any] = []
    async with reading_from_start(settings, topic) as consumer:
        deadline = time.monotonic() + timeout
        done = enough or (lambda found: len(found) >= expected)
        while not done(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for items in batch.values():
                records.extend(items)
    return records


async def read_all(settings: Settings, topic: str, idle_seconds: float = 2.0) -> list[Any]:
    """Every record of `topic`, reading until none arrives for `idle_seconds` (for a
    topic no one writes to any more; end offsets are not used, since the embedded
    broker reports them per batch rather than per record)."""
    records: list[Any] = []
    async with reading_from_start(settings, topic) as consumer:
        while batch := await consumer.getmany(timeout_ms=int(idle_seconds * 1000)):
            for items in batch.values():
                records.extend(items)
    return records


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[Any]:
    for _ in range(50):
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, partition) for partition in sorted(found)]
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} has no partitions")


async def wait_until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll `probe` until `done(value)`; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not done(value):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        await asyncio.sleep(interval)
        value = await probe()
    return value


async def metric_reaches(
    service: Any, name: str, at_least: float, *, timeout: float, what: str, **labels: str
) -> float:
    """Wait until the service process's metric `name` (with `labels`) is `at_least`."""
    return await wait_until(
        lambda: asyncio.to_thread(service.metric, name, **labels),
        lambda value: value >= at_least,
        timeout=timeout,
        what=what,
    )


async def scalar(engine: AsyncEngine, query: str, **parameters: Any) -> Any:
    """The one value `query` reads (None when it finds no row)."""
    async with engine.connect() as connection:
        return (await connection.execute(text(query), parameters)).scalar_one_or_none()


async def ledger_count(engine: AsyncEngine, prefix: str = "") -> int:
    """Transactions counted (each event once), of the event ids that start with `prefix`."""
    return int(
        await scalar(
            engine, "SELECT count(*) FROM transaction_events WHERE event_id LIKE :p", p=f"{prefix}%"
        )
    )


async def committed_offset(settings: Settings, partition: int) -> int | None:
    """The service's consumer group's committed offset of a transactions partition, read
    by a consumer of the group that does not join it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(
            TopicPartition(settings.transactions_topic, partition)
        )
        return offset
    finally:
        await consumer.stop()


@asynccontextmanager
async def running_ingestion(settings: Settings, engine: AsyncEngine):  # type: ignore[no-untyped-def]
    """The service's ingestion subscriber, in this process, on the test's topics."""
    broker = build_broker(settings)
    pipeline = add_ingestion(broker, settings, engine)
    await broker.start()
    try:
        yield broker
    finally:
        await pipeline.drain(settings.shutdown_grace_seconds)
        await broker.stop()


@contextmanager
def serving_http(app: Any, settings: Settings) -> Iterator[str]:
    """The app behind the service's own uvicorn configuration (h11 and its bounds), in
    a thread of this process, on `settings.ml_port`; yields its base URL."""
    import threading

    import uvicorn

    from ml_analytics.http.server import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, settings, lifespan="on"))
    thread = threading.Thread(target=server.run, name="http-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{settings.ml_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@asynccontextmanager
async def running_service(settings: Settings, engine: AsyncEngine):  # type: ignore[no-untyped-def]
    """The whole service (consumers, trainer, risk relay, HTTP app) in this process."""
    from ml_analytics.composition import build_app

    broker = build_broker(settings)
    app = build_app(settings, engine, broker)
    async with app.router.lifespan_context(app):
        yield app


async def write_batch(engine: AsyncEngine, batch: Any) -> Any:
    """Write a SortedBatch the way ingestion does, on a pooled connection's driver."""
    from ml_analytics.services.ingestion.write import record_batch
    from ml_analytics.topics import INPUT_TOPICS

    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        return await record_batch(driver, batch, INPUT_TOPICS)
