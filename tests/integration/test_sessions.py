"""Sessions in the real Redis: the store answers as the rule does over the stored state, and
workers racing on one subject still start each session once."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from agents.redis.sessions import RedisSessionStore
from streams.core.attribution import Attribution
from streams.core.sessions import SessionEvent, SessionState, place_all
from tests.support import isolated_settings

pytestmark = pytest.mark.kafka

TIMEOUT = 1800


def journeys(seed: int, subjects: int, count: int) -> list[SessionEvent]:
    rng = random.Random(seed)
    channels = [Attribution("direct", "(none)", "r"), Attribution("email", "c1", "r", touched=True)]
    return [
        SessionEvent(
            f"s:subject-{rng.randrange(subjects)}",
            rng.uniform(0, 6 * 3600),
            f"{rng.randrange(3)}:{index}",
            rng.choice(channels),
            rng.random() < 0.3,
        )
        for index in range(count)
    ]


async def test_the_store_places_batches_as_the_rule_does_and_keeps_the_state() -> None:
    settings = isolated_settings()
    client = aioredis.Redis.from_url(settings.redis.url)
    store = RedisSessionStore(client, settings.topics.app_id, TIMEOUT, 600)
    events = journeys(1, 20, 400)
    try:
        placed = []
        for start in range(0, len(events), 50):
            placed += await store.place(events[start : start + 50])
        states: dict[str, SessionState] = {}
        assert placed == place_all(events, states, TIMEOUT)
        assert await store.place(events[:50]) == place_all(events[:50], states, TIMEOUT), "read again"
        ttl = await client.ttl(f"{settings.topics.app_id}:session:{events[0].key}")
        assert 590 <= ttl <= 600
    finally:
        await client.aclose()


async def test_workers_racing_on_the_same_subjects_start_each_session_once() -> None:
    settings = isolated_settings()
    clients = [aioredis.Redis.from_url(settings.redis.url) for _ in range(4)]
    stores = [RedisSessionStore(c, settings.topics.app_id, TIMEOUT, 600) for c in clients]
    # One client session per subject, its events shared out among four workers at once.
    events = [
        SessionEvent(f"c:session-{i % 10}", float(i), f"0:{i}", Attribution("direct", "(none)", "r"), False)
        for i in range(400)
    ]
    try:
        shares = [events[w::4] for w in range(4)]
        for round_ in range(0, 100, 10):
            answers = await asyncio.gather(
                *(
                    store.place(share[round_ : round_ + 10])
                    for store, share in zip(stores, shares, strict=True)
                )
            )
            assert all(len(a) == len(s[round_ : round_ + 10]) for a, s in zip(answers, shares, strict=True))
            if round_ == 0:
                assert sum(p.started for answer in answers for p in answer) == 10, "one start per session"
            else:
                assert not any(p.started for answer in answers for p in answer)
    finally:
        for client in clients:
            await client.aclose()
