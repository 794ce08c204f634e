"""Python 3.11's ProcessPoolExecutor, where its public interface falls short
(workers/pool.py): stopping a pool whose workers are busy (a fit past its timeout
cannot be cancelled inside a worker) needs the workers' processes, which only the
private `_processes` holds; and the executor's manager thread could die of its own
race with a shutdown from another thread. Written for CPython 3.11
(tests/unit/test_adapters.py checks it).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor

WRITTEN_FOR = ("python", "3.11.")


class StoppableExecutor(ProcessPoolExecutor):
    """A ProcessPoolExecutor that a shutdown from another thread does not crash."""

    def _adjust_process_count(self) -> None:
        """The executor's manager thread replaces a worker that ended after its last
        job; a pool being stopped has none to replace. Python 3.11's own check reads
        `_processes`, which a shutdown(wait=False) from another thread sets to None
        meanwhile: the manager thread then died of a TypeError (seen in the tests)."""
        if self._shutdown_thread or self._processes is None:  # type: ignore[attr-defined]
            return
        try:
            super()._adjust_process_count()  # type: ignore[misc]
        except TypeError:
            if self._processes is not None:  # type: ignore[attr-defined]
                raise  # not the shutdown between the check and the count


def kill_executor(executor: ProcessPoolExecutor) -> None:
    """Stop a pool now, jobs in progress included: shut it down (no worker is started
    after this), then kill its workers. Python 3.11 has no public way to stop a busy
    worker, hence the private `_processes`."""
    workers = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        with contextlib.suppress(Exception):
            process.kill()
