"""How the sample paths' recalibration does, in minutes instead of bench/evaluate's hour.

The stockout probabilities come from sample paths recalibrated with where actual
14-day demand fell among them in the backtests (the PIT). This bench reproduces what
the service does at bench/evaluate's origins without the database or the clock: at
each origin and at each of the eight weekly backtests before it, the global model is
trained on the data before that day, the default combination forecasts every product,
and the backtests give their PITs and the products' features (the service's own
`backtest`, `point_forecasts`, `sample_paths`). Each way of recalibrating is then
learned from the eight backtests before an origin and scored at the origin, as
bench/evaluate scores the service:

- `none`: the raw sale-day paths;
- `pooled`: one PIT density for every product;
- `conditional`: each product's density from the ordinal model of its features (the
  service's default once backtests carry features; `models/calibration.py`).

Beside the pooled scores of each (2011's six origins, 2010's three as the check) it
prints the calibration's reliability on the very backtests it was fitted on (in
sample) and per origin how many products ran out against how many the paths said,
with how far the shop's 14-day demand fell from the forecast: a reliability gap that
is there out of sample only is the origins' own surprise, not the model's form. Then,
for more days out of sample than six origins give, the three newest backtest days
before each origin scored as origins (pseudo-origins), each recalibrated from the
backtests at least 14 days before it.

The global models and forecasts (about 80 days, 13 minutes on 2 cores) are kept in
`--cache` (a pickle this bench writes and reads; delete it after changing the point
forecasts; the products' features are recomputed from it when their set changed).
Each variant of the recalibration then takes about 3.5 minutes.

`--level-sd S` scores sample paths with a level factor per path of another σ (of its
log) than the service's (`distribution.LEVEL_SD`; 0: none): the cached backtests' PITs
are drawn again under those paths, as the service's backtest would have drawn them
(so are those of a cache built under another `distribution.PATHS_VERSION`).

    python -m bench.calibration [--cache .bench-cache/calibration.pkl] [--variants ...]
        [--level-sd S]
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from bench.evaluate import DATA, ORIGINS, ROBUSTNESS, load_panel
from bench.scoring import (
    COVERS,
    LEAD_TIME,
    Scores,
    add_stockout_questions,
    answers,
    brier_skill,
    origin_probability_table,
    path_answers,
    probability_tables,
    shop_surprise,
    worst_gap,
)
from ml_analytics.models import distribution
from ml_analytics.models.backtest import PIT_SEED, BacktestCase, backtest, pit_14
from ml_analytics.models.calibration import (
    Calibration,
    fit_calibration,
    has_current_features,
    product_features,
)
from ml_analytics.models.distribution import pit_density
from ml_analytics.models.forecasters.base import ForecastConfig
from ml_analytics.models.forecasters.combination import DEFAULT, point_forecasts, product_paths
from ml_analytics.models.forecasters.global_gbm import train_global
from ml_analytics.models.forecasters.panel import Panel

BACKTESTS = 8  # weekly backtest origins before each origin, as the service keeps
BACKTEST_LAG = 28  # a backtest starts four weeks before the training that makes it
VARIANTS = ("none", "pooled", "conditional")
CONFIG = ForecastConfig()


@dataclass
class Day:
    """What the service would know and forecast at day `t` of the panel."""

    rows: np.ndarray  # products with 28 days of history before t
    yhat: np.ndarray  # (len(rows), 28) the default combination's daily forecast
    cases: list[BacktestCase]  # the backtest from t (PITs and features)


def backtest_days(t: int) -> list[int]:
    return [t - BACKTEST_LAG - 7 * k for k in range(BACKTESTS)]


def with_current_features(panel: Panel, h: int, day: Day) -> Day:
    """The cached day with each backtest case's features as product_features computes
    them now (they need only the history and the cached forecast)."""
    if all(has_current_features(c.features) for c in day.cases):
        return day
    position = {panel.items[row]: p for p, row in enumerate(day.rows)}
    cases = []
    for case in day.cases:
        p = position[case.product_id]
        history = panel.history(int(day.rows[p]), h)
        features = tuple(float(x) for x in product_features(history, day.yhat[p]))
        cases.append(dataclasses.replace(case, features=features))
    return Day(day.rows, day.yhat, cases)


def prepare(panel: Panel, origins: list[date], cache: Path) -> dict[int, Day]:
    days: dict[int, Day] = pickle.loads(cache.read_bytes()) if cache.exists() else {}
    needed = sorted(
        {panel.index(o) for o in origins}
        | {h for o in origins for h in backtest_days(panel.index(o))}
    )
    for h in needed:
        if h in days:
            days[h] = with_current_features(panel, h, days[h])
            continue
        started = time.perf_counter()
        model = train_global(panel, h, threads=2)
        rows = np.nonzero(panel.first <= h - 28)[0]
        point = point_forecasts(panel, h, rows, DEFAULT, model, 28)
        days[h] = Day(rows, point.yhat, backtest(panel, h, model))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(days))
        print(
            f"  {panel.day(h)}: {len(rows)} products, {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return days


def with_current_pits(panel: Panel, h: int, day: Day) -> Day:
    """The cached day with each backtest case's PIT drawn again under the sample paths
    as they are now made (distribution.LEVEL_SD), in the order and with the seed the
    service's backtest draws them."""
    position = {panel.items[row]: p for p, row in enumerate(day.rows)}
    rng = np.random.default_rng(PIT_SEED)
    cases = []
    for case in day.cases:
        p = position[case.product_id]
        history = panel.history(int(day.rows[p]), h)
        drawn = pit_14(day.yhat[p], history, case.actual_14, rng)
        cases.append(
            dataclasses.replace(case, pit_14=drawn, paths_version=distribution.PATHS_VERSION)
        )
    return Day(day.rows, day.yhat, cases)


def learn(variant: str, cases: list[BacktestCase]) -> Calibration | None:
    """The recalibration learned from backtest cases, as the service learns it."""
    described = [c for c in cases if c.pit_14 is not None and c.features is not None]
    if variant == "none":
        return None
    if variant == "pooled":
        return tuple(pit_density(np.array([c.pit_14 for c in described], dtype=float)))
    return fit_calibration(
        np.array([c.features for c in described], dtype=float),
        np.array([c.pit_14 for c in described], dtype=float),
    )


def score_day(panel: Panel, day: Day, t: int, calibration: Calibration | None) -> Scores:
    """The stockout questions at day t of every product that sold in its last 28 days
    and has 30 days of history, answered by paths recalibrated with `calibration`."""
    scores = Scores()
    for position, row in enumerate(day.rows):
        if panel.first[row] > t - 30:
            continue
        yhat = day.yhat[position]
        history = panel.history(int(row), t)
        paths = product_paths(panel.items[row], t, history, yhat, CONFIG, calibration)
        actual = np.nan_to_num(panel.Y[row, t : t + LEAD_TIME])
        add_stockout_questions(scores, yhat, path_answers(paths, panel.day(t)), history, actual)
    return scores


PSEUDO_ORIGINS = 3  # the newest backtest days before each origin, scored as origins


def pseudo_origin_table(
    panel: Panel, days: dict[int, Day], origins: list[date], variant: str
) -> Scores:
    """More days out of sample: each origin's three newest backtest days, each scored
    with the recalibration learned from the backtests at least 14 days before it (as
    an origin would be, with four to six backtests instead of eight). Per day, the
    mean probability against the share that ran out, beside the shop's 14-day demand
    against the forecast."""
    print(
        "\nPseudo-origins (backtest days, recalibrated from the backtests 14 days or more "
        "before each):\n"
    )
    print("| day | backtests | mean predicted | observed | gap | shop's 14-day demand ÷ forecast |")
    print("|---|---:|---:|---:|---:|---:|")
    pooled = Scores()
    for origin in origins:
        earlier = backtest_days(panel.index(origin))
        for h in earlier[:PSEUDO_ORIGINS]:
            learned_from = [d for d in earlier if d <= h - LEAD_TIME]
            calibration = learn(variant, [c for d in learned_from for c in days[d].cases])
            scores = score_day(panel, days[h], h, calibration)
            pooled.extend(scores)
            p, y = answers(scores, "service")
            shop = shop_surprise(scores)
            print(
                f"| {panel.day(h)} | {len(learned_from)} | {p.mean():.3f} | {y.mean():.3f} "
                f"| {y.mean() - p.mean():+.3f} | {shop:.3f} |"
            )
    p, y = answers(pooled, "service")
    skills = " / ".join(f"{brier_skill(pooled, cover)[1]:+.3f}" for cover in COVERS)
    print(
        f"\nPooled over {len(origins) * PSEUDO_ORIGINS} pseudo-origins: mean predicted "
        f"{p.mean():.3f}, observed {y.mean():.3f}; worst decile gap {worst_gap(pooled):.3f}; "
        f"Brier skill {skills} at {' / '.join(map(str, COVERS))} days"
    )
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, default=Path(".bench-cache/calibration.pkl"))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--level-sd", type=float, default=distribution.LEVEL_SD, help="σ of a path's level"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    panel = load_panel(args.data)
    groups = {
        "2011 (six origins)": [date.fromisoformat(o) for g in ORIGINS.values() for o in g],
        "2010 (three origins, the check)": [date.fromisoformat(o) for o in ROBUSTNESS["2010"]],
    }
    print("Point forecasts and backtests (cached in", args.cache, "):", flush=True)
    days = prepare(panel, [o for group in groups.values() for o in group], args.cache)
    if args.level_sd != distribution.LEVEL_SD:
        distribution.LEVEL_SD = args.level_sd
        redraw = list(days)
        print(f"Sample paths with a level factor per path, σ {args.level_sd:g}", flush=True)
    else:  # a cache built under other paths (cases from before versions were kept: 1)
        redraw = [
            h
            for h, day in days.items()
            if any(getattr(c, "paths_version", 1) != distribution.PATHS_VERSION for c in day.cases)
        ]
    days.update({h: with_current_pits(panel, h, days[h]) for h in redraw})
    for variant in args.variants:
        print(f"\n## Recalibration: {variant}")
        for name, origins in groups.items():
            pooled, in_sample = Scores(), Scores()
            by_origin = {}
            for origin in origins:
                t = panel.index(origin)
                history_cases = [c for h in backtest_days(t) for c in days[h].cases]
                calibration = learn(variant, history_cases)
                by_origin[origin] = score_day(panel, days[t], t, calibration)
                pooled.extend(by_origin[origin])
                for h in backtest_days(t):
                    in_sample.extend(score_day(panel, days[h], h, calibration))
            print(f"\n### {name}")
            probability_tables(pooled)
            origin_probability_table(by_origin)
            print(
                f"\nReliability, worst decile gap: {worst_gap(pooled):.3f} at the origins, "
                f"{worst_gap(in_sample):.3f} on the backtests it was learned from "
                f"({len(in_sample.levels)} questions)"
            )
        pseudo_origin_table(panel, days, [o for group in groups.values() for o in group], variant)
    print(f"\nbench/calibration: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
