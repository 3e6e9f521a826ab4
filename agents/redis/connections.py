"""How every Redis client of mkpi reaches Redis: the URL (its user and password are the ACL
login) plus the configured TLS, set once for ingest, the KPI agent, the web server, the CLI,
the benchmark and the tests."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import hiredis
import redis
import redis.asyncio as aioredis

from agents.settings import Settings


def _redis_tls_options(settings: Settings) -> dict[str, Any]:
    if urlparse(settings.redis.redis_url).scheme != "rediss":
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis.redis_tls_ca_file
    if settings.redis.redis_tls_cert_file:
        options["ssl_certfile"] = settings.redis.redis_tls_cert_file
        options["ssl_keyfile"] = settings.redis.redis_tls_key_file
    return options


class _HiredisPacking:
    """Commands packed by hiredis (C) rather than redis-py's asyncio connection (Python), which
    reads every argument of a command: ingest's PFADD of a flush carries thousands of visitor
    ids, and packing them was 7% of the ingest process's samples."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "CONFIG GET" is two words of the protocol
            args = (*args[0].encode().split(), *args[1:])
        return [hiredis.pack_command(args)]


class _PackedConnection(_HiredisPacking, aioredis.Connection):
    pass


class _PackedSSLConnection(_HiredisPacking, aioredis.SSLConnection):
    pass


class _PackedUnixConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    pass


_PACKED: dict[type[Any], type[Any]] = {
    aioredis.Connection: _PackedConnection,
    aioredis.SSLConnection: _PackedSSLConnection,
    aioredis.UnixDomainSocketConnection: _PackedUnixConnection,
}


def redis_client(settings: Settings, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client for ``MKPI_REDIS_URL`` (its user and password are the ACL
    login) with the configured TLS; ``options`` are redis-py's (timeouts)."""
    client = aioredis.Redis.from_url(settings.redis.redis_url, **_redis_tls_options(settings), **options)
    pool = client.connection_pool
    # from_url picks the connection class by the URL's scheme; packing is all that changes.
    pool.connection_class = _PACKED[pool.connection_class]
    return client


def sync_redis_client(settings: Settings, **options: Any) -> redis.Redis:
    return redis.Redis.from_url(settings.redis.redis_url, **_redis_tls_options(settings), **options)
