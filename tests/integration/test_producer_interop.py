"""Records as real producers write them: librdkafka (confluent-kafka) and aiokafka,
every compression codec of the protocol, headers, null keys, keys that are not the
product, tombstones, a transactional producer. Each is counted exactly once or
dead-lettered with its reason."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.settings import Settings
from tests.helpers import ledger_count, read_topic, running_ingestion, unique, wait_until

pytestmark = pytest.mark.integration

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
TODAY = datetime.now(UTC).date()


def events(tag: str, count: int, products: int = 5) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{tag}-{i}",
            "product_id": f"{tag}-P{i % products}",
            "occurred_at": (TODAY - timedelta(days=i % 9)).isoformat(),
            "quantity_units": 1 + i % 4,
        }
        for i in range(count)
    ]


async def stored_totals(engine: AsyncEngine, tag: str) -> dict[tuple[str, str], float]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT product_id, business_day, quantity_units FROM daily_demand "
                "WHERE product_id LIKE :tag"
            ),
            {"tag": f"{tag}-%"},
        )
        return {(r.product_id, r.business_day.isoformat()): float(r.quantity_units) for r in rows}


def expected_totals(sent: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    totals: Counter[tuple[str, str]] = Counter()
    for event in sent:
        totals[(event["product_id"], event["occurred_at"])] += event["quantity_units"]
    return dict(totals)


def librdkafka(settings: Settings, **config: Any) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            # The same key -> partition mapping as the Java client and aiokafka.
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            **config,
        }
    )


def librdkafka_publish(producer: Producer, topic: str, records: list[tuple[Any, ...]]) -> None:
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    for key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failures, failures


async def test_every_codec_from_librdkafka_and_aiokafka_is_counted_exactly_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = unique("codec")
    topic = settings.transactions_topic
    sent: list[dict[str, Any]] = []
    async with running_ingestion(settings, engine):
        for codec in CODECS:
            batch = events(f"{tag}-rd-{codec}", 200)
            sent += batch
            records = [
                # Headers as producers add them; a null key on every fifth event
                # (the value's product_id decides).
                (
                    None if i % 5 == 0 else e["product_id"].encode(),
                    json.dumps(e).encode(),
                    [("trace-id", f"t{i}".encode()), ("source", b"erp")],
                )
                for i, e in enumerate(batch)
            ]
            producer = librdkafka(settings, **{"compression.type": codec})
            await asyncio.to_thread(librdkafka_publish, producer, topic, records)

            batch = events(f"{tag}-aio-{codec}", 200)
            sent += batch
            aio = AIOKafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                compression_type=None if codec == "none" else codec,
                linger_ms=5,
            )
            await aio.start()
            try:
                for i, e in enumerate(batch):
                    await aio.send(
                        topic,
                        json.dumps(e).encode(),
                        key=e["product_id"].encode(),
                        headers=[("n", str(i).encode())],
                    )
                await aio.flush()
            finally:
                await aio.stop()
        expected = expected_totals(sent)
        await wait_until(
            lambda: stored_totals(engine, tag),
            lambda found: found == expected,
            timeout=60,
            what="every codec's events counted",
        )
    assert await ledger_count(engine, f"{tag}-") == len(sent) == 2000


async def test_tombstones_and_keys_other_than_the_product_are_handled_as_documented(
    settings: Settings, engine: AsyncEngine
) -> None:
    tag = unique("keys")
    topic = settings.transactions_topic
    good = events(tag, 30, products=3)
    mismatched = metrics.KEY_MISMATCHES.labels(topic)
    mismatched_at_start = mismatched._value.get()
    records = [
        # A key that is not the product (an order number, say): counted for the
        # value's product, and counted in the metric.
        (f"order-{i}".encode() if i < 10 else e["product_id"].encode(), json.dumps(e).encode(), [])
        for i, e in enumerate(good)
    ]
    tombstone = (f"{tag}-P0".encode(), None, [])
    async with running_ingestion(settings, engine):
        producer = librdkafka(settings, **{"compression.type": "zstd"})
        await asyncio.to_thread(librdkafka_publish, producer, topic, [tombstone, *records])
        expected = expected_totals(good)
        await wait_until(lambda: stored_totals(engine, tag), lambda found: found == expected)
        letters = await read_topic(settings, settings.dead_letter_topic, 1)
    (letter,) = [json.loads(record.value) for record in letters]
    assert letter["value"] is None and letter["key"] == f"{tag}-P0"
    assert letter["error"] == (
        "value is empty (a tombstone or an empty message); expected a JSON object"
    )
    assert mismatched._value.get() == mismatched_at_start + 10


async def test_a_transactional_producer_s_committed_events_are_counted_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    # The consumer reads with isolation_level=read_committed, so on Apache Kafka an
    # aborted transaction's events are never counted. (The embedded broker does not
    # report aborted transactions to consumers, so only commits are checked here.)
    tag = unique("txn")
    topic = settings.transactions_topic
    first, second = events(f"{tag}-a", 100), events(f"{tag}-b", 100)

    def publish_in_transactions() -> None:
        producer = librdkafka(
            settings, **{"transactional.id": f"{tag}-producer", "compression.type": "lz4"}
        )
        producer.init_transactions(30)
        for batch in (first, second):
            producer.begin_transaction()
            for e in batch:
                producer.produce(topic, value=json.dumps(e).encode(), key=e["product_id"].encode())
            producer.commit_transaction(30)

    async with running_ingestion(settings, engine) as broker:
        (subscriber,) = broker.subscribers
        assert subscriber.consumer._isolation_level == "read_committed"
        await asyncio.to_thread(publish_in_transactions)
        expected = expected_totals(first + second)
        await wait_until(lambda: stored_totals(engine, tag), lambda found: found == expected)
    assert await ledger_count(engine, f"{tag}-") == 200
