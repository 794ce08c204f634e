"""The setup guide of the service this one replaces documents a `.env`; users copy it
as it is. It must start the service, with each variable meaning what it meant there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from ml_analytics.devstack import ServiceProcess
from ml_analytics.settings import Settings

pytestmark = pytest.mark.integration

ORIGINAL_ENV = """\
DATABASE_URL=postgresql://user:password@localhost:5432/inventory_db
ML_PORT=8000
HOST=0.0.0.0
LOG_LEVEL=info  # Options: debug, info, warning, error
PROPHET_SEASONALITY_MODE=additive
PROPHET_INTERVAL_WIDTH=0.95
MIN_TRAINING_DAYS=30
WORKER_COUNT=2  # Number of uvicorn workers
WORKER_TIMEOUT=300  # 5 minutes for long-running predictions
"""


def test_the_original_env_file_is_read_as_written(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(ORIGINAL_ENV)
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.database_url == "postgresql://user:password@localhost:5432/inventory_db"
    assert (settings.ml_port, settings.host, settings.log_level) == (8000, "0.0.0.0", "INFO")
    assert settings.prophet_seasonality_mode == "additive"
    assert settings.prophet_interval_width == 0.95
    assert settings.min_training_days == 30
    assert settings.worker_count == 2  # sizes the fit pool here
    assert settings.worker_timeout == 300


async def test_the_original_env_file_starts_the_service(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(ORIGINAL_ENV)
    # The environment names this test's database, broker and a free port; the rest,
    # LOG_LEVEL=info with its comment included, comes from the file.
    service = ServiceProcess(settings, tmp_path / "service.log", cwd=tmp_path)
    del service.env["LOG_LEVEL"]
    try:
        service.start()
        await asyncio.to_thread(service.wait_healthy)
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            assert (await client.get("/health")).json()["status"] == "healthy"
        assert '"message": "starting ml-analytics"' in service.log()
    finally:
        service.stop()
