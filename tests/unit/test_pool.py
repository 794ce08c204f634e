"""The fitting pool's workers leave no temporary files behind: a worker's are removed
when it ends after its jobs, and all of the pool's when the pool is stopped (its
workers killed). Real spawned processes."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from ml_analytics.workers.pool import FitPool, FitTimeout


def write_temporary_file() -> str:
    """A job that leaves a file in its temporary directory, as cmdstanpy does."""
    handle, path = tempfile.mkstemp(suffix=".csv")
    os.close(handle)
    return path


async def gone_within(path: Path, seconds: float) -> bool:
    for _ in range(int(seconds * 10)):
        if not await asyncio.to_thread(path.exists):
            return True
        await asyncio.sleep(0.1)
    return not await asyncio.to_thread(path.exists)


async def test_a_workers_temporary_files_go_when_it_ends_after_its_jobs() -> None:
    pool = FitPool(1, 1)  # each worker ends after one job
    try:
        first = Path(await pool.run(60, write_temporary_file))
        assert first.parent.parent.name.startswith("ml-analytics-workers-")
        assert await gone_within(first.parent, 10)
        second = Path(await pool.run(60, write_temporary_file))  # a fresh worker
        assert second.parent != first.parent and second.parent.parent == first.parent.parent
    finally:
        pool.shutdown()


async def test_the_pools_temporary_files_go_when_it_stops_and_kills_its_workers() -> None:
    pool = FitPool(1, 100)
    try:
        written = Path(await pool.run(60, write_temporary_file))
        assert await asyncio.to_thread(written.is_file)  # its worker is still there
    finally:
        pool.shutdown()
    assert not written.parent.parent.exists()


async def test_a_pool_stopped_as_a_worker_ends_starts_no_other_and_its_manager_lives() -> None:
    """When a worker ends after its last job just as the pool is stopped, the executor's
    manager thread asks for a replacement of a pool whose workers are gone: none is
    started, and the thread does not die of it."""
    pool = FitPool(1, 1)
    await pool.run(60, write_temporary_file)
    executor = pool._executor
    assert executor is not None
    pool.shutdown()
    executor._adjust_process_count()  # what the manager thread does next
    assert executor._processes is None


def sleep_then(seconds: float, value: str) -> str:
    import time

    time.sleep(seconds)
    return value


async def test_a_job_waiting_its_turn_is_neither_timed_out_for_the_wait_nor_lost() -> None:
    pool = FitPool(1, 100)  # one process: the jobs take turns
    try:
        # Each job but the first is within its 4 s; the last one starts 6 s after it
        # was handed over, and the first one's timeout does not take the others down.
        outcomes = await asyncio.gather(
            pool.run(4, sleep_then, 6.0, "too slow"),
            pool.run(4, sleep_then, 2.0, "second"),
            pool.run(4, sleep_then, 2.0, "third"),
            return_exceptions=True,
        )
        # Every turn given back: jobs queued behind busy processes start at once.
        assert (pool._running, len(pool._queued)) == (0, 0)
        quick = await asyncio.gather(*(pool.run(30, sleep_then, 0.2, str(i)) for i in range(6)))
        assert quick == [str(i) for i in range(6)]
        assert (pool._running, len(pool._queued)) == (0, 0)
    finally:
        pool.shutdown()
    assert isinstance(outcomes[0], FitTimeout)
    assert outcomes[1:] == ["second", "third"]
