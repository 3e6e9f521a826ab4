"""How every Kafka client of mkpi reaches the brokers: addresses plus the configured security.

Every aiokafka client takes ``**kafka_options(settings)`` and Faust takes
``faust_credentials(settings)``, so a SASL user or a TLS CA set once reaches all of them
(ingest, the KPI agent, the CLI, the benchmark and the tests).
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from agents.settings import Settings


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A client context that verifies the server (against ``ca_file``, or the system's CAs)
    and its host name, and presents a client certificate when one is given."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def kafka_tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.kafka.kafka_security_protocol.endswith("SSL"):
        return None
    return tls_context(
        settings.kafka.kafka_tls_ca_file,
        settings.kafka.kafka_tls_cert_file,
        settings.kafka.kafka_tls_key_file,
    )


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: bootstrap servers and security."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.kafka_bootstrap,
        "security_protocol": settings.kafka.kafka_security_protocol,
    }
    context = kafka_tls_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka.kafka_sasl_password
    return options


def faust_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """The same security for Faust's own clients (its consumer, changelog producer and admin)."""
    context = kafka_tls_context(settings)
    if settings.kafka.kafka_security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=settings.kafka.kafka_sasl_username,
            password=settings.kafka.kafka_sasl_password,
            ssl_context=context,
            mechanism=settings.kafka.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
