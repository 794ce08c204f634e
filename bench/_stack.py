"""The services a benchmark runs against: ML_BENCH_KAFKA_BOOTSTRAP_SERVERS and
ML_BENCH_DATABASE_URL when set, else a fresh embedded broker and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from ml_analytics.devstack import EmbeddedBroker, EmbeddedPostgres


@contextlib.contextmanager
def bench_stack() -> Iterator[tuple[str, str, bool]]:
    """Yields (bootstrap servers, database URL of a new database, idempotent producer?)."""
    kafka = os.environ.get("ML_BENCH_KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("ML_BENCH_DATABASE_URL")
    if kafka and database:
        yield kafka, database, True
        return
    with (
        tempfile.TemporaryDirectory(prefix="ml-analytics-bench-") as scratch,
        EmbeddedPostgres(Path(scratch) / "postgres") as postgres,
        EmbeddedBroker(log_path=Path(scratch) / "broker.log") as broker,
    ):
        yield (
            broker.bootstrap_servers,
            postgres.database_url(f"bench_{uuid.uuid4().hex[:8]}"),
            False,
        )
