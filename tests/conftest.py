"""Fixtures: the real broker and PostgreSQL (see tests/services.py), a fresh
database and fresh topics per test, so tests never see each other's data."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from ml_analytics.consumers.admin import ensure_topics
from ml_analytics.settings import Settings
from ml_analytics.storage.database import create_engine, migrate
from tests.helpers import unique
from tests.processes import MARK, marked_processes
from tests.services import StackServices, open_services


def pytest_sessionstart(session: pytest.Session) -> None:
    # Every process the session starts inherits this mark, so any left behind is found.
    os.environ.setdefault(MARK, uuid.uuid4().hex)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if a process it started is still alive at its end (after a
    grace for ones that are stopping), and end them."""
    token = os.environ.get(MARK)
    if token and not hasattr(session.config, "workerinput"):
        _find_leftover_processes(session, token)
    session.config.stash[EXIT_STATUS] = int(session.exitstatus)


EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The session is over and every service it started has stopped: exit now, with
    its status. Nothing left in this process (a native client library's thread, an
    interpreter-exit handler of a library whose server is gone) may hold the exit:
    a finished run once sat for an hour after printing its summary. Threads still
    running are named with their class and where they are, so their cause can be
    found (ML_ANALYTICS_TEST_NORMAL_EXIT=1 lets the interpreter exit as usual, to
    see what holds it)."""
    if EXIT_STATUS not in config.stash or os.environ.get("ML_ANALYTICS_TEST_NORMAL_EXIT"):
        return
    lingering = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon
    ]
    deadline = time.monotonic() + 3  # one just told to stop may be on its way out
    for thread in lingering:
        thread.join(max(0.0, deadline - time.monotonic()))
    frames = sys._current_frames()
    for thread in lingering:
        frame = frames.get(thread.ident) if thread.is_alive() and thread.ident else None
        if frame is None:
            continue
        where = "".join(traceback.format_stack(frame)[-4:])
        sys.stderr.write(
            f"a thread still running at the end of the session: {thread.name} "
            f"({type(thread).__qualname__}), at\n{where}"
        )
    # The one interpreter-exit handler that matters here: cmdstanpy's, which removes
    # its temporary directory (tests that fit Prophet in this process import it).
    cmdstanpy = sys.modules.get("cmdstanpy")
    if cmdstanpy is not None:
        shutil.rmtree(cmdstanpy._TMPDIR, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash[EXIT_STATUS])


def _find_leftover_processes(session: pytest.Session, token: str) -> None:
    # This process's own multiprocessing resource tracker ends with it, after this hook.
    from multiprocessing import resource_tracker

    own_tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    deadline = time.monotonic() + 15
    while (left := marked_processes(token, exclude={own_tracker})) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  {pid}: {command}" for pid, command in sorted(left.items())]
    message = "processes started by the tests are still running:\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
