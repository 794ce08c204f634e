"""Scoring for bench/evaluate: the baselines beside the service (the moving average,
seasonal naive, ADIDA, TSB, Prophet; the normal formula and a Poisson for
probabilities), the scores of each origin's cases, and the pooled tables."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
from scipy import stats

from ml_analytics.models.forecasters.base import ForecastConfig
from ml_analytics.models.forecasters.local import local_levels
from ml_analytics.models.forecasters.panel import Panel
from ml_analytics.models.metrics import brier, pinball, precision_recall, reliability, rmsse
from ml_analytics.models.risk import RiskThresholds, assess_stockout_risk

HORIZON = 28
LEAD_TIME = 14
COVERS = (7, 14, 21)
QUANTILES = (0.5, 0.9, 0.95)
THRESHOLDS = RiskThresholds()
POINT_METHODS = ("service", "moving average 28", "seasonal naive", "ADIDA", "TSB", "Prophet")
BASELINES = ("moving average 28", "seasonal naive")
PROBABILITY_METHODS = ("service", "normal formula", "Poisson 28-day rate")


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
    # (service's 14-day forecast, actual 14-day demand) per case with a stockout question
    demand14: list[tuple[float, float]] = field(default_factory=list)

    def extend(self, other: Scores) -> None:
        for name in ("point", "totals", "probability"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for key, values in theirs.items():
                mine.setdefault(key, []).extend(values)
        for method, by_level in other.pinball.items():
            for level, values in by_level.items():
                self.pinball.setdefault(method, {}).setdefault(level, []).extend(values)
        self.levels.extend(other.levels)
        self.demand14.extend(other.demand14)


def score_origin(
    panel: Panel,
    origin: date,
    service: dict[str, tuple[np.ndarray, np.ndarray, str]],
    prophet: bool,
) -> Scores:
    """The cases of one origin: the service's stored forecasts and sample paths (product
    -> (yhat, paths, model name)) beside the baselines."""
    return score_cases(
        panel,
        origin,
        {item: forecast[0] for item, forecast in service.items()},
        {item: path_answers(forecast[1], origin) for item, forecast in service.items()},
        prophet,
        {item: forecast[1] for item, forecast in service.items()},
    )


def score_cases(
    panel: Panel,
    origin: date,
    yhat: dict[str, np.ndarray],
    answers: dict[str, Answer],
    prophet: bool,
    paths: dict[str, np.ndarray] | None = None,
) -> Scores:
    """The cases of one origin: each product's forecast `yhat` and its `answers` to the
    stockout questions beside the baselines' (and, given its sample `paths`, the
    pinball loss of its 14-day demand)."""
    t = panel.index(origin)
    items = sorted(yhat)
    rows = np.array([panel.items.index(item) for item in items])
    forecasts = {"service": np.stack([yhat[i][:HORIZON] for i in items])}
    forecasts.update(baseline_forecasts(panel, t, rows, prophet))
    scores = Scores()
    for position, (item, row) in enumerate(zip(items, rows, strict=True)):
        history = panel.history(int(row), t)
        actual = np.nan_to_num(panel.Y[row, t : t + HORIZON])
        add_point_cases(scores, forecasts, position, history, actual)
        if paths is not None:
            add_pinball_cases(scores, paths[item], history, actual)
        add_stockout_questions(
            scores, forecasts["service"][position], answers[item], history, actual
        )
    return scores


def add_point_cases(
    scores: Scores,
    forecasts: dict[str, np.ndarray],
    position: int,
    history: np.ndarray,
    actual: np.ndarray,
) -> None:
    """RMSSE and the 28- and 14-day total errors of each method's forecast (row
    `position` of its array) against the `actual` demand that followed."""
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


def add_pinball_cases(
    scores: Scores, paths: np.ndarray, history: np.ndarray, actual: np.ndarray
) -> None:
    """Pinball loss of the 14-day cumulative demand: the service's quantiles from its
    paths, the formula's and the Poisson's from their distributions (scaled by the
    product's daily mean over a year; none for a product without a sale in it)."""
    scale = float(history[-365:].mean())
    if scale <= 0:
        return
    actual14 = float(actual[:LEAD_TIME].sum())
    m28 = float(history[-28:].mean()) if len(history) else 0.0
    sd91 = float(history[-91:].std()) if len(history) > 1 else 0.0
    paths14 = paths[:, :LEAD_TIME].sum(1)
    for level in QUANTILES:
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


# The service's answer to a stockout question: (probability, risk level) given the
# cover and the stock.
Answer = Callable[[int, float], tuple[float, str]]


def path_answers(paths: np.ndarray, origin: date) -> Answer:
    """The service's answers from its sample paths, as its risk assessment gives them
    for stock counted at the end of the day before `origin`."""

    def answer(cover: int, stock: float) -> tuple[float, str]:
        risk = assess_stockout_risk(
            forecast_start=origin,
            sample_paths=paths,
            stock_units=stock,
            snapshot_day=origin - timedelta(days=1),
            window_days=LEAD_TIME,
            thresholds=THRESHOLDS,
        )
        return risk.stockout_probability, risk.risk_level

    return answer


def stock_at_cover(history: np.ndarray, cover: int) -> float:
    """The stock of the question at `cover` days: that many days of the 28-day mean."""
    return cover * (float(history[-28:].mean()) if len(history) else 0.0)


def add_stockout_questions(
    scores: Scores,
    yhat: np.ndarray,
    answer: Answer,
    history: np.ndarray,
    actual: np.ndarray,
) -> None:
    """The stockout question at each cover (stock = k days of the 28-day mean, lead time
    LEAD_TIME) for one product: the service's `answer`, the normal formula's and the
    Poisson's, and whether it ran out given the `actual` demand that followed. None for
    a product without a sale in 28 days."""
    m28 = float(history[-28:].mean()) if len(history) else 0.0
    if m28 <= 0:
        return
    sd91 = float(history[-91:].std()) if len(history) > 1 else 0.0
    actual14 = float(actual[:LEAD_TIME].sum())
    scores.demand14.append((float(yhat[:LEAD_TIME].sum()), actual14))
    for cover in COVERS:
        stock = stock_at_cover(history, cover)
        ran_out = actual14 > stock
        probability, level = answer(cover, stock)
        spread = max(math.sqrt(LEAD_TIME) * sd91, 1e-9)
        probabilities = {
            "service": probability,
            "normal formula": float(1 - stats.norm.cdf((stock - LEAD_TIME * m28) / spread)),
            "Poisson 28-day rate": float(stats.poisson.sf(stock, LEAD_TIME * m28)),
        }
        for method, p in probabilities.items():
            scores.probability.setdefault(method, []).append((cover, p, ran_out))
        scores.levels.append((cover, level, ran_out))


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
        "total28_ma": rows["service"][1] / rows["moving average 28"][1],
    }
    print(
        f"\nservice / best simple baseline: RMSSE {ratios['rmsse']:.3f}x, 28-day total "
        f"{ratios['total28']:.3f}x, 14-day total {ratios['total14']:.3f}x"
    )
    return ratios


def origin_probability_table(by_origin: dict[date, Scores]) -> None:
    """Per origin: how many ran out against how many the service expected, beside how
    far the whole shop's 14-day demand fell from the service's forecast. A decile's gap
    pooled over a few origins carries these shop-wide surprises, which no product's
    history announces."""
    print("\nStockout probability per origin (all covers):\n")
    print(
        "| origin | cases | mean predicted | observed | service Brier | skill vs the better "
        "| 14-day demand: actual / forecast |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for origin, scores in by_origin.items():
        p, y = answers(scores, "service")
        briers, skill = brier_skill(scores)
        print(
            f"| {origin} | {len(p)} | {p.mean():.3f} | {y.mean():.3f} | {briers['service']:.3f} "
            f"| {skill:+.3f} | {shop_surprise(scores):.3f} |"
        )


def shop_surprise(scores: Scores) -> float:
    """The shop's 14-day demand over the service's forecast of it, summed over the
    products asked the stockout questions."""
    return sum(a for _, a in scores.demand14) / sum(f for f, _ in scores.demand14)


def answers(scores: Scores, method: str, cover: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A method's stockout probabilities and the outcomes (at one cover, or all)."""
    chosen = [c for c in scores.probability[method] if cover is None or c[0] == cover]
    return np.array([c[1] for c in chosen]), np.array([c[2] for c in chosen])


def brier_skill(scores: Scores, cover: int | None = None) -> tuple[dict[str, float], float]:
    """Each method's Brier score, and the service's skill against the better of the
    normal formula and the Poisson."""
    briers = {m: brier(*answers(scores, m, cover)) for m in PROBABILITY_METHODS}
    reference = min(briers["normal formula"], briers["Poisson 28-day rate"])
    return briers, 1 - briers["service"] / reference


def worst_gap(scores: Scores) -> float:
    """The largest |observed - predicted| over the deciles holding 50 cases or more."""
    return max(
        (
            abs(observed - predicted)
            for _, _, cases, predicted, observed in reliability(*answers(scores, "service"))
            if cases >= 50
        ),
        default=0.0,
    )


def probability_tables(scores: Scores) -> dict[str, Any]:
    print("\nStockout probability (lead time 14 d; stock = k days of the 28-day mean):\n")
    print(
        "| cover k | cases | ran out | service Brier | normal formula | Poisson | skill vs the better |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    skills = {}
    for cover in (*COVERS, None):
        briers, skill = brier_skill(scores, cover)
        skills["all" if cover is None else cover] = skill
        p, y = answers(scores, "service", cover)
        print(
            f"| {'all' if cover is None else cover} | {len(p)} | {int(y.sum())} | "
            f"{briers['service']:.3f} | {briers['normal formula']:.3f} | "
            f"{briers['Poisson 28-day rate']:.3f} | {skill:+.3f} |"
        )
    print("\nReliability of stockout_probability (all covers), by decile:\n")
    print("| predicted | cases | mean predicted | observed | gap |")
    print("|---|---:|---:|---:|---:|")
    for low, high, cases, predicted, observed in reliability(*answers(scores, "service")):
        gap = observed - predicted
        print(f"| {low:.1f}-{high:.1f} | {cases} | {predicted:.3f} | {observed:.3f} | {gap:+.3f} |")
    alerts = np.array([level == "high" for _, level, _ in scores.levels])
    outcomes = np.array([ran for _, _, ran in scores.levels])
    precision, recall = precision_recall(alerts, outcomes)
    print(
        f"\n`high` alerts (p >= {THRESHOLDS.high}): precision {precision:.3f}, recall {recall:.3f}"
    )
    if scores.pinball:
        print(
            "\nPinball loss of the 14-day cumulative demand (scaled by each product's daily mean):\n"
        )
        print("| method | q 0.5 | q 0.9 | q 0.95 |")
        print("|---|---:|---:|---:|")
        for method in PROBABILITY_METHODS:
            values = [np.mean(scores.pinball[method][q]) for q in QUANTILES]
            print(f"| {method} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return {
        "skills": skills,
        "worst_gap": worst_gap(scores),
        "precision": precision,
        "recall": recall,
    }
