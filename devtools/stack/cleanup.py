"""Removing what test sessions and benchmark runs leave on the shared broker and Redis."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient

from agents.kafka.connections import kafka_options
from agents.redis.connections import redis_client
from agents.settings import Settings


async def remove_run_data(settings: Settings, prefixes: list[str]) -> tuple[int, int]:
    """Delete the topics and Redis keys under ``prefixes``; return how many of each.

    Test sessions and benchmark runs share one broker and one Redis, which keep their data on
    disk between sessions: without this, thousands of partitions pile up (the broker then takes
    minutes to load them at its next start) and Redis fills with millions of keys.
    """
    if not prefixes:
        return 0, 0
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(tuple(prefixes))]
        for start in range(0, len(topics), 200):
            await admin.delete_topics(topics[start : start + 200])
    finally:
        await admin.close()
    client = redis_client(settings)
    keys = 0
    try:
        # One pass over the keyspace for every prefix (it may hold millions of keys).
        wanted = tuple(f"{prefix}:".encode() for prefix in prefixes)
        shared = prefixes[0]
        for prefix in prefixes:
            while not prefix.startswith(shared):
                shared = shared[:-1]
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{shared}*", count=10_000):
            if key.startswith(wanted):
                batch.append(key)
            if len(batch) >= 1000:
                keys += await client.delete(*batch)
                batch.clear()
        if batch:
            keys += await client.delete(*batch)
    finally:
        await client.aclose()
    return len(topics), keys
