"""Latency of POST /forecast/demand (365 days in, 90 out) on the running service.

The service (`python -m ml_analytics run`) runs in its own process on the embedded
broker and PostgreSQL (or ML_BENCH_*); this process is the load generator, over
loopback. Printed beside the floor: a bare Prophet fit + predict of the same series
in this process (Prophet's defaults), measured in the same run.

- uncached: every request a different product id, so nothing is served from the
  cache or shared with another request in flight;
- cached: one request repeated after it was computed once.

Each case starts with a few requests that are not counted (they open connections).

    python -m bench.http [--uncached 12] [--cached 300]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from bench._stack import bench_stack
from ml_analytics.devstack import ServiceProcess
from ml_analytics.storage.database import migrate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "online-retail-ii" / "daily_demand.csv.gz"
DAYS = 365
HORIZON = 90


def real_series() -> pd.Series:
    """The last 365 days (zero-filled) of the product with the most selling days in them."""
    with gzip.open(DATA, "rt") as handle:
        demand = pd.read_csv(handle, parse_dates=["date"])
    last = demand["date"].max()
    recent = demand[demand["date"] > last - pd.Timedelta(days=DAYS)]
    item = recent.groupby("item_id")["quantity"].count().idxmax()
    days = pd.date_range(last - pd.Timedelta(days=DAYS - 1), last, freq="D")
    series = recent[recent["item_id"] == item].set_index("date")["quantity"]
    return series.groupby(level=0).sum().reindex(days, fill_value=0.0).rename(str(item))


def floor_seconds(series: pd.Series, runs: int) -> list[float]:
    from prophet import Prophet

    for name in ("cmdstanpy", "prophet"):
        logging.getLogger(name).setLevel(logging.ERROR)
    history = pd.DataFrame({"ds": series.index, "y": series.to_numpy()})
    times = []
    for _ in range(runs + 1):  # the first run warms up imports and the Stan model
        started = time.perf_counter()
        model = Prophet()
        model.fit(history)
        model.predict(model.make_future_dataframe(periods=HORIZON, include_history=False))
        times.append(time.perf_counter() - started)
    return times[1:]


async def timed_requests(
    client: httpx.AsyncClient, bodies: list[dict[str, object]], concurrency: int
) -> list[float]:
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            response = await client.post("/forecast/demand", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncached", type=int, default=12, help="requests per concurrency")
    parser.add_argument("--cached", type=int, default=300, help="requests per concurrency")
    parser.add_argument("--floor-runs", type=int, default=5)
    args = parser.parse_args()

    series = real_series()
    points = [
        {"date": day.date().isoformat(), "quantity": float(quantity)}
        for day, quantity in series.items()
    ]
    floor = await asyncio.to_thread(floor_seconds, series, args.floor_runs)

    rows: list[tuple[str, int, list[float]]] = []
    with bench_stack("http") as settings:
        await migrate(settings.database_url)
        service = ServiceProcess(
            settings, Path(f"/tmp/{settings.kafka_group_id}.log"), LOG_LEVEL="WARNING"
        ).start()
        try:
            await asyncio.to_thread(service.wait_healthy, 120)
            async with httpx.AsyncClient(base_url=service.url, timeout=300) as client:
                # Let the fit workers start and import Prophet before measuring.
                await timed_requests(
                    client, [{"product_id": "warm-up", "transaction_data": points}], 1
                )
                for concurrency in (1, 4):
                    bodies = [
                        {
                            "product_id": f"uncached-{concurrency}-{i}",
                            "horizon_days": HORIZON,
                            "transaction_data": points,
                        }
                        for i in range(args.uncached + 2 * concurrency)
                    ]
                    # The first rounds at a concurrency open its database connections.
                    await timed_requests(client, bodies[: 2 * concurrency], concurrency)
                    rows.append(
                        (
                            "uncached",
                            concurrency,
                            await timed_requests(client, bodies[2 * concurrency :], concurrency),
                        )
                    )
                cached_body = {
                    "product_id": "cached",
                    "horizon_days": HORIZON,
                    "transaction_data": points,
                }
                await timed_requests(client, [cached_body], 1)
                for concurrency in (1, 4):
                    await timed_requests(client, [cached_body] * 20, concurrency)
                    rows.append(
                        (
                            "cached",
                            concurrency,
                            await timed_requests(client, [cached_body] * args.cached, concurrency),
                        )
                    )
        finally:
            service.stop()

    workers = settings.http_fit_workers
    floor_p50 = statistics.median(floor)
    floor_p95 = percentile(floor, 95)
    print(f"# {' '.join(sys.argv)}")
    print(
        f"# {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
        f"Python {platform.python_version()}; product {series.name}, {DAYS} days in, "
        f"{HORIZON} out; HTTP_FIT_WORKERS={workers}"
    )
    print(f"{'case':<22}{'requests':>9}{'p50 ms':>10}{'p95 ms':>10}{'p95 / floor p50':>17}")
    print(
        f"{'floor (bare Prophet)':<22}{len(floor):>9}{floor_p50 * 1000:>10.0f}"
        f"{floor_p95 * 1000:>10.0f}{floor_p95 / floor_p50:>17.2f}"
    )
    for kind, concurrency, latencies in rows:
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        print(
            f"{f'{kind}, concurrency {concurrency}':<22}{len(latencies):>9}"
            f"{p50 * 1000:>10.1f}{p95 * 1000:>10.1f}{p95 / floor_p50:>17.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
