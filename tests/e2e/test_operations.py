"""Operations of the service as a process: secrets stay out of its log, and the
optional bearer token guards every endpoint but /health."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from ml_analytics.devstack import ServiceProcess
from ml_analytics.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "token-d41d8cd98f00b204"


def with_password(url: str) -> tuple[str, str]:
    """The URL with a password in it (the one it has, else a made-up one, which the
    embedded server's trust authentication ignores), and that password."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    password = "pw-9f86d081884c7d65"
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}")), password


async def test_passwords_and_tokens_never_reach_the_log_and_the_token_guards_the_api(
    settings: Settings, tmp_path: Path
) -> None:
    url, password = with_password(settings.database_url)
    service = ServiceProcess(
        settings,
        tmp_path / "service.log",
        DATABASE_URL=url,
        HTTP_BEARER_TOKEN=TOKEN,
        LOG_LEVEL="DEBUG",
    ).start()
    try:
        service.wait_healthy()
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            assert (await client.get("/health")).status_code == 200
            refused = await client.get("/ready")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            wrong = await client.get("/products", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            guarded = {"Authorization": f"Bearer {TOKEN}"}
            ready = await client.get("/ready", headers=guarded)
            assert ready.status_code == 200, ready.text  # the password-bearing URL works
            assert (await client.get("/metrics", headers=guarded)).status_code == 200
    finally:
        service.stop()
    log = service.log_path.read_text()
    assert "starting ml-analytics" in log
    assert ":***@" in log  # the database URL is logged, redacted
    assert password not in log
    assert TOKEN not in log
