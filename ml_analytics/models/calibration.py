"""Conditional recalibration of the sample paths: where a product's actual 14-day
demand falls within its paths depends on the product (a forecast far above its recent
level overshoots more often; a product that has not sold for weeks is over-forecast),
so one pooled PIT density corrects the average product and leaves the others wrong.

A proportional-odds (ordinal logistic) model of the PIT's bin given a few features
of the product at the backtest: P(bin <= j | x) = sigmoid(a_j - x . b), with 9 cut
points for 10 bins and one slope for each of the nine features and a flag for a
missing ratio (19 numbers). Fitted on the stored backtests, it gives each product its
own PIT density, which `distribution.sample_paths` uses as it uses the pooled one.

Measured through the service by bench/evaluate (six 2011 origins, three 2010 as a
check, 600 products): Brier skill against the better of the normal formula and the
Poisson went from +0.154 / +0.088 / +0.071 (pooled density) to +0.196 / +0.094 /
+0.074 at 7/14/21 days of cover in 2011 with the first seven features, +0.209 /
+0.109 / +0.084 with all nine; in 2010 from +0.089 / +0.030 / +0.044 to +0.169 /
+0.082 / +0.078, then +0.173 / +0.095 / +0.081. Sharper, but the middle deciles
under-predict by up to 0.07 (docs/evaluation.md, "Tried and not taken").

Histories posted to the API shorter than a year get a second model of the same form,
learned from backtests of cut histories (POSTED_FEATURES: the same features and the
days of history); through the API, 90-day histories went from +0.185 / +0.052 /
+0.001 to +0.194 / +0.085 / +0.036 in 2011 (bench/posted).
Pure: numpy and scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from ml_analytics.models.distribution import order_sizes

BINS = 10
WINDOW_DAYS = 14
FEATURES = (
    "forecast / 28-day mean",
    "forecast / 91-day mean",
    "forecast / 365-day mean",
    "share of sale days (91 days)",
    "expected sale days",
    "CV of order sizes",
    "days since the last sale",
    "biggest day's share of the last 28 days' demand",
    "share of sale days (14 days)",
)
# A history posted to the API that is shorter than a year is read with a second model,
# learned from backtest cases whose histories were cut short (models/backtest.py): its
# features are the same and the days of history the product was seen for.
POSTED_FEATURES = (*FEATURES, "days of history (at most 365)")
YEAR_DAYS = 365
RIDGE = 1.0  # L2 penalty on the slopes (features are standardised)
MIN_CASES = 200


def product_features(history: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """The features of a product whose history (zero-filled, oldest first) ends the
    day before its forecast `yhat` starts. A ratio to an empty window is NaN."""
    history = np.asarray(history, dtype=float)
    ahead = float(np.clip(np.asarray(yhat, dtype=float)[:WINDOW_DAYS], 0, None).sum())
    ratios = []
    for days in (28, 91, 365):
        mean = float(history[-days:].mean()) if len(history) else 0.0
        ratios.append(ahead / (WINDOW_DAYS * mean) if mean > 0 else np.nan)
    sizes = order_sizes(history)
    size_mean = float(sizes.mean())
    sold = np.nonzero(history > 0)[0]
    since = float(len(history) - 1 - sold[-1]) if len(sold) else float(len(history))
    share = float((history[-91:] > 0).mean()) if len(history) else 0.0
    month = history[-28:]
    biggest = float(month.max() / month.sum()) if month.sum() > 0 else 1.0
    recent = float((history[-14:] > 0).mean()) if len(history) else 0.0
    return np.array(
        [
            *ratios,
            share,
            ahead / size_mean,
            float(sizes.std() / size_mean),
            since,
            biggest,
            recent,
        ],
        dtype=float,
    )


def posted_features(history: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """The features of a history posted to the API (or cut short as one, in a
    backtest): product_features and how many days of history there are, at most a
    year."""
    return np.append(product_features(history, yhat), float(min(len(history), YEAR_DAYS)))


def has_current_features(features: tuple[float, ...] | None, posted: bool = False) -> bool:
    """Whether a backtest case's features are those product_features (posted_features)
    computes now: an earlier version kept none, or another set of them."""
    names = POSTED_FEATURES if posted else FEATURES
    return features is not None and len(features) == len(names)


def _design(features: np.ndarray) -> np.ndarray:
    """Logs of the features (skewed ratios and counts) and a flag for a missing ratio."""
    features = np.atleast_2d(np.asarray(features, dtype=float))
    missing = np.isnan(features[:, :3]).any(axis=1, keepdims=True).astype(float)
    logged = np.log(np.clip(np.nan_to_num(features, nan=1.0), 0, None) + 0.05)
    return np.hstack([logged, missing])


@dataclass(frozen=True)
class ConditionalCalibration:
    cuts: tuple[float, ...]  # a_1 < ... < a_{BINS-1}
    slopes: tuple[float, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    posted: bool = False  # learned from cut histories: reads posted_features

    def features(self, history: np.ndarray, yhat: np.ndarray) -> np.ndarray:
        """What this model reads of a product: its history and forecast's features."""
        return (posted_features if self.posted else product_features)(history, yhat)

    def density(self, features: np.ndarray) -> np.ndarray:
        """(n, BINS) PIT densities of mean 1 (one row when given one product)."""
        z = (_design(features) - np.array(self.center)) / np.array(self.scale)
        eta = z @ np.array(self.slopes)
        cumulative = expit(np.array(self.cuts)[None, :] - eta[:, None])
        n = len(z)
        bounds = np.hstack([np.zeros((n, 1)), cumulative, np.ones((n, 1))])
        probabilities = np.clip(np.diff(bounds, axis=1), 1e-6, None)
        return probabilities / probabilities.mean(axis=1, keepdims=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "ordinal",
            "bins": BINS,
            "cuts": list(self.cuts),
            "slopes": list(self.slopes),
            "center": list(self.center),
            "scale": list(self.scale),
            "features": "posted" if self.posted else "stored",
        }

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> ConditionalCalibration:
        if stored.get("kind") != "ordinal" or stored.get("bins") != BINS:
            raise ValueError(f"not an ordinal calibration of {BINS} bins: {stored.get('kind')}")
        return cls(
            tuple(stored["cuts"]),
            tuple(stored["slopes"]),
            tuple(stored["center"]),
            tuple(stored["scale"]),
            posted=stored.get("features") == "posted",
        )


def fit_calibration(
    features: np.ndarray, pits: np.ndarray, posted: bool = False
) -> ConditionalCalibration | None:
    """The ordinal model of PIT bins given the products' features (None with fewer
    than MIN_CASES cases); `posted`: features are posted_features, of cut histories."""
    pits = np.asarray(pits, dtype=float)
    if len(pits) < MIN_CASES:
        return None
    x = _design(features)
    center, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - center) / scale
    y = np.minimum((np.clip(pits, 0, 1) * BINS).astype(int), BINS - 1)
    n, k = z.shape
    share = np.clip(np.cumsum(np.bincount(y, minlength=BINS))[:-1] / n, 1e-3, 1 - 1e-3)
    start_cuts = np.log(share / (1 - share))
    rows = np.arange(n)

    def unpack(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Increasing cut points: the first, then positive steps.
        return np.cumsum(np.concatenate([[w[0]], np.exp(w[1 : BINS - 1])])), w[BINS - 1 :]

    def loss(w: np.ndarray) -> float:
        cuts, slopes = unpack(w)
        cumulative = expit(cuts[None, :] - (z @ slopes)[:, None])
        bounds = np.hstack([np.zeros((n, 1)), cumulative, np.ones((n, 1))])
        likelihood = bounds[rows, y + 1] - bounds[rows, y]
        return float(-np.log(np.clip(likelihood, 1e-12, None)).sum() + RIDGE * slopes @ slopes)

    start = np.concatenate(
        [[start_cuts[0]], np.log(np.clip(np.diff(start_cuts), 1e-3, None)), np.zeros(k)]
    )
    result = minimize(loss, start, method="L-BFGS-B", options={"maxiter": 500})
    cuts, slopes = unpack(result.x)
    return ConditionalCalibration(
        tuple(float(c) for c in cuts),
        tuple(float(s) for s in slopes),
        tuple(float(c) for c in center),
        tuple(float(s) for s in scale),
        posted=posted,
    )


# What the sample paths are recalibrated with: the pooled PIT density (one number per
# bin, as stored before the conditional model) or the conditional model.
Calibration = tuple[float, ...] | ConditionalCalibration


def calibration_from_stored(stored: list[float] | dict[str, Any] | None) -> Calibration | None:
    """The calibration as `global_models.calibration` holds it: a list is a pooled
    density, a dict the conditional model. A conditional model of another set of
    features (stored by an earlier version) cannot read today's: None, raw paths until
    the next training learns one."""
    if stored is None:
        return None
    if isinstance(stored, dict):
        return _ordinal_of(stored, FEATURES)
    return tuple(float(x) for x in stored)


def _ordinal_of(stored: dict[str, Any], features: tuple[str, ...]) -> ConditionalCalibration | None:
    """The stored ordinal model, or None when it has slopes for another set of features
    than `features` (and the missing-ratio flag)."""
    if len(stored.get("slopes", ())) != len(features) + 1:
        return None
    return ConditionalCalibration.from_dict(stored)


def posted_calibration_from_stored(
    stored: list[float] | dict[str, Any] | None,
) -> ConditionalCalibration | None:
    """The model for posted histories shorter than a year, which a conditional model's
    dict holds under "posted" once backtests of cut histories were learned from; None
    before (such a history is then read as a stored product's)."""
    if not isinstance(stored, dict) or not isinstance(stored.get("posted"), dict):
        return None
    return _ordinal_of(stored["posted"], POSTED_FEATURES)
