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
import csv
import gzip
import math
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ml_analytics.devstack import EmbeddedPostgres
from ml_analytics.models.forecasters.base import ForecastConfig
from ml_analytics.models.forecasters.local import local_levels
from ml_analytics.models.forecasters.panel import Panel
from ml_analytics.models.metrics import brier, pinball, precision_recall, reliability, rmsse
from ml_analytics.models.risk import RiskThresholds, assess_stockout_risk
from ml_analytics.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data/online-retail-ii/daily_demand.csv.gz"
HORIZON = 28
LEAD_TIME = 14
COVERS = (7, 14, 21)
QUANTILES = (0.5, 0.9, 0.95)
THRESHOLDS = RiskThresholds()
ORIGINS = {
    "spring/summer": ("2011-03-15", "2011-05-15", "2011-07-15"),
    "autumn": ("2011-09-15", "2011-10-15", "2011-11-10"),
}
ROBUSTNESS = {"2010": ("2010-05-15", "2010-09-15", "2010-11-01")}
POINT_METHODS = ("service", "moving average 28", "seasonal naive", "ADIDA", "TSB", "Prophet")
BASELINES = ("moving average 28", "seasonal naive")
PROBABILITY_METHODS = ("service", "normal formula", "Poisson 28-day rate")


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
    from ml_analytics.storage.database import create_engine, migrate
    from ml_analytics.storage.models_store import load_model

    steps = sorted({o - timedelta(days=7 * k) for o in origins for k in range(warmup_weeks + 1)})
    result = ServiceRun()
    with tempfile.TemporaryDirectory(prefix="ml-analytics-evaluate-") as scratch:
        postgres = EmbeddedPostgres(Path(scratch) / "postgres").start()
        try:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                database_url=postgres.database_url("evaluate"),
                forecast_model="combination",
            )
            await migrate(settings.database_url)
            await store_sample(settings, panel)
            engine = create_engine(settings)
            global_models = GlobalModelService(engine, settings)
            trainer = ModelTrainer(engine, settings, global_models=global_models)
            try:
                for step in steps:
                    await set_clock(engine, step)
                    stored = await global_models.train_if_due(force=True)
                    await global_models.refresh()
                    assert stored is not None
                    result.trainings.append(
                        {"clock": step, "seconds": stored.seconds, "selection": stored.selection}
                    )
                    print(
                        f"  clock {step}: global model {stored.seconds.get('total', 0):.0f} s, "
                        f"combination {stored.selection.get('chosen')}, "
                        f"calibrated {stored.calibration is not None}",
                        flush=True,
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
        finally:
            postgres.stop()
    return result


# -- baselines ------------------------------------------------------------------------


def _prophet(job: tuple[np.ndarray, date]) -> np.ndarray:
    from ml_analytics.models.forecasters.base import detect_seasonality
    from ml_analytics.models.forecasters.prophet import _fit_predict

    values, first_day = job
    config = ForecastConfig(horizon_days=HORIZON)
    yhat, _, _ = _fit_predict(
        values, first_day, HORIZON, detect_seasonality(values, first_day), config
    )
    return yhat


def baseline_forecasts(
    panel: Panel, t: int, rows: np.ndarray, prophet: bool
) -> dict[str, np.ndarray]:
    levels = local_levels(panel, t, rows, ("ma28", "adida", "tsb"))
    forecasts = {
        "moving average 28": np.repeat(levels["ma28"][:, None], HORIZON, 1),
        "ADIDA": np.repeat(levels["adida"][:, None], HORIZON, 1),
        "TSB": np.repeat(levels["tsb"][:, None], HORIZON, 1),
        "seasonal naive": np.stack([np.resize(panel.history(r, t)[-7:], HORIZON) for r in rows]),
    }
    if prophet:
        jobs = [(panel.history(r, t), panel.day(int(panel.first[r]))) for r in rows]
        with ProcessPoolExecutor(2) as pool:
            forecasts["Prophet"] = np.stack(list(pool.map(_prophet, jobs, chunksize=8)))
    return forecasts


# -- scoring --------------------------------------------------------------------------


@dataclass
class Scores:
    point: dict[str, list[float | None]] = field(default_factory=dict)  # RMSSE per case
    # method -> (|28-day total error|, |14-day total error|, actual 28, actual 14) per case
    totals: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    pinball: dict[str, dict[float, list[float]]] = field(default_factory=dict)
    probability: dict[str, list[tuple[int, float, bool]]] = field(default_factory=dict)
    levels: list[tuple[int, str, bool]] = field(default_factory=list)  # (cover, level, ran out)

    def extend(self, other: Scores) -> None:
        for name in ("point", "totals", "probability"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for key, values in theirs.items():
                mine.setdefault(key, []).extend(values)
        for method, by_level in other.pinball.items():
            for level, values in by_level.items():
                self.pinball.setdefault(method, {}).setdefault(level, []).extend(values)
        self.levels.extend(other.levels)


def score_origin(
    panel: Panel,
    origin: date,
    service: dict[str, tuple[np.ndarray, np.ndarray, str]],
    prophet: bool,
) -> Scores:
    t = panel.index(origin)
    items = sorted(service)
    rows = np.array([panel.items.index(item) for item in items])
    forecasts = {"service": np.stack([service[i][0][:HORIZON] for i in items])}
    forecasts.update(baseline_forecasts(panel, t, rows, prophet))
    scores = Scores()
    for position, row in enumerate(rows):
        history = panel.history(int(row), t)
        actual = np.nan_to_num(panel.Y[row, t : t + HORIZON])
        scale = float(history[-365:].mean())  # 0: no sale in a year, no scale (skipped)
        for method, forecast in forecasts.items():
            f = forecast[position]
            scores.point.setdefault(method, []).append(rmsse(actual, f, history))
            scores.totals.setdefault(method, []).append(
                (
                    abs(float(f.sum() - actual.sum())),
                    abs(float(f[:14].sum() - actual[:14].sum())),
                    float(actual.sum()),
                    float(actual[:14].sum()),
                )
            )
        # The 14-day cumulative demand: the service's quantiles from its paths; the
        # formula's and the Poisson's from their distributions.
        actual14 = float(actual[:LEAD_TIME].sum())
        m28 = float(history[-28:].mean()) if len(history) else 0.0
        sd91 = float(history[-91:].std()) if len(history) > 1 else 0.0
        paths14 = service[items[position]][1][:, :LEAD_TIME].sum(1)
        for level in QUANTILES if scale > 0 else ():
            quantile = {
                "service": float(np.quantile(paths14, level)),
                "normal formula": max(
                    0.0,
                    stats.norm.ppf(level, LEAD_TIME * m28, max(math.sqrt(LEAD_TIME) * sd91, 1e-9)),
                ),
                "Poisson 28-day rate": float(stats.poisson.ppf(level, LEAD_TIME * m28)),
            }
            for method, value in quantile.items():
                scores.pinball.setdefault(method, {}).setdefault(level, []).append(
                    pinball(actual14, value, level) / scale
                )
        if m28 <= 0:
            continue
        for cover in COVERS:
            stock = cover * m28
            ran_out = actual14 > stock
            risk = assess_stockout_risk(
                forecast_start=origin,
                sample_paths=service[items[position]][1],
                stock_units=stock,
                snapshot_day=origin - timedelta(days=1),
                window_days=LEAD_TIME,
                thresholds=THRESHOLDS,
            )
            spread = max(math.sqrt(LEAD_TIME) * sd91, 1e-9)
            probabilities = {
                "service": risk.stockout_probability,
                "normal formula": float(1 - stats.norm.cdf((stock - LEAD_TIME * m28) / spread)),
                "Poisson 28-day rate": float(stats.poisson.sf(stock, LEAD_TIME * m28)),
            }
            for method, p in probabilities.items():
                scores.probability.setdefault(method, []).append((cover, p, ran_out))
            scores.levels.append((cover, risk.risk_level, ran_out))
    return scores


# -- report ---------------------------------------------------------------------------


def totals_row(scores: Scores, method: str) -> tuple[float, float, float]:
    rmsses = [r for r in scores.point[method] if r is not None]
    totals = scores.totals[method]
    actual28 = sum(t[2] for t in totals)
    actual14 = sum(t[3] for t in totals)
    return (
        float(np.mean(rmsses)),
        sum(t[0] for t in totals) / actual28,
        sum(t[1] for t in totals) / actual14,
    )


def point_table(title: str, scores: Scores, methods: tuple[str, ...]) -> dict[str, float]:
    print(f"\n{title}\n")
    print("| method | RMSSE (mean) | 28-day total error | 14-day total error | cases |")
    print("|---|---:|---:|---:|---:|")
    present = [m for m in methods if m in scores.point]
    rows = {m: totals_row(scores, m) for m in present}
    for method in present:
        r, w28, w14 = rows[method]
        print(f"| {method} | {r:.3f} | {w28:.3f} | {w14:.3f} | {len(scores.point[method])} |")
    best = {i: min(rows[m][i] for m in BASELINES) for i in range(3)}
    ratios = {
        "rmsse": rows["service"][0] / best[0],
        "total28": rows["service"][1] / best[1],
        "total14": rows["service"][2] / best[2],
    }
    print(
        f"\nservice / best simple baseline: RMSSE {ratios['rmsse']:.3f}x, 28-day total "
        f"{ratios['total28']:.3f}x, 14-day total {ratios['total14']:.3f}x"
    )
    return ratios


def probability_tables(scores: Scores) -> dict[str, Any]:
    print("\nStockout probability (lead time 14 d; stock = k days of the 28-day mean):\n")
    print(
        "| cover k | cases | ran out | service Brier | normal formula | Poisson | skill vs the better |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    skills = {}

    def pick(method: str, cover: int | None) -> tuple[np.ndarray, np.ndarray]:
        chosen = [c for c in scores.probability[method] if cover is None or c[0] == cover]
        return np.array([c[1] for c in chosen]), np.array([c[2] for c in chosen])

    for cover in (*COVERS, None):
        briers = {m: brier(*pick(m, cover)) for m in PROBABILITY_METHODS}
        reference = min(briers["normal formula"], briers["Poisson 28-day rate"])
        skill = 1 - briers["service"] / reference
        skills["all" if cover is None else cover] = skill
        p, y = pick("service", cover)
        print(
            f"| {'all' if cover is None else cover} | {len(p)} | {int(y.sum())} | "
            f"{briers['service']:.3f} | {briers['normal formula']:.3f} | "
            f"{briers['Poisson 28-day rate']:.3f} | {skill:+.3f} |"
        )
    print("\nReliability of stockout_probability (all covers), by decile:\n")
    print("| predicted | cases | mean predicted | observed | gap |")
    print("|---|---:|---:|---:|---:|")
    p = np.array([c[1] for c in scores.probability["service"]])
    y = np.array([c[2] for c in scores.probability["service"]])
    worst = 0.0
    for low, high, cases, predicted, observed in reliability(p, y):
        gap = observed - predicted
        if cases >= 50:
            worst = max(worst, abs(gap))
        print(f"| {low:.1f}-{high:.1f} | {cases} | {predicted:.3f} | {observed:.3f} | {gap:+.3f} |")
    alerts = np.array([level == "high" for _, level, _ in scores.levels])
    outcomes = np.array([ran for _, _, ran in scores.levels])
    precision, recall = precision_recall(alerts, outcomes)
    print(
        f"\n`high` alerts (p >= {THRESHOLDS.high}): precision {precision:.3f}, recall {recall:.3f}"
    )
    print("\nPinball loss of the 14-day cumulative demand (scaled by each product's daily mean):\n")
    print("| method | q 0.5 | q 0.9 | q 0.95 |")
    print("|---|---:|---:|---:|")
    for method in PROBABILITY_METHODS:
        values = [np.mean(scores.pinball[method][q]) for q in QUANTILES]
        print(f"| {method} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return {"skills": skills, "worst_gap": worst, "precision": precision, "recall": recall}


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
