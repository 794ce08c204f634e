"""Fixtures: the real broker and PostgreSQL (see tests/services.py), a fresh
database and fresh topics per test, so tests never see each other's data."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine, migrate
from tests.helpers import unique
from tests.services import StackServices, open_services


@pytest.fixture(scope="session")
def services() -> Iterator[StackServices]:
    with open_services() as found:
        yield found


@pytest.fixture
async def database_url(services: StackServices) -> AsyncIterator[str]:
    url = await services.create_database()
    await migrate(url)
    yield url
    await services.drop_database(url)


def make_settings(services: StackServices, database_url: str, **overrides: object) -> Settings:
    """Settings on the test services with topics and a consumer group of the test's own."""
    tag = unique("t")
    values: dict[str, object] = {
        "database_url": database_url,
        "kafka_bootstrap_servers": services.kafka_bootstrap_servers,
        "kafka_enable_idempotence": services.idempotent_producer,
        "topic_transactions": f"{tag}.transactions",
        "topic_stock_levels": f"{tag}.stock-levels",
        "topic_stockout_risk": f"{tag}.stockout-risk",
        "topic_dead_letter": f"{tag}.dead-letter",
        "kafka_group_id": f"{tag}-group",
        "ingest_batch_timeout_ms": 50,
        "shutdown_grace_seconds": 10,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]


@pytest.fixture
async def settings(services: StackServices, database_url: str) -> Settings:
    settings = make_settings(services, database_url)
    await ensure_topics(settings, wait_seconds=20)
    return settings


@pytest.fixture
async def engine(settings: Settings):  # type: ignore[no-untyped-def]
    engine = create_engine(settings)
    yield engine
    await engine.dispose()
