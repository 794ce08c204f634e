"""Schemathesis against the OpenAPI document, on a real uvicorn server over a real
PostgreSQL: whatever a request holds, the answer is documented, matches its schema,
and is never a 5xx."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

from ml_analytics import metrics
from ml_analytics.consumers.broker import build_broker
from ml_analytics.devstack import free_port
from ml_analytics.http.app import create_app
from ml_analytics.storage.database import create_engine, migrate
from tests.conftest import make_settings
from tests.helpers import serving_http
from tests.services import StackServices

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(services: StackServices) -> Iterator[schemathesis.BaseSchema]:
    async def fresh_database() -> str:
        url = await services.create_database()
        await migrate(url)
        return url

    database_url = asyncio.run(fresh_database())
    # Short histories keep the fits the fuzzer reaches quick.
    port = free_port()
    settings = make_settings(services, database_url, http_max_history_days=120, ml_port=port)
    app = create_app(settings, create_engine(settings), build_broker(settings), manage_broker=False)
    try:
        with serving_http(app, settings) as url:
            yield schemathesis.openapi.from_url(f"{url}/openapi.json")
    finally:
        asyncio.run(services.drop_database(database_url))


def test_no_request_gets_an_undocumented_answer_or_a_server_error(
    api_schema: schemathesis.BaseSchema,
) -> None:
    # Operation by operation with hypothesis directly: schemathesis' pytest plugin
    # does not work with this pytest. /ready answers 503 here by design (no broker).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    before = _answers()
    assert len(operations) >= 9
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            excluded = [negative_data_rejection, positive_data_acceptance]
            if case.path == "/ready":
                excluded.append(not_a_server_error)
            case.call_and_validate(excluded_checks=excluded, timeout=120)

        try:
            check()
        except hypothesis.errors.Unsatisfiable:
            # No invalid input exists for an operation without parameters.
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    served = _answers() - before
    # Both kinds of input reached the handlers: valid requests, and invalid ones that
    # were refused with a 4xx.
    for route in ("/forecast/demand", "/predict/stockout"):
        assert served[route, "422"] > 0, served
        assert served[route, "400"] + served[route, "404"] > 0, served
    assert served["/products", "200"] > 0, served


def _answers() -> Counter[tuple[str, str]]:
    """Requests served so far in this process, by route and status."""
    counts: Counter[tuple[str, str]] = Counter()
    for metric in metrics.HTTP_REQUEST_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                counts[sample.labels["route"], sample.labels["status"]] += int(sample.value)
    return counts
