"""The HTTP API against a real PostgreSQL (and the real broker where stored data is
used): the contract's shapes and error messages, the prediction cache, the fit
limits and the product listing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.consumers.broker import build_broker
from ml_analytics.http.app import create_app
from ml_analytics.services.ingestion.sort import SortedBatch
from ml_analytics.settings import Settings
from ml_analytics.storage.assessments import record_assessment
from ml_analytics.storage.database import create_engine
from ml_analytics.storage.demand import StockSnapshot
from ml_analytics.storage.ingest_writes import TransactionRow
from tests.conftest import make_settings
from tests.helpers import (
    keyed,
    publish,
    running_ingestion,
    running_service,
    unique,
    wait_until,
    write_batch,
)
from tests.integration.test_forecasting import LAST_DAY, steady_demand, stock_level
from tests.services import StackServices

pytestmark = pytest.mark.integration

START = date(2025, 1, 6)  # a Monday


def history(days: int, level: float = 11.0, seed: int = 7) -> list[dict[str, Any]]:
    """`days` of demand around `level` a day, with a weekday pattern and noise."""
    rng = np.random.default_rng(seed)
    weekday = np.array([1.1, 1.0, 1.0, 1.0, 1.2, 0.9, 0.8])
    return [
        {
            "date": (START + timedelta(days=i)).isoformat(),
            "quantity": round(float(max(0.0, level * weekday[i % 7] + rng.normal(0, 1.5))), 2),
        }
        for i in range(days)
    ]


def refusal(response: httpx.Response, status: int) -> str:
    """The `detail` of a response that must have `status`."""
    assert response.status_code == status, response.text
    detail: str = response.json()["detail"]
    return detail


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    engine = create_engine(settings)
    app = create_app(settings, engine, build_broker(settings), manage_broker=False)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client, app
    finally:
        app.state.predictions.stop()
        await engine.dispose()


@pytest.fixture
async def api_settings(services: StackServices, database_url: str) -> Settings:
    return make_settings(services, database_url)


@pytest.fixture
async def api(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(api_settings) as (client, _):
        yield client


async def test_forecast_demand_has_the_contract_shape(api: httpx.AsyncClient) -> None:
    data = history(120)
    response = await api.post(
        "/forecast/demand",
        json={"product_id": "SKU-F", "horizon_days": 30, "transaction_data": data},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["productId"] == "SKU-F"
    assert body["horizon_days"] == 30
    assert body["cached"] is False
    predictions = body["predictions"]
    assert [p["ds"] for p in predictions] == [
        (START + timedelta(days=120 + i)).isoformat() for i in range(30)
    ]
    for point in predictions:
        assert 0 <= point["yhat_lower"] <= point["yhat"] <= point["yhat_upper"]
    mean_forecast = np.mean([p["yhat"] for p in predictions])
    assert 9 < mean_forecast < 13  # the history's level is ~11 a day
    metrics = body["model_metrics"]
    assert metrics["training_samples"] == 120
    assert metrics["mape"] is not None and metrics["rmse"] is not None
    assert isinstance(metrics["seasonality_detected"], bool)
    datetime.fromisoformat(body["generated_at"])


async def test_second_identical_request_is_served_from_the_cache_and_bypass_refits(
    api: httpx.AsyncClient,
) -> None:
    request = {"product_id": "SKU-C", "horizon_days": 14, "transaction_data": history(90)}
    started = time.perf_counter()
    first = await api.post("/forecast/demand", json=request)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second = await api.post("/forecast/demand", json=request)
    hit_seconds = time.perf_counter() - started
    assert first.status_code == second.status_code == 200
    assert (first.json()["cached"], second.json()["cached"]) == (False, True)
    assert second.json()["predictions"] == first.json()["predictions"]
    assert second.json()["generated_at"] == first.json()["generated_at"]
    assert hit_seconds < fit_seconds / 3

    bypass = await api.post("/forecast/demand", json={**request, "cache_bypass": True})
    assert bypass.status_code == 200
    assert bypass.json()["cached"] is False
    assert bypass.json()["generated_at"] > first.json()["generated_at"]

    changed = {**request, "transaction_data": history(90, level=20)}
    other = await api.post("/forecast/demand", json=changed)
    assert other.json()["cached"] is False  # different content, different entry


async def test_a_replica_serves_an_answer_another_made_and_then_holds_it(
    api_settings: Settings, engine: AsyncEngine
) -> None:
    request = {"product_id": unique("SKU"), "horizon_days": 14, "transaction_data": history(90)}
    async with client_for(api_settings) as (first, _), client_for(api_settings) as (second, _):
        made = await first.post("/forecast/demand", json=request)
        shared = await second.post("/forecast/demand", json=request)
        assert (made.json()["cached"], shared.json()["cached"]) == (False, True)
        assert shared.json()["generated_at"] == made.json()["generated_at"]
        # The shared entry goes: each replica still holds the answer it has served...
        async with engine.begin() as connection:
            await connection.execute(
                text("DELETE FROM prediction_cache WHERE product_id = :p"),
                {"p": request["product_id"]},
            )
        for replica in (first, second):
            held = await replica.post("/forecast/demand", json=request)
            assert held.json()["cached"] is True
            assert held.json()["generated_at"] == made.json()["generated_at"]
        # ...and a replica that never served it has nothing.
        async with client_for(api_settings) as (third, _):
            fresh = await third.post("/forecast/demand", json=request)
            assert fresh.json()["cached"] is False


async def test_an_answer_held_in_memory_expires_with_the_cache_entry(
    services: StackServices, database_url: str
) -> None:
    settings = make_settings(services, database_url, prediction_cache_ttl=1)
    request = {"product_id": unique("SKU"), "horizon_days": 14, "transaction_data": history(60)}
    async with client_for(settings) as (client, _):
        first = await client.post("/forecast/demand", json=request)
        second = await client.post("/forecast/demand", json=request)
        assert (first.json()["cached"], second.json()["cached"]) == (False, True)
        await asyncio.sleep(1.2)
        third = await client.post("/forecast/demand", json=request)
        assert third.json()["cached"] is False
        assert third.json()["generated_at"] > first.json()["generated_at"]


async def test_points_on_the_same_day_are_summed(api: httpx.AsyncClient) -> None:
    whole = history(60)
    split = [
        {"date": point["date"], "quantity": point["quantity"] / 2}
        for point in whole
        for _ in (0, 1)
    ]
    split.reverse()  # order does not matter either
    first = await api.post(
        "/forecast/demand", json={"product_id": "SKU-D", "transaction_data": whole}
    )
    second = await api.post(
        "/forecast/demand", json={"product_id": "SKU-D", "transaction_data": split}
    )
    assert first.status_code == second.status_code == 200
    # The same daily series: the same cache entry.
    assert second.json()["cached"] is True
    assert second.json()["predictions"] == first.json()["predictions"]


@pytest.mark.parametrize(
    ("request_body", "status", "detail"),
    [
        (
            {"product_id": "P", "transaction_data": history(15)},
            400,
            "Insufficient transaction data. Need at least 30 days, got 15",
        ),
        (
            {"product_id": "P", "horizon_days": 0, "transaction_data": history(40)},
            400,
            "horizon_days must be between 1 and 365",
        ),
        (
            {"product_id": "P", "horizon_days": 366, "transaction_data": history(40)},
            400,
            "horizon_days must be between 1 and 365",
        ),
        (
            {"product_id": "P", "transaction_data": [{"date": "2025-02-30", "quantity": 1}]},
            422,
            "transaction_data.0.date",
        ),
        (
            {"product_id": "P", "transaction_data": [{"date": "2025-02-03", "quantity": -1}]},
            422,
            "transaction_data.0.quantity",
        ),
        (
            {"product_id": "P", "transaction_data": [{"date": "2025-02-03", "quantity": "many"}]},
            422,
            "transaction_data.0.quantity",
        ),
        ({"product_id": "P", "horizon_days": "soon"}, 422, "horizon_days"),
        ({"horizon_days": 30}, 422, "product_id: required field is missing"),
        ({"product_id": "", "transaction_data": history(40)}, 422, "product_id"),
        ({"product_id": "P", "transaction_data": []}, 400, "transaction_data is empty"),
        (
            {
                "product_id": "P",
                "transaction_data": [
                    {"date": "2001-01-01", "quantity": 1},
                    {"date": "2025-01-01", "quantity": 1},
                ],
            },
            400,
            "transaction_data spans 8767 days",
        ),
        ({"product_id": "never-seen"}, 404, "No stored demand for product 'never-seen'"),
    ],
)
async def test_bad_forecast_requests_get_a_4xx_naming_the_problem(
    api: httpx.AsyncClient, request_body: dict[str, Any], status: int, detail: str
) -> None:
    response = await api.post("/forecast/demand", json=request_body)
    assert detail in refusal(response, status)


async def test_non_finite_quantity_and_non_json_bodies_are_rejected(
    api: httpx.AsyncClient,
) -> None:
    nan = await api.post(
        "/forecast/demand",
        content=b'{"product_id": "P", "transaction_data": [{"date": "2025-01-01", "quantity": NaN}]}',
        headers={"content-type": "application/json"},
    )
    assert "transaction_data.0.quantity: must be a finite number" in refusal(nan, 422)
    broken = await api.post(
        "/forecast/demand", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "JSON" in refusal(broken, 422)


async def test_size_limits_answer_413_and_400(services: StackServices, database_url: str) -> None:
    settings = make_settings(
        services, database_url, http_max_body_bytes=4096, http_max_transaction_points=50
    )
    async with client_for(settings) as (api, _):
        too_big = await api.post(
            "/forecast/demand", json={"product_id": "P", "transaction_data": history(200)}
        )
        assert "larger than 4096 bytes" in refusal(too_big, 413)

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it arrives
            yield b'{"product_id": "P", "transaction_data": ['
            for _ in range(200):
                yield b'{"date": "2025-01-01", "quantity": 1},'
            yield b'{"date": "2025-01-01", "quantity": 1}]}'

        streamed = await api.post(
            "/forecast/demand", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413

        many = await api.post(
            "/forecast/demand",
            json={
                "product_id": "P",
                "transaction_data": [{"date": "2025-01-01", "quantity": 1}] * 60,
            },
        )
        assert refusal(many, 400) == "transaction_data has 60 points; at most 50 are accepted"


async def test_predict_stockout_from_120_days_at_11_a_day_and_500_units(
    api: httpx.AsyncClient,
) -> None:
    async def predict(**request: Any) -> httpx.Response:
        """A stockout prediction for SKU-S from the same 120 days of history."""
        return await api.post(
            "/predict/stockout",
            json={"product_id": "SKU-S", "transaction_data": history(120), **request},
        )

    response = await predict(current_stock_units=500, horizon_days=90)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["productId"] == "SKU-S"
    assert 42 <= body["days_until_stockout"] <= 48
    last_day = START + timedelta(days=119)
    assert (
        body["predicted_stockout_date"]
        == (last_day + timedelta(days=body["days_until_stockout"])).isoformat()
    )
    assert 0 <= body["confidence"] <= 1
    assert len(body["daily_usage_forecast"]) == 90
    assert all(value >= 0 for value in body["daily_usage_forecast"])
    # The date is the median stockout day over the paths; the expected usage (their
    # mean) uses the stock up within a day or two of it.
    reached = np.cumsum(body["daily_usage_forecast"]) >= 500 - 1e-3
    assert abs(int(np.argmax(reached)) + 1 - body["days_until_stockout"]) <= 2
    # 14 days (the default window) of ~11 a day is ~154 units: far below 500.
    assert body["risk_window_days"] == 14
    assert body["stockout_probability"] == 0
    assert body["risk_level"] == "low"

    short = await predict(current_stock_units=100, lead_time_days=14)
    assert short.json()["risk_level"] == "high"
    assert short.json()["stockout_probability"] > 0.9


async def test_predict_stockout_without_data_uses_stored_demand_and_stock(
    api_settings: Settings, api: httpx.AsyncClient
) -> None:
    from ml_analytics.consumers.admin import ensure_topics

    await ensure_topics(api_settings, wait_seconds=20)
    product = unique("SKU")
    transactions = [
        {
            "event_id": f"{product}-{i}-{part}",
            "product_id": product,
            "occurred_at": f"{point['date']}T10:0{part}:00Z",
            "quantity_units": 5.0,
        }
        for i, point in enumerate(history(60))
        for part in (0, 1)
    ]
    last_day = START + timedelta(days=59)
    stock = {
        "event_id": f"{product}-stock",
        "product_id": product,
        "as_of": f"{last_day - timedelta(days=5)}T18:00:00Z",
        "stock_units": 200,
        "lead_time_days": 30,
    }
    engine = create_engine(api_settings)
    try:
        async with running_ingestion(api_settings, engine):
            await publish(api_settings, api_settings.transactions_topic, keyed(transactions))
            await publish(api_settings, api_settings.stock_levels_topic, keyed([stock]))

            async def stored() -> bool:
                response = await api.get(f"/products/{product}/demand")
                days = response.json().get("days", []) if response.status_code == 200 else []
                total = sum(day["quantity_units"] for day in days)
                listing = await api.get("/products", params={"search": product})
                items = listing.json()["items"]
                return total == 600 and bool(items) and items[0]["current_stock_units"] == 200

            await wait_until(stored, bool, timeout=60, what="the demand and stock stored")
    finally:
        await engine.dispose()

    response = await api.post("/predict/stockout", json={"product_id": product})
    assert response.status_code == 200, response.text
    body = response.json()
    # 10 units a day; 200 on hand at the end of day -5, of which the last 5 days took 50:
    # at exactly 10 a day the 151st unit, on day 16 after the last day, goes unserved
    # (day 21 from the stock's day). Each path's level factor has mean one and a median
    # below it (σ 0.3), so the median stockout day is that or a day or two later (over
    # 3,000 seeds of these paths: 20-23, 21 or 22 in 95%).
    assert body["stock_day"] == (last_day - timedelta(days=5)).isoformat()
    assert body["current_stock_units"] == 200
    assert body["risk_window_days"] == 30
    assert 20 <= body["days_until_stockout"] <= 23
    assert body["risk_level"] == "high"
    assert body["as_of"] is not None

    forecast = await api.post("/forecast/demand", json={"product_id": product, "horizon_days": 7})
    assert forecast.status_code == 200
    # The stored history runs to the clock's last complete day: the last day is still open.
    assert forecast.json()["model_metrics"]["training_samples"] == 59
    assert all(9 <= p["yhat"] <= 11 for p in forecast.json()["predictions"])

    no_stock = await api.post(
        "/predict/stockout", json={"product_id": "P", "transaction_data": history(40)}
    )
    assert refusal(no_stock, 400) == (
        "current_stock_units is required: no stock level is stored for product 'P'"
    )


async def test_fits_past_the_bound_answer_503_with_retry_after(
    services: StackServices, database_url: str
) -> None:
    settings = make_settings(services, database_url, http_max_fits_in_flight=1)
    async with client_for(settings) as (api, app):
        first = asyncio.create_task(
            api.post(
                "/forecast/demand",
                json={"product_id": "A", "transaction_data": history(365)},
            )
        )

        async def in_flight() -> int:
            return int(app.state.predictions.fits_in_flight)

        await wait_until(in_flight, lambda n: n == 1, timeout=30, interval=0.01)
        refused = await api.post(
            "/forecast/demand", json={"product_id": "B", "transaction_data": history(90)}
        )
        assert "already running" in refusal(refused, 503)
        assert int(refused.headers["retry-after"]) >= 1
        assert (await first).status_code == 200


async def test_a_fit_past_worker_timeout_answers_504(
    services: StackServices, database_url: str
) -> None:
    settings = make_settings(services, database_url, worker_timeout=0.01)
    async with client_for(settings) as (api, _):
        response = await api.post(
            "/forecast/demand", json={"product_id": "T", "transaction_data": history(60)}
        )
        assert refusal(response, 504) == (
            "Model training timed out: the fit took longer than WORKER_TIMEOUT (0.01 s)"
        )


async def test_products_are_listed_most_urgent_first_and_paginated(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    day = date(2026, 3, 1)
    levels = {
        "calm": ("low", 0.05, None),
        "urgent": ("high", 0.95, 3),
        "soon": ("high", 0.95, 9),
        "watch": ("medium", 0.4, 20),
        "likely": ("high", 0.7, 2),
    }
    await write_batch(
        engine,
        SortedBatch.of(
            transactions=[
                TransactionRow(f"{name}-{i}", name, day + timedelta(days=i), 2.0)
                for name in [*levels, "unassessed"]
                for i in range(3)
            ],
            stock_levels=[
                StockSnapshot(f"{name}-s", name, datetime(2026, 3, 3, tzinfo=UTC), 40.0, 7)
                for name in levels
            ],
        ),
    )
    for name, (level, probability, days_until) in levels.items():
        async with engine.begin() as connection:
            await record_assessment(
                connection,
                name,
                {
                    "event_id": unique("e"),
                    "product_id": name,
                    "risk_level": level,
                    "stockout_probability": probability,
                    "days_until_stockout": days_until,
                    "predicted_stockout_date": None
                    if days_until is None
                    else (day + timedelta(days=2 + days_until)).isoformat(),
                    "confidence": 0.5,
                },
            )
    listing = await api.get("/products")
    assert listing.status_code == 200
    body = listing.json()
    assert body["total"] == 6
    assert [item["product_id"] for item in body["items"]] == [
        "urgent",
        "soon",
        "likely",
        "watch",
        "calm",
        "unassessed",
    ]
    assert body["items"][0]["current_stock_units"] == 40
    assert body["items"][0]["days_until_stockout"] == 3
    assert body["items"][-1]["risk_level"] is None

    page = (await api.get("/products", params={"limit": 2, "offset": 2})).json()
    assert [item["product_id"] for item in page["items"]] == ["likely", "watch"]
    assert page["total"] == 6

    highs = (await api.get("/products", params={"risk_level": ["high", "none"]})).json()
    assert {item["product_id"] for item in highs["items"]} == {
        "urgent",
        "soon",
        "likely",
        "unassessed",
    }
    nearest = (await api.get("/products", params={"sort": "days_until_stockout"})).json()
    assert [item["product_id"] for item in nearest["items"]][:4] == [
        "likely",
        "urgent",
        "soon",
        "watch",
    ]
    found = (await api.get("/products", params={"search": "SOON"})).json()
    assert [item["product_id"] for item in found["items"]] == ["soon"]
    wildcard = (await api.get("/products", params={"search": "%"})).json()
    assert wildcard["items"] == []  # a literal %, not a pattern
    beyond = (await api.get("/products", params={"offset": 100})).json()
    assert (beyond["items"], beyond["total"]) == ([], 6)
    bad = await api.get("/products", params={"sort": "price"})
    assert "sort" in refusal(bad, 422)


async def test_asyncapi_document_names_the_topics(
    api_settings: Settings, services: StackServices, database_url: str
) -> None:
    from ml_analytics.composition import build_app

    engine = create_engine(api_settings)
    app = build_app(api_settings, engine, build_broker(api_settings))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as client:
            document = (await client.get("/asyncapi")).json()
    finally:
        app.state.predictions.stop()
        await engine.dispose()
    assert document["asyncapi"].startswith("3.")
    # The four topics, each a channel, from the topics table: consumed and published.
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {
        api_settings.transactions_topic,
        api_settings.stock_levels_topic,
        api_settings.stockout_risk_topic,
        api_settings.dead_letter_topic,
    }
    schemas = str(document["components"])
    assert "StockoutRisk" in schemas and "DeadLetter" in schemas


@pytest.mark.parametrize(
    ("endpoint", "body", "detail"),
    [
        (
            "/forecast/demand",
            {"horizon_days": "7"},
            "horizon_days: Input should be a valid integer (got '7')",
        ),
        (
            "/predict/stockout",
            {"current_stock_units": "5"},
            "current_stock_units: Input should be a valid number (got '5')",
        ),
        (
            "/predict/stockout",
            {"lead_time_days": 7.5},
            "lead_time_days: Input should be a valid integer (got 7.5)",
        ),
        (
            "/forecast/demand",
            {"cache_bypass": "true"},
            "cache_bypass: Input should be a valid boolean (got 'true')",
        ),
        (
            "/forecast/demand",
            {"transaction_data": [{"date": "2024-01-01", "quantity": True}]},
            "transaction_data.0.quantity: Input should be a valid number (got True)",
        ),
        (
            "/forecast/demand",
            {"model": "arima"},
            "model: unknown forecaster 'arima': one of combination, prophet (got 'arima')",
        ),
    ],
)
async def test_types_are_checked_not_coerced(
    api: httpx.AsyncClient, endpoint: str, body: dict[str, Any], detail: str
) -> None:
    response = await api.post(endpoint, json={"product_id": "SKU-T", **body})
    assert response.status_code == 422
    assert response.json() == {"detail": detail}


async def test_a_product_id_with_control_characters_is_reachable_on_every_product_route(
    settings: Settings, engine: AsyncEngine
) -> None:
    # A newline inside and at the end (Starlette's path pattern took neither), a
    # carriage return, a tab and a slash.
    product = f"{unique('ctl')}\nsecond line\r\tthird/part\n"
    path = f"/products/{quote(product, safe='')}"
    async with running_service(settings, engine) as app:
        await publish(settings, settings.transactions_topic, keyed(steady_demand(product, 20, 3)))
        await publish(
            settings,
            settings.stock_levels_topic,
            keyed([stock_level(product, unique("s"), f"{LAST_DAY}T18:00:00Z", 100, lead=7)]),
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as http:

            async def risk_status() -> int:
                return (await http.get(f"{path}/stockout-risk")).status_code

            await wait_until(risk_status, lambda status: status == 200, timeout=90, what="risk")
            listed = (await http.get("/products", params={"search": product})).json()["items"]
            demand = await http.get(f"{path}/demand", params={"from": str(LAST_DAY)})
            forecast = await http.get(f"{path}/forecast")
            risk = await http.get(f"{path}/stockout-risk")
            replenishment = await http.get(f"{path}/replenishment")
            stockout = await http.post("/predict/stockout", json={"product_id": product})
    assert [item["product_id"] for item in listed] == [product]
    for answer in (demand, forecast, risk, replenishment, stockout):
        assert answer.status_code == 200, (answer.request.url, answer.text)
    assert demand.json()["product_id"] == product
    assert demand.json()["days"][0]["date"] == str(LAST_DAY)
    assert forecast.json()["product_id"] == product
    assert risk.json()["product_id"] == product
    assert replenishment.json()["product_id"] == product
