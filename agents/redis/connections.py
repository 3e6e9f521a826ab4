"""How every Redis client of mkpi reaches Redis: the URL (its user and password are the ACL
login) plus the configured TLS, set once for ingest, the KPI agent, the web server, the CLI,
the benchmark and the tests."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis

from agents.settings import Settings


def _redis_tls_options(settings: Settings) -> dict[str, Any]:
    if urlparse(settings.redis.url).scheme != "rediss":
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis.tls_ca_file:
        options["ssl_ca_certs"] = settings.redis.tls_ca_file
    if settings.redis.tls_cert_file:
        options["ssl_certfile"] = settings.redis.tls_cert_file
        options["ssl_keyfile"] = settings.redis.tls_key_file
    return options


def redis_client(settings: Settings, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client for ``MKPI_REDIS_URL`` (its user and password are the ACL
    login) with the configured TLS; ``options`` are redis-py's (timeouts)."""
    return aioredis.Redis.from_url(settings.redis.url, **_redis_tls_options(settings), **options)


def sync_redis_client(settings: Settings, **options: Any) -> redis.Redis:
    return redis.Redis.from_url(settings.redis.url, **_redis_tls_options(settings), **options)
