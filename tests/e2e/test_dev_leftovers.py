"""`ml-analytics dev` killed outright: its broker ends with it, the next `dev` stops
the PostgreSQL it left and says so, and a `dev` that runs keeps its data directory
to itself. Real processes: the `dev` command, its broker and its PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_analytics.devstack import free_port
from tests.processes import children_of

pytestmark = pytest.mark.integration


def _env(http_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KAFKA_", "TOPIC_", "DATABASE_URL", "ML_PORT"))
    }
    return {**env, "ML_PORT": str(http_port), "PYTHONUNBUFFERED": "1"}


def _dev_command(data_dir: Path, kafka_port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ml_analytics",
        "dev",
        "--data-dir",
        str(data_dir),
        "--kafka-port",
        str(kafka_port),
    ]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _broker_of(dev: subprocess.Popen[bytes]) -> int:
    (pid,) = [pid for pid, command in children_of(dev.pid).items() if "tansu" in command]
    return pid


def _postmaster(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dev exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"dev not ready within 120 s:\n{log.read_text()[-3000:]}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG, /proc")
def test_a_killed_dev_leaves_nothing_for_the_next_and_a_running_one_keeps_its_data(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    kafka_port = free_port()  # the same for every dev, as the default 9092 would be
    started: list[subprocess.Popen[Any]] = []
    services: list[int] = []  # the brokers' and PostgreSQL's pids, ended here if need be

    def start_dev(name: str, http_port: int) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                _dev_command(data_dir, kafka_port),
                env=_env(http_port),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        started.append(process)
        return process, log

    try:
        first_port = free_port()
        first, first_log = start_dev("first", first_port)
        _wait_healthy(first_port, first, first_log)
        broker = _broker_of(first)
        postgres = _postmaster(data_dir)
        services += [broker, postgres]

        # A second dev on the same directory while the first runs is refused.
        second = subprocess.Popen(
            _dev_command(data_dir, free_port()),
            env=_env(free_port()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        started.append(second)
        with contextlib.suppress(subprocess.TimeoutExpired):
            second.wait(30)
        assert second.returncode == 1, "a second dev ran on a directory in use"
        assert second.stderr is not None and second.stderr.read().strip() == (
            f"dev: {data_dir} is in use by a running dev (pid {first.pid}); stop it first, "
            "or give another --data-dir"
        )
        assert httpx.get(f"http://127.0.0.1:{first_port}/ready", timeout=5).status_code == 200

        # Killed outright: its broker ends with it; PostgreSQL, a daemon, outlives it.
        first.kill()
        first.wait(10)
        assert _within(5, lambda: not _alive(broker)), "the broker outlived its dev"
        assert _alive(postgres)

        # The next dev stops what is left, says so in one line, and runs.
        third_port = free_port()
        third, third_log = start_dev("third", third_port)
        _wait_healthy(third_port, third, third_log)
        assert not _alive(postgres)
        notices = [line for line in third_log.read_text().splitlines() if "previous dev" in line]
        assert notices == [
            f"dev: the previous dev on {data_dir} (pid {first.pid}) ended without stopping its "
            f"services; stopped what it left running: PostgreSQL (pid {postgres})"
        ]
        new_broker = _broker_of(third)
        new_postgres = _postmaster(data_dir)
        services += [new_broker, new_postgres]

        # A clean stop leaves nothing running, and nothing for the next dev to stop.
        third.send_signal(signal.SIGTERM)
        assert third.wait(60) == 0, third_log.read_text()[-3000:]
        assert not _alive(new_broker)
        assert _within(10, lambda: not _alive(new_postgres)), "PostgreSQL outlived a clean stop"
        assert not (data_dir / "dev.json").exists()
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for pid in services:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
