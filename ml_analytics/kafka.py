"""How every Kafka client of the service connects: bootstrap servers, client id and
security (TLS, SASL) from the settings, for FastStream and plain aiokafka alike."""

from __future__ import annotations

import ssl
from typing import Any

from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from ml_analytics.settings import Settings


def kafka_security(settings: Settings) -> BaseSecurity | None:
    """FastStream's security object for KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_*;
    None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol in ("SSL", "SASL_SSL")
    context = ssl_context(settings) if use_ssl else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username = settings.kafka_sasl_username or ""
    password = (
        settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    )
    mechanism = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }[settings.kafka_sasl_mechanism]
    return mechanism(username, password, ssl_context=context, use_ssl=use_ssl)


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS to the brokers: the system's CAs, or KAFKA_SSL_CAFILE; a client certificate
    when KAFKA_SSL_CERTFILE (and KAFKA_SSL_KEYFILE) are set."""
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    return context


def kafka_client_options(settings: Settings, role: str | None = None) -> dict[str, Any]:
    """Keyword arguments for an aiokafka client (admin, producer, consumer)."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": f"{settings.kafka_client_id}-{role}" if role else settings.kafka_client_id,
        **parse_security(kafka_security(settings)),
    }
