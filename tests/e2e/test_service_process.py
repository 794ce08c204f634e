"""The service as a real process: crashes, restarts, replicas, graceful stop, `dev`."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.devstack import ServiceProcess, free_port
from ml_analytics.settings import Settings
from tests.helpers import (
    keyed,
    ledger_count,
    metric_reaches,
    publish,
    scalar,
    unique,
    wait_until,
)
from tests.processes import children_of

pytestmark = pytest.mark.integration


def make_events(count: int, products: int, tag: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "event_id": f"{tag}-{i}",
            "product_id": f"{tag}-P{rng.randrange(products)}",
            "occurred_at": f"2026-10-{rng.randrange(1, 31):02d}T{rng.randrange(24):02d}:15:00Z",
            "quantity_units": rng.choice([1, 2, 3, 5, 12, 0.5]),
        }
        for i in range(count)
    ]


def expected_totals(events: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, int]]:
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for event in events:
        entry = totals[(event["product_id"], event["occurred_at"][:10])]
        entry[0] += event["quantity_units"]
        entry[1] += 1
    return {key: (units, int(count)) for key, (units, count) in totals.items()}


async def stored_totals(engine: AsyncEngine) -> dict[tuple[str, str], tuple[float, int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT product_id, business_day, quantity_units, transaction_count FROM daily_demand"
            )
        )
        return {
            (row.product_id, row.business_day.isoformat()): (
                float(row.quantity_units),
                row.transaction_count,
            )
            for row in rows
        }


async def publish_paced(
    settings: Settings, events: list[dict[str, Any]], chunks: int, pause: float
) -> None:
    size = -(-len(events) // chunks)
    for start in range(0, len(events), size):
        await publish(settings, settings.transactions_topic, keyed(events[start : start + size]))
        await asyncio.sleep(pause)


async def test_service_killed_mid_stream_and_restarted_loses_nothing_and_counts_nothing_twice(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    events = make_events(24_000, products=150, tag=unique("kill"), seed=1)
    republished = events[:2_000]  # upstream sends some of them again
    # Killed outright, it cannot remove its temporary files: they go to tmp_path.
    first = ServiceProcess(
        settings, tmp_path / "first.log", INGEST_BATCH_MAX_RECORDS="300", TMPDIR=str(tmp_path)
    ).start()
    try:
        first.wait_healthy()
        publisher = asyncio.create_task(publish_paced(settings, events, chunks=24, pause=0.25))
        counted_at_kill = await wait_until(
            lambda: ledger_count(engine),
            lambda n: n >= 4_000,
            timeout=60,
            interval=0.05,
            what="ingestion under way",
        )
        first.signal(signal.SIGKILL)
        first.wait(10)
        assert counted_at_kill < len(events), "the kill must land mid-stream"
        second = ServiceProcess(
            settings, tmp_path / "second.log", INGEST_BATCH_MAX_RECORDS="300"
        ).start()
        try:
            second.wait_healthy()
            await publisher
            await publish(settings, settings.transactions_topic, keyed(republished))
            await wait_until(
                lambda: ledger_count(engine),
                lambda n: n == len(events),
                timeout=120,
                what="every event after the restart",
            )
            await asyncio.sleep(2)  # let the republished copies arrive too
            assert second.metric(
                "ml_analytics_events_ingested_total",
                topic=settings.transactions_topic,
                outcome="seen_before",
            ) >= len(republished)
        finally:
            second.stop()
    finally:
        first.stop()
    assert await ledger_count(engine) == len(events)
    assert await stored_totals(engine) == expected_totals(events)


async def test_two_service_processes_split_the_partitions_and_totals_stay_exact(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    events = make_events(20_000, products=120, tag=unique("pair"), seed=2)
    replicas = [
        ServiceProcess(
            settings, tmp_path / f"replica{i}.log", INGEST_BATCH_MAX_RECORDS="500"
        ).start()
        for i in range(2)
    ]
    try:
        for replica in replicas:
            replica.wait_healthy()

        def owned() -> list[float]:
            return [
                r.metric("ml_analytics_assigned_partitions", topic=settings.transactions_topic)
                for r in replicas
            ]

        async def owned_now() -> list[float]:
            return await asyncio.to_thread(owned)

        split = await wait_until(
            owned_now,
            lambda o: sum(o) == 6 and min(o) > 0,
            timeout=60,
            what="both replicas owning partitions",
        )
        await publish_paced(settings, events, chunks=10, pause=0.1)
        await wait_until(
            lambda: ledger_count(engine),
            lambda n: n == len(events),
            timeout=120,
            what="every event",
        )
        counted = [
            r.metric(
                "ml_analytics_events_ingested_total",
                topic=settings.transactions_topic,
                outcome="counted",
            )
            for r in replicas
        ]
    finally:
        for replica in replicas:
            replica.stop()
    assert sorted(split) == [3.0, 3.0]
    assert all(c > 0 for c in counted) and sum(counted) == len(events), counted
    assert await stored_totals(engine) == expected_totals(events)


async def test_sigterm_finishes_and_commits_the_batch_in_hand(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    events = make_events(15_000, products=50, tag=unique("term"), seed=3)
    first = ServiceProcess(settings, tmp_path / "first.log", INGEST_BATCH_MAX_RECORDS="200").start()
    first.wait_healthy()
    publisher = asyncio.create_task(publish_paced(settings, events, chunks=15, pause=0.2))
    await wait_until(
        lambda: ledger_count(engine),
        lambda n: n >= 2_000,
        timeout=60,
        interval=0.05,
        what="ingestion under way",
    )
    first.signal(signal.SIGTERM)  # while batches are flowing
    assert first.wait(40) == 0, first.log()
    assert '"message": "stopped"' in first.log()
    await publisher
    second = ServiceProcess(settings, tmp_path / "second.log").start()
    try:
        second.wait_healthy()
        await wait_until(
            lambda: ledger_count(engine),
            lambda n: n == len(events),
            timeout=120,
            what="the rest after the restart",
        )
        await asyncio.sleep(1)
        # Nothing the first process had in hand was left uncommitted: none of it comes back.
        assert (
            second.metric(
                "ml_analytics_events_ingested_total",
                topic=settings.transactions_topic,
                outcome="seen_before",
            )
            == 0
        )
    finally:
        second.stop()
    assert await stored_totals(engine) == expected_totals(events)


def test_dev_command_runs_the_embedded_stack_and_replays_a_file(tmp_path: Path) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text(
        "event_id,product_id,occurred_at,quantity_units\n"
        "d-1,85123A,2010-12-01T08:26:00+00:00,6\n"
        "d-2,85123A,2010-12-01T09:00:00+00:00,4\n"
        "d-3,85123A,2010-12-03,2\n"
        "d-4,22423,2010-12-02T10:00:00+00:00,1\n",
        encoding="utf-8",
    )
    port = free_port()
    log = (tmp_path / "dev.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ml_analytics",
            "dev",
            "--data-dir",
            str(tmp_path / "data"),
            "--kafka-port",
            str(free_port()),
            "--replay",
            str(sample),
        ],
        env={**_clean_env(), "ML_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        body = _poll_demand(f"http://127.0.0.1:{port}/products/85123A/demand", process, tmp_path)
        assert body == {
            "product_id": "85123A",
            "days": [
                {
                    "date": "2010-12-01",
                    "quantity_units": 10.0,
                    "transactions": 2,
                    "censored": False,
                    "estimated_demand_units": 10.0,
                },
                {
                    "date": "2010-12-02",
                    "quantity_units": 0.0,
                    "transactions": 0,
                    "censored": False,
                    "estimated_demand_units": 0.0,
                },
                {
                    "date": "2010-12-03",
                    "quantity_units": 2.0,
                    "transactions": 1,
                    "censored": False,
                    "estimated_demand_units": 2.0,
                },
            ],
        }
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10).status_code == 200
        assert (
            httpx.get(f"http://127.0.0.1:{port}/products/nope/demand", timeout=5).status_code == 404
        )
        time.sleep(6)  # one progress summary
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        log.close()
    terminal = (tmp_path / "dev.log").read_text()
    assert code == 0, terminal[-3000:]
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()  # kept for the next run
    # The terminal shows a progress summary; the JSON log goes to a file in the data folder.
    assert "events counted 4 " in terminal and f"dashboard http://127.0.0.1:{port}" in terminal
    assert '"level":' not in terminal
    assert '"message": "starting ml-analytics"' in (tmp_path / "data" / "service.log").read_text()


def _clean_env() -> dict[str, str]:
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "TOPIC_", "DATABASE_URL"))
    }


def _poll_demand(url: str, process: subprocess.Popen[bytes], tmp_path: Path) -> Any:
    import time

    deadline = time.monotonic() + 90
    last: Any = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError((tmp_path / "dev.log").read_text()[-3000:])
        try:
            response = httpx.get(url, timeout=2)
            last = response.status_code, response.text
            if response.status_code == 200 and len(response.json()["days"]) == 3:
                body = response.json()
                if body["days"][2]["transactions"] == 1:
                    return body
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.3)
    raise AssertionError(
        f"no demand series within 90 s; last: {last}\n" + (tmp_path / "dev.log").read_text()[-3000:]
    )


async def test_fit_workers_end_with_a_service_killed_mid_fit(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    service = ServiceProcess(  # killed outright: its temporary files go to tmp_path
        settings, tmp_path / "service.log", MIN_TRAINING_DAYS="14", TMPDIR=str(tmp_path)
    ).start()
    tag = unique("orphans")
    events = [
        {
            "event_id": f"{tag}-{product}-{day}",
            "product_id": f"{tag}-P{product}",
            "occurred_at": f"2026-{9 + day // 28:02d}-{1 + day % 28:02d}T12:00:00Z",
            "quantity_units": 1 + (product + day) % 5,
        }
        for product in range(40)
        for day in range(56)
    ]
    try:
        await asyncio.to_thread(service.wait_healthy)
        await publish(settings, settings.transactions_topic, keyed(events))
        await metric_reaches(
            service,
            "ml_analytics_model_fits_total",
            1,
            result="started",
            timeout=90,
            what="fits under way",
        )
        assert service.process is not None
        workers = {
            pid: command
            for pid, command in children_of(service.process.pid).items()
            if "multiprocessing" in command
        }
        assert workers, "the service should have fit workers"
        service.signal(signal.SIGKILL)
        service.wait(10)

        await wait_until(
            lambda: asyncio.to_thread(_alive, list(workers)),
            lambda left: not left,
            timeout=5,
            what="the fit workers gone",
        )
    finally:
        service.stop()


def _alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (not ended, nor ended and waiting to be reaped)."""
    alive = []
    for pid in pids:
        try:
            if ") Z" not in Path(f"/proc/{pid}/stat").read_text():
                alive.append(pid)
        except OSError:
            pass
    return alive


async def test_a_crash_between_a_stock_write_and_its_assessment_still_ends_in_the_event(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """The service is killed (SIGKILL) after a stock level's write committed and before
    its assessment ran; the next start assesses it and publishes the event."""
    from tests.integration.test_durability import FORECAST_START, risk_events, stock_level
    from tests.integration.test_durability import store_model as store_a_model

    product = unique("crash")
    await store_a_model(engine, product)
    level = stock_level(unique("sl"), product, FORECAST_START - timedelta(days=1), 100)
    first = ServiceProcess(settings, tmp_path / "first.log", TRAINING_ENABLED="false").start()
    try:
        # Hold the product's assessment back: the test keeps a key-share lock on its
        # pending row, which lets the stock level's write through (it bumps the row) and
        # makes every sweep skip the row, as if the service died before getting to it.
        async with engine.connect() as holder:
            await holder.execute(
                text(
                    "INSERT INTO pending_assessments (product_id, requested_at) VALUES (:p, now())"
                ),
                {"p": product},
            )
            await holder.commit()
            await holder.execute(
                text("SELECT 1 FROM pending_assessments WHERE product_id = :p FOR KEY SHARE"),
                {"p": product},
            )
            await asyncio.to_thread(first.wait_healthy)
            await publish(settings, settings.stock_levels_topic, keyed([level]))
            await wait_until(
                lambda: scalar(
                    engine, "SELECT stock_event_id FROM products WHERE product_id = :p", p=product
                ),
                lambda event_id: event_id == level["event_id"],
                what="the stock level committed",
            )
            await asyncio.sleep(1)  # a sweep's chance to take it, had it not been held
            first.signal(signal.SIGKILL)
            first.wait(10)
            await holder.rollback()
        assert await scalar(engine, "SELECT count(*) FROM product_risk") == 0
        assert await scalar(engine, "SELECT requests FROM pending_assessments") == 2
    finally:
        first.stop()
    second = ServiceProcess(settings, tmp_path / "second.log", TRAINING_ENABLED="false").start()
    try:
        (event,) = await risk_events(settings, product, 1)
        assert event["current_stock_units"] == 100 and event["risk_level"] == "high"
        await wait_until(
            lambda: scalar(engine, "SELECT count(*) FROM pending_assessments"),
            lambda n: n == 0,
            what="the mark removed",
        )
    finally:
        second.stop()
