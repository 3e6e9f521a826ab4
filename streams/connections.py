"""How every client of mkpi reaches Kafka and Redis: addresses plus the configured security.

Every aiokafka client takes ``**kafka_options(settings)``, Faust takes
``faust_credentials(settings)``, and every Redis client comes from ``redis_client`` or
``sync_redis_client``, so a SASL user, a TLS CA or a Redis ACL user set once reaches all of
them (ingest, the KPI agent, the web server, the CLI, the benchmark and the tests).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlparse

import faust
import redis
import redis.asyncio as aioredis

from streams.settings import Settings


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A client context that verifies the server (against ``ca_file``, or the system's CAs)
    and its host name, and presents a client certificate when one is given."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def kafka_tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    return tls_context(settings.kafka_tls_ca_file, settings.kafka_tls_cert_file, settings.kafka_tls_key_file)


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: bootstrap servers and security."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = kafka_tls_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def faust_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """The same security for Faust's own clients (its consumer, changelog producer and admin)."""
    context = kafka_tls_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _redis_tls_options(settings: Settings) -> dict[str, Any]:
    if urlparse(settings.redis_url).scheme != "rediss":
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = settings.redis_tls_cert_file
        options["ssl_keyfile"] = settings.redis_tls_key_file
    return options


def redis_client(settings: Settings, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client for ``MKPI_REDIS_URL`` (its user and password are the ACL
    login) with the configured TLS; ``options`` are redis-py's (timeouts)."""
    return aioredis.Redis.from_url(settings.redis_url, **_redis_tls_options(settings), **options)


def sync_redis_client(settings: Settings, **options: Any) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **_redis_tls_options(settings), **options)
