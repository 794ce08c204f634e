"""The `dev` command's data directory: one `dev` at a time owns it, and the next one
stops what a `dev` killed outright left running. Real processes, no services."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ml_analytics.devstack import DataDirInUse, DevDataDir

# A stand-in for a `dev`: it owns the directory and records a "broker", then waits.
FAKE_DEV = """
import sys, time
from pathlib import Path
from ml_analytics.devstack import DevDataDir
workspace = DevDataDir(Path(sys.argv[1]))
workspace.claim()
workspace.record(broker_pid=int(sys.argv[2]))
print("ready", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_running_dev_owns_its_directory_and_a_killed_ones_broker_is_stopped(
    tmp_path: Path,
) -> None:
    broker = subprocess.Popen(["sleep", "600"])
    dev = subprocess.Popen(
        [sys.executable, "-c", FAKE_DEV, str(tmp_path), str(broker.pid)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert dev.stdout is not None and dev.stdout.readline() == "ready\n"
        with pytest.raises(DataDirInUse, match=rf"in use by a running dev \(pid {dev.pid}\)"):
            DevDataDir(tmp_path).claim()
        assert _alive(broker.pid)  # a refused dev touches nothing

        dev.kill()
        dev.wait(10)
        workspace = DevDataDir(tmp_path)
        leftovers = workspace.claim()
        try:
            assert leftovers.dev_pid == dev.pid
            assert leftovers.stopped == [f"broker (pid {broker.pid})"]
            assert broker.wait(10) == -signal.SIGTERM
        finally:
            workspace.release()
        assert not (tmp_path / DevDataDir.RECORD).exists()
        # After a clean exit there is nothing to stop, and the directory is free.
        again = DevDataDir(tmp_path)
        assert again.claim().stopped == []
        again.release()
    finally:
        for process in (dev, broker):
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_recorded_pid_now_used_by_another_process_is_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "600"])
    dev = subprocess.Popen(
        [sys.executable, "-c", FAKE_DEV, str(tmp_path), str(other.pid)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert dev.stdout is not None and dev.stdout.readline() == "ready\n"
        dev.kill()
        dev.wait(10)
        # As if the broker's pid had been reused: the process there started at
        # another time than the one recorded.
        path = tmp_path / DevDataDir.RECORD
        record = json.loads(path.read_text())
        record["broker"]["started"] += 1
        path.write_text(json.dumps(record))
        successor = DevDataDir(tmp_path)
        assert successor.claim().stopped == []
        successor.release()
        assert other.poll() is None
    finally:
        for process in (dev, other):
            if process.poll() is None:
                process.kill()
                process.wait(10)
