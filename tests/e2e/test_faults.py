"""Faults the service survives, each on the embedded stack, each with its figures
(printed; run with -s to see them): a broker outage mid-stream, a poison message,
and fits that hang past WORKER_TIMEOUT. (A PostgreSQL outage mid-stream is
tests/integration/test_ingestion.py::test_database_outage_pauses_ingestion_and_loses_nothing.)"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.devstack import EmbeddedBroker, ServiceProcess, free_port
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine
from tests.conftest import make_settings
from tests.e2e.test_service_process import expected_totals, make_events, stored_totals
from tests.helpers import (
    committed_offset,
    keyed,
    ledger_count,
    metric_reaches,
    publish,
    read_topic,
    running_ingestion,
    scalar,
    transaction,
    unique,
    wait_until,
)
from tests.proxy import TcpProxy
from tests.services import StackServices

pytestmark = pytest.mark.integration


def report(fault: str, **figures: object) -> None:
    print(f"\nFAULT {fault}: " + ", ".join(f"{name}={value}" for name, value in figures.items()))


async def owns_all_partitions(service: ServiceProcess, settings: Settings) -> None:
    async def owned() -> float:
        return service.metric("ml_analytics_assigned_partitions", topic=settings.transactions_topic)

    await wait_until(owned, lambda n: n == 6, timeout=60, what="the partitions assigned")


async def test_broker_outage_mid_stream_loses_nothing_and_counts_nothing_twice(
    services: StackServices, database_url: str, tmp_path: Path
) -> None:
    # A broker of this test's own behind a proxy that can cut every connection.
    broker_port, proxy_port = free_port(), free_port()
    proxy = await TcpProxy(proxy_port, broker_port).start()
    broker = EmbeddedBroker(
        port=broker_port, advertised_port=proxy_port, log_path=tmp_path / "broker.log"
    ).start()
    settings = make_settings(
        services,
        database_url,
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_enable_idempotence=False,
    )
    await ensure_topics(settings, wait_seconds=20)
    engine = create_engine(settings)
    service = ServiceProcess(
        settings, tmp_path / "service.log", INGEST_BATCH_MAX_RECORDS="300", TRAINING_ENABLED="false"
    ).start()
    tag = unique("outage")
    before = make_events(6000, 40, f"{tag}-a", seed=1)
    after = make_events(4000, 40, f"{tag}-b", seed=2)
    try:
        await asyncio.to_thread(service.wait_healthy)
        await owns_all_partitions(service, settings)
        await publish(settings, settings.transactions_topic, keyed(before))
        await wait_until(
            lambda: ledger_count(engine), lambda n: n >= 300, what="ingestion under way"
        )
        proxy.cut()
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:

            async def readiness() -> httpx.Response:
                return await client.get("/ready")

            unready = await wait_until(
                readiness, lambda r: r.status_code == 503, timeout=30, what="/ready to fail"
            )
            assert "kafka" in unready.json()["failing"]
            await asyncio.sleep(8)
            counted_during_outage = await ledger_count(engine)
            proxy.restore()
            restored = time.monotonic()
            await publish(settings, settings.transactions_topic, keyed(after))
            await wait_until(
                lambda: ledger_count(engine),
                lambda n: n == len(before) + len(after),
                timeout=120,
                what="every event after the outage",
            )
            recovered_seconds = time.monotonic() - restored
            await wait_until(
                readiness, lambda r: r.status_code == 200, timeout=30, what="/ready again"
            )
        assert await stored_totals(engine) == expected_totals(before + after)
        assert service.process is not None and service.process.poll() is None
        report(
            "broker outage",
            events_sent=len(before) + len(after),
            events_counted=await ledger_count(engine),
            counted_when_cut=counted_during_outage,
            outage_seconds=8,
            seconds_to_count_all_after_restore=round(recovered_seconds, 1),
        )
    finally:
        service.stop()
        broker.stop()
        await proxy.stop()
        await engine.dispose()


async def test_a_poison_message_goes_to_dead_letters_and_its_partition_moves_on(
    settings: Settings, engine: AsyncEngine
) -> None:
    product = unique("poison")
    key = product.encode()
    good = [transaction(f"{product}-{i}", product, "2026-11-01T10:00:00Z") for i in range(50)]
    # Same key, so the same partition: poison first, then the good events behind it.
    stream: list[tuple[bytes | None, dict[str, object] | bytes]] = [(key, b"\xff\xfe{not json")]
    stream += [(key, event) for event in good]
    async with running_ingestion(settings, engine):
        await publish(settings, settings.transactions_topic, stream)
        letters = await read_topic(settings, settings.dead_letter_topic, 1)
        await wait_until(lambda: ledger_count(engine), lambda n: n == 50, what="the good events")

        letter = json.loads(letters[0].value)
        poisoned_partition = letter["partition"]

        async def committed_past_the_good_events() -> bool:
            # The poison is at the dead letter's offset, the 50 good events right behind it.
            return await committed_offset(settings, poisoned_partition) == letter["offset"] + 51

        await wait_until(
            committed_past_the_good_events, bool, timeout=30, what="the partition committed past it"
        )
    assert letter["value_encoding"] == "base64"
    assert "not valid JSON" in letter["error"] or "UTF-8" in letter["error"]
    report(
        "poison message",
        dead_letters=len(letters),
        good_events_behind_it_counted=await ledger_count(engine),
        partition=poisoned_partition,
        dead_letter_offset=letter["offset"],
    )


async def test_fits_past_worker_timeout_never_stop_ingestion(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    service = ServiceProcess(
        settings,
        tmp_path / "service.log",
        WORKER_TIMEOUT="0.01",  # every fit is too slow: killed, its pool replaced
        RETRAIN_FAILURE_BACKOFF_SECONDS="1",
        MIN_TRAINING_DAYS="14",
    ).start()
    tag = unique("hung")
    days = [f"2026-{month:02d}-{day:02d}" for month in (9, 10) for day in range(1, 29)]
    events = [
        {
            "event_id": f"{tag}-{product}-{day}-{n}",
            "product_id": f"{tag}-P{product}",
            "occurred_at": f"{day}T12:00:00Z",
            "quantity_units": 2,
        }
        for product in range(20)
        for day in days
        for n in range(5)
    ]
    half = len(events) // 2
    try:
        await asyncio.to_thread(service.wait_healthy)
        await owns_all_partitions(service, settings)
        await publish(settings, settings.transactions_topic, keyed(events[:half]))
        await metric_reaches(
            service,
            "ml_analytics_model_fits_total",
            3,
            result="failed",
            timeout=60,
            what="fits timing out",
        )
        started = time.monotonic()
        await publish(settings, settings.transactions_topic, keyed(events[half:]))
        await wait_until(
            lambda: ledger_count(engine), lambda n: n == len(events), timeout=60, what="all events"
        )
        seconds = time.monotonic() - started
        failed = service.metric("ml_analytics_model_fits_total", result="failed")
        assert await scalar(engine, "SELECT count(*) FROM product_models") == 0
        assert service.process is not None and service.process.poll() is None
        async with httpx.AsyncClient(base_url=service.url, timeout=5) as client:
            assert (await client.get("/health")).status_code == 200
        assert "model fit failed; will try again" in service.log()
    finally:
        service.stop()
    report(
        "fits past WORKER_TIMEOUT",
        events_sent=len(events),
        events_counted=len(events),
        fits_timed_out=int(failed),
        seconds_to_count_the_second_half_while_fits_time_out=round(seconds, 1),
    )
