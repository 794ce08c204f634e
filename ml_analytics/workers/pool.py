"""Processes that do the CPU work (model fits, the global training) off the event loop.

A job past its timeout cannot be cancelled inside a worker, so the pool's processes
are killed and a fresh pool started; jobs that were running alongside fail with
BrokenProcessPool and are tried again later. As many jobs again as there are
processes wait in the processes' queue (a process that ends a job starts the next at
once), the others in the pool's gate; a job's timeout counts from its turn (the
processes take their queue in order), not from its wait, and a job still queued when
another job's timeout kills the processes never ran: it goes to the fresh ones.
Workers are spawned (a clean interpreter), replaced after `max_jobs_per_worker` jobs
so memory cannot creep, and end with the service however it ends
(lifecycle.die_with_parent). The pool itself starts with its first job: a replica
that never needs it does not hold its memory.

Workers keep their temporary files (cmdstanpy writes each Prophet fit's there) in a
directory of the pool's: a worker's own is removed when it ends, and the pool's
whole directory when the pool is stopped or replaced (its workers killed, which
gives them no chance to clean up). A worker's end does not run `atexit`, where
libraries clean their temporary directories, so without this they stay behind. A
pool's directory left by a service killed outright is removed by the next pool made
on the host (ml_analytics.scratch).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.util
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from ml_analytics.adapters.process_pool import StoppableExecutor, kill_executor
from ml_analytics.lifecycle import die_with_parent
from ml_analytics.scratch import make_directory

T = TypeVar("T")


class FitTimeout(TimeoutError):
    pass


class FitPool:
    def __init__(self, workers: int, max_jobs_per_worker: int) -> None:
        self._workers = workers
        self._max_jobs = max_jobs_per_worker
        self._executor: ProcessPoolExecutor | None = None
        self._scratch: str | None = None  # the workers' temporary files
        # At most twice `workers` jobs in the processes at once; one gate per event loop.
        self._gate: asyncio.Semaphore | None = None
        self._gate_loop: asyncio.AbstractEventLoop | None = None
        self._running = 0  # jobs whose turn has come
        self._queued: deque[asyncio.Event] = deque()  # the turns of those waiting, in order

    def _current(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._scratch = str(make_directory("workers"))
            self._executor = StoppableExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=self._max_jobs,
                initializer=start_worker,
                initargs=(os.getpid(), self._scratch),
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
        each within `timeout_seconds` of its start; the first failure is raised once
        all have ended."""
        outcomes = await asyncio.gather(
            *(self._run_one(timeout_seconds, function, args) for function, args in jobs),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return list(outcomes)

    async def _run_one(
        self, timeout_seconds: float, function: Callable[..., Any], args: tuple[Any, ...]
    ) -> Any:
        async with self._gate_of_this_loop():
            while True:
                executor = self._current()  # a fresh pool when the last one was replaced
                turn = self._take_turn()
                work = asyncio.get_running_loop().run_in_executor(executor, function, *args)
                # When the caller is cancelled (the service stops), nobody reads the outcome.
                work.add_done_callback(lambda done: done.cancelled() or done.exception())
                try:
                    if not turn.is_set():
                        await _first_of(work, turn)
                        if executor is not self._executor:
                            # Its turn came after another job's failure replaced the
                            # processes it was queued in: it never ran there.
                            continue
                    return await self._within(executor, work, timeout_seconds)
                except _NeverRan:
                    continue
                finally:
                    self._leave_turn(turn)

    def _gate_of_this_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate_loop is not loop:
            self._gate, self._gate_loop = asyncio.Semaphore(2 * self._workers), loop
            self._running, self._queued = 0, deque()
        return self._gate

    def _take_turn(self) -> asyncio.Event:
        """Set when the job holds a process: at once when one is free, else when a job
        ahead of it ends (the processes take their queue in order)."""
        turn = asyncio.Event()
        if self._running < self._workers:
            self._running += 1
            turn.set()
        else:
            self._queued.append(turn)
        return turn

    def _leave_turn(self, turn: asyncio.Event) -> None:
        if not turn.is_set():
            self._queued.remove(turn)
            return
        self._running -= 1
        if self._queued:
            self._running += 1
            self._queued.popleft().set()

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
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the caller is cancelled: the service stops
            # Not this caller: the job, still queued in the processes, was cancelled
            # when another job's failure replaced them. It never ran.
            raise _NeverRan from None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if broken is self._executor:  # else already replaced by another job's failure
            self.shutdown()

    def shutdown(self) -> None:
        if self._executor is not None:
            kill_executor(self._executor)
            self._executor = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


class _NeverRan(Exception):
    """A job cancelled in the processes' queue: it can go to fresh processes."""


async def _first_of(work: asyncio.Future[Any], turn: asyncio.Event) -> None:
    """Wait for the job's turn, or for its end (a job cancelled in the queue)."""
    waiting = asyncio.ensure_future(turn.wait())
    try:
        await asyncio.wait({work, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


def start_worker(parent_pid: int, scratch: str) -> None:
    """A worker's initializer: it ends with the service, and its temporary files go to
    a directory of its own inside the pool's `scratch`, removed when it ends."""
    die_with_parent(parent_pid)
    tempfile.tempdir = tempfile.mkdtemp(prefix="worker-", dir=scratch)
    multiprocessing.util.Finalize(
        None,
        shutil.rmtree,
        args=(tempfile.tempdir,),
        kwargs={"ignore_errors": True},
        exitpriority=0,
    )
