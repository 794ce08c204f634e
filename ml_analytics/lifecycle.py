"""The service's background tasks: stopping them, and pausing between retries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to pause between attempts at something that failed (a database
    write, a publish): doubling from the first pause, up to the longest."""

    first_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0

    def delays(self) -> Iterator[float]:
        """The pauses, one per failed attempt, without end."""
        delay = self.first_delay_seconds
        while True:
            yield delay
            delay = min(delay * 2, self.max_delay_seconds)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
