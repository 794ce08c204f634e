"""A service killed outright leaves its temporary directories; the next one made of
the same kind on the host removes them, and never a running process's. Real
processes: one that makes its directories and is killed, one that keeps running."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_analytics import scratch
from ml_analytics.workers.pool import FitPool

MAKE_AND_WAIT = (
    "import time\n"
    "from ml_analytics.scratch import make_directory\n"
    "for kind in ('workers', 'models'):\n"
    "    (make_directory(kind) / 'file').write_text('x')\n"
    "print('made', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temporary directory, for this process and the ones it starts."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def service() -> Iterator[subprocess.Popen[str]]:
    """A process that has made a workers and a models directory and waits."""
    process = subprocess.Popen(
        [sys.executable, "-c", MAKE_AND_WAIT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "made"
        yield process
    finally:
        process.kill()
        process.wait()


def directories(root: Path, kind: str) -> set[Path]:
    return set(root.glob(f"ml-analytics-{kind}-*"))


def test_a_killed_process_directories_go_with_the_next_of_their_kind(
    temporary: Path, service: subprocess.Popen[str]
) -> None:
    (left_workers,) = directories(temporary, "workers")
    (left_models,) = directories(temporary, "models")
    assert str(service.pid) in left_workers.name
    service.kill()
    service.wait()

    mine = scratch.make_directory("workers")
    assert directories(temporary, "workers") == {mine}  # the killed one's is gone
    assert directories(temporary, "models") == {left_models}  # another kind: kept
    scratch.make_directory("models")
    assert left_models not in directories(temporary, "models")


def test_a_running_process_or_another_hosts_directory_is_kept(
    temporary: Path, service: subprocess.Popen[str]
) -> None:
    other_host = temporary / "ml-analytics-workers-elsewhere.example-1-abc"
    other_host.mkdir()
    unrelated = temporary / "ml-analytics-workers-notours"
    unrelated.mkdir()
    before = directories(temporary, "workers")

    assert scratch.remove_left_behind("workers") == []
    mine = scratch.make_directory("workers")
    assert directories(temporary, "workers") == before | {mine}


async def test_a_fitting_pool_removes_a_killed_pools_directory(
    temporary: Path, service: subprocess.Popen[str]
) -> None:
    (left,) = directories(temporary, "workers")
    service.kill()
    service.wait()
    pool = FitPool(1, 10)
    try:
        assert await pool.run(60, os.getpid) != os.getpid()
        assert not left.exists()
        (current,) = directories(temporary, "workers")
        assert str(os.getpid()) in current.name
    finally:
        pool.shutdown()
    assert directories(temporary, "workers") == set()
