"""Forecast refresh at scale: N products (10,000 by default) with 1 to 2 years of daily
history each, the service running as its own process while ingestion goes on.

1. The history is stored with the ingestion's own write (setup, not measured), the
   clock on its last day; the service starts and builds every product's forecast:
   the global model with its backtest, then each product (reported).
2. The clock moves a week: a week of transactions for every product, published to
   the topic, then the first event of the next day. Measured: from then until every
   product has a forecast through the new last complete day made with the new
   global model, while another 2,000 transactions a second keep arriving.
3. Memory: the service with all its worker processes, sampled every second: the
   peak, and the steady level (median) over the measured week.
4. Latency: a stock level published -> its stockout-risk event received.

    python -m bench.retrain [--products 10000] [--rate 2000] [--latency-samples 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text

from bench._stack import bench_stack
from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.devstack import ServiceProcess
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine, migrate
from ml_analytics.storage.ingest_writes import TransactionRow, record_transactions

LAST_DAY = date(2026, 6, 30)  # the last day of the stored history


def product_history(product: int) -> tuple[date, np.ndarray]:
    """Lumpy demand like a wholesaler's: a product sells on some days, in orders of
    its own typical size; 1 to 2 years of it."""
    rng = np.random.default_rng(product)
    days = int(rng.integers(365, 731))
    sale_chance = rng.uniform(0.05, 0.9)
    size = rng.lognormal(1.0, 1.0)
    sales = rng.random(days) < sale_chance
    units = np.where(sales, np.ceil(rng.gamma(1.5, size / 1.5, days)), 0.0)
    return LAST_DAY - timedelta(days=days - 1), units


def week_events(products: int, start: date) -> list[tuple[bytes, bytes]]:
    events = []
    for product in range(products):
        rng = np.random.default_rng(10**6 + product)
        pid = f"R{product:05d}"
        for offset in range(7):
            if rng.random() < 0.4:
                day = start + timedelta(days=offset)
                body = {
                    "event_id": f"{pid}-w{offset}",
                    "product_id": pid,
                    "occurred_at": f"{day}T12:00:00Z",
                    "quantity_units": float(rng.integers(1, 20)),
                }
                events.append((pid.encode(), json.dumps(body).encode()))
    return events


async def store_history(settings: Settings, products: int) -> int:
    engine = create_engine(settings)
    stored = 0
    try:
        async with engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            rows: list[TransactionRow] = []
            for product in range(products):
                first, units = product_history(product)
                pid = f"R{product:05d}"
                for offset in np.nonzero(units)[0]:
                    day = first + timedelta(days=int(offset))
                    rows.append(TransactionRow(f"{pid}-{offset}", pid, day, float(units[offset])))
                if len(rows) >= 20_000:
                    await record_transactions(driver, rows)
                    stored, rows = stored + len(rows), []
            await record_transactions(driver, rows)
            stored += len(rows)
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE stream_clock SET newest_event_at = :t WHERE clock_id = 1"),
                {"t": datetime.combine(LAST_DAY + timedelta(days=1), datetime.min.time(), UTC)},
            )
    finally:
        await engine.dispose()
    return stored


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry.name))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry.name)] = int(line.split()[1])
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total / 1024


class MemoryWatch:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append((time.monotonic(), tree_rss_mb(self.pid)))

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Progress:
    """A line every 30 s while waiting: products done, global model version."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.shown = started

    def show(self, stage: str, done: int, version: int | None) -> None:
        now = time.monotonic()
        if now - self.shown >= 30:
            self.shown = now
            print(
                f"  {stage}: {now - self.started:.0f} s, {done:,} products done, "
                f"global model {version}",
                flush=True,
            )


async def counts(engine: object, through: date, version: int | None) -> tuple[int, int | None]:
    """Products with a forecast through `through` made with global model `version`
    (the newest when None), and that version."""
    async with engine.connect() as connection:  # type: ignore[attr-defined]
        newest = (await connection.execute(text("SELECT max(version) FROM global_models"))).scalar()
        version = newest if version is None else version
        done = (
            await connection.execute(
                text(
                    "SELECT count(*) FROM product_models WHERE trained_through = :t "
                    "AND global_version = :v"
                ),
                {"t": through, "v": version},
            )
        ).scalar_one()
    return int(done), newest


async def steady_stream(settings: Settings, products: int, rate: float, stop: asyncio.Event) -> int:
    """`rate` transactions a second on the open day (they do not move the clock past it)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=20)
    await producer.start()
    sent = 0
    day = LAST_DAY + timedelta(days=8)
    rng = np.random.default_rng(5)
    started = time.monotonic()
    try:
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate) - sent
            for _ in range(max(0, due)):
                pid = f"R{int(rng.integers(products)):05d}"
                body = {
                    "event_id": f"s-{sent}",
                    "product_id": pid,
                    "occurred_at": f"{day}T00:0{sent % 10}:00Z",
                    "quantity_units": 1.0,
                }
                await producer.send(
                    settings.transactions_topic, json.dumps(body).encode(), key=pid.encode()
                )
                sent += 1
            await asyncio.sleep(0.05)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def publish(settings: Settings, events: list[tuple[bytes, bytes]], topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=10)
    await producer.start()
    try:
        for key, value in events:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def risk_latency(settings: Settings, samples: int) -> list[float]:
    """Publish stock levels one at a time; seconds until each one's risk event arrives."""
    consumer = AIOKafkaConsumer(
        settings.stockout_risk_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="latest",
        group_id=f"bench-latency-{os.getpid()}",
    )
    await consumer.start()
    await asyncio.sleep(6)  # the group join
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    seconds = []
    try:
        for sample in range(samples):
            pid = f"R{sample:05d}"
            # Alternate between plenty and none, so every level changes (an event).
            stock = 0.0 if sample % 2 else 10_000_000.0
            body = {
                "event_id": f"lat-{sample}",
                "product_id": pid,
                "as_of": f"{LAST_DAY + timedelta(days=7)}T20:00:00Z",
                "stock_units": stock,
            }
            started = time.monotonic()
            await producer.send_and_wait(
                settings.stock_levels_topic, json.dumps(body).encode(), key=pid.encode()
            )
            deadline = started + 10
            found = False
            while not found and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                found = any(
                    json.loads(r.value)["product_id"] == pid for rs in batch.values() for r in rs
                )
            if found:
                seconds.append(time.monotonic() - started)
    finally:
        await producer.stop()
        await consumer.stop()
    return seconds


async def run(args: argparse.Namespace) -> None:
    with bench_stack("retrain") as settings:
        await migrate(settings.database_url)
        await ensure_topics(settings)
        started = time.monotonic()
        stored = await store_history(settings, args.products)
        print(
            f"stored {stored:,} product-days of {args.products:,} products in "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
        service = ServiceProcess(settings, Path(args.log), LOG_LEVEL=args.log_level)
        await asyncio.to_thread(service.start)
        engine = create_engine(settings)
        try:
            await asyncio.to_thread(service.wait_healthy, 300)
            with MemoryWatch(service.pid) as memory:
                started = time.monotonic()
                version = None
                progress = Progress(started)
                while True:
                    done, version = await counts(engine, LAST_DAY, None)
                    if version is not None and done == args.products:
                        break
                    progress.show("initial build", done, version)
                    await asyncio.sleep(2)
                build = time.monotonic() - started
                print(
                    f"initial build: every product forecast with global model {version} in "
                    f"{build:.0f} s",
                    flush=True,
                )

                stop = asyncio.Event()
                stream = asyncio.create_task(
                    steady_stream(settings, args.products, args.rate, stop)
                )
                week = week_events(args.products, LAST_DAY + timedelta(days=1))
                await publish(settings, week, settings.transactions_topic)
                mover = {
                    "event_id": "clock",
                    "product_id": "R00000",
                    "occurred_at": f"{LAST_DAY + timedelta(days=8)}T00:00:00Z",
                    "quantity_units": 1.0,
                }
                await publish(
                    settings, [(b"R00000", json.dumps(mover).encode())], settings.transactions_topic
                )
                moved = time.monotonic()
                week_start = len(memory.samples)
                through = LAST_DAY + timedelta(days=7)
                progress = Progress(moved)
                while True:
                    newest = (await counts(engine, through, None))[1]
                    done = 0
                    if newest is not None and newest != version:
                        done, _ = await counts(engine, through, newest)
                        if done == args.products:
                            break
                    progress.show("week's refresh", done, newest)
                    if time.monotonic() - moved > 3600:
                        raise TimeoutError("the refresh took over an hour")
                    await asyncio.sleep(2)
                refresh = time.monotonic() - moved
                week_memory = [mb for _, mb in memory.samples[week_start:]]
                latencies = await risk_latency(settings, args.latency_samples)
                stop.set()
                sent = await stream
                async with engine.connect() as connection:
                    trained: dict[str, float] = (
                        await connection.execute(
                            text("SELECT seconds FROM global_models ORDER BY version DESC LIMIT 1")
                        )
                    ).scalar() or {}
            peak = max(mb for _, mb in memory.samples)
        finally:
            await engine.dispose()
            service.stop()

    steady = float(np.median(week_memory)) if week_memory else float("nan")
    print(
        f"\nbench/retrain: {args.products:,} products, 1-2 years each ({platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()})\n"
    )
    print("| what | figure | goal |")
    print("|---|---:|---|")
    print(f"| initial build (global model + every product) | {build:.0f} s | |")
    print(
        f"| clock moves a week -> every product fresh with the new global model | {refresh:.0f} s | "
        f"<= 600 s: {'met' if refresh <= 600 else 'not met'} |"
    )
    print(
        f"| of which the global model (read, backtest, training) | {trained.get('total', 0):.0f} s | |"
    )
    print(
        f"| transactions arriving meanwhile | {sent / max(refresh, 1):,.0f}/s | {args.rate:,.0f}/s |"
    )
    print(
        f"| memory, service + workers: steady (median) / peak | {steady:.0f} / {peak:.0f} MB | "
        f"steady < 1,500 MB: {'met' if steady < 1500 else 'not met'} |"
    )
    if latencies:
        print(
            f"| stock level -> risk event, p50 / p95 | {np.percentile(latencies, 50) * 1000:.0f} / "
            f"{np.percentile(latencies, 95) * 1000:.0f} ms ({len(latencies)} samples) | p95 < 1 s |"
        )
    print(f"\nglobal model seconds: {trained}")
    print(
        f"\ncommand: python -m bench.retrain --products {args.products} --rate {args.rate:g} "
        f"--latency-samples {args.latency_samples}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--log", default="/tmp/ml-analytics-bench-retrain.log")
    parser.add_argument("--log-level", default="WARNING", help="the service's LOG_LEVEL")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
