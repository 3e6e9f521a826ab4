"""First sightings against the real Redis: the script's verdicts, one per sighting, in order."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from agents.redis.dedup import RedisSightings
from streams.core.ingestor import Sighting
from tests.support import isolated_settings

pytestmark = pytest.mark.kafka


async def test_a_key_counts_on_its_first_sighting_and_on_redelivery_of_that_message_only() -> None:
    settings = isolated_settings()
    client = aioredis.Redis.from_url(settings.redis.url)
    sightings = RedisSightings(client, settings.topics.app_id)
    cell = '[60,1795761900,"*","spring sale 2026"]'  # cell names hold spaces and quotes
    try:
        first = [
            Sighting("event", "e1", 0, 10, 600),
            Sighting(f"session:{cell}", "s1", 0, 10, 600),
            Sighting("event", "e2", 1, 4, 600),
            Sighting("event", "e1", 0, 11, 600),  # the same id again in the same batch: a retry
        ]
        assert await sightings.counts(first) == [True, True, True, False]
        again = [
            Sighting("event", "e1", 0, 10, 600),  # the same message delivered again counts again
            Sighting(f"session:{cell}", "s1", 2, 7, 600),  # the session seen in another message
            Sighting("event", "e3", 0, 12, 600),
        ]
        assert await sightings.counts(again) == [True, False, True]
        assert await sightings.counts([]) == []
        ttl = await client.ttl(f"{settings.topics.app_id}:session:{cell}:s1")
        assert 590 <= ttl <= 600, "remembered for its horizon"
    finally:
        await client.aclose()
