"""Ingestion throughput, end to end: Kafka -> the service -> PostgreSQL.

Publishes N transaction events for P products, then, in the same run, times
  1. a bare aiokafka consumer that reads and JSON-decodes them (the ceiling), and
  2. the service (`python -m ml_analytics run`, a separate process) until every
     event is counted in PostgreSQL,
each from its partition assignment to its last event. Prints a table.

    python -m bench.ingest [--events 200000] [--products 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from sqlalchemy import text

from bench._stack import bench_stack
from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.devstack import ServiceProcess
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine, migrate


def make_events(count: int, products: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(42)
    events = []
    for i in range(count):
        product = f"SKU-{rng.randrange(products):05d}"
        day = 1 + (i * 730) // count  # two years of history, in time order
        value = {
            "event_id": f"bench-{i:09d}",
            "product_id": product,
            "occurred_at": f"2024-01-01T10:{i % 60:02d}:00Z" if day == 1 else None,
            "quantity_units": rng.choice([1, 2, 3, 4, 6, 12, 24]),
        }
        value["occurred_at"] = _day(day) + f"T{8 + i % 12:02d}:{i % 60:02d}:00Z"
        events.append((product.encode(), json.dumps(value, separators=(",", ":")).encode()))
    return events


def _day(offset: int) -> str:
    from datetime import date, timedelta

    return (date(2024, 1, 1) + timedelta(days=offset - 1)).isoformat()


async def publish(settings: Settings, events: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        acks="all",
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value in events:
            pending.append(await producer.send(settings.transactions_topic, key=key, value=value))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.at: float | None = None

    async def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.at = self.at or time.perf_counter()


async def raw_consume(settings: Settings, expected: int) -> float:
    """Seconds for a bare aiokafka consumer group to read and json-decode every event."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    listener = _Assigned()
    consumer.subscribe([settings.transactions_topic], listener=listener)
    await consumer.start()
    seen = 0
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    json.loads(record.value)
                seen += len(records)
        done = time.perf_counter()
    finally:
        await consumer.stop()
    assert listener.at is not None
    return done - listener.at


def service_consume(settings: Settings, expected: int, log_path: Path) -> float:
    """Seconds for the service process to count every event into PostgreSQL."""
    # Ingestion alone, as the goal is stated: training these products would take
    # both cores meanwhile (measured separately by bench/retrain).
    service = ServiceProcess(
        settings, log_path, LOG_LEVEL="WARNING", TRAINING_ENABLED="false"
    ).start()
    try:
        service.wait_healthy(120)
        topic = settings.transactions_topic
        while service.metric("ml_analytics_assigned_partitions", topic=topic) == 0:
            time.sleep(0.05)
        assigned = time.perf_counter()
        while (
            service.metric("ml_analytics_events_ingested_total", topic=topic, outcome="counted")
            < expected
        ):
            time.sleep(0.05)
        return time.perf_counter() - assigned
    finally:
        service.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--products", type=int, default=500)
    args = parser.parse_args()

    with bench_stack("ingest") as settings:
        await migrate(settings.database_url)
        await ensure_topics(settings)
        events = make_events(args.events, args.products)
        publish_seconds = await publish(settings, events)
        raw_seconds = await raw_consume(settings, args.events)
        log_path = Path(f"/tmp/{settings.kafka_group_id}.log")
        service_seconds = await asyncio.to_thread(service_consume, settings, args.events, log_path)
        engine = create_engine(settings)
        async with engine.connect() as connection:
            counted = (
                await connection.execute(text("SELECT count(*) FROM transaction_events"))
            ).scalar_one()
            # The ledger on disk, with its indexes and TOAST.
            ledger_bytes = (
                await connection.execute(
                    text("SELECT pg_total_relation_size('transaction_events'::regclass)")
                )
            ).scalar_one()
        await engine.dispose()

    raw_rate = args.events / raw_seconds
    service_rate = args.events / service_seconds
    print()
    print(f"bench/ingest: {args.events:,} events, {args.products} products, 6 partitions")
    print(
        f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"broker {'external' if settings.kafka_enable_idempotence else 'embedded Tansu'}"
    )
    print()
    print(f"| {'what':<44} | {'seconds':>8} | {'events/s':>10} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 12}|")
    print(
        f"| {'publish (aiokafka producer, for reference)':<44} | {publish_seconds:8.2f} | {args.events / publish_seconds:10,.0f} |"
    )
    print(
        f"| {'raw aiokafka consume + json decode (ceiling)':<44} | {raw_seconds:8.2f} | {raw_rate:10,.0f} |"
    )
    print(
        f"| {'ml-analytics: Kafka -> PostgreSQL, committed':<44} | {service_seconds:8.2f} | {service_rate:10,.0f} |"
    )
    print()
    print(f"service / raw ratio: {service_rate / raw_rate:.2f}   (goal >= 0.25)")
    print(f"end to end: {service_rate:,.0f} events/s   (goal >= 50,000)")
    print(f"events counted in PostgreSQL: {counted:,} of {args.events:,}")
    print(
        f"ledger of event ids: {int(ledger_bytes) / 2**20:,.1f} MiB, "
        f"{int(ledger_bytes) / max(counted, 1) * 1e6 / 2**20:,.1f} MiB per million events "
        "(each id kept DEDUP_WINDOW_DAYS after it arrived)"
    )
    print(f"command: python -m bench.ingest --events {args.events} --products {args.products}")


if __name__ == "__main__":
    asyncio.run(main())
