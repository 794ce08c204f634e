"""Processes that end with their parent: the fit workers, the embedded broker and the
replay child of `dev` (Linux's parent-death signal, and a watch where it is missing)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

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
