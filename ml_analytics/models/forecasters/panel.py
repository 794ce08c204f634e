"""Daily demand of many products on one calendar, and the whole shop's beside it.

The global model's features and the local members read products through a `Panel`:
`Y[i, d]` is product i's demand on day d (NaN before its first sale, zero-filled
after), day 0 is `start`; `shop[d]` is the whole shop's demand that day (the sum over
every stored product, which may be more products than the panel holds). Cumulative
sums make every window mean O(1). Pure: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np


@dataclass
class Panel:
    items: list[str]
    start: date
    Y: np.ndarray  # (products, days), NaN before a product's first sale
    shop: np.ndarray  # (days,), the whole shop's daily demand
    # (products, days): False where demand was censored (the shelf was empty; Y holds
    # its estimate, models/censoring.py). None: every day observed.
    observed: np.ndarray | None = None
    first: np.ndarray = field(init=False)  # index of each product's first day with data
    C: np.ndarray = field(init=False)  # C[:, d] = demand on days < d
    C2: np.ndarray = field(init=False)  # the same for squared demand
    NZ: np.ndarray = field(init=False)  # the same for the count of days with a sale
    SC: np.ndarray = field(init=False)  # the same for the shop

    def __post_init__(self) -> None:
        self.Y = np.asarray(self.Y, dtype=float)
        self.shop = np.asarray(self.shop, dtype=float)
        if self.Y.ndim != 2 or self.shop.shape != (self.Y.shape[1],):
            raise ValueError("Y must be (products, days) and shop (days,)")
        available = ~np.isnan(self.Y)
        self.first = np.where(available.any(1), available.argmax(1), self.Y.shape[1])
        filled = np.nan_to_num(self.Y)
        pad = np.zeros((self.Y.shape[0], 1))
        self.C = np.hstack([pad, np.cumsum(filled, 1)])
        self.C2 = np.hstack([pad, np.cumsum(filled * filled, 1)])
        self.NZ = np.hstack([pad, np.cumsum(filled > 0, 1)])
        self.SC = np.concatenate([[0.0], np.cumsum(self.shop)])

    @property
    def days(self) -> int:
        return int(self.Y.shape[1])

    def day(self, index: int) -> date:
        return self.start + timedelta(days=int(index))

    def index(self, day: date) -> int:
        return (day - self.start).days

    def history(self, row: int, t: int) -> np.ndarray:
        """Product `row`'s demand from its first sale to the day before `t`."""
        return np.nan_to_num(self.Y[row, self.first[row] : t])

    def sold_history(self, row: int, t: int) -> np.ndarray:
        """`history`, with the censored days as days without a sale: what a day's sale
        looks like (its size) is learned from days sold in full."""
        history = self.history(row, t)
        if self.observed is None:
            return history
        return np.where(self.observed[row, self.first[row] : t], history, 0.0)

    def observed_between(self, row: int, lo: int, hi: int) -> bool:
        """Whether product `row`'s demand was observed on every day of [lo, hi)."""
        return self.observed is None or bool(self.observed[row, lo:hi].all())


def panel_from_series(
    series: Sequence[tuple[str, date, np.ndarray]],
    shop_start: date,
    shop: np.ndarray,
    observed: Sequence[np.ndarray | None] | None = None,
) -> Panel:
    """A panel on the shop's calendar from (item, first day, zero-filled values) triples;
    a series longer than the calendar keeps its latest days, one past it is cut.
    `observed`: per series, its days whose demand was observed (None: all)."""
    days = len(shop)
    Y = np.full((len(series), days), np.nan)
    seen = None
    if observed is not None and any(mask is not None for mask in observed):
        seen = np.ones((len(series), days), dtype=bool)
    for row, (_, first_day, values) in enumerate(series):
        offset = (first_day - shop_start).days
        values = np.asarray(values, dtype=float)
        lo, hi = max(offset, 0), min(offset + len(values), days)
        if hi > lo:
            Y[row, lo:hi] = values[lo - offset : hi - offset]
            if seen is not None and observed is not None and observed[row] is not None:
                seen[row, lo:hi] = np.asarray(observed[row], dtype=bool)[lo - offset : hi - offset]
    return Panel([item for item, _, _ in series], shop_start, Y, shop, seen)


def cut_histories(panel: Panel, t: int, rows: np.ndarray, lengths: np.ndarray) -> Panel:
    """Products `rows` of the panel as if each had been seen for only its last
    `lengths` days before day `t` (a history posted to the API), on the same calendar
    and with the same shop, which ends the day before `t`."""
    rows = np.asarray(rows, dtype=int)
    Y = panel.Y[rows, :t].copy()
    before = np.arange(t)[None, :] < (t - np.asarray(lengths, dtype=int))[:, None]
    Y[before] = np.nan
    observed = None if panel.observed is None else panel.observed[rows, :t]
    return Panel([panel.items[row] for row in rows], panel.start, Y, panel.shop[:t], observed)


def window_mean(
    C: np.ndarray, t: int, k: int, first: np.ndarray, need_full: bool = True
) -> np.ndarray:
    """Mean of days [t-k, t) per row. With `need_full`, NaN unless the product's history
    covers the whole window; else over the part it covers (NaN when none)."""
    lo = max(t - k, 0)
    total = C[:, t] - C[:, lo]
    if need_full:
        return np.where(first <= t - k, total / k, np.nan)
    covered = np.clip(t - np.maximum(first, lo), 0, None)
    return np.where(covered > 0, total / np.maximum(covered, 1), np.nan)


def span_mean(C: np.ndarray, a: int, b: int, first: np.ndarray) -> np.ndarray:
    """Mean of days [a, b) per row, NaN unless the history covers it."""
    if a < 0:
        return np.full(C.shape[0], np.nan)
    return np.where(first <= a, (C[:, b] - C[:, a]) / (b - a), np.nan)


def shop_mean(SC: np.ndarray, a: int, b: int) -> float:
    """The shop's mean daily demand over days [a, b); NaN outside the calendar."""
    if a < 0 or b <= a or b > len(SC) - 1:
        return float("nan")
    return float((SC[b] - SC[a]) / (b - a))


def product_scale(panel: Panel, t: int, rows: np.ndarray) -> np.ndarray:
    """Each product's level (mean daily demand over its last 365 days, or since its
    first sale), floored: what features and targets are divided by."""
    level = window_mean(panel.C[rows], t, 365, panel.first[rows], need_full=False)
    return np.maximum(np.nan_to_num(level), 0.01)


def weekday_profile(panel: Panel, t: int, rows: np.ndarray, shrink: float = 365.0) -> np.ndarray:
    """(rows, 7) multipliers of mean 1 for days t, t+1, ... by weekday offset from t.

    The product's share of units by weekday over its last 365 days, shrunk towards the
    shop's (last 91 days) with `shrink` pseudo sale days: a lumpy product takes the
    shop's rhythm (a closed day stays closed), a daily seller mostly its own.
    """
    lo = max(t - 365, 0)
    filled = np.nan_to_num(panel.Y[rows, lo:t])
    offsets = (np.arange(lo, t) - t) % 7
    units = np.stack([filled[:, offsets == j].sum(1) for j in range(7)], 1)
    sale_days = (filled > 0).sum(1)
    shop_lo = max(t - 91, 0)
    shop_days = panel.shop[shop_lo:t]
    shop_offsets = (np.arange(shop_lo, t) - t) % 7
    shop_by_day = np.array(
        [
            shop_days[shop_offsets == j].mean() if (shop_offsets == j).any() else 0.0
            for j in range(7)
        ]
    )
    shop_profile = shop_by_day / shop_by_day.mean() if shop_by_day.mean() > 0 else np.ones(7)
    totals = units.sum(1, keepdims=True)
    own = np.where(totals > 0, 7 * units / np.maximum(totals, 1e-9), shop_profile)
    weight = (sale_days / (sale_days + shrink))[:, None]
    profile = weight * own + (1 - weight) * shop_profile
    mean = profile.mean(1, keepdims=True)
    return np.where(mean > 0, profile / np.where(mean > 0, mean, 1), 1.0)
