"""Scale-out on the embedded stack: three replicas in one consumer group over six
partitions while the real sample is replayed; one is stopped with SIGTERM, another
killed with SIGKILL, a new one started. Nothing is lost or counted twice, no two
replicas ever train one product at once, and no level change is published twice."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.cli.replay import replay_file
from ml_analytics.devstack import ServiceProcess
from ml_analytics.settings import Settings
from tests.e2e.test_sample_replay import DATA, published_daily_demand, stored_daily_demand
from tests.helpers import read_all, scalar, wait_until

pytestmark = pytest.mark.integration

REPLICA_ENV = {
    "BUSINESS_TIMEZONE": "Europe/London",  # the sample's daily totals are London days
    "WORKER_COUNT": "1",
    "HTTP_FIT_WORKERS": "1",
    "INGEST_BATCH_MAX_RECORDS": "2000",
    "LOG_LEVEL": "INFO",
}


def training_spans(logs: list[Path]) -> dict[str, list[tuple[float, float, str]]]:
    """Per product, when each replica held it to train: (locked_at, unlocked_at, log)."""
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if '"model trained"' not in line:
                continue
            entry = json.loads(line)
            spans[entry["product_id"]].append((entry["locked_at"], entry["unlocked_at"], log.name))
    return spans


async def test_replicas_stopped_killed_and_added_during_a_replay_lose_and_duplicate_nothing(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    london = Settings(
        _env_file=None, **{**settings.model_dump(), "business_timezone": "Europe/London"}
    )
    replicas = [
        # One is killed outright: its temporary files (not removable) go to tmp_path.
        ServiceProcess(
            settings, tmp_path / f"replica{i}.log", **REPLICA_ENV, TMPDIR=str(tmp_path)
        ).start()
        for i in range(3)
    ]
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.wait_healthy, 120)

        async def owned() -> list[float]:
            return [
                replica.metric(
                    "ml_analytics_assigned_partitions", topic=settings.transactions_topic
                )
                for replica in replicas
            ]

        shares = await wait_until(
            owned, lambda s: sum(s) == 6 and min(s) >= 1, timeout=90, what="6 partitions over 3"
        )
        assert shares == [2, 2, 2]

        replay = asyncio.create_task(
            replay_file(DATA / "transactions.csv.gz", london, rate=15_000, progress=False)
        )
        await asyncio.sleep(4)
        replicas[0].signal(signal.SIGTERM)
        assert await asyncio.to_thread(replicas[0].wait, 60) == 0
        await asyncio.sleep(2)
        replicas[1].signal(signal.SIGKILL)
        await asyncio.to_thread(replicas[1].wait, 30)
        await asyncio.sleep(1)
        replicas.append(ServiceProcess(settings, tmp_path / "replica3.log", **REPLICA_ENV).start())
        sent = await replay
        stock = await replay_file(DATA / "stock_levels.csv", london, progress=False)

        await wait_until(
            lambda: scalar(engine, "SELECT count(*) FROM transaction_events"),
            lambda n: n == sent.published,
            timeout=240,
            interval=1,
            what="every transaction counted",
        )
        assert sent.published == 206_254
        assert await stored_daily_demand(engine) == published_daily_demand()
        await wait_until(
            lambda: scalar(engine, "SELECT count(*) FROM stock_snapshots"),
            lambda n: n == stock.published,
            timeout=60,
            what="every stock level stored",
        )
        # Enough training and risk publishing to have crossed the kill and the rebalances.
        await wait_until(
            lambda: scalar(
                engine, "SELECT count(*) FROM risk_outbox WHERE published_at IS NOT NULL"
            ),
            lambda n: n >= 100,
            timeout=240,
            interval=1,
            what="risk events published",
        )
    finally:
        for replica in replicas:
            replica.stop()

    spans = training_spans([replica.log_path for replica in replicas])
    assert sum(len(s) for s in spans.values()) >= 100
    for product, held in spans.items():
        held.sort()
        for (_, first_end, first_log), (second_start, _, second_log) in itertools.pairwise(held):
            assert second_start >= first_end, (product, first_log, second_log)
    assert len({log for held in spans.values() for _, _, log in held}) >= 2

    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for record in await read_all(settings, settings.stockout_risk_topic):
        event = json.loads(record.value)
        if event["event_id"] in seen:
            continue  # at least once: a re-publish carries the same event_id
        seen.add(event["event_id"])
        events[event["product_id"]].append(event)
    assert len(events) >= 100
    for product, published in events.items():
        # An event only when the level changes, or whether an order is needed does.
        states = [
            (event["risk_level"], (event["recommended_order_units"] or 0) > 0)
            for event in published
        ]
        assert all(a != b for a, b in itertools.pairwise(states)), (product, states)
