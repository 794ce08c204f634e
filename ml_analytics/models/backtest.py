"""A global training with its own backtest: what the service runs each time the clock
has moved a week (services/global_model.py runs it in a worker process). Pure.

1. Backtest at the origin four weeks before the clock: a global model trained only on
   data before that origin forecasts every product; the members' and the
   combination's 28-day totals are set beside what happened, and the probability
   integral transform (PIT) of each product's actual 14-day demand under its raw
   sample paths is kept. These rows are stored: each product's skill against the
   moving average comes from its last backtests, the combination is chosen over the
   last weeks' rows, and the sample paths are recalibrated with their PITs.
   Each product is also forecast from a cut history, its last 30 to 364 days (drawn
   per product), as a history posted to the API would be: the PITs of those
   forecasts teach the recalibration of posted histories shorter than a year.
2. The global model that forecasts from now on, trained on everything before the clock.

The same stored data always gives the same result: a replay of history reaches the
same models as living through it, at the same clock days.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from ml_analytics.models import distribution
from ml_analytics.models.calibration import YEAR_DAYS, posted_features, product_features
from ml_analytics.models.distribution import order_sizes, pit, sale_day_paths
from ml_analytics.models.forecasters.combination import DEFAULT, GLOBAL, point_forecasts
from ml_analytics.models.forecasters.global_gbm import (
    GlobalModel,
    NotEnoughData,
    train_global,
)
from ml_analytics.models.forecasters.panel import Panel, cut_histories

BACKTEST_DAYS = 28
PIT_WINDOW_DAYS = 14
PIT_PATHS = 200
MEMBERS = ("gbm", "ma28", "adida")
PIT_SEED = 11  # the PITs' random draws, reproducible
CUT_MIN_DAYS = 30  # a cut history's length: from the API's shortest useful history


@dataclass(frozen=True)
class BacktestCase:
    """One product at one backtest origin: each member's 28-day total, the combination's
    and what happened, and the PIT of the actual 14-day demand (None: not applicable)."""

    product_id: str
    member_totals: dict[str, float | None]
    forecast_total: float
    actual_total: float
    actual_14: float
    pit_14: float | None
    rmse: float
    mape: float | None
    # The product's features at the origin (models/calibration.py): what the
    # conditional recalibration learns the PIT from.
    features: tuple[float, ...] | None = None
    origin: date | None = None  # the backtest's first day, once stored
    # The same product forecast from a cut history (its last 30 to 364 days, as if
    # posted to the API): the PIT of the actual 14-day demand under those paths and
    # the cut history's posted_features. None where not applicable.
    posted_pit_14: float | None = None
    posted_features: tuple[float, ...] | None = None
    # How the raw paths behind both PITs were drawn (distribution.PATHS_VERSION).
    paths_version: int = field(default_factory=lambda: distribution.PATHS_VERSION)

    def calibration_case(
        self, posted: bool = False
    ) -> tuple[float | None, tuple[float, ...] | None]:
        """The PIT and the features a recalibration learns from: the whole history's,
        or (`posted`) the cut history's."""
        if posted:
            return self.posted_pit_14, self.posted_features
        return self.pit_14, self.features


@dataclass
class GlobalTraining:
    model: GlobalModel | None
    backtest_origin_index: int | None
    cases: list[BacktestCase] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""


def backtest(
    panel: Panel, h: int, model: GlobalModel | None, seed: int = PIT_SEED
) -> list[BacktestCase]:
    """Every product old enough at origin `h` whose demand was observed on each of the
    BACKTEST_DAYS from `h`, forecast from its data before `h` (the default combination;
    `model` must have seen nothing from `h` on) and scored on those days, which the
    panel must hold."""
    rows = np.nonzero(panel.first <= h - 28)[0]
    # Scored only where demand was observed: a product whose shelf was empty on a day of
    # the window has no actual to score (its sales are a lower bound).
    rows = np.array(
        [row for row in rows if panel.observed_between(int(row), h, h + BACKTEST_DAYS)],
        dtype=int,
    )
    if len(rows) == 0:
        return []
    point = point_forecasts(panel, h, rows, DEFAULT, model, BACKTEST_DAYS)
    posted = posted_cases(panel, h, rows, model, seed + 1)
    rng = np.random.default_rng(seed)
    cases = []
    for position, row in enumerate(rows):
        actual = np.nan_to_num(panel.Y[row, h : h + BACKTEST_DAYS])
        forecast = point.yhat[position]
        totals: dict[str, float | None] = {}
        for member in MEMBERS:
            level = point.weekly[member][position, :4]
            totals[member] = None if np.isnan(level).any() else float(level.sum() * 7)
        history = panel.history(int(row), h)
        nonzero = actual > 0
        cases.append(
            BacktestCase(
                product_id=panel.items[row],
                member_totals=totals,
                forecast_total=float(forecast.sum()),
                actual_total=float(actual.sum()),
                actual_14=float(actual[:PIT_WINDOW_DAYS].sum()),
                pit_14=pit_14(
                    forecast,
                    panel.sold_history(int(row), h),
                    float(actual[:PIT_WINDOW_DAYS].sum()),
                    rng,
                ),
                rmse=float(np.sqrt(np.mean((forecast - actual) ** 2))),
                mape=float(np.mean(np.abs(forecast[nonzero] - actual[nonzero]) / actual[nonzero]))
                * 100
                if nonzero.any()
                else None,
                features=tuple(float(x) for x in product_features(history, forecast)),
                posted_pit_14=posted[position][0],
                posted_features=posted[position][1],
            )
        )
    return cases


def drawn_as_now(cases: list[BacktestCase]) -> list[BacktestCase]:
    """The cases whose PITs were drawn under today's sample paths: a recalibration
    learned from PITs of paths drawn otherwise would correct what is no longer there."""
    return [c for c in cases if c.paths_version == distribution.PATHS_VERSION]


def pit_14(
    forecast: np.ndarray, history: np.ndarray, actual_14: float, rng: np.random.Generator
) -> float | None:
    """The PIT of the actual demand of the forecast's first PIT_WINDOW_DAYS under the
    raw sale-day paths around it (sizes from `history`); None for a zero forecast."""
    window = np.asarray(forecast)[:PIT_WINDOW_DAYS]
    paths = sale_day_paths(window, order_sizes(history), PIT_PATHS, rng).sum(1)
    return pit(paths, actual_14, rng) if window.sum() > 0 else None


def posted_cases(
    panel: Panel, h: int, rows: np.ndarray, model: GlobalModel | None, seed: int
) -> list[tuple[float | None, tuple[float, ...]]]:
    """Each product of `rows` forecast at `h` from only its last 30 to 364 days (drawn
    per product, reproducibly) with the combination a posted history that short gets
    (the default): the PIT of its actual 14-day demand under the raw paths of that
    forecast, and the cut history's posted_features."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(CUT_MIN_DAYS, YEAR_DAYS, len(rows))
    cut = cut_histories(panel, h, rows, lengths)
    point = point_forecasts(cut, h, np.arange(len(rows)), DEFAULT, model, PIT_WINDOW_DAYS)
    cases: list[tuple[float | None, tuple[float, ...]]] = []
    for position, row in enumerate(rows):
        history = cut.history(position, h)
        forecast = point.yhat[position]
        actual = float(np.nan_to_num(panel.Y[row, h : h + PIT_WINDOW_DAYS]).sum())
        cases.append(
            (
                pit_14(forecast, cut.sold_history(position, h), actual, rng),
                tuple(float(x) for x in posted_features(history, forecast)),
            )
        )
    return cases


def train_with_backtest(panel: Panel, t: int, threads: int = 1) -> GlobalTraining:
    """The backtest at `t - BACKTEST_DAYS`, then the global model on all data before `t`.

    A panel too short for either gives what it can (no backtest; no model when there is
    not enough to learn from, and the service then forecasts with local members)."""
    seconds: dict[str, float] = {}
    h = t - BACKTEST_DAYS
    cases: list[BacktestCase] = []
    note = ""
    started = time.perf_counter()
    try:
        earlier = train_global(panel, h, threads=threads)
    except NotEnoughData as reason:
        earlier, note = None, f"no backtest model: {reason}"
    seconds["backtest model"] = time.perf_counter() - started
    if h > 28:
        started = time.perf_counter()
        cases = backtest(panel, h, earlier)
        seconds["backtest"] = time.perf_counter() - started
    started = time.perf_counter()
    try:
        model: GlobalModel | None = train_global(panel, t, threads=threads)
    except NotEnoughData as reason:
        model, note = None, f"no global model: {reason}"
    seconds["global model"] = time.perf_counter() - started
    return GlobalTraining(model, h if cases else None, cases, seconds, note)


def member_totals_table(cases: list[BacktestCase]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Members' totals (NaN where not applied) and actual totals, for choose_combination."""
    totals = {
        member: np.array(
            [
                np.nan if c.member_totals.get(member) is None else c.member_totals[member]
                for c in cases
            ],
            dtype=float,
        )
        for member in MEMBERS
    }
    return totals, np.array([c.actual_total for c in cases], dtype=float)


def summary(cases: list[BacktestCase]) -> dict[str, Any]:
    """The pooled figures of a backtest: error of 28-day totals (WAPE) of the combination
    and of the moving average."""
    actual = sum(c.actual_total for c in cases)
    if not cases or actual <= 0:
        return {"cases": len(cases)}
    ma = [c for c in cases if c.member_totals.get("ma28") is not None]
    return {
        "cases": len(cases),
        "combination_wape_28": round(
            sum(abs(c.forecast_total - c.actual_total) for c in cases) / actual, 4
        ),
        "moving_average_wape_28": round(
            sum(abs((c.member_totals["ma28"] or 0.0) - c.actual_total) for c in ma) / actual, 4
        ),
        "with_global_model": sum(c.member_totals.get(GLOBAL) is not None for c in cases),
    }
