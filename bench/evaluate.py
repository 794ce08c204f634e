"""Forecast and stockout-probability quality on the real sample, through the service's
own code path, pooled over origins in spring/summer and autumn.

The sample's daily demand (600 products, UCI Online Retail II) is stored in a fresh
PostgreSQL with the ingestion's own write. Then the stream's clock is moved week by
week, as living through 2011 would move it, over the eight weeks before each origin
(the backtests the service chooses its combination and calibrates its paths with)
and to each origin: at each step the service's GlobalModelService trains the global
model with its backtest, and at each origin the service's ModelTrainer refreshes
every product (features from stored data, zero-filled to the clock, the chosen
combination, the calibrated sample paths), exactly as the consumers do. The stored
forecasts are then set against what happened.

Beside the service: the 28-day moving average and seasonal naive (the simple
baselines), ADIDA and TSB (statsforecast), Prophet (`--prophet`, one fit per product
and origin); for probabilities the ERP's normal formula, lead-time demand ~
Normal(L * mean28, sqrt(L) * sd91), and a Poisson at the 28-day rate.

Cases: every product with 30 days of history before the origin; 28 days ahead.
Probability cases: stock = k days of cover (k x the mean of the last 28 days, for
products that sold in them), k = 7, 14, 21, lead time 14; the event: demand over the
14 days exceeds the stock.

    python -m bench.evaluate [--prophet] [--robustness] [--warmup-weeks 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gzip
import platform
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.scoring import (
    COVERS,
    HORIZON,
    POINT_METHODS,
    Scores,
    origin_probability_table,
    point_table,
    probability_tables,
    score_origin,
)
from ml_analytics.devstack import EmbeddedPostgres
from ml_analytics.models.forecasters.panel import Panel
from ml_analytics.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ml_analytics.services.global_model import GlobalModelService
    from ml_analytics.storage.global_models import StoredGlobalModel

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data/online-retail-ii/daily_demand.csv.gz"
ORIGINS = {
    "spring/summer": ("2011-03-15", "2011-05-15", "2011-07-15"),
    "autumn": ("2011-09-15", "2011-10-15", "2011-11-10"),
}
ROBUSTNESS = {"2010": ("2010-05-15", "2010-09-15", "2010-11-01")}


def load_panel(path: Path) -> Panel:
    """The sample as a panel: each product zero-filled from its first sale."""
    sales: dict[str, dict[date, float]] = {}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            day = date.fromisoformat(row["date"])
            sales.setdefault(row["item_id"], {})[day] = float(row["quantity"])
    items = sorted(sales)
    start = min(min(days) for days in sales.values())
    end = max(max(days) for days in sales.values())
    Y = np.full((len(items), (end - start).days + 1), np.nan)
    for index, item in enumerate(items):
        first = min(sales[item])
        Y[index, (first - start).days :] = 0.0
        for sale_day, units in sales[item].items():
            Y[index, (sale_day - start).days] += units
    return Panel(items, start, Y, np.nansum(Y, axis=0))


# -- the service ----------------------------------------------------------------------


async def store_sample(settings: Settings, panel: Panel) -> None:
    """Every product-day of the sample as one transaction, through the ingestion's write."""
    from ml_analytics.storage.database import create_engine
    from ml_analytics.storage.ingest_writes import TransactionRow, record_transactions

    engine = create_engine(settings)
    rows = [
        TransactionRow(f"{item}-{day}", item, panel.day(int(day)), float(panel.Y[i, day]))
        for i, item in enumerate(panel.items)
        for day in np.nonzero(np.nan_to_num(panel.Y[i]) > 0)[0]
    ]
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        for start in range(0, len(rows), 10_000):
            await record_transactions(driver, rows[start : start + 10_000])
    await engine.dispose()


async def set_clock(engine: Any, origin: date) -> None:
    """The stream's clock as it stands when the first event of day `origin` arrives:
    the days before it are complete. (The stored days after it are never read: every
    read stops at the clock's last complete day.)"""
    from sqlalchemy import text

    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE stream_clock SET newest_event_at = :t WHERE clock_id = 1"),
            {"t": datetime(origin.year, origin.month, origin.day, tzinfo=UTC)},
        )


@contextlib.asynccontextmanager
async def sample_database(panel: Panel, name: str) -> AsyncIterator[Settings]:
    """Settings on a fresh embedded PostgreSQL (migrated) that holds the panel's daily
    demand, stored with the ingestion's own write; the combination forecaster."""
    from ml_analytics.storage.database import migrate

    with tempfile.TemporaryDirectory(prefix=f"ml-analytics-{name}-") as scratch:
        postgres = EmbeddedPostgres(Path(scratch) / "postgres").start()
        try:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                database_url=postgres.database_url(name),
                forecast_model="combination",
            )
            await migrate(settings.database_url)
            await store_sample(settings, panel)
            yield settings
        finally:
            postgres.stop()


async def train_at(
    engine: AsyncEngine, global_models: GlobalModelService, step: date
) -> StoredGlobalModel:
    """The clock moved to `step`, and the service's global model trained (with its
    backtest and calibration) and loaded there, as the weekly training does."""
    await set_clock(engine, step)
    stored = await global_models.train_if_due(force=True)
    await global_models.refresh()
    assert stored is not None
    print(
        f"  clock {step}: global model {stored.seconds.get('total', 0):.0f} s, "
        f"combination {stored.selection.get('chosen')}, "
        f"calibrated {stored.calibration is not None}",
        flush=True,
    )
    return stored


@dataclass
class ServiceRun:
    forecasts: dict[date, dict[str, tuple[np.ndarray, np.ndarray, str]]] = field(
        default_factory=dict
    )  # origin -> product -> (yhat, paths, model name)
    trainings: list[dict[str, Any]] = field(default_factory=list)
    refresh_seconds: list[float] = field(default_factory=list)


async def run_service(panel: Panel, origins: list[date], warmup_weeks: int) -> ServiceRun:
    from ml_analytics.services.global_model import GlobalModelService
    from ml_analytics.services.training import ModelTrainer
    from ml_analytics.storage.database import create_engine
    from ml_analytics.storage.models_store import load_model

    steps = sorted({o - timedelta(days=7 * k) for o in origins for k in range(warmup_weeks + 1)})
    result = ServiceRun()
    async with sample_database(panel, "evaluate") as settings:
        engine = create_engine(settings)
        global_models = GlobalModelService(engine, settings)
        trainer = ModelTrainer(engine, settings, global_models=global_models)
        try:
            for step in steps:
                stored = await train_at(engine, global_models, step)
                result.trainings.append(
                    {"clock": step, "seconds": stored.seconds, "selection": stored.selection}
                )
                if step not in origins:
                    continue
                t = panel.index(step)
                items = [panel.items[r] for r in np.nonzero(panel.first <= t - 30)[0]]
                started = time.perf_counter()
                semaphore = asyncio.Semaphore(4)

                async def refresh(item: str, gate: asyncio.Semaphore = semaphore) -> None:
                    async with gate:
                        try:
                            await trainer.train_now(item, force=True)
                        except BrokenProcessPool:  # a worker died: the pool is replaced
                            await trainer.train_now(item, force=True)

                await asyncio.gather(*(refresh(item) for item in items))
                result.refresh_seconds.append(time.perf_counter() - started)
                found: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
                async with engine.connect() as connection:
                    for item in items:
                        model = await load_model(connection, item)
                        assert model is not None and model.forecast_start == step
                        found[item] = (
                            np.asarray(model.yhat),
                            model.sample_paths,
                            model.model_name,
                        )
                result.forecasts[step] = found
                print(
                    f"  origin {step}: {len(items)} products refreshed in "
                    f"{result.refresh_seconds[-1]:.0f} s",
                    flush=True,
                )
        finally:
            await trainer.stop()
            await global_models.stop()
            await engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--warmup-weeks", type=int, default=8)
    parser.add_argument("--prophet", action="store_true", help="also Prophet (slow)")
    parser.add_argument("--robustness", action="store_true", help="also three 2010 origins")
    args = parser.parse_args()

    panel = load_panel(args.data)
    groups = dict(ORIGINS)
    if args.robustness:
        groups.update(ROBUSTNESS)
    origins = sorted(date.fromisoformat(o) for group in groups.values() for o in group)
    started = time.perf_counter()
    service = asyncio.run(run_service(panel, origins, args.warmup_weeks))
    by_origin = {
        origin: score_origin(panel, origin, service.forecasts[origin], args.prophet)
        for origin in origins
    }
    seconds = time.perf_counter() - started

    print(
        f"\nbench/evaluate: {len(panel.items)} products, origins {', '.join(map(str, origins))}; "
        f"{HORIZON}-day horizon; {seconds / 60:.0f} min ({platform.machine()}, "
        f"Python {platform.python_version()})"
    )
    methods = tuple(m for m in POINT_METHODS if args.prophet or m != "Prophet")
    pooled = Scores()
    for name, group in groups.items():
        for label in group:
            if name in ORIGINS:
                pooled.extend(by_origin[date.fromisoformat(label)])
    per_origin: dict[date, dict[str, float]] = {}
    for origin in origins:
        per_origin[origin] = point_table(f"Origin {origin}", by_origin[origin], methods)
    ratios = point_table("Pooled over the six 2011 origins", pooled, methods)
    origin_probability_table({o: by_origin[o] for o in origins})
    probability = probability_tables(pooled)
    if args.robustness:
        robust = Scores()
        for label in ROBUSTNESS["2010"]:
            robust.extend(by_origin[date.fromisoformat(label)])
        point_table("Robustness: pooled over the three 2010 origins", robust, methods)
        probability_tables(robust)

    worst_origin = max(per_origin[o]["total28"] for o in origins if o.year == 2011)
    print("\nGoals (pooled over the six 2011 origins):\n")
    print("| goal | figure | met |")
    print("|---|---:|---|")
    goals = [
        (
            "28-day total error <= 0.93x the best simple baseline",
            ratios["total28"],
            ratios["total28"] <= 0.93,
        ),
        ("RMSSE <= 0.99x", ratios["rmsse"], ratios["rmsse"] <= 0.99),
        ("no origin worse than 1.02x on the 28-day total", worst_origin, worst_origin <= 1.02),
    ]
    for cover in COVERS:
        skill = probability["skills"][cover]
        goals.append((f"Brier skill >= +0.10 at {cover} days of cover", skill, skill >= 0.10))
    goals.append(
        ("`high` precision >= 0.75", probability["precision"], probability["precision"] >= 0.75)
    )
    goals.append(("`high` recall >= 0.6", probability["recall"], probability["recall"] >= 0.6))
    goals.append(
        (
            "reliability within +-0.05 (deciles >= 50 cases): worst gap",
            probability["worst_gap"],
            probability["worst_gap"] <= 0.05,
        )
    )
    for goal, figure, met in goals:
        print(f"| {goal} | {figure:.3f} | {'yes' if met else 'no'} |")
    print(
        f"\nproduct refresh through the trainer: {', '.join(f'{s:.0f}' for s in service.refresh_seconds)} s per origin"
    )
    flags = " ".join(
        f for f, on in (("--prophet", args.prophet), ("--robustness", args.robustness)) if on
    )
    print(f"\ncommand: python -m bench.evaluate {flags}".rstrip())


if __name__ == "__main__":
    main()
