"""deploy/postgres-roles.sql on a real PostgreSQL: the migrator role can apply the
migrations, the service's role can do its work and nothing more."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ml_analytics.consumers.broker import build_broker, declare_publishers
from ml_analytics.services.ingestion.sort import SortedBatch
from ml_analytics.services.ledger import LedgerRetention
from ml_analytics.services.risk import RiskService
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine, migrate
from ml_analytics.storage.demand import StockSnapshot, product_summary
from ml_analytics.storage.ingest_writes import TransactionRow
from tests.helpers import write_batch
from tests.services import StackServices, _libpq_url

pytestmark = pytest.mark.integration

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "postgres-roles.sql"


def as_role(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


async def test_least_privilege_roles_migrate_and_run(
    services: StackServices, database_url: str
) -> None:
    # Roles are cluster-wide: give this run's a name of its own.
    tag = f"r{uuid.uuid4().hex[:8]}"
    sql = ROLES_SQL.read_text().replace("ml_analytics_migrator", f"{tag}_migrator")
    sql = sql.replace("ml_analytics_app", f"{tag}_app")
    admin = await asyncpg.connect(_libpq_url(database_url))
    try:
        await admin.execute(sql)
        migrator_url = as_role(database_url, f"{tag}_migrator", "change-me-migrator")
        app_url = as_role(database_url, f"{tag}_app", "change-me-app")

        await migrate(migrator_url)
        await migrate(app_url)  # at head already: the service's start-up check needs no DDL

        settings = Settings(_env_file=None, database_url=app_url)  # type: ignore[call-arg]
        engine = create_engine(settings)
        try:
            await write_batch(
                engine,
                SortedBatch.of(
                    transactions=[TransactionRow("e1", "P", date(2026, 11, 1), 3.0)],
                    stock_levels=[
                        StockSnapshot("s1", "P", datetime(2026, 11, 1, 18, tzinfo=UTC), 40, 7)
                    ],
                ),
            )
            async with engine.connect() as connection:
                summary = await product_summary(connection, "P")
            assert summary is not None and summary.total_units == 3.0
            # The ledger's retention and the pending assessments need no more than DML.
            assert await LedgerRetention(engine, settings).run_once() == 0
            publisher = declare_publishers(build_broker(settings), settings)["stockout_risk"]
            assert await RiskService(engine, publisher, settings).assess_pending() == 0
        finally:
            await engine.dispose()

        app = await asyncpg.connect(_libpq_url(app_url))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("CREATE TABLE intruder (x int)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("DROP TABLE transaction_events")
            tables = await app.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'ml_analytics'"
            )
            assert tables >= 8
        finally:
            await app.close()
    finally:
        await admin.execute("DROP SCHEMA IF EXISTS ml_analytics CASCADE")
        for role in (f"{tag}_app", f"{tag}_migrator"):
            await admin.execute(f"DROP OWNED BY {role}")
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
