"""The async engine, migrations, and which database errors are worth a retry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ml_analytics.settings import Settings, asyncpg_database_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def create_engine(settings: Settings) -> AsyncEngine:
    timeout_ms = str(round(settings.database_statement_timeout_seconds * 1000))
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.database_pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        # Hide parameters from error messages and logs: they may hold event payloads.
        hide_parameters=True,
        # No statement of the service runs without end, and no session sits in an
        # open transaction holding locks; any role may set these for itself.
        # (temp_file_limit, which caps one query's temporary files, needs a superuser:
        # deploy/postgres-roles.sql and the compose file set it.)
        connect_args={
            "server_settings": {
                "statement_timeout": timeout_ms,
                "idle_in_transaction_session_timeout": str(max(int(timeout_ms), 60_000)),
            }
        },
    )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': double it, since a password may contain one.
    config.set_main_option("sqlalchemy.url", asyncpg_database_url(database_url).replace("%", "%%"))
    return config


async def migrate(database_url: str) -> None:
    """Bring the schema to the newest revision (safe to run from several replicas at once)."""
    # Alembic's env.py runs its own event loop; keep it off ours.
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), "head")


async def database_answers(engine: AsyncEngine) -> None:
    """Raise when PostgreSQL does not answer a trivial query."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


# SQLSTATE classes that mean "try again": connection trouble (08), lock and
# serialization conflicts (40), resources (53), operator intervention such as a
# shutdown or restart (57), system errors (58).
_RETRYABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")


def is_transient(error: BaseException) -> bool:
    """Whether a failed database call may succeed if simply tried again."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        original = error.orig
        sqlstate = getattr(original, "sqlstate", None) or getattr(
            getattr(original, "__cause__", None), "sqlstate", None
        )
        if isinstance(sqlstate, str) and sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES:
            return True
        return is_transient(original.__cause__) if original and original.__cause__ else False
    return isinstance(
        error,
        OSError
        | ConnectionError
        | asyncio.TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.InterfaceError,
    )
