"""The forecasters, by name: the one place that knows them.

Each entry says what a forecaster needs and how it forecasts. FORECAST_MODEL, the
API's `"model"` and the trainer take their choices from here; no other module
compares a forecaster's name with a string. Adding a forecaster is one module (its
`forecast` function) and one `register(...)` call.

A forecaster's `forecast` runs in a worker process: it takes the jobs of one or more
products (each with its zero-filled history, workers/jobs.ForecastJob) and the
global model when the forecaster uses one, and returns each product's Forecast or the
ModelFailure that stopped it. Entries travel to the workers with the jobs, pickled by
reference to their functions, so a forecaster registered by a plugin module works
there too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

import numpy as np

from ml_analytics.models.forecasters.base import Forecast, ForecastConfig, ModelFailure


class History(Protocol):
    """What a forecaster reads of a job (workers/jobs.ForecastJob has it)."""

    product_id: str
    first_day: date
    values: np.ndarray
    config: ForecastConfig
    observed: np.ndarray | None


Outcome = Forecast | ModelFailure
ForecastFunction = Callable[[Sequence[Any], Any], list[Outcome]]


@dataclass(frozen=True)
class SplitFit:
    """A forecaster whose holdout fit and final fit may run side by side (for the
    latency of one request): each takes a job; `assemble` makes the Forecast."""

    holdout: Callable[[Any], object]
    final: Callable[[Any], object]
    assemble: Callable[[Any, object, object], Forecast]


@dataclass(frozen=True)
class Forecaster:
    name: str
    description: str
    forecast: ForecastFunction
    # It forecasts with the global model (trained apart, across products) and needs the
    # shop's days: the trainer gives them, and trains the global model.
    uses_global_model: bool = False
    # Products one worker job forecasts together when many are due at once.
    batch_products: int = 1
    split: SplitFit | None = None
    # Whether a stored model's name says this forecaster made it (default: its name).
    made_model: Callable[[str], bool] | None = None

    def made(self, model_name: str) -> bool:
        if self.made_model is not None:
            return self.made_model(model_name)
        return model_name == self.name


_forecasters: dict[str, Forecaster] = {}


def register(forecaster: Forecaster) -> Forecaster:
    """Add (or replace) a forecaster; returns it."""
    _forecasters[forecaster.name] = forecaster
    return forecaster


def unregister(name: str) -> None:
    _forecasters.pop(name, None)


def names() -> tuple[str, ...]:
    """The known forecasters' names, the service's own first (known without importing
    their modules: a command that only checks its settings does not load them)."""
    return _BUILTIN + tuple(name for name in _forecasters if name not in _BUILTIN)


def forecaster(name: str) -> Forecaster:
    """The forecaster of this name; KeyError naming the known ones."""
    _builtins()
    try:
        return _forecasters[name]
    except KeyError:
        known = ", ".join(sorted(_forecasters))
        raise KeyError(f"unknown forecaster {name!r}: one of {known}") from None


_loaded = False
_BUILTIN = ("combination", "prophet")  # the modules below register these names


def _builtins() -> None:
    """The service's own forecasters, registered on first use (their modules import
    statsforecast and Prophet, which take seconds: not at import of this module)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from ml_analytics.models.forecasters import combination, prophet

    register(
        Forecaster(
            name=combination.NAME,
            description="the global LightGBM model with local members, combined as the "
            "backtests chose",
            forecast=combination.forecast_jobs,
            uses_global_model=True,
            batch_products=64,
            made_model=_made_by_combination,
        )
    )
    register(
        Forecaster(
            name=prophet.NAME,
            description="Prophet, one model per product (as the original service)",
            forecast=prophet.forecast_jobs,
            split=SplitFit(prophet.holdout_job, prophet.final_job, prophet.assemble_job),
        )
    )


def _made_by_combination(model_name: str) -> bool:
    """The combination names its models by their members ("global + ma28 + adida",
    "combination:ma28+adida"): every stored model that no other forecaster made."""
    return not any(
        entry.made(model_name) for name, entry in _forecasters.items() if name != DEFAULT
    )


# The default forecaster (FORECAST_MODEL): the combination.
DEFAULT = "combination"
