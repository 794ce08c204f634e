"""Regenerates the README's examples from a real run: the service as a process on the
embedded stack (or ML_BENCH_* services), a replay of the sample, then the `watch`
lines, the HTTP answers and the quick start's timings, written to docs/examples.md.

    python -m bench.readme_examples [--out docs/examples.md]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench._stack import bench_stack
from ml_analytics.cli.replay import replay_file
from ml_analytics.cli.watch import describe
from ml_analytics.devstack import ServiceProcess
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine, migrate

SAMPLE = Path(__file__).resolve().parents[1] / "data/online-retail-ii"
TIMEOUT_SECONDS = 900


def sale_lines(path: Path) -> int:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


async def wait_for(engine: Any, query: str, target: int, what: str) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < TIMEOUT_SECONDS:
        async with engine.connect() as connection:
            value = (await connection.execute(text(query))).scalar_one()
        if value is not None and int(value) >= target:
            return time.perf_counter() - started
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{what}: not reached within {TIMEOUT_SECONDS} s")


async def risk_events(settings: Settings, count: int) -> list[dict[str, Any]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.stockout_risk_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 60
        while len(events) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                events += [json.loads(record.value) for record in records]
    finally:
        await consumer.stop()
    return events


def shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/examples.md"))
    args = parser.parse_args()
    transactions = SAMPLE / "transactions.csv.gz"
    stock = SAMPLE / "stock_levels.csv"
    lines = sale_lines(transactions)
    products = len(stock.read_text(encoding="utf-8").splitlines()) - 1  # less the header
    out: list[str] = []
    with bench_stack("examples") as settings:
        await migrate(settings.database_url)
        engine = create_engine(settings)
        service = ServiceProcess(
            settings, Path(f"/tmp/{settings.kafka_group_id}.log"), LOG_LEVEL="WARNING"
        ).start()
        try:
            await asyncio.to_thread(service.wait_healthy, 120)
            started = time.perf_counter()
            await replay_file(transactions, settings, progress=False)
            await wait_for(
                engine,
                "SELECT sum(transaction_count) FROM products",
                lines,
                "every sale line counted",
            )
            counted = time.perf_counter() - started
            await replay_file(stock, settings, progress=False)
            await wait_for(
                engine, "SELECT count(*) FROM product_risk", products, "every product assessed"
            )
            assessed = time.perf_counter() - started
            events = await risk_events(settings, products)
            async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:
                answers = await http_answers(client)
        finally:
            service.stop()
            await engine.dispose()

    out.append("# Examples from a real run")
    out.append("")
    out.append(
        f"Made by `python -m bench.readme_examples` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({platform.python_version()}, {platform.machine()}, embedded stack): the service "
        f"as a process, the sample's {lines:,} sale lines replayed, then one stock level "
        f"for each of its {products} products."
    )
    out.append("")
    out.append(
        f"- every sale counted {counted:.0f} s after the replay started; every product "
        f"trained and assessed, and its first risk event published, {assessed:.0f} s after."
    )
    levels: dict[str, int] = {}
    for event in events:
        levels[event["risk_level"]] = levels.get(event["risk_level"], 0) + 1
    out.append(f"- risk events on the topic: {len(events)} ({shown(levels)})")
    out.append("")
    out.append("`python -m ml_analytics watch` (one event of each level):")
    out.append("")
    out.append("```")
    for level in ("high", "medium", "low"):
        first = next((event for event in events if event["risk_level"] == level), None)
        if first is not None:
            out.append(describe(first))
    out.append("```")
    for title, answer in answers:
        out.append("")
        out.append(f"`{title}`")
        out.append("")
        out.append("```")
        out.append(answer)
        out.append("```")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out) + "\n")
    print("\n".join(out))


async def http_answers(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    answers: list[tuple[str, str]] = []
    first = (await client.get("/products", params={"limit": 1})).json()["items"][0]
    urgent = first["product_id"]
    answers.append(("curl -s localhost:8000/ready", (await client.get("/ready")).text))
    page = (await client.get("/products", params={"limit": 2})).json()
    answers.append(("curl -s 'localhost:8000/products?limit=2'", shown(page)))
    answers.append(
        (
            f"curl -s localhost:8000/products/{urgent}/stockout-risk",
            (await client.get(f"/products/{urgent}/stockout-risk")).text,
        )
    )
    answers.append(
        (
            f"curl -s 'localhost:8000/products/{urgent}/replenishment?service_level=0.98'",
            (
                await client.get(
                    f"/products/{urgent}/replenishment", params={"service_level": 0.98}
                )
            ).text,
        )
    )
    orders = (await client.get("/products", params={"sort": "order_by_date", "limit": 3})).json()
    answers.append(
        (
            "curl -s 'localhost:8000/products?sort=order_by_date&limit=3' (product, order, by)",
            "\n".join(
                f"{item['product_id']}  {item['recommended_order_units']}  {item['order_by_date']}"
                for item in orders["items"]
            ),
        )
    )
    csv_text = (await client.get("/replenishment.csv", params={"needed_only": "true"})).text
    answers.append(
        (
            "curl -s 'localhost:8000/replenishment.csv?needed_only=true' | head -4",
            "\n".join(csv_text.splitlines()[:4]),
        )
    )
    predicted = await client.post(
        "/predict/stockout", json={"product_id": "85123A", "current_stock_units": 500}
    )
    body = predicted.json()
    body["daily_usage_forecast"] = [*body.get("daily_usage_forecast", [])[:3], "…"]
    answers.append(
        (
            "curl -s -X POST localhost:8000/predict/stockout -H 'content-type: application/json' "
            """-d '{"product_id": "85123A", "current_stock_units": 500}'""",
            shown(body),
        )
    )
    metrics = (await client.get("/metrics")).text
    wanted = ("ml_analytics_events_ingested_total", "ml_analytics_risk_events_total")
    answers.append(
        (
            "curl -s localhost:8000/metrics | grep -E 'events_ingested|risk_events'",
            "\n".join(
                line
                for line in metrics.splitlines()
                if line.startswith(wanted) and not line.startswith("#")
            ),
        )
    )
    return answers


if __name__ == "__main__":
    asyncio.run(main())
