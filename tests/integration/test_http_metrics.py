"""GET /metrics stays small whatever clients send, and building it does not hold up
the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tests.conftest import make_settings
from tests.integration.test_http_api import client_for
from tests.services import StackServices

pytestmark = pytest.mark.integration

REQUESTS = 20_000


async def _invented_methods(client: httpx.AsyncClient) -> set[int]:
    """REQUESTS requests, each with a method of its own, on existing and made-up paths
    (without a token)."""
    paths = ["/health", "/products/SKU-{i}/demand", "/no/such/path/{i}"]
    statuses: set[int] = set()
    for start in range(0, REQUESTS, 200):
        answers = await asyncio.gather(
            *(
                client.request(f"X{i}", paths[i % len(paths)].format(i=i))
                for i in range(start, start + 200)
            )
        )
        statuses.update(answer.status_code for answer in answers)
    return statuses


def _request_samples(exposition: str) -> list[str]:
    return [
        line
        for line in exposition.splitlines()
        if line.startswith("ml_analytics_http_request_seconds_count{")
    ]


@pytest.mark.parametrize("token", [None, "s3cret"], ids=["open", "bearer-token"])
async def test_requests_with_invented_methods_leave_metrics_small(
    services: StackServices, database_url: str, token: str | None
) -> None:
    settings = make_settings(services, database_url, http_bearer_token=token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client_for(settings) as (client, _):
        # This process's registry also holds the metrics of the tests before this one
        # (a service process starts with its own): what the requests add is measured.
        before = len((await client.get("/metrics", headers=headers)).content)
        statuses = await _invented_methods(client)
        assert statuses == ({401, 405} if token else {404, 405})  # /health is open
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200
    size = len(response.content)
    assert size - before < 10_000, f"/metrics grew {size - before} bytes with {REQUESTS} methods"
    samples = _request_samples(response.text)
    assert not any('method="X' in sample for sample in samples)
    if token:
        assert any('method="other",route="unmatched",status="401"' in s for s in samples)
    else:
        assert any('method="other",route="/health",status="405"' in s for s in samples)
        # Unknown paths are one route, and a product's id is never a label.
        assert any('method="other",route="unmatched",status="404"' in s for s in samples)
        assert not any("SKU-" in sample or "/no/such" in sample for sample in samples)


class _SlowCollector(Collector):
    """A collector that takes `seconds` to collect and notes the thread it ran on."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[threading.Thread] = []
        self.started = threading.Event()
        self.started_at = 0.0

    def describe(self) -> list[GaugeMetricFamily]:  # so that registering collects nothing
        return [GaugeMetricFamily("ml_analytics_test_slow_collector", "A test's.")]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.threads.append(threading.current_thread())
        self.started_at = time.perf_counter()
        self.started.set()
        time.sleep(self.seconds)
        yield GaugeMetricFamily("ml_analytics_test_slow_collector", "A test's.", value=1)


async def test_a_slow_scrape_does_not_hold_up_other_requests(
    services: StackServices, database_url: str
) -> None:
    slow = _SlowCollector(1.0)
    REGISTRY.register(slow)
    try:
        async with client_for(make_settings(services, database_url)) as (client, _):
            scrape = asyncio.create_task(client.get("/metrics"))
            await asyncio.to_thread(slow.started.wait, 10)
            health = await client.get("/health")
            # From the moment the scrape began to be built, not from when this task
            # got to run again: a scrape on the event loop would have held it.
            health_seconds = time.perf_counter() - slow.started_at
            metrics_text = (await scrape).text
    finally:
        REGISTRY.unregister(slow)
    assert health.status_code == 200
    assert health_seconds < 0.5, f"/health took {health_seconds:.2f} s during a scrape"
    assert "ml_analytics_test_slow_collector 1.0" in metrics_text
    assert slow.threads[0] is not threading.main_thread()
