"""Kafka security settings reach every client as aiokafka's options."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from ml_analytics.kafka import kafka_client_options
from ml_analytics.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]


def sasl_settings(protocol: str, **values: object) -> Settings:
    """SASL over `protocol` with the user svc and the password secret."""
    return settings(
        kafka_security_protocol=protocol,
        kafka_sasl_username="svc",
        kafka_sasl_password="secret",
        **values,
    )


def test_plaintext_adds_nothing() -> None:
    options = kafka_client_options(settings(kafka_bootstrap_servers="k:9092"), "admin")
    assert options == {"bootstrap_servers": "k:9092", "client_id": "ml-analytics-admin"}


def test_sasl_ssl_with_scram_passes_mechanism_credentials_and_tls() -> None:
    options = kafka_client_options(
        sasl_settings(
            "SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_ssl_check_hostname=False
        )
    )
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", "secret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname is False


def test_sasl_plaintext_has_no_tls_and_ssl_alone_has_no_sasl() -> None:
    sasl = kafka_client_options(sasl_settings("SASL_PLAINTEXT"))
    assert (sasl["security_protocol"], sasl["sasl_mechanism"]) == ("SASL_PLAINTEXT", "PLAIN")
    assert sasl["ssl_context"] is None
    tls = kafka_client_options(settings(kafka_security_protocol="SSL"))
    assert tls["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in tls


def test_a_missing_ca_file_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError):
        kafka_client_options(
            settings(kafka_security_protocol="SSL", kafka_ssl_cafile="/nonexistent/ca.pem")
        )


def test_sasl_without_credentials_is_refused_and_the_password_is_not_shown() -> None:
    with pytest.raises(ValidationError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc")
    configured = settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc", kafka_sasl_password="pw"
    )
    assert "pw" not in repr(configured.kafka_sasl_password)
