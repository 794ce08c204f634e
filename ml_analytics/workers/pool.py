"""Processes that do the CPU work (model fits, the global training) off the event loop.

A job past its timeout cannot be cancelled inside a worker, so the pool's processes
are killed and a fresh pool started; jobs that were running alongside fail with
BrokenProcessPool and are tried again later. Workers are spawned (a clean
interpreter), replaced after `max_jobs_per_worker` jobs so memory cannot creep, and
end with the service however it ends (lifecycle.die_with_parent). The pool itself
starts with its first job: a replica that never needs it does not hold its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from ml_analytics.lifecycle import die_with_parent

T = TypeVar("T")


class FitTimeout(TimeoutError):
    pass


class FitPool:
    def __init__(self, workers: int, max_jobs_per_worker: int) -> None:
        self._workers = workers
        self._max_jobs = max_jobs_per_worker
        self._executor: ProcessPoolExecutor | None = None

    def _current(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=self._max_jobs,
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            )
        return self._executor

    async def run(self, timeout_seconds: float, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker, within `timeout_seconds`."""
        (result,) = await self.run_all(timeout_seconds, [(function, args)])
        return result

    async def run_all(
        self, timeout_seconds: float, jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[Any]:
        """Several jobs side by side (each in a worker of its own when there are enough),
        all within `timeout_seconds`."""
        executor = self._current()
        loop = asyncio.get_running_loop()
        work = asyncio.gather(
            *(loop.run_in_executor(executor, function, *args) for function, args in jobs)
        )
        # When the caller is cancelled (the service stops), nobody reads the outcome.
        work.add_done_callback(lambda done: done.cancelled() or done.exception())
        return list(await self._within(executor, work, timeout_seconds))

    async def _within(
        self, executor: ProcessPoolExecutor, work: Awaitable[Any], timeout_seconds: float
    ) -> Any:
        try:
            return await asyncio.wait_for(work, timeout_seconds)
        except TimeoutError:
            self._replace(executor)
            raise FitTimeout(f"the fit took longer than {timeout_seconds:g} s") from None
        except BrokenProcessPool:
            self._replace(executor)
            raise

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if broken is self._executor:  # else already replaced by another job's failure
            _kill(broken)
            self._executor = None

    def shutdown(self) -> None:
        if self._executor is not None:
            _kill(self._executor)
            self._executor = None


def _kill(executor: ProcessPoolExecutor) -> None:
    """Stop a pool now, jobs in progress included. Python 3.11 has no public way to
    stop a busy worker, hence the private `_processes`."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
