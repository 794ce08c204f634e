"""Local members: each product forecast from its own history alone.

The intermittent-demand family comes from Nixtla's statsforecast (ADIDA, IMAPA, TSB,
Croston SBA), not from copies written here; the 28-day moving average is the simple
baseline everything is measured against. Each gives a flat daily level; the
combination spreads levels over weekdays. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ml_analytics.models.forecasters.panel import Panel, window_mean

MOVING_AVERAGE_DAYS = 28


def _statsforecast(name: str) -> Callable[[np.ndarray], float]:
    def level(history: np.ndarray) -> float:
        from statsforecast import models

        model: Any
        if name == "adida":
            model = models.ADIDA()
        elif name == "imapa":
            model = models.IMAPA()
        elif name == "croston_sba":
            model = models.CrostonSBA()
        else:
            model = models.TSB(alpha_d=0.1, alpha_p=0.1)
        return float(model.forecast(y=history, h=1)["mean"][0])

    return level


LEVELS: dict[str, Callable[[np.ndarray], float]] = {
    name: _statsforecast(name) for name in ("adida", "imapa", "croston_sba", "tsb")
}


def local_levels(
    panel: Panel, t: int, rows: np.ndarray, members: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Flat daily levels of `members` ("ma28" or a statsforecast model) for each product
    of `rows`, fitted on its history from its first sale to the day before `t`."""
    out: dict[str, np.ndarray] = {}
    for name in members:
        if name == "ma28":
            level = window_mean(panel.C[rows], t, MOVING_AVERAGE_DAYS, panel.first[rows], False)
            out[name] = np.nan_to_num(level)
            continue
        fit = LEVELS[name]
        values = np.zeros(len(rows))
        for position, row in enumerate(rows):
            history = panel.history(int(row), t)
            values[position] = max(0.0, fit(history)) if history.size and history.any() else 0.0
        out[name] = values
    return out
