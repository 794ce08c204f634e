"""The predictive distribution: daily sample paths around a point forecast.

Stockout probabilities, stockout dates and order-up-to levels all come from these
paths, and their mean is the point forecast itself: one forecast, not a second model.

Sale days: each day a sale or none, with probability `yhat / mean sale size` (at
most 1), its size drawn from the product's own days with a sale in its last year.
Lumpy demand stays lumpy (a wholesale order arrives whole), a daily seller's days
vary as its own days did. (On the sample this scores the same Brier as a compound
Poisson of order days, to three decimals, and does not invent empty days for a
product that sells every day.)

Recalibration: the raw paths are ranked by their sum over the first CAL_WINDOW_DAYS,
and resampled with a density of the probability integral transforms (PIT) of actual
14-day demand measured in backtests: where actual demand fell within the
distribution at earlier origins. Either one pooled density (`pit_density`) or, once
enough backtests carry the products' features, each product's own density from the
conditional model of `calibration.py`. A uniform PIT changes nothing; one that piles
up at the top (demand higher than the paths said) moves weight to the upper paths.
What each does to the Brier score and the deciles is measured by bench/evaluate
(docs/evaluation.md). Pure: numpy.

Level uncertainty (LEVEL_SD): each path's days are also scaled by one log-normal
factor of mean one (σ 0.3 of its log), as real demand's level moves from week to
week while independent days around the forecast average out over 14 days: without
it a daily seller's 14-day totals are too narrow, which re-weighting the paths
cannot widen enough. It narrowed the worst reliability decile at the same Brier
skill (bench/calibration --level-sd 0 against 0.3; bench/evaluate in docs/evaluation.md).
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np

PATHS = 200
CAL_WINDOW_DAYS = 14
CAL_BINS = 20
OVERSAMPLE = 4
SIZE_WINDOW_DAYS = 365
LEVEL_SD = 0.3  # σ of the log of each path's level factor; 0: none
# How the raw paths are drawn: a backtest's PITs teach a recalibration only of paths
# drawn the same way, so each stored backtest keeps the version it was drawn under.
# Bump it with any change to what sale_day_paths draws (2: the level factor on).
PATHS_VERSION = 2
CONTINUE_DAYS = 28  # past its horizon, a path repeats its own last four weeks


def order_sizes(history: np.ndarray, window: int = SIZE_WINDOW_DAYS) -> np.ndarray:
    """The product's non-zero daily demands of its last `window` days (all its history
    if none): the sizes its future order days are drawn from."""
    history = np.asarray(history, dtype=float)
    recent = history[-window:]
    sizes = recent[recent > 0]
    if sizes.size == 0:
        sizes = history[history > 0]
    return sizes if sizes.size else np.ones(1)


def sale_day_paths(
    yhat: np.ndarray, sizes: np.ndarray, paths: int, rng: np.random.Generator
) -> np.ndarray:
    """(paths, len(yhat)) non-negative daily demand whose expectation is `yhat`.

    Each day has a sale with probability min(1, yhat / mean size), its size drawn from
    `sizes` (the product's own days with a sale), scaled up when the forecast exceeds
    the typical size (a product selling more than it used to); with LEVEL_SD, each
    path scaled by its own level factor of mean one."""
    yhat = np.clip(np.asarray(yhat, dtype=float), 0, None)
    sizes = np.asarray(sizes, dtype=float)
    rate = np.broadcast_to(yhat / float(np.mean(sizes)), (paths, len(yhat)))
    sold = rng.random(rate.shape) < np.minimum(rate, 1.0)
    drawn = rng.choice(sizes, rate.shape)
    days = np.where(sold, drawn * np.maximum(rate, 1.0), 0.0)
    if LEVEL_SD > 0:
        level = np.exp(LEVEL_SD * rng.standard_normal((paths, 1)) - LEVEL_SD**2 / 2)
        days = days * level
    return days


def sample_paths(
    yhat: np.ndarray,
    history: np.ndarray,
    density: np.ndarray | None = None,
    paths: int = PATHS,
    seed: int = 0,
) -> np.ndarray:
    """Sample paths of future daily demand around `yhat`, recalibrated by `density`
    (None: raw). Reproducible from the seed."""
    rng = np.random.default_rng(seed)
    sizes = order_sizes(history)
    if density is None:
        return sale_day_paths(yhat, sizes, paths, rng)
    drawn = paths * OVERSAMPLE
    raw = sale_day_paths(yhat, sizes, drawn, rng)
    window = min(CAL_WINDOW_DAYS, raw.shape[1])
    order = np.argsort(raw[:, :window].sum(1) + rng.random(drawn) * 1e-9)
    quantile = (np.arange(drawn) + 0.5) / drawn
    weight = density[np.minimum((quantile * len(density)).astype(int), len(density) - 1)]
    cumulative = np.cumsum(weight) / weight.sum()
    picks = np.searchsorted(cumulative, (rng.random() + np.arange(paths)) / paths)
    chosen = raw[order[np.minimum(picks, drawn - 1)]]
    return chosen[rng.permutation(paths)]


def pit(sums: np.ndarray, actual: float, rng: np.random.Generator) -> float:
    """Randomised probability integral transform of `actual` under the sample `sums`."""
    sums = np.asarray(sums, dtype=float)
    below = float(np.mean(sums < actual))
    equal = float(np.mean(sums == actual))
    return below + float(rng.random()) * equal


def pit_density(pits: np.ndarray, bins: int = CAL_BINS) -> np.ndarray:
    """Histogram density (mean 1) of PIT values, one pseudo-count per bin; uniform PIT
    values give all ones (no change)."""
    counts = np.histogram(np.clip(pits, 0, 1 - 1e-12), bins=bins, range=(0, 1))[0] + 1.0
    return counts / counts.mean()


def daily_interval(
    paths: np.ndarray, yhat: np.ndarray, width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Daily bounds holding `width` of the paths, widened to contain `yhat`."""
    lower = np.quantile(paths, (1 - width) / 2, axis=0)
    upper = np.quantile(paths, 1 - (1 - width) / 2, axis=0)
    return np.minimum(lower, yhat), np.maximum(upper, yhat)


def continue_paths(paths: np.ndarray, days: int) -> np.ndarray:
    """The paths, at least `days` days long: a path shorter than that continues with
    its own last four weeks, repeated (its level and weekday rhythm kept). A stored
    forecast covers FORECAST_HORIZON_DAYS; a lead time or risk window may be longer."""
    paths = np.asarray(paths, dtype=float)
    have = paths.shape[1]
    if days <= have or have == 0:
        return paths
    block = min(CONTINUE_DAYS, have // 7 * 7) or have  # whole weeks when there are any
    repeats = -(-(days - have) // block)
    tail = np.tile(paths[:, have - block :], (1, repeats))[:, : days - have]
    return np.hstack([paths, tail])


# How far past a forecast's last day a stock level may lie and still be assessed on
# continued paths (a stock counted while the stream's clock lags, in a backfill).
MAX_DAYS_PAST_FORECAST = 365


class NotAssessable(ValueError):
    """The forecast cannot speak for the days asked: no paths, or days too far past it."""


def paths_from(paths: np.ndarray, forecast_start: date, first_day: date, days: int) -> np.ndarray:
    """The paths' daily demand from `first_day` on (forecast days before it dropped),
    at least `days` long: continued past the forecast's horizon (`continue_paths`)
    when it ends earlier, so a stock level counted after the forecast's first days
    is assessed on the days that follow it. A `first_day` before the forecast starts
    gives the paths from their first day (the days between have been observed)."""
    paths = np.asarray(paths, dtype=float)
    if paths.ndim != 2 or paths.shape[0] == 0 or paths.shape[1] == 0:
        raise NotAssessable("the forecast has no sample paths")
    skip = max(0, (first_day - forecast_start).days)
    last_day = forecast_start + timedelta(days=paths.shape[1] - 1)
    if skip - paths.shape[1] >= MAX_DAYS_PAST_FORECAST:
        raise NotAssessable(
            f"{first_day - timedelta(days=1)} is {skip - paths.shape[1] + 1} days past the "
            f"forecast's last day {last_day} (at most {MAX_DAYS_PAST_FORECAST}): it is "
            "assessed once the product is forecast again, as the stream's clock moves"
        )
    return continue_paths(paths, skip + max(0, days))[:, skip:]
