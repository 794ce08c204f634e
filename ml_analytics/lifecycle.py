"""The service's background tasks: stopping them, and pausing between retries."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
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


class Poller:
    """A background task that runs `step` when woken and at least every `poll_seconds`.

    `step` handles its own errors: one that escapes ends the task.
    """

    def __init__(self, step: Callable[[], Awaitable[None]], poll_seconds: float, name: str):
        self._step = step
        self._poll_seconds = poll_seconds
        self._name = name
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name=self._name)

    def wake(self) -> None:
        """Run the step now (or as soon as the one running ends)."""
        self._wake.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
            self._wake.clear()
            await self._step()


PARENT_WATCH_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when `parent_pid` does, however the parent dies
    (SIGKILL, an OOM kill): a worker left behind holds its memory for nothing.

    On Linux the kernel sends SIGKILL on the parent's death (PR_SET_PDEATHSIG); a
    daemon thread also checks the parent every second, for other systems and for a
    parent that died before the signal was armed. Called as a pool's initializer.
    """
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_WATCH_SECONDS)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def dies_with_this_thread() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen that has the kernel SIGKILL the child when
    the thread starting it ends (its whole process with it: SIGKILL included), also
    after the child execs another program (PR_SET_PDEATHSIG survives exec). None
    where Linux's prctl is not available.

    The kernel ties the signal to the starting *thread*: start such a child from a
    thread that lives as long as the child should (the main thread).
    """
    prctl = _prctl()  # looked up here: the child only calls it between fork and exec
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)

    return arm
