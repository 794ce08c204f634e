"""A record batch the consumer cannot decode: its partition stops, loudly (/ready,
the metric, an ERROR), the other partitions keep flowing with nothing lost, and
`ml-analytics skip` moves past it, recording what was skipped as a dead letter."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime

import aiokafka.codec
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics import metrics
from ml_analytics.settings import Settings
from tests.helpers import (
    committed_offset,
    encode,
    ledger_count,
    publish_to_partition,
    read_topic,
    running_service,
    unique,
    wait_until,
)
from tests.helpers import transaction as transaction_event

pytestmark = pytest.mark.integration

STUCK = 1  # the partition that gets the bad batch


def transaction(event_id: str, product: str) -> bytes:
    return encode(transaction_event(event_id, product, datetime.now(UTC).date().isoformat()))


async def skip(settings: Settings, offset: int) -> tuple[int, str]:
    """`python -m ml_analytics skip` as an operator runs it; its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ml_analytics",
        "skip",
        "--topic",
        settings.transactions_topic,
        "--partition",
        str(STUCK),
        "--offset",
        str(offset),
        "--reason",
        "test",
        "--wait",
        "30",
        env={**os.environ, "DATABASE_URL": settings.database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_undecodable_batch_stalls_only_its_partition_until_an_operator_skips_it(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = unique("stall")
    topic = settings.transactions_topic
    before = [(b"A", transaction(f"{tag}-before-{i}", f"{tag}-A")) for i in range(10)]
    bad = [(b"A", transaction(f"{tag}-bad-{i}", f"{tag}-A")) for i in range(4)]
    after = [(b"A", transaction(f"{tag}-after-{i}", f"{tag}-A")) for i in range(10)]
    elsewhere = {
        partition: [
            (b"B", transaction(f"{tag}-else-{partition}-{i}", f"{tag}-B{partition}"))
            for i in range(5)
        ]
        for partition in (0, 2, 3, 4, 5)
    }
    errors = metrics.CONSUMER_ERRORS.labels(topic, str(STUCK), "UnsupportedCodecError")
    errors_at_start = errors._value.get()
    await publish_to_partition(settings, topic, STUCK, before)
    await publish_to_partition(settings, topic, STUCK, bad, compression="lz4", one_batch=True)
    await publish_to_partition(settings, topic, STUCK, after)
    for partition, events in elsewhere.items():
        await publish_to_partition(settings, topic, partition, events)
    # The service meets an lz4 batch without the library to decode it (offsets 10..13),
    # as a consumer did before the codecs were dependencies.
    monkeypatch.setattr(aiokafka.codec, "has_lz4", lambda: False)
    async with running_service(settings, engine) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            # Every other partition's events, and the stuck one's up to the bad batch.
            await wait_until(lambda: ledger_count(engine, f"{tag}-else"), lambda n: n == 25)
            await wait_until(lambda: ledger_count(engine, f"{tag}-before"), lambda n: n == 10)

            async def readiness() -> httpx.Response:
                return await api.get("/ready")

            ready = await wait_until(
                readiness, lambda r: r.status_code == 503, timeout=20, what="/ready 503"
            )
            detail = ready.json()["detail"]
            assert ready.json()["failing"] == ["ingestion"]
            assert f"{topic}[{STUCK}] stuck at offset 10 (the batch ends at offset 13)" in detail
            assert "Libraries for lz4 compression codec not found" in detail
            assert "ml-analytics skip" in detail
            assert errors._value.get() == errors_at_start + 1  # once, not once per fetch
            await asyncio.sleep(1)
            assert (
                await ledger_count(engine, f"{tag}-after") == 0
            )  # nothing behind it skipped silently

            # A wrong offset is refused: no good record can be skipped by a typo.
            code, output = await skip(settings, 5)
            assert code == 1, output
            assert "offset 5 is not in that batch: ask to skip offset 10" in output
            assert (await api.get("/ready")).status_code == 503

            code, output = await skip(settings, 12)
            assert code == 0, output
            assert f"skipped offsets 10..13 of {topic}[{STUCK}]" in output
            await wait_until(lambda: ledger_count(engine, f"{tag}-after"), lambda n: n == 10)
            await wait_until(readiness, lambda r: r.status_code == 200, timeout=20)
            assert await ledger_count(engine, f"{tag}-bad") == 0

    letters = [
        json.loads(record.value)
        for record in await read_topic(settings, settings.dead_letter_topic, 1)
    ]
    (letter,) = letters
    assert (letter["source_topic"], letter["partition"]) == (topic, STUCK)
    assert (letter["offset"], letter["last_offset"]) == (10, 13)
    assert "skipped by an operator (ml-analytics skip, request" in letter["error"]
    assert "(test)" in letter["error"] and "UnsupportedCodecError" in letter["error"]
    assert await committed_offset(settings, STUCK) == 24
