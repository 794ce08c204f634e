"""The global model: one LightGBM model trained across every stored product.

It forecasts each product's mean daily demand in each of the next 13 weeks counted
from the forecast origin (direct, the week as a feature, not recursive), on a target
divided by the product's own level, so that slow and fast movers learn from each
other. Features come from the product's own history and the whole shop's recent
trend, before the origin only. Measured on the sample's 600 products at six origins
of 2011, alone it is about level with a 28-day moving average; averaged with the
moving average and ADIDA it is 9% better on 28-day totals (see bench/evaluate and
docs/evaluation.md). Design and hyper-parameters come from a study on that data; they
are left at robust defaults, not tuned per origin.

Pure: numpy, pandas and lightgbm; the service trains it in a worker process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from ml_analytics.models.forecasters.panel import (
    Panel,
    product_scale,
    shop_mean,
    span_mean,
    window_mean,
)

WEEKS = 13  # 91 days: the service's 90-day horizon
MIN_AGE_DAYS = 30  # a product is forecast once its first sale is this old
TRAIN_STEP_DAYS = 14  # days between the origins training rows are taken at
TARGET_CAP = 50.0  # one big order on a slow product is not its level
WEIGHT_POWER = 0.5  # row weight: the product's level ** 0.5, between per product and per unit
# Larger catalogues are subsampled per origin: 600,000 rows hold every row of the
# sample's 600 products, and train in about a minute on one core.
MAX_TRAINING_ROWS = 600_000
ROUNDS = 300
PARAMS: dict[str, Any] = {
    "objective": "tweedie",
    "tweedie_variance_power": 1.5,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 127,
    "verbose": -1,
    "seed": 7,
}
FEATURES = [
    "k", "log_scale", "age",
    "m7", "m14", "m28", "m56", "m91", "m182",
    "nz28", "nz91", "nz365", "size365", "cv2_365", "dsl", "max91",
    "ly_prev28", "ly_next28", "ly_week",
    "sh_m7_91", "sh_m28_365", "sh_yoy", "sh_ly_week", "sh_ly_next28",
    "doy",
]  # fmt: skip


class NotEnoughData(ValueError):
    """Too little stored history to train the global model."""


@dataclass
class GlobalModel:
    """A trained global model: LightGBM's text form, and what it was trained on."""

    booster: Any  # lightgbm.Booster
    training_rows: int
    products: int

    def to_text(self) -> str:
        return str(self.booster.model_to_string())

    @classmethod
    def from_text(cls, text: str, training_rows: int = 0, products: int = 0) -> GlobalModel:
        import lightgbm

        return cls(lightgbm.Booster(model_str=text), training_rows, products)


def forecastable(panel: Panel, t: int) -> np.ndarray:
    """Rows of products old enough at origin `t` to be forecast by the global model."""
    return np.nonzero(panel.first <= t - MIN_AGE_DAYS)[0]


def build_features(
    panel: Panel, t: int, rows: np.ndarray, weeks: int = WEEKS
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows for each product of `rows` and each week ahead, from days before `t`.

    Returns the features, each row's position in `rows`, its week, and each product's
    scale (its level, which the levels among the features are divided by).
    """
    first = panel.first[rows]
    C, C2, NZ = panel.C[rows], panel.C2[rows], panel.NZ[rows]
    positions = np.arange(len(rows))
    scale = product_scale(panel, t, rows)
    f: dict[str, np.ndarray] = {
        "log_scale": np.log1p(scale),
        "age": np.minimum((t - first).astype(float), 730),
    }
    for k in (7, 14, 28, 56, 91, 182):
        f[f"m{k}"] = window_mean(C, t, k, first) / scale
    for k in (28, 91, 365):
        lo = np.maximum(t - k, first)
        f[f"nz{k}"] = (NZ[:, t] - NZ[positions, lo]) / np.maximum(t - lo, 1)
    lo = np.maximum(t - 365, first)
    sale_days = NZ[:, t] - NZ[positions, lo]
    total = C[:, t] - C[positions, lo]
    total2 = C2[:, t] - C2[positions, lo]
    mean_size = np.where(sale_days > 0, total / np.maximum(sale_days, 1), np.nan)
    f["size365"] = mean_size / scale
    var_size = np.where(sale_days > 1, total2 / np.maximum(sale_days, 1) - mean_size**2, np.nan)
    f["cv2_365"] = var_size / mean_size**2
    recent = np.nan_to_num(panel.Y[rows, max(t - 365, 0) : t])
    last_sale = np.where(recent > 0, np.arange(recent.shape[1]), -1).max(1, initial=-1)
    f["dsl"] = np.where(last_sale >= 0, recent.shape[1] - last_sale, 366).astype(float)
    f["max91"] = recent[:, -91:].max(1, initial=0.0) / scale
    f["ly_prev28"] = span_mean(C, t - 364 - 28, t - 364, first) / scale
    f["ly_next28"] = span_mean(C, t - 364, t - 364 + 28, first) / scale
    shop_last_year_before = shop_mean(panel.SC, t - 364 - 28, t - 364)
    n = len(rows)
    for name, value in _shop_features(panel, t, shop_last_year_before).items():
        f[name] = np.full(n, value)
    base = pd.DataFrame(f)
    parts = []
    for k in range(weeks):
        part = base.copy()
        part["k"] = k
        a = t - 364 + 7 * k
        part["ly_week"] = span_mean(C, a, a + 7, first) / scale
        part["sh_ly_week"] = _ratio(shop_mean(panel.SC, a, a + 7), shop_last_year_before)
        part["doy"] = (panel.day(t) + timedelta(days=7 * k + 3)).timetuple().tm_yday
        parts.append(part)
    with np.errstate(divide="ignore", invalid="ignore"):
        features = pd.concat(parts, ignore_index=True)[FEATURES].astype(np.float32)
    features = features.replace([np.inf, -np.inf], np.nan)
    return (
        features,
        np.tile(positions, weeks),
        np.repeat(np.arange(weeks), n),
        scale,
    )


def _shop_features(panel: Panel, t: int, shop_last_year_before: float) -> dict[str, float]:
    """The shop's demand trends before `t`, the same for every product: the last week
    against the last quarter, the last four weeks against the last year, the last
    quarter against a year before, and last year's next four weeks against the four
    before them (`shop_last_year_before`)."""
    shop91 = shop_mean(panel.SC, t - 91, t)
    return {
        "sh_m7_91": _ratio(shop_mean(panel.SC, t - 7, t), shop91),
        "sh_m28_365": _ratio(shop_mean(panel.SC, t - 28, t), shop_mean(panel.SC, t - 365, t)),
        "sh_yoy": _ratio(shop91, shop_mean(panel.SC, t - 364 - 91, t - 364)),
        "sh_ly_next28": _ratio(shop_mean(panel.SC, t - 364, t - 364 + 28), shop_last_year_before),
    }


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; NaN (LightGBM's "unknown") where that is undefined."""
    if not denominator or np.isnan(denominator) or np.isnan(numerator):
        return float("nan")
    return numerator / denominator


def training_set(
    panel: Panel, origin: int, max_rows: int = MAX_TRAINING_ROWS, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Training rows from origins `origin - 14`, `origin - 28`, ... whose target weeks end
    before `origin` (no outcome at or after it is used). Target: the week's mean daily
    demand over the product's scale, capped; weight: the scale ** 0.5. A catalogue
    that would give more than `max_rows` rows is subsampled per origin."""
    origins = [
        t
        for t in range(origin - TRAIN_STEP_DAYS, MIN_AGE_DAYS - 1, -TRAIN_STEP_DAYS)
        if (origin - t) // 7 >= 1
    ]
    estimate = sum(len(forecastable(panel, t)) * min(WEEKS, (origin - t) // 7) for t in origins)
    keep = 1.0 if estimate <= max_rows else max_rows / estimate
    rng = np.random.default_rng(seed)
    features, targets, weights = [], [], []
    for t in origins:
        rows = forecastable(panel, t)
        if keep < 1.0:
            rows = rows[rng.random(len(rows)) < keep]
        if len(rows) == 0:
            continue
        weeks = min(WEEKS, (origin - t) // 7)
        X, positions, ks, scale = build_features(panel, t, rows, weeks)
        start = t + 7 * ks
        weekly = (panel.C[rows[positions], start + 7] - panel.C[rows[positions], start]) / 7.0
        features.append(X)
        targets.append(np.minimum(weekly / scale[positions], TARGET_CAP))
        weights.append(scale[positions] ** WEIGHT_POWER)
    if not features:
        raise NotEnoughData("no product is old enough to learn from yet")
    return (
        pd.concat(features, ignore_index=True),
        np.concatenate(targets).astype(np.float32),
        np.concatenate(weights).astype(np.float32),
    )


MIN_TRAINING_ROWS = 500


def train_global(panel: Panel, origin: int, rounds: int = ROUNDS, threads: int = 1) -> GlobalModel:
    """Train on every product's history before day `origin`, with `threads` threads
    (more than the cores left free by ingestion and the fits slow it down: LightGBM's
    threads wait for each other). Raises NotEnoughData."""
    import lightgbm

    X, y, w = training_set(panel, origin)
    if len(y) < MIN_TRAINING_ROWS:
        raise NotEnoughData(f"{len(y)} training rows; the global model needs {MIN_TRAINING_ROWS}")
    booster = lightgbm.train(
        {**PARAMS, "num_threads": threads},
        lightgbm.Dataset(X, y, weight=w, free_raw_data=True),
        num_boost_round=rounds,
    )
    products = len(forecastable(panel, origin))
    return GlobalModel(booster, training_rows=len(y), products=products)


def predict_weekly(model: GlobalModel, panel: Panel, t: int, rows: np.ndarray) -> np.ndarray:
    """(rows, WEEKS) mean daily demand of each week ahead of origin `t`."""
    if len(rows) == 0:
        return np.zeros((0, WEEKS))
    X, positions, ks, scale = build_features(panel, t, rows)
    # One thread: workers predict side by side, one process per core.
    predicted = np.asarray(model.booster.predict(X[FEATURES], num_threads=1), dtype=float)
    weekly = np.zeros((len(rows), WEEKS))
    weekly[positions, ks] = predicted
    return np.clip(weekly, 0, None) * scale[:, None]
