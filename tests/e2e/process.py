"""Run the service as a real process (`python -m ml_analytics ...`) for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ml_analytics.devstack import free_port, stop_process
from ml_analytics.settings import Settings


def service_environment(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KAFKA_", "TOPIC_", "DATABASE_URL", "ML_PORT"))
    }
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": str(settings.kafka_enable_idempotence).lower(),
            "TOPIC_TRANSACTIONS": settings.transactions_topic,
            "TOPIC_STOCK_LEVELS": settings.stock_levels_topic,
            "TOPIC_STOCKOUT_RISK": settings.stockout_risk_topic,
            "TOPIC_DEAD_LETTER": settings.dead_letter_topic,
            "KAFKA_GROUP_ID": settings.group_id,
            "ML_PORT": str(port),
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "INFO",
            "INGEST_BATCH_TIMEOUT_MS": "50",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class ServiceProcess:
    """`python -m ml_analytics run` in a child process, its output in a log file."""

    def __init__(
        self, settings: Settings, log_path: Path, cwd: Path | None = None, **extra_env: str
    ) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.log_path = log_path
        self.env = service_environment(settings, self.port, **extra_env)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ml_analytics", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"service exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service not healthy within {timeout} s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample from this process's /metrics (0 if absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            metric_name, _, label_text = sample.partition("{")
            if metric_name != name:
                continue
            present = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if present == wanted:
                return float(value)
        return 0.0

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        stop_process(self.process, grace_seconds=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""
