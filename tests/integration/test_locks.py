"""Advisory locks against a real PostgreSQL: a connection whose taking or releasing of
its locks fails never goes back to the pool holding them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ml_analytics.storage.database import create_engine
from ml_analytics.storage.locks import advisory_locks, lock_key
from tests.conftest import make_settings
from tests.helpers import unique, wait_until
from tests.services import StackServices

pytestmark = pytest.mark.integration


class InjectedFailure(RuntimeError):
    pass


async def _backend(engine: AsyncEngine) -> tuple[int, int]:
    """The pid of the session the pool hands out next, and the advisory locks it holds."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid = pg_backend_pid())"
                )
            )
        ).one()
    return int(row[0]), int(row[1])


async def _free_elsewhere(engine: AsyncEngine, key: int) -> bool:
    """Whether another session can take `key` (and then lets it go)."""
    async with engine.connect() as connection:
        taken = bool(
            (
                await connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
            ).scalar_one()
        )
        if taken:
            await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        await connection.commit()
    return taken


@pytest.mark.parametrize(
    ("hook", "statement", "raised"),
    [
        # The unlock fails before it runs (as a statement timeout or a lost reply would).
        ("before_cursor_execute", "pg_advisory_unlock", False),
        # The locks are taken, then the statement fails (a cancellation, a timeout).
        ("after_cursor_execute", "pg_try_advisory_lock", True),
    ],
    ids=["unlock-fails", "lock-fails-after-taking"],
)
async def test_a_lock_connection_that_fails_is_closed_and_its_lock_freed(
    services: StackServices, database_url: str, hook: str, statement: str, raised: bool
) -> None:
    # One pooled connection: the next one handed out is that one, unless it was closed.
    engine = create_engine(make_settings(services, database_url, database_pool_size=1))
    other = create_engine(make_settings(services, database_url))
    key = lock_key("test", unique("lock"))

    def fail(*args: Any) -> None:
        if statement in args[2]:  # (connection, cursor, statement, ...)
            raise InjectedFailure(statement)

    try:
        pooled_pid, _ = await _backend(engine)
        event.listen(engine.sync_engine, hook, fail)
        failure: InjectedFailure | None = None
        try:
            async with advisory_locks(engine, [key]) as (acquired, connection):
                assert acquired == {key}
                held_by = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar()
                assert held_by == pooled_pid
                assert not await _free_elsewhere(other, key)
        except InjectedFailure as error:
            failure = error
        finally:
            event.remove(engine.sync_engine, hook, fail)

        # The pool hands out a new session, holding no lock...
        next_pid, locks_held = await _backend(engine)
        assert next_pid != pooled_pid
        assert locks_held == 0
        # ...and the session that held the lock has ended with it.
        await wait_until(
            lambda: _free_elsewhere(other, key), bool, timeout=10, interval=0.05, what="the lock"
        )
        # A failed taking is the caller's error; a failed release only logged (the
        # lock is gone either way, and what was done under it stands).
        assert (failure is not None) == raised
    finally:
        await engine.dispose()
        await other.dispose()


async def test_a_released_lock_leaves_its_connection_in_the_pool(
    services: StackServices, database_url: str
) -> None:
    engine = create_engine(make_settings(services, database_url, database_pool_size=1))
    other = create_engine(make_settings(services, database_url))
    key = lock_key("test", unique("lock"))
    try:
        pooled_pid, _ = await _backend(engine)
        async with advisory_locks(engine, [key]) as (acquired, _):
            assert acquired == {key}
        assert await _backend(engine) == (pooled_pid, 0)
        assert await _free_elsewhere(other, key)
    finally:
        await engine.dispose()
        await other.dispose()
