"""The Redis client's command packing (hiredis) says on the wire what redis-py's own would."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from agents.redis.connections import redis_client
from agents.settings import Settings

COMMANDS: list[tuple[Any, ...]] = [
    ("PFADD", 'mkpi:uv:[60,0,"email","spring"]', "3f9a", "c0de", "visitor-é"),
    ("EXPIRE", "mkpi:uv:x", 691200),
    ("HSET", "mkpi:window:60:0", b"field", b'{"value":0.25}'),
    ("SET", "k", 2.5),
    ("CONFIG GET", "maxmemory"),
    ("PFCOUNT", b"\x00\xffbinary"),
]


def _python_packer(url: str) -> aioredis.Connection:
    pool = aioredis.ConnectionPool.from_url(url)
    connection = pool.connection_class(**pool.connection_kwargs)
    assert type(connection).pack_command is aioredis.Connection.pack_command
    return connection


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "unix:///run/redis.sock"])
def test_hiredis_packing_matches_redis_py(url: str) -> None:
    client = redis_client(Settings.from_env({"MKPI_REDIS_URL": url}))
    pool = client.connection_pool
    ours = pool.connection_class(**pool.connection_kwargs)
    theirs = _python_packer(url)
    assert isinstance(ours, type(theirs)), "the URL's connection class (TCP, unix socket) is kept"
    for command in COMMANDS:
        assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands(COMMANDS)) == b"".join(theirs.pack_commands(COMMANDS))
