"""What a prediction request is: its history, the checks on it, its errors, its cache key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from ml_analytics.models.forecasters.base import (
    MODEL_REVISION,
    ForecastConfig,
    InsufficientData,
    ensure_enough_history,
)

MAX_HORIZON_DAYS = 365


class PredictionError(Exception):
    """A request that cannot be answered, with a `detail` for the caller (http/errors.py
    maps each kind to its status code)."""

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(PredictionError):
    """The request cannot be answered as sent."""


class UnknownProduct(PredictionError):
    """No stored demand for the product."""


class Busy(PredictionError):
    """Too many fits in flight: try again (`headers` say when)."""


class FitTimedOut(PredictionError):
    """The fit took longer than WORKER_TIMEOUT."""


class ModelFailed(PredictionError):
    """The model could not be fitted."""


@dataclass(frozen=True)
class DemandHistory:
    """A zero-filled daily demand series (a stored one: with its censored days'
    estimates, `observed` False on them)."""

    first_day: date
    values: np.ndarray
    observed: np.ndarray | None = None

    @property
    def last_day(self) -> date:
        return self.first_day + timedelta(days=len(self.values) - 1)

    @classmethod
    def from_points(cls, points: Iterable[tuple[date, float]], max_days: int) -> DemandHistory:
        """Points in any order; two points on one day are summed, days without a point
        are zero demand. Raises BadRequest when the span exceeds `max_days`."""
        totals: dict[date, float] = {}
        for day, quantity in points:
            totals[day] = totals.get(day, 0.0) + quantity
        if not totals:
            raise BadRequest("transaction_data is empty: send at least one day, or omit it")
        first, last = min(totals), max(totals)
        span = (last - first).days + 1
        if span > max_days:
            raise BadRequest(
                f"transaction_data spans {span} days ({first} to {last}); at most "
                f"{max_days} are accepted"
            )
        values = np.zeros(span)
        for day, quantity in totals.items():
            values[(day - first).days] = quantity
        if not np.all(np.isfinite(values)):
            raise BadRequest("transaction_data: the quantities of one day add up past a float")
        return cls(first, values)

    def digest(self) -> str:
        hasher = hashlib.sha256(self.first_day.isoformat().encode())
        hasher.update(np.ascontiguousarray(self.values, dtype="<f8").tobytes())
        return hasher.hexdigest()

    def units_after(self, day: date) -> float:
        """Demand on the days after `day` within this history."""
        start = (day - self.first_day).days + 1
        return float(self.values[max(0, start) :].sum()) if start < len(self.values) else 0.0


def check_horizon(horizon_days: int) -> None:
    if not 1 <= horizon_days <= MAX_HORIZON_DAYS:
        raise BadRequest(f"horizon_days must be between 1 and {MAX_HORIZON_DAYS}")


def check_enough(history: DemandHistory, config: ForecastConfig) -> None:
    try:
        ensure_enough_history(len(history.values), config)
    except InsufficientData as error:
        raise BadRequest(str(error)) from error


def with_cached_flag(response: str, cached: bool) -> bytes:
    """Append `"cached"` to a JSON object's text (one we encoded: it ends with "}")."""
    return f'{response[:-1]},"cached":{"true" if cached else "false"}}}'.encode()


def cache_key(*parts: Any) -> str:
    content = json.dumps([MODEL_REVISION, *map(repr, parts)], separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


def _units(value: float) -> float:
    return round(float(value), 4)
