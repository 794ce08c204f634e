"""A forecaster added in one place: registered here (its module is this one), it is
selectable by setting and per request, the trainer fits every product with it in its
worker processes, and the API serves its forecasts, through the real broker and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.models.distribution import sample_paths
from ml_analytics.models.forecasters import registry
from ml_analytics.models.forecasters.base import (
    AccuracyMetrics,
    Forecast,
    ModelFailure,
    Seasonality,
    check_history,
)
from ml_analytics.settings import Settings
from tests.helpers import keyed, publish, running_service, scalar, transaction, unique, wait_until

pytestmark = pytest.mark.integration

TOY = "last-week"
FIRST_DAY = date(2026, 6, 1)
DAYS = 60


def last_week(jobs: Sequence[Any], global_model: object) -> list[Forecast | ModelFailure]:
    """The toy: every day of the horizon at the mean of the history's last 7 days."""
    outcomes: list[Forecast | ModelFailure] = []
    for job in jobs:
        values = np.asarray(job.values, dtype=float)
        try:
            check_history(values, job.first_day, job.config)
        except ModelFailure as failure:
            outcomes.append(failure)
            continue
        yhat = np.full(job.config.horizon_days, values[-7:].mean())
        paths = sample_paths(yhat, values, None, job.config.sample_paths, 1)
        outcomes.append(
            Forecast(
                start=job.first_day + timedelta(days=len(values)),
                yhat=yhat,
                yhat_lower=np.quantile(paths, 0.05, axis=0),
                yhat_upper=np.quantile(paths, 0.95, axis=0),
                sample_paths=paths,
                metrics=AccuracyMetrics(0, None, None, None, None, None),
                seasonality=Seasonality(False, False, 0.0),
                training_days=len(values),
                units_seen=float(values.sum()),
                model_name=TOY,
            )
        )
    return outcomes


@pytest.fixture
def toy() -> Iterator[registry.Forecaster]:
    entry = registry.register(registry.Forecaster(TOY, "the mean of the last week", last_week))
    try:
        yield entry
    finally:
        registry.unregister(TOY)


def test_an_unknown_forecaster_is_refused_by_setting() -> None:
    with pytest.raises(ValidationError, match="is not a forecaster: one of combination, prophet"):
        Settings(_env_file=None, forecast_model="nope")  # type: ignore[call-arg]


async def test_a_registered_forecaster_is_chosen_by_setting_and_request_trains_and_serves(
    toy: registry.Forecaster, settings: Settings, engine: AsyncEngine
) -> None:
    with_toy = Settings(_env_file=None, **{**settings.model_dump(), "forecast_model": TOY})
    product = unique("toy")
    # 8 a day, then 20 a day over the last week: the toy says 20, a moving average less.
    events = [
        transaction(f"{product}-{d}", product, f"{FIRST_DAY + timedelta(days=d)}T12:00:00Z",
                    20 if d >= DAYS - 8 else 8)
        for d in range(DAYS)
    ]  # fmt: skip
    async with running_service(with_toy, engine) as app:
        await publish(with_toy, with_toy.transactions_topic, keyed(events))
        name = await wait_until(
            lambda: scalar(engine, "SELECT model_name FROM product_models WHERE product_id = :p",
                           p=product),
            bool, timeout=90, what="the toy's model",
        )  # fmt: skip
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            stored = (await api.get(f"/products/{product}/forecast")).json()
            asked = await api.post(
                "/forecast/demand",
                json={"product_id": product, "horizon_days": 7, "model": TOY,
                      "cache_bypass": True},
            )  # fmt: skip
            default = await api.post(
                "/forecast/demand",
                json={"product_id": product, "horizon_days": 7, "model": "combination",
                      "cache_bypass": True},
            )  # fmt: skip
            refused = await api.post(
                "/forecast/demand", json={"product_id": product, "model": "no-such-model"}
            )
            schema = (await api.get("/openapi.json")).json()
    assert name == TOY
    assert stored["model_name"] == TOY
    assert [day["yhat"] for day in stored["days"][:3]] == [20.0, 20.0, 20.0]
    assert asked.status_code == 200
    assert [p["yhat"] for p in asked.json()["predictions"]] == [20.0] * 7
    assert default.status_code == 200 and default.json()["predictions"][0]["yhat"] < 20.0
    assert refused.status_code == 422 and "one of combination, prophet, last-week" in refused.text
    request = schema["components"]["schemas"]["ForecastRequest"]["properties"]["model"]
    assert request["anyOf"][0]["enum"] == ["combination", "prophet", TOY]
