"""Replenishment policies replayed on the sample's real daily demand (issue: "order
this much by then, proven in a simulation").

The last year of the sample, day by day, for every product with eight weeks of
history before it. Each product starts at its policy's order-up-to level, is
reviewed every REVIEW days, an order arrives LEAD days after it is placed (7 and
14), and demand that finds no stock is lost. Three policies in one run:

- service: the service's own policy (models/replenishment.recommend) on the
  service's forecast at each review, made only from the days before it: the
  combination of the global LightGBM model, the 28-day moving average and ADIDA,
  its sample paths recalibrated with the PITs of the global model's backtests (the
  global model and its backtest are retrained every 4 weeks here, weekly in the
  service, to keep the run short);
- normal: the textbook order-up-to level, mean28 * (L + R) + z * sd91 * sqrt(L + R);
- min/max: the ERP rule from the average rate: order up to mean28 * (L + R) when
  the stock position falls to mean28 * L (it has no service-level parameter).

For target service levels 0.90, 0.95 and 0.98: the achieved cycle service level
(the share of review cycles in which no demand was lost between an order's arrival
and the next one's), the fill rate, the average stock on hand (units, and days of
cover at the year's mean demand) and the orders placed; pooled and by demand
segment (Syntetos-Boylan on the year before: smooth, erratic, intermittent, lumpy).
The normal formula also runs on a grid of service levels, so that its inventory at
the service's achieved service level can be read off (interpolated): the
comparison at the same service achieved.

    python -m bench.replenish [--json results.json] [--plot docs/replenishment.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from bench.evaluate import load_panel
from ml_analytics.models.backtest import BacktestCase, train_with_backtest
from ml_analytics.models.distribution import pit_density
from ml_analytics.models.forecasters.base import ForecastConfig
from ml_analytics.models.forecasters.combination import DEFAULT, LOCAL_ONLY, forecast_products
from ml_analytics.models.forecasters.global_gbm import GlobalModel
from ml_analytics.models.forecasters.panel import Panel
from ml_analytics.models.replenishment import ReplenishmentPolicy, recommend

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/online-retail-ii/daily_demand.csv.gz"
REVIEW = 7
LEADS = (7, 14)
TARGETS = (0.90, 0.95, 0.98)
# Each policy also runs on a grid of service levels, so that one's inventory at the
# other's achieved service level can be read off.
SERVICE_GRID = (0.75, 0.80, 0.85, 0.90, 0.95, 0.98, 0.99)
NORMAL_GRID = (0.75, 0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999, 0.99999)
SIM_DAYS = 364
RETRAIN_WEEKS = 4
CALIBRATION_ORIGINS = 4  # the service's: recalibrate once four backtests are in
MIN_CALIBRATION_CASES = 200
SEGMENTS = ("smooth", "erratic", "intermittent", "lumpy")


def segment_of(history: np.ndarray) -> str:
    """Syntetos-Boylan: average inter-demand interval 1.32, squared CV of sizes 0.49."""
    sizes = history[history > 0]
    if sizes.size < 2:
        return "lumpy"
    adi = len(history) / sizes.size
    cv2 = float(np.var(sizes) / np.mean(sizes) ** 2)
    if adi < 1.32:
        return "smooth" if cv2 < 0.49 else "erratic"
    return "intermittent" if cv2 < 0.49 else "lumpy"


@dataclass
class Levels:
    """Per policy configuration: the order-up-to level (and reorder point for min/max)
    of each product at each review, shape (reviews, products)."""

    up_to: np.ndarray
    reorder_at: np.ndarray | None = None  # None: order up to the level at every review


def service_levels(panel: Panel, rows: np.ndarray, reviews: list[int]) -> dict[tuple, Levels]:
    """The service's order-up-to levels at each review, for each lead time and target."""
    config = ForecastConfig(horizon_days=max(LEADS) + REVIEW)
    up_to = {
        (lead, target): np.zeros((len(reviews), len(rows)))
        for lead in LEADS
        for target in SERVICE_GRID
    }
    model: GlobalModel | None = None
    cases: list[list[BacktestCase]] = []
    for index, t in enumerate(reviews):
        started = time.perf_counter()
        if index % RETRAIN_WEEKS == 0:
            training = train_with_backtest(panel, t)
            model = training.model
            cases = [*cases, training.cases][-CALIBRATION_ORIGINS:]
        pits = np.array([c.pit_14 for batch in cases for c in batch if c.pit_14 is not None])
        calibration = (
            pit_density(pits)
            if len(cases) >= CALIBRATION_ORIGINS and len(pits) >= MIN_CALIBRATION_CASES
            else None
        )
        forecasts = forecast_products(
            panel,
            t,
            rows,
            DEFAULT if model is not None else LOCAL_ONLY,
            model,
            config,
            calibration,
            holdout=False,
        )
        for position, forecast in enumerate(forecasts):
            for lead in LEADS:
                for target in SERVICE_GRID:
                    answer = recommend(
                        sample_paths=forecast.sample_paths,
                        forecast_start=panel.day(t),
                        snapshot_day=panel.day(t - 1),
                        on_hand_units=0.0,
                        lead_time_days=lead,
                        policy=ReplenishmentPolicy(service_level=target, review_days=REVIEW),
                    )
                    up_to[lead, target][index, position] = answer.order_up_to_units
        print(
            f"  review {index + 1}/{len(reviews)} {panel.day(t)}: "
            f"{time.perf_counter() - started:.1f} s"
            + (" (calibrated)" if calibration is not None else ""),
            flush=True,
        )
    return {("service", lead, target): Levels(up) for (lead, target), up in up_to.items()}


def formula_levels(panel: Panel, rows: np.ndarray, reviews: list[int]) -> dict[tuple, Levels]:
    """The normal formula on its grid of service levels, and the min/max rule."""
    t = np.asarray(reviews)
    C, C2 = panel.C[rows], panel.C2[rows]
    mean28 = (C[:, t] - C[:, t - 28]) / 28
    n91 = np.minimum(91, t[None, :] - panel.first[rows][:, None]).clip(1)
    start91 = t[None, :] - n91
    taken = np.take_along_axis
    s1 = C[:, t] - taken(C, start91, 1)
    s2 = C2[:, t] - taken(C2, start91, 1)
    sd91 = np.sqrt(np.clip(s2 / n91 - (s1 / n91) ** 2, 0, None))
    levels: dict[tuple, Levels] = {}
    for lead in LEADS:
        cover = lead + REVIEW
        for target in NORMAL_GRID:
            z = float(norm.ppf(target))
            levels["normal", lead, target] = Levels((mean28 * cover + z * sd91 * np.sqrt(cover)).T)
        levels["min/max", lead, None] = Levels((mean28 * cover).T, (mean28 * lead).T)
    return levels


def simulate(demand: np.ndarray, levels: Levels, lead: int, review_days: list[int]) -> dict:
    """Replays `demand` (products, days) under the policy; reviews on `review_days`
    (day indices within the replay). Each product starts with its first order-up-to level."""
    products, days = demand.shape
    on_hand = levels.up_to[0].copy()
    arriving = np.zeros((products, days + lead + 1))
    cycle_of_day = np.full(days, -1)
    for k, day in enumerate(review_days):
        # The cycle an order placed at review k protects: its arrival until the next's.
        cycle_of_day[day + lead : min(day + lead + REVIEW, days)] = k
    lost_by_cycle = np.zeros((products, len(review_days)))
    sold_total = np.zeros(products)
    stock_total = np.zeros(products)
    orders = np.zeros(products)
    review_index = {day: k for k, day in enumerate(review_days)}
    for day in range(days):
        on_hand += arriving[:, day]
        review = review_index.get(day)
        if review is not None:
            position = on_hand + arriving[:, day + 1 : day + lead + 1].sum(1)
            up_to = levels.up_to[review]
            due = (
                position < up_to
                if levels.reorder_at is None
                else position <= levels.reorder_at[review]
            )
            quantity = np.where(due, np.clip(up_to - position, 0, None), 0.0)
            arriving[:, day + lead] += quantity
            orders += quantity > 0
        sold = np.minimum(on_hand, demand[:, day])
        lost = demand[:, day] - sold
        on_hand -= sold
        sold_total += sold
        stock_total += on_hand
        if cycle_of_day[day] >= 0:
            lost_by_cycle[:, cycle_of_day[day]] += lost
    complete = [k for k, day in enumerate(review_days) if day + lead + REVIEW <= days]
    # What the order-up-to level promises: demand over lead time + review period from
    # the review stays within it (as if unmet demand waited; here it is lost).
    covered = np.zeros(products)
    for k in complete:
        day = review_days[k]
        covered += demand[:, day : day + lead + REVIEW].sum(1) <= levels.up_to[k] + 1e-9
    return {
        "cycles_without_loss": (lost_by_cycle[:, complete] <= 1e-9).sum(1),
        "cycles": np.full(products, len(complete)),
        "covered": covered,
        "sold": sold_total,
        "demand": demand.sum(1),
        "mean_on_hand": stock_total / days,
        "orders": orders,
    }


def summarise(result: dict, mask: np.ndarray) -> dict[str, float]:
    demand = float(result["demand"][mask].sum())
    mean_daily = demand / SIM_DAYS
    on_hand = float(result["mean_on_hand"][mask].sum())
    return {
        "products": int(mask.sum()),
        "cycle_service_level": float(
            result["cycles_without_loss"][mask].sum() / max(result["cycles"][mask].sum(), 1)
        ),
        "quantile_coverage": float(
            result["covered"][mask].sum() / max(result["cycles"][mask].sum(), 1)
        ),
        "fill_rate": float(result["sold"][mask].sum() / demand) if demand else 1.0,
        "mean_on_hand_units": on_hand,
        "days_of_cover": on_hand / mean_daily if mean_daily else float("nan"),
        "orders": int(result["orders"][mask].sum()),
    }


def inventory_at(grid: list[dict[str, float]], achieved: float) -> float | None:
    """A policy's inventory at an achieved service level, interpolated on its grid of
    runs (None: outside what the grid reached)."""
    points = sorted((row["cycle_service_level"], row["mean_on_hand_units"]) for row in grid)
    levels = [p[0] for p in points]
    if not levels or achieved < levels[0] or achieved > levels[-1]:
        return None
    return float(np.interp(achieved, levels, [p[1] for p in points]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--plot", type=Path, help="draw inventory against service level here")
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument(
        "--reviews", type=int, default=None, help="only the first N reviews (a smoke run)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    panel = load_panel(args.sample)
    t0 = panel.days - SIM_DAYS
    rows = np.nonzero(panel.first <= t0 - 56)[0]
    reviews = list(range(t0, panel.days, REVIEW))[: args.reviews]
    demand = np.nan_to_num(panel.Y[rows, t0:])
    segments = np.array([segment_of(panel.history(int(r), t0)[-365:]) for r in rows])
    print(
        f"bench/replenish: {len(rows)} products of {len(panel.items)}, "
        f"{panel.day(t0)} .. {panel.day(panel.days - 1)}, review every {REVIEW} days, "
        f"lost sales; {platform.python_version()} on {platform.machine()}",
        flush=True,
    )
    levels = formula_levels(panel, rows, reviews)
    levels.update(service_levels(panel, rows, reviews))
    review_days = [t - t0 for t in reviews]
    results: dict[str, Any] = {"products": len(rows), "from": str(panel.day(t0)), "tables": {}}
    masks = {"all": np.ones(len(rows), bool)} | {name: segments == name for name in SEGMENTS}
    for lead in LEADS:
        sims = {
            key: simulate(demand, lv, lead, review_days)
            for key, lv in levels.items()
            if key[1] == lead
        }
        table: dict[str, Any] = {}
        for scope, mask in masks.items():
            if not mask.any():
                continue
            grid = [summarise(sims["normal", lead, target], mask) for target in NORMAL_GRID]
            service_grid = [
                summarise(sims["service", lead, target], mask) for target in SERVICE_GRID
            ]
            rows_out = {}
            for target in TARGETS:
                service = summarise(sims["service", lead, target], mask)
                normal = summarise(sims["normal", lead, target], mask)
                same = inventory_at(grid, service["cycle_service_level"])
                mine = inventory_at(service_grid, normal["cycle_service_level"])
                rows_out[str(target)] = {
                    "service": service,
                    "normal": normal,
                    "normal_at_service_csl_units": same,
                    "inventory_vs_normal_at_same_csl": (
                        service["mean_on_hand_units"] / same - 1 if same else None
                    ),
                    "service_at_normal_csl_units": mine,
                    "normal_vs_service_at_same_csl": (
                        normal["mean_on_hand_units"] / mine - 1 if mine else None
                    ),
                }
            table[scope] = {
                "targets": rows_out,
                "min/max": summarise(sims["min/max", lead, None], mask),
                "normal grid": grid,
                "service grid": service_grid,
            }
        results["tables"][f"lead {lead}"] = table
        print_table(lead, table)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n{results['seconds']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)


def _percent(value: float | None) -> str:
    return "beyond its grid" if value is None else f"{value:+.1%}"


def print_table(lead: int, table: dict[str, Any]) -> None:
    print(f"\n## Lead time {lead} days, review every {REVIEW} days")
    print(
        "| products | target | policy | cycle service level | quantile coverage | fill rate "
        "| on hand (units) | days of cover | orders | inventory vs the other policy at "
        "this one's achieved service level |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scope, entry in table.items():
        for target, row in entry["targets"].items():
            for policy, versus in (
                ("service", row["inventory_vs_normal_at_same_csl"]),
                ("normal", row["normal_vs_service_at_same_csl"]),
            ):
                s = row[policy]
                print(
                    f"| {scope} ({s['products']}) | {target} | {policy} "
                    f"| {s['cycle_service_level']:.3f} | {s['quantile_coverage']:.3f} "
                    f"| {s['fill_rate']:.3f} | {s['mean_on_hand_units']:,.0f} "
                    f"| {s['days_of_cover']:.1f} | {s['orders']:,} | {_percent(versus)} |"
                )
        s = entry["min/max"]
        print(
            f"| {scope} ({s['products']}) | – | min/max | {s['cycle_service_level']:.3f} | – "
            f"| {s['fill_rate']:.3f} | {s['mean_on_hand_units']:,.0f} | {s['days_of_cover']:.1f} "
            f"| {s['orders']:,} | |"
        )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(LEADS), figsize=(11, 4.2))
    for axis, lead in zip(axes, LEADS, strict=True):
        entry = results["tables"][f"lead {lead}"]["all"]
        for key, color, label in (
            ("normal grid", "#90a4ae", "normal formula"),
            ("service grid", "#1565c0", "service (sample paths)"),
        ):
            curve = sorted((g["cycle_service_level"], g["mean_on_hand_units"]) for g in entry[key])
            axis.plot(*zip(*curve, strict=True), "o-", color=color, label=label)
        mm = entry["min/max"]
        axis.plot(
            [mm["cycle_service_level"]],
            [mm["mean_on_hand_units"]],
            "s",
            color="#ef6c00",
            label="min/max",
        )
        for target in TARGETS:
            axis.axvline(target, color="#cfd8dc", linewidth=0.8)
        axis.set_title(f"lead time {lead} d, weekly review, {results['products']} products")
        axis.set_xlabel("achieved cycle service level")
        axis.set_ylabel("mean units on hand (all products)")
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
