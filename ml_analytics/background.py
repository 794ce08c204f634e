"""The service's background loops, one way: start, stop, a period, wake-ups, a back-off
with jitter after a failure, a metric. And the retry policy everything shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ml_analytics import metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to pause between attempts at something that failed (a database
    write, a publish, a background step): doubling from the first pause, up to the
    longest, each shortened by a random share of up to `jitter`, so that replicas
    that failed together (a database restart) do not all retry at the same instant."""

    first_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0
    jitter: float = 0.5

    def delays(self) -> Iterator[float]:
        """The pauses, one per failed attempt, without end."""
        delay = self.first_delay_seconds
        while True:
            yield delay * (1 - self.jitter * random.random())
            delay = min(delay * 2, self.max_delay_seconds)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class BackgroundLoop:
    """A background task that runs `step` when woken and at least every
    `period_seconds` (None: only when woken). A step that raises is logged and counted
    (`ml_analytics_background_steps_total{loop,outcome}`), and the next one waits the
    retry policy's pause (a wake does not cut it short: a failing step is not retried
    in a tight loop); a success starts the pauses over. A step that returns True has
    more to do and runs again at once."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[Any]],
        period_seconds: float | None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self._period_seconds = period_seconds
        self._retry = retry or RetryPolicy(first_delay_seconds=1.0, max_delay_seconds=60.0)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name=self.name)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Run the step now (or as soon as the one running ends)."""
        self._wake.set()

    def wake_in(self, seconds: float) -> None:
        """Run the step after `seconds` (sooner if woken or the period ends first); one
        such wake is kept, the latest asked for."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self._wake.set)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await cancel_and_wait(self._task)
        self._task = None

    async def _forever(self) -> None:
        pauses = self._retry.delays()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._period_seconds)
            self._wake.clear()
            started = time.monotonic()
            try:
                more = await self._step()
            except Exception as error:
                metrics.BACKGROUND_STEPS.labels(self.name, "failed").inc()
                pause = next(pauses)
                logger.warning(
                    "a background step failed; trying again after a pause",
                    exc_info=error,
                    extra={"loop": self.name, "retry_in_seconds": round(pause, 2)},
                )
                await asyncio.sleep(pause)
                self._wake.set()
                continue
            metrics.BACKGROUND_STEPS.labels(self.name, "succeeded").inc()
            metrics.BACKGROUND_STEP_SECONDS.labels(self.name).observe(time.monotonic() - started)
            pauses = self._retry.delays()
            if more is True:
                self._wake.set()
