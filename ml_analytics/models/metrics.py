"""Forecast accuracy measures, one home for them: the service's per-product figures
(models/forecasters/base.py) and the evaluation (bench/evaluate) use these. Pure."""

from __future__ import annotations

import math

import numpy as np


def rmsse(actual: np.ndarray, forecast: np.ndarray, history: np.ndarray) -> float | None:
    """Root mean squared scaled error (the M5 competition's): the forecast's RMSE over
    that of a one-step naive forecast in-sample, from the first non-zero demand on.
    None when the history has no variation to scale by."""
    nonzero = np.nonzero(history)[0]
    if nonzero.size == 0:
        return None
    since = np.asarray(history[nonzero[0] :], dtype=float)
    scale = float(np.mean(np.diff(since) ** 2)) if len(since) > 1 else 0.0
    if scale == 0:
        return None
    return math.sqrt(float(np.mean((np.asarray(actual) - np.asarray(forecast)) ** 2)) / scale)


def mase(
    actual: np.ndarray, forecast: np.ndarray, history: np.ndarray, season: int = 7
) -> float | None:
    """Mean absolute scaled error against the in-sample seasonal naive forecast."""
    history = np.asarray(history, dtype=float)
    if len(history) <= season:
        return None
    scale = float(np.mean(np.abs(history[season:] - history[:-season])))
    if scale == 0:
        return None
    return float(np.mean(np.abs(np.asarray(actual) - np.asarray(forecast)))) / scale


def pinball(actual: float, quantile_forecast: float, level: float) -> float:
    """The pinball (quantile) loss of one quantile forecast."""
    difference = actual - quantile_forecast
    return max(level * difference, (level - 1) * difference)


def brier(probabilities: np.ndarray, outcomes: np.ndarray) -> float:
    """Mean squared error of probabilities against what happened (0/1)."""
    p = np.asarray(probabilities, dtype=float)
    return float(np.mean((p - np.asarray(outcomes, dtype=float)) ** 2))


def reliability(
    probabilities: np.ndarray, outcomes: np.ndarray, bins: int = 10
) -> list[tuple[float, float, int, float, float]]:
    """Per decile of the prediction: (low, high, cases, mean predicted, observed frequency)."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(outcomes, dtype=float)
    rows = []
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        inside = (p >= low) & ((p < high) | (index == bins - 1))
        if inside.any():
            rows.append(
                (low, high, int(inside.sum()), float(p[inside].mean()), float(y[inside].mean()))
            )
    return rows


def precision_recall(alerts: np.ndarray, outcomes: np.ndarray) -> tuple[float, float]:
    alerts = np.asarray(alerts, dtype=bool)
    outcomes = np.asarray(outcomes, dtype=bool)
    hits = float((alerts & outcomes).sum())
    precision = hits / alerts.sum() if alerts.sum() else float("nan")
    recall = hits / outcomes.sum() if outcomes.sum() else float("nan")
    return precision, recall
