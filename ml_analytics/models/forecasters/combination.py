"""The default forecaster: a combination of the global model and local members, chosen
by rolling-origin backtest, spread over days by a weekday profile, with calibrated
sample paths around it.

Each member gives a daily level for each of the next 13 weeks (the local members a
flat one); the combination is their weighted mean, and each day gets its week's
level times its weekday's multiplier (the product's own weekday shares, shrunk
towards the shop's). Equal weights of the global model, the 28-day moving average
and ADIDA are the default: on the sample's 600 products at six origins in spring and
autumn 2011 they were 9% better than the moving average on 28-day totals
(docs/evaluation.md). Every global training backtests the members at an origin four
weeks back, with a model that saw nothing after it
(services/global_model.py); `choose_combination` picks another candidate over those
stored backtests only when it is clearly better.

Pure: numpy and the member modules.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from ml_analytics.models.calibration import YEAR_DAYS, ConditionalCalibration
from ml_analytics.models.distribution import daily_interval, sample_paths
from ml_analytics.models.forecasters.base import (
    AccuracyMetrics,
    Forecast,
    ForecastConfig,
    ModelFailure,
    accuracy,
    check_history,
    detect_seasonality,
)
from ml_analytics.models.forecasters.global_gbm import (
    MIN_AGE_DAYS,
    WEEKS,
    GlobalModel,
    predict_weekly,
)
from ml_analytics.models.forecasters.local import local_levels
from ml_analytics.models.forecasters.panel import Panel, panel_from_series, weekday_profile

GLOBAL = "gbm"


@dataclass(frozen=True)
class Combination:
    """Members and their weights (summing to 1)."""

    members: tuple[str, ...]
    weights: tuple[float, ...]

    @classmethod
    def equal(cls, *members: str) -> Combination:
        return cls(tuple(members), tuple(1 / len(members) for _ in members))

    @property
    def name(self) -> str:
        return "combination:" + "+".join(self.members)

    def for_product(self, with_global: bool) -> Combination:
        """The combination for one product: without the global model when there is
        none (or the product is too young for it), the other members reweighted."""
        if with_global or GLOBAL not in self.members:
            return self
        kept = [(m, w) for m, w in zip(self.members, self.weights, strict=True) if m != GLOBAL]
        if not kept:
            return LOCAL_ONLY
        total = sum(w for _, w in kept)
        if total <= 0:
            return Combination.equal(*(m for m, _ in kept))
        return Combination(tuple(m for m, _ in kept), tuple(w / total for _, w in kept))

    def as_dict(self) -> dict[str, float]:
        return {m: round(w, 6) for m, w in zip(self.members, self.weights, strict=True)}

    @classmethod
    def from_dict(cls, weights: Mapping[str, float]) -> Combination:
        return cls(tuple(weights), tuple(float(w) for w in weights.values()))


DEFAULT = Combination.equal(GLOBAL, "ma28", "adida")
LOCAL_ONLY = Combination.equal("ma28", "adida")
# What a backtest may choose instead of the default.
CANDIDATES = (
    DEFAULT,
    Combination.equal(GLOBAL, "ma28"),
    Combination.equal(GLOBAL, "adida"),
    Combination.equal(GLOBAL),
    LOCAL_ONLY,
    Combination.equal("ma28"),
    Combination.equal("adida"),
)
LOCAL_MEMBERS = ("ma28", "adida")


@dataclass
class PanelForecast:
    """Forecasts of some products of a panel at one origin."""

    rows: np.ndarray
    combinations: list[Combination]  # each product's, as applied
    weekly: dict[str, np.ndarray]  # member -> (rows, WEEKS) daily levels (NaN: not applied)
    yhat: np.ndarray  # (rows, horizon)


def for_posted_history(chosen: Combination, days: int) -> Combination:
    """The combination for a history posted to the API, whose product's age is unknown:
    the chosen one when the history holds a year, else the default (equal weights).

    The choice is made on stored products' backtests, where a short history is a new
    product's. Posted, it is usually the last weeks of an older one, and the global
    model, reading a young product without a year-ago window, forecasts it low:
    measured on 90-day histories of established products at nine origins, the global
    model alone came to 0.989x the moving average's 28-day total error (0.52x the
    actual demand at 2011-03-15), the equal-weight default to 0.950x."""
    return chosen if days >= YEAR_DAYS else DEFAULT


def point_forecasts(
    panel: Panel,
    t: int,
    rows: np.ndarray,
    combination: Combination,
    global_model: GlobalModel | None,
    horizon: int,
) -> PanelForecast:
    """The combination's daily forecast for `horizon` days from day `t`, each product
    from its history before `t` (and the shop's, for the global model)."""
    rows = np.asarray(rows, dtype=int)
    weekly: dict[str, np.ndarray] = {}
    for name, levels in local_levels(panel, t, rows, LOCAL_MEMBERS).items():
        weekly[name] = np.repeat(levels[:, None], WEEKS, axis=1)
    eligible = (panel.first[rows] <= t - MIN_AGE_DAYS) & (global_model is not None)
    gbm = np.full((len(rows), WEEKS), np.nan)
    if global_model is not None and eligible.any():
        gbm[eligible] = predict_weekly(global_model, panel, t, rows[eligible])
    weekly[GLOBAL] = gbm
    combinations = [combination.for_product(bool(ok)) for ok in eligible]
    levels = np.zeros((len(rows), WEEKS))
    for position, applied in enumerate(combinations):
        for member, weight in zip(applied.members, applied.weights, strict=True):
            levels[position] += weight * weekly[member][position]
    profile = weekday_profile(panel, t, rows)
    days = np.arange(horizon)
    yhat = levels[:, np.minimum(days // 7, WEEKS - 1)] * profile[:, days % 7]
    return PanelForecast(rows, combinations, weekly, np.clip(yhat, 0, None))


def product_seed(item: str, t: int, base: int) -> int:
    """A sample path seed per product and origin: the same data gives the same paths."""
    return (zlib.crc32(item.encode()) ^ (t * 7919) ^ base) & 0x7FFFFFFF


def product_paths(
    item: str,
    t: int,
    history: np.ndarray,
    yhat: np.ndarray,
    config: ForecastConfig,
    calibration: Sequence[float] | np.ndarray | ConditionalCalibration | None,
    sold: np.ndarray | None = None,
) -> np.ndarray:
    """Product `item`'s sample paths around its forecast `yhat` from day `t` (its
    `history` the days before; `sold`, the same with censored days as days without a
    sale, for the sizes of a day's sale), recalibrated with its own density from the
    conditional model, the pooled one, or none (raw paths); seeded per product and day."""
    density = (
        calibration.density(calibration.features(history, yhat))[0]
        if isinstance(calibration, ConditionalCalibration)
        else None
        if calibration is None
        else np.asarray(calibration, dtype=float)
    )
    return sample_paths(
        yhat,
        history if sold is None else sold,
        density,
        config.sample_paths,
        product_seed(item, t, config.random_seed),
    )


def forecast_products(
    panel: Panel,
    t: int,
    rows: Sequence[int] | np.ndarray,
    combination: Combination,
    global_model: GlobalModel | None,
    config: ForecastConfig,
    calibration: Sequence[float] | np.ndarray | ConditionalCalibration | None = None,
    holdout: bool = True,
) -> list[Forecast]:
    """The service's forecast of each product of `rows`, from its data before day `t`:
    the daily point forecast, its calibrated sample paths and daily interval, and the
    accuracy of the same combination on a holdout of the last 28 days before `t`."""
    rows = np.asarray(rows, dtype=int)
    point = point_forecasts(panel, t, rows, combination, global_model, config.horizon_days)
    accuracies = (
        holdout_accuracy(panel, t, rows, combination, global_model, config.holdout_days)
        if holdout
        else [None] * len(rows)
    )
    forecasts = []
    for position, row in enumerate(rows):
        history = panel.history(int(row), t)
        yhat = point.yhat[position]
        sold = panel.sold_history(int(row), t) if panel.observed is not None else None
        paths = product_paths(panel.items[row], t, history, yhat, config, calibration, sold)
        lower, upper = daily_interval(paths, yhat, config.interval_width)
        applied = point.combinations[position]
        metrics = accuracies[position] or AccuracyMetrics(0, None, None, None, None, None)
        forecasts.append(
            Forecast(
                start=panel.day(t),
                yhat=yhat,
                yhat_lower=lower,
                yhat_upper=upper,
                sample_paths=paths,
                metrics=metrics,
                seasonality=detect_seasonality(history, panel.day(t) - timedelta(len(history))),
                training_days=len(history),
                units_seen=float(history.sum()),
                model_name=applied.name,
                weights=applied.as_dict(),
                notes=[] if accuracies[position] else ["history too short for a holdout"],
            )
        )
    return forecasts


def holdout_accuracy(
    panel: Panel,
    t: int,
    rows: np.ndarray,
    combination: Combination,
    global_model: GlobalModel | None,
    holdout_days: int,
) -> list[AccuracyMetrics | None]:
    """Each product's errors over the `holdout_days` before `t`, forecast from the days
    before them (None when its history cannot spare them and four weeks more), with its
    skill against the 28-day moving average at that point."""
    h = t - holdout_days
    result: list[AccuracyMetrics | None] = [None] * len(rows)
    enough = panel.first[rows] <= h - 28
    if h <= 0 or not enough.any():
        return result
    chosen = rows[enough]
    point = point_forecasts(panel, h, chosen, combination, global_model, holdout_days)
    moving_average = point.weekly["ma28"][:, 0]
    for index, (position, row) in enumerate(zip(np.nonzero(enough)[0], chosen, strict=True)):
        actual = np.nan_to_num(panel.Y[row, h:t])
        result[position] = accuracy(
            actual,
            point.yhat[index],
            panel.history(int(row), h),
            moving_average=float(moving_average[index]),
        )
    return result


def choose_combination(
    totals: Mapping[str, np.ndarray],
    actual: np.ndarray,
    default: Combination = DEFAULT,
    margin: float = 0.02,
    min_cases: int = 200,
) -> tuple[Combination, dict[str, Any]]:
    """The candidate with the smallest error of totals (WAPE) over backtest cases, when
    it beats `default` by more than `margin` over at least `min_cases`; else `default`.

    `totals` holds each member's forecast total per case (NaN where the member was not
    applied: such cases are left out), `actual` the actual totals.
    """
    actual = np.asarray(actual, dtype=float)
    usable = ~np.isnan(actual)
    for member in default.members:
        usable &= ~np.isnan(np.asarray(totals.get(member, np.full(len(actual), np.nan))))
    report: dict[str, Any] = {"cases": int(usable.sum()), "wape": {}}
    if usable.sum() < min_cases or actual[usable].sum() <= 0:
        report["chosen"] = default.name
        report["why"] = f"{int(usable.sum())} backtest cases, fewer than {min_cases}: the default"
        return default, report
    scores: dict[Combination, float] = {}
    for candidate in CANDIDATES:
        if any(member not in totals for member in candidate.members):
            continue
        predicted = sum(
            weight * np.asarray(totals[member], dtype=float)[usable]
            for member, weight in zip(candidate.members, candidate.weights, strict=True)
        )
        scores[candidate] = float(np.abs(predicted - actual[usable]).sum() / actual[usable].sum())
        report["wape"][candidate.name] = round(scores[candidate], 4)
    best = min(scores, key=scores.__getitem__)
    if default in scores and scores[best] < scores[default] * (1 - margin):
        report["chosen"], report["why"] = best.name, "better than the default by the margin"
        return best, report
    report["chosen"], report["why"] = default.name, "no candidate clearly better"
    return default, report


# -- as the registry runs it (models/forecasters/registry.py) ---------------------------

NAME = "combination"


def forecast_jobs(
    jobs: Sequence[Any], global_model: GlobalModel | None
) -> list[Forecast | ModelFailure]:
    """The jobs' forecasts on one panel (the same as one at a time, about twenty times
    cheaper). The jobs share a calendar (the shop's days), a combination, a calibration,
    a configuration and whether to score a holdout; jobs without the shop's days are
    forecast one by one, each on its own days. A history that cannot be fitted gets
    its ModelFailure."""
    if len(jobs) > 1 and (jobs[0].shop is None or jobs[0].shop_start is None):
        return [outcome for job in jobs for outcome in forecast_jobs([job], global_model)]
    outcomes: list[Forecast | ModelFailure | None] = [None] * len(jobs)
    fit: list[int] = []
    for index, job in enumerate(jobs):
        try:
            check_history(np.asarray(job.values, dtype=float), job.first_day, job.config)
            fit.append(index)
        except ModelFailure as failure:
            outcomes[index] = failure
    if fit:
        first = jobs[fit[0]]
        if first.shop is not None and first.shop_start is not None:
            shop_start, shop = first.shop_start, np.asarray(first.shop, dtype=float)
        else:  # no stored data: the product's own days are its calendar
            shop_start, shop = first.first_day, np.zeros(len(first.values))
        panel = panel_from_series(
            [(jobs[i].product_id, jobs[i].first_day, np.asarray(jobs[i].values, dtype=float))
             for i in fit],
            shop_start,
            shop,
            [jobs[i].observed for i in fit],
        )  # fmt: skip
        forecasts = forecast_products(
            panel,
            panel.days,
            np.arange(len(fit)),
            Combination.from_dict(dict(first.combination)),
            global_model,
            first.config,
            first.calibration,
            first.holdout,
        )
        for index, forecast in zip(fit, forecasts, strict=True):
            outcomes[index] = forecast
    return [outcome for outcome in outcomes if outcome is not None]
