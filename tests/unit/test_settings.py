"""Settings: database URL forms, redaction, topic names from topics.yaml and overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ml_analytics.settings import Settings, asyncpg_database_url, redact_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:pw@db:5432/inv", "postgresql+asyncpg://u:pw@db:5432/inv"),
        ("postgres://u:pw@db/inv", "postgresql+asyncpg://u:pw@db/inv"),
        ("postgresql+psycopg://u@db/inv", "postgresql+asyncpg://u@db/inv"),
        (
            "postgresql://u@/inv?host=/run/postgresql",
            "postgresql+asyncpg://u@/inv?host=%2Frun%2Fpostgresql",
        ),
        (
            "postgresql://u:pw@db/inv?sslmode=require",
            "postgresql+asyncpg://u:pw@db/inv?ssl=require",
        ),
    ],
)
def test_database_url_forms_get_the_asyncpg_driver(given: str, expected: str) -> None:
    assert asyncpg_database_url(given) == expected


def test_non_postgres_database_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="postgresql:// URL"):
        Settings(_env_file=None, database_url="mysql://u@db/inv")  # type: ignore[call-arg]


def test_password_is_redacted() -> None:
    assert redact_url("postgresql://u:s3cr%40t@db/inv") == "postgresql://u:***@db/inv"
    assert redact_url("postgresql://u@db/inv") == "postgresql://u@db/inv"


def test_topics_come_from_topics_yaml() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.transactions_topic == "inventory.transactions"
    assert settings.stock_levels_topic == "inventory.stock-levels"
    assert settings.stockout_risk_topic == "inventory.stockout-risk"
    assert settings.dead_letter_topic == "inventory.dead-letter"
    assert settings.group_id == "ml-analytics"
    assert settings.topics.topics["transactions"].partitions == 6


def test_environment_overrides_topic_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_TRANSACTIONS", "shared.tx")
    monkeypatch.setenv("KAFKA_GROUP_ID", "forecasting-eu")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.transactions_topic == "shared.tx"
    assert settings.group_id == "forecasting-eu"
    assert settings.topics.topics["transactions"].partitions == 6


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        Settings(_env_file=None, business_timezone="Mars/Olympus")  # type: ignore[call-arg]


def test_env_example_documents_every_setting() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / ".env.example"
    documented = {
        line.lstrip("# ").split("=", 1)[0].lower()
        for line in example.read_text(encoding="utf-8").splitlines()
        if "=" in line and line.lstrip("# ").split("=", 1)[0].isupper()
    }
    assert documented == set(Settings.model_fields)
