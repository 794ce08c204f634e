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
from ml_analytics.settings import Settings


def bench_settings(bootstrap: str, database_url: str, idempotent: bool, name: str) -> Settings:
    """Settings on these services, with topics and a consumer group of the run's own."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        kafka_bootstrap_servers=bootstrap,
        kafka_enable_idempotence=idempotent,
        topic_transactions=f"{tag}.transactions",
        topic_stock_levels=f"{tag}.stock-levels",
        topic_stockout_risk=f"{tag}.stockout-risk",
        topic_dead_letter=f"{tag}.dead-letter",
        kafka_group_id=tag,
    )


@contextlib.contextmanager
def bench_stack(name: str) -> Iterator[Settings]:
    """Settings on ML_BENCH_KAFKA_BOOTSTRAP_SERVERS and a new database at
    ML_BENCH_DATABASE_URL when set, else on a fresh embedded stack."""
    kafka = os.environ.get("ML_BENCH_KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("ML_BENCH_DATABASE_URL")
    if kafka and database:
        yield bench_settings(kafka, database, True, name)
        return
    with (
        tempfile.TemporaryDirectory(prefix="ml-analytics-bench-") as scratch,
        EmbeddedPostgres(Path(scratch) / "postgres") as postgres,
        EmbeddedBroker(log_path=Path(scratch) / "broker.log") as broker,
    ):
        database_url = postgres.database_url(f"bench_{uuid.uuid4().hex[:8]}")
        yield bench_settings(broker.bootstrap_servers, database_url, False, name)
